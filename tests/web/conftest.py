"""Fixtures for the web page: accounts with passwords, and a real headless Chromium
(Debian's `chromium`, driven by Playwright; never a downloaded browser build)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import Api
from tests.harness import CLOUDFS, MountProcess, ServerProcess, cloudfs_mount, cloudfs_server

CHROMIUM = os.environ.get("CLOUDFS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PASSWORD = "correct horse battery"
SCREENSHOTS = os.environ.get("CLOUDFS_SCREENSHOTS")
"""A directory: the browser tests save the README's screenshots there."""


def set_password(server: ServerProcess, name: str, password: str) -> subprocess.CompletedProcess:
    """`cloudfs user passwd NAME` with the password on stdin, as a script would."""
    where = ["--db", server.db_url] if server.db_url else ["--data", str(server.data_dir)]
    return subprocess.run([*CLOUDFS, "user", "passwd", name, *where], input=password + "\n", capture_output=True,
                          text=True, timeout=60)


@dataclass
class Account:
    name: str
    password: str
    api: Api
    """Bearer-token client of the same account (what a device would use)."""


def make_account(server: ServerProcess, prefix: str = "web") -> Account:
    """`cloudfs user add NAME --password`, the password on stdin."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    where = ["--db", server.db_url] if server.db_url else ["--data", str(server.data_dir)]
    done = subprocess.run([*CLOUDFS, "user", "add", name, "--password", *where], input=PASSWORD + "\n",
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    token = server.tokens[name] = done.stdout.strip().splitlines()[-1]
    return Account(name, PASSWORD, Api(server, token))


@pytest.fixture(scope="module")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """SQLite and the local store: the store the page PUTs to on its own origin."""
    with cloudfs_server(tmp_path_factory.mktemp("web")) as srv:
        yield srv
        assert "Traceback" not in srv.log(), srv.log()


@pytest.fixture
def account(web_server: ServerProcess) -> Iterator[Account]:
    acct = make_account(web_server)
    yield acct
    acct.api.close()


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    if not shutil.which(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: scripts/setup.sh --test installs Debian's chromium")
        pytest.skip(f"no {CHROMIUM} (scripts/setup.sh --test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


# One account, one mounted device and one page per browser test module: the tests of a
# module run in order, as a person would use the drive one step after the other.


@pytest.fixture(scope="module")
def acct(web_server: ServerProcess) -> Iterator[Account]:
    account = make_account(web_server, "browser")
    yield account
    account.api.close()


@pytest.fixture(scope="module")
def device(web_server: ServerProcess, acct: Account, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MountProcess]:
    tmp = tmp_path_factory.mktemp("device")
    with cloudfs_mount(web_server, acct.api.token, tmp / "mnt", tmp / "cache", device="laptop") as mount:
        yield mount


@pytest.fixture(scope="module")
def page(browser, web_server: ServerProcess) -> Iterator[object]:  # noqa: ANN001
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    # alert() from a hostile name would land here; the page's own "leave while uploading?" is expected.
    page.on("dialog", lambda d: (d.type != "beforeunload" and page.errors.append(f"{d.type}: {d.message}"), d.accept()))
    page.set_default_timeout(20_000)
    page.goto(web_server.url + "/")
    yield page
    context.close()



def screenshot(page, name: str) -> None:  # noqa: ANN001 - a Playwright page
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"))
