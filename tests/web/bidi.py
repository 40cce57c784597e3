"""A small WebDriver BiDi client for Debian's Firefox ESR, which speaks BiDi itself (no
geckodriver, which Debian does not package, and no browser download): the browser is
started headless with `--remote-debugging-port 0` and a fresh profile, and driven over
one WebSocket. Enough to sign in, click, fill, pick files and read the page."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from typing import Any

from websockets.sync.client import ClientConnection, connect

FIREFOX = os.environ.get("CLOUDFS_FIREFOX", "/usr/bin/firefox-esr")
START_TIMEOUT_S = 60


class BidiError(Exception):
    pass


class Firefox:
    """One headless Firefox and its first tab; `close()` always ends the process."""

    def __init__(self) -> None:
        self.profile = tempfile.mkdtemp(prefix="cloudfs-firefox-")
        self.log = open(os.path.join(self.profile, "stderr.log"), "w+")
        self.proc = subprocess.Popen([FIREFOX, "--headless", "--no-remote", "--remote-debugging-port", "0",
                                      "--profile", self.profile, "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=self.log)
        self.ws: ClientConnection | None = None
        self.errors: list[str] = []
        """JavaScript errors and console errors of the page, as they come."""
        try:
            self.ws = connect(self._endpoint() + "/session", max_size=1 << 26, open_timeout=30).__enter__()
            self._next = 0
            self.call("session.new", {"capabilities": {"alwaysMatch": {"acceptInsecureCerts": True}}})
            self.context = self.call("browsingContext.getTree", {})["contexts"][0]["context"]
            self.call("session.subscribe", {"events": ["log.entryAdded"]})
        except BaseException:
            self.close()
            raise

    def _endpoint(self) -> str:
        """Firefox says where it listens on stderr (a file here, read until it does)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self.proc.poll() is None:
            self.log.seek(0)
            found = re.search(r"WebDriver BiDi listening on (ws://\S+)", self.log.read())
            if found:
                return found.group(1)
            time.sleep(0.1)
        self.log.seek(0)
        raise BidiError(f"{FIREFOX} did not start its WebDriver BiDi endpoint: {self.log.read()[-2000:]}")

    def call(self, method: str, params: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        assert self.ws is not None
        self._next += 1
        self.ws.send(json.dumps({"id": self._next, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BidiError(f"{method}: no answer in {timeout}s")
            msg = json.loads(self.ws.recv(timeout=left))
            if msg.get("type") == "event":
                self._event(msg)
            elif msg.get("id") == self._next:
                if msg.get("type") == "error":
                    raise BidiError(f"{method}: {msg.get('error')}: {msg.get('message')}")
                return msg["result"]

    def _event(self, msg: dict[str, Any]) -> None:
        entry = msg.get("params", {})
        if msg.get("method") == "log.entryAdded" and (entry.get("type") == "javascript" or entry.get("level") == "error"):
            self.errors.append(entry.get("text", str(entry)))

    # --- the page ---

    def goto(self, url: str) -> None:
        self.call("browsingContext.navigate", {"context": self.context, "url": url, "wait": "complete"})

    def js(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call("script.evaluate", {"expression": expression, "target": {"context": self.context},
                                               "awaitPromise": True, "serializationOptions": {"maxDomDepth": 0}})
        if result["type"] == "exception":
            raise BidiError(f"{expression[:200]}: {result['exceptionDetails'].get('text')}")
        return _plain(result["result"])

    def wait_for(self, expression: str, *, timeout: float = 20, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BidiError(f"{what or expression}: not after {timeout}s")
            time.sleep(0.1)

    def element(self, selector: str) -> dict[str, str]:
        result = self.call("browsingContext.locateNodes", {"context": self.context,
                                                            "locator": {"type": "css", "value": selector}})
        if not result["nodes"]:
            raise BidiError(f"no element {selector!r}")
        return {"sharedId": result["nodes"][0]["sharedId"]}

    def click(self, selector: str) -> None:
        """A real pointer click in the middle of the element (input.performActions)."""
        self.call("input.performActions", {"context": self.context, "actions": [{
            "type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"}, "actions": [
                {"type": "pointerMove", "x": 0, "y": 0, "origin": {"type": "element", "element": self.element(selector)}},
                {"type": "pointerDown", "button": 0}, {"type": "pointerUp", "button": 0}]}]})

    def type_into(self, selector: str, text: str) -> None:
        self.click(selector)
        self.call("input.performActions", {"context": self.context, "actions": [{
            "type": "key", "id": "keyboard", "actions": [a for ch in text for a in (
                {"type": "keyDown", "value": ch}, {"type": "keyUp", "value": ch})]}]})

    def set_files(self, selector: str, paths: list[str]) -> None:
        self.call("input.setFiles", {"context": self.context, "element": self.element(selector), "files": paths})

    def viewport(self, width: int, height: int) -> None:
        self.call("browsingContext.setViewport", {"context": self.context,
                                                  "viewport": {"width": width, "height": height}})

    def close(self) -> None:
        try:
            if self.ws is not None:
                try:
                    self.call("session.end", {}, timeout=10)
                except Exception:  # noqa: BLE001 - the browser is being stopped anyway
                    pass
                self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
            self.log.close()
            shutil.rmtree(self.profile, ignore_errors=True)


def _plain(value: dict[str, Any]) -> Any:
    """A BiDi remote value as Python (primitives, arrays, objects; nodes as None)."""
    kind = value.get("type")
    if kind in ("undefined", "null"):
        return None
    if kind in ("string", "boolean"):
        return value["value"]
    if kind == "number":
        v = value["value"]
        return v if not isinstance(v, str) else float(v.replace("Infinity", "inf"))
    if kind == "array":
        return [_plain(v) for v in value.get("value", [])]
    if kind == "object":
        return {k if isinstance(k, str) else _plain(k): _plain(v) for k, v in value.get("value", [])}
    return None
