"""Helpers of the browser tests: waiting on the page the way its CSP allows (selectors,
never string evaluation), finding a row of a listing by its name, signing in."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path


def upload_finished(page, count: int) -> None:  # noqa: ANN001
    # (Selectors only: the page's CSP forbids the string evaluation wait_for_function uses.)
    page.wait_for_selector(f"#batch-status:text-is('{count} of {count} uploaded')", timeout=120_000)


def row(page, name: str):  # noqa: ANN001, ANN201
    return page.locator(f"#listing tbody tr[data-name={_css(name)}]")


def _css(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def pump_until(page, check, *, timeout: float, what: str) -> None:  # noqa: ANN001
    """Like wait_until, but lets Playwright run its route handlers meanwhile (the sync
    API dispatches them only inside its own calls)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout}s")
        page.wait_for_timeout(50)


def reload_dropping(page, held: list) -> None:  # noqa: ANN001
    """Reload the page; the requests held (routes) for the page that is gone are aborted."""
    page.reload()
    for route in held:
        try:
            route.abort()
        except Exception:  # noqa: BLE001 - already cancelled with its page
            pass
    held.clear()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sign_in(page, name: str, password: str) -> None:  # noqa: ANN001
    page.wait_for_selector("#signin")
    page.fill("#signin-name", name)
    page.fill("#signin-password", password)
    page.click("#signin button[type=submit]")
    page.wait_for_selector("#listing")
