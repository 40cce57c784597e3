"""A point-in-time restore interrupted by kill -9 of the server: every file is either as
it was or as restored (never a mix), and running the restore again finishes it."""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import Api
from tests.harness import RestartableServer
from tests.server.test_history import moment, resolve, tree_of

DIRS, FILES = 20, 25  # 500 files, one request each


def inline_file(api: Api, path: str, data: bytes) -> None:
    """One request per file: the bytes travel inside the commit."""
    fp = hashlib.sha256(data).hexdigest()
    r = api.post("/files", json={
        "path": path, "base_rev": 0, "size": len(data), "mtime_ns": time.time_ns(),
        "chunks": [{"fingerprint": fp, "length": len(data)}],
        "inline": [{"fingerprint": fp, "compression": "none", "data": base64.b64encode(data).decode()}]})
    assert r.status_code == 200, r.text


def listing(api: Api, dir_id: int | None = None, prefix: str = "") -> dict[str, tuple[str, int]]:
    """path -> (kind, size): cheap enough to take after every cut."""
    out: dict[str, tuple[str, int]] = {}
    for entry in api.get(f"/nodes/{dir_id or api.root_id}/children").json()["entries"]:
        path = f"{prefix}/{entry['name']}"
        out[path] = (entry["kind"], entry.get("size", 0))
        if entry["kind"] == "dir":
            out.update(listing(api, entry["id"], path))
    return out


def delete_proj(api: Api, gone: dict) -> None:
    r = api.delete(f"/nodes/{resolve(api, '/proj')['id']}", params={"recursive": True})
    assert r.status_code == 200, r.text
    assert listing(api) == gone


def restore_in_background(url: str, token: str, at: float) -> tuple[threading.Thread, list]:
    """POST /restore from a thread; the list gets the response or the exception."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(httpx.post(f"{url}/restore", json={"path": "/", "at": at}, timeout=60,
                                      headers={"Authorization": f"Bearer {token}"}))
        except httpx.HTTPError as exc:
            outcome.append(exc)
    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_a_restore_cut_by_kill_9_is_all_or_nothing_and_finishes_when_run_again(tmp_path: Path) -> None:
    server = RestartableServer(tmp_path / "srv")
    try:
        token = server.server.add_user("alice")
        with Api(server.server, token) as api:
            proj = api.post("/dirs", json={"parent_id": api.root_id, "name": "proj"}).json()["node"]
            for d in range(DIRS):
                api.post("/dirs", json={"parent_id": proj["id"], "name": f"d{d}"})
                for f in range(FILES):
                    inline_file(api, f"/proj/d{d}/f{f}.txt", f"{d}/{f} as it was".encode())
            then, then_bytes = listing(api), tree_of(api)
            at = moment()
            gone = {path: entry for path, entry in then.items() if not path.startswith("/proj")}
            delete_proj(api, gone)

        with Api(server.server, token) as api:  # how long an uncut restore takes here
            began = time.monotonic()
            r = api.post("/restore", json={"path": "/", "at": at})
            took = time.monotonic() - began
            assert r.status_code == 200 and listing(api) == then, r.text
            delete_proj(api, gone)

        cut = False
        for fraction in (0.5, 0.25, 0.75, 0.1, 0.9):  # until a kill lands inside the restore
            thread, outcome = restore_in_background(server.url, token, at)
            time.sleep(took * fraction)
            server.kill()
            thread.join(60)
            server.start()
            with Api(server.server, token) as api:
                now = listing(api)
                assert now in (gone, then), f"a restore cut at {fraction:.0%} of {took:.2f}s left a mix of both trees"
                if now == gone:
                    cut = isinstance(outcome[0], httpx.HTTPError)
                    break
                delete_proj(api, gone)  # it finished before the kill: once more
        assert cut, f"no kill landed inside a restore of {took:.2f}s"

        with Api(server.server, token) as api:
            r = api.post("/restore", json={"path": "/", "at": at})
            assert r.status_code == 200, r.text
            assert listing(api) == then
            assert tree_of(api) == then_bytes
    finally:
        server.close()
