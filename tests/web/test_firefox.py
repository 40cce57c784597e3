"""The page in Firefox too (issue 17, must have 1): Debian's Firefox ESR, headless, driven
over WebDriver BiDi (bidi.py). One pass through what differs most between engines:
sign-in, a listing, an upload of several chunks through the file picker (Web Crypto,
Blob slices, PUTs to the signed URLs), a text preview, a hostile name, a phone's width,
and no script error on the way."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from tests.harness import ServerProcess
from tests.server.helpers import put_file
from tests.web.bidi import FIREFOX, Firefox
from tests.web.conftest import Account

HOSTILE = "<img src=x onerror=alert(1)>.txt"


@pytest.fixture(scope="module")
def firefox() -> Iterator[Firefox]:
    if not shutil.which(FIREFOX):
        if os.environ.get("CI"):
            pytest.fail(f"{FIREFOX} is missing: scripts/setup.sh --test installs Debian's firefox-esr")
        pytest.skip(f"no {FIREFOX} (scripts/setup.sh --test installs it)")
    browser = Firefox()
    try:
        yield browser
    finally:
        browser.close()


def rows(ff: Firefox) -> list[str]:
    return ff.js("[...document.querySelectorAll('#listing tbody tr')].map(r => r.dataset.name || '')")


def test_the_page_in_firefox(firefox: Firefox, web_server: ServerProcess, account: Account, tmp_path: Path) -> None:
    ff = firefox
    put_file(account.api, "/notes.md", b"# Notes\n<b>not bold</b>\n")
    put_file(account.api, "/" + HOSTILE, b"<script>alert(2)</script>")
    ff.goto(web_server.url + "/")
    ff.wait_for("!!document.querySelector('#signin')", what="the sign-in form")
    ff.type_into("#signin-name", account.name)
    ff.type_into("#signin-password", account.password)
    ff.click("#signin button[type=submit]")
    ff.wait_for("!!document.querySelector('#listing')", what="the listing after signing in")
    assert ff.js("document.getElementById('who').textContent") == account.name
    assert ff.js("document.cookie") == ""  # HttpOnly
    ff.wait_for("document.querySelectorAll('#listing tbody tr').length >= 2", what="two files listed")
    assert HOSTILE in rows(ff)
    shown = ff.js("[...document.querySelectorAll('#listing tbody tr')]"
                  f".find(r => r.dataset.name === {json.dumps(HOSTILE)}).querySelector('.name').textContent")
    assert shown == HOSTILE
    assert ff.js("document.querySelectorAll('#listing img, #listing script').length") == 0

    # An upload of three chunks (4 MiB each) through the picker.
    big = tmp_path / "from firefox.bin"
    big.write_bytes(os.urandom(9 * 1024 * 1024 + 5))
    ff.set_files("#pick-files", [str(big)])
    ff.wait_for("(document.getElementById('batch-status') || {}).textContent === '1 of 1 uploaded'", timeout=120,
                what="the upload finished")
    ff.wait_for("!!document.querySelector('#listing tr[data-name=\"from firefox.bin\"]')", what="the file listed")
    node = account.api.get("/resolve", params={"path": "/from firefox.bin"}).json()["node"]
    got = account.api.get(f"/files/{node['id']}/content")
    assert hashlib.sha256(got.content).hexdigest() == hashlib.sha256(big.read_bytes()).hexdigest()
    assert account.api.get(f"/files/{node['id']}/versions").json()["versions"][0]["device"] == "web"

    # A text preview, as text.
    ff.click("#listing tr[data-name='notes.md'] button.name")
    ff.wait_for("!!document.querySelector('#preview-text')", what="the preview")
    assert ff.js("document.getElementById('preview-text').textContent") == "# Notes\n<b>not bold</b>\n"
    assert ff.js("document.querySelectorAll('#preview-text b').length") == 0
    ff.click("#close-overlay")

    # A phone's width: nothing wider than the screen.
    ff.viewport(390, 844)
    ff.goto(web_server.url + "/#/")
    ff.wait_for("!!document.querySelector('#listing tr[data-name=\"notes.md\"]')", what="the listing on a phone")
    assert ff.js("document.documentElement.scrollWidth") <= 390
    seen = {d["last_device"] for d in account.api.get("/devices").json()["devices"] if d["kind"] == "session"}
    assert seen == {"web (Firefox)"}
    assert not ff.errors, ff.errors
