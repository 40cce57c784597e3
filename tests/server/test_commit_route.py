"""`POST /files` without FastAPI (commit_route.py) answers exactly as the FastAPI route,
and hands everything unusual to that route, body and all."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloudfs.backend.stores.store import open_store
from cloudfs.server import users
from cloudfs.server.app import ServerContext, create_app
from cloudfs.server.db import open_database
from cloudfs.server.sql import Stmt, Tx
from tests.conftest import Api, run_async

FP = [f"{i:064x}" for i in range(1, 5)]
_VERIFIED = Stmt("""INSERT INTO chunks (owner_id, fingerprint, length, stored_length, stored_sha256, compression,
                                        state, created_at)
                    VALUES (:owner_id, :fp, 10, 10, :fp, 'none', 'verified', 0)""")


def commit(target: dict, *, fp: str = FP[0], length: int = 10, **over: Any) -> dict:
    return {**target, "base_rev": 0, "size": length, "mtime_ns": 1_700_000_000_000_000_000,
            "chunks": [{"fingerprint": fp, "length": length}], **over}


async def run_sequence(tmp: Path, *, fast: bool) -> list[tuple[int, str, Any]]:
    """A fresh server in process, one user, and the same requests each time."""
    db = open_database(tmp, None)
    token = users.add_user(db, "u")
    with db.write() as conn:
        for fp in FP[:3]:
            Tx.of(conn).run(_VERIFIED, {"owner_id": 1, "fp": fp})
    ctx = ServerContext(db=db, store=open_store(str(tmp / "chunks"), data_dir=tmp, secret=b"s" * 32))
    app = create_app(ctx, fast_routes=fast)
    answers = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t",
                                 headers={"Authorization": f"Bearer {token}"}) as c:
        root = (await c.get("/me")).json()["root_id"]
        d = (await c.post("/dirs", json={"parent_id": root, "name": "d", "mtime_ns": 5})).json()["node"]["id"]
        requests = [
            ({}, commit({"parent_id": d, "name": "f"})),
            ({}, commit({"path": "/d/g"}, fp=FP[1], mode=0o600)),
            ({}, commit({"node_id": 3}, fp=FP[2], base_rev=1)),
            ({}, commit({"node_id": 3}, base_rev=1)),                      # stale
            ({}, commit({"path": "/d/h"}, fp=FP[3])),                      # never uploaded
            ({}, commit({"path": "/d/g"})),                                # name taken
            ({}, commit({"path": "/d"})),                                  # a directory
            ({}, commit({"path": "/d/h"}, size=11)),                       # sizes disagree
            ({}, commit({"path": "/d/h"}, base_rev=3)),                    # no such file yet
            ({}, commit({"node_id": 99})),                                 # no such node
            ({"X-Cloudfs-Device": "phone"}, commit({"path": "/d/g"}, base_rev=1)),
            ({"X-Cloudfs-Device": None}, commit({"path": "/d/f"}, base_rev=2)),
            ({}, {"path": "/d/x", "base_rev": 0}),                         # invalid: missing fields
            ({"Content-Type": "text/plain"}, commit({"path": "/d/x"})),
        ]
        for extra, body in requests:
            h = {"Content-Type": "application/json", "X-Cloudfs-Device": "laptop", **extra}
            r = await c.post("/files", content=json.dumps(body), headers={k: v for k, v in h.items() if v is not None})
            answers.append((r.status_code, r.headers["content-type"], _without_times(r.json())))
        versions = (await c.get("/files/3/versions")).json()
        feed = (await c.get("/changes", params={"cursor": 0})).json()
        answers.append((0, "", _without_times([versions, feed])))
    db.dispose()
    return answers


def _without_times(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_times(v) for k, v in value.items() if k != "created_at"}
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value


def test_the_fast_path_answers_as_the_fastapi_route(tmp_path):
    fast = run_async(lambda: run_sequence(tmp_path / "fast", fast=True))
    slow = run_async(lambda: run_sequence(tmp_path / "slow", fast=False))
    assert [a[0] for a in fast] == [200, 200, 200, 409, 422, 409, 409, 422, 404, 404, 200, 200, 422, 422, 0]
    for i, (a, b) in enumerate(zip(fast, slow)):
        assert a == b, f"request {i}"
    assert fast[10][2]["version"]["device"] == "phone" and fast[11][2]["version"]["device"] == "unknown"


# --- over HTTP: what the fast path passes on ---------------------------------------------


@pytest.fixture
def target(alice) -> dict:  # noqa: ANN001
    """A commit body for a new empty file, unique per test."""
    return {"path": f"/via-{time.time_ns()}", "base_rev": 0, "size": 0, "mtime_ns": 1, "chunks": []}


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_body_that_is_not_declared_json_is_refused_as_before(alice, target, content_type):
    headers = {} if content_type is None else {"Content-Type": content_type}
    r = alice.post("/files", content=json.dumps(target), headers=headers)
    assert r.status_code == 422 and r.json()["error"] == "invalid" and r.json()["field"] == "body", r.text


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "APPLICATION/JSON", "application/vnd.x+json"])
def test_json_content_types_commit(alice, target, content_type):
    r = alice.post("/files", content=json.dumps(target), headers={"Content-Type": content_type})
    assert r.status_code == 200, r.text


def test_a_body_in_pieces_commits(alice, target):
    data = json.dumps(target).encode()
    r = alice.post("/files", content=(data[i:i + 7] for i in range(0, len(data), 7)),
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text


def test_authorization_and_device_as_the_route_reads_them(alice, target):
    token = alice.token
    r = alice.post("/files", json=target, headers={"Authorization": f"bearer   {token}"})
    assert r.status_code == 200, r.text
    for bad in (f"Basic {token}", "Bearer", f"Bearer {token}x", ""):
        r = alice.post("/files", json={**target, "path": target["path"] + "-2"}, headers={"Authorization": bad})
        assert r.status_code == 401 and r.json()["error"] == "unauthorized", (bad, r.text)
    r = alice.post("/files", json={**target, "path": target["path"] + "-3"}, headers={"X-Cloudfs-Device": "a/b"})
    assert r.status_code == 422 and r.json()["field"] == "X-Cloudfs-Device", r.text


def test_other_methods_and_paths_are_the_routes(alice):
    assert alice.get("/files").status_code == 405
    assert alice.post("/files/").status_code in (307, 404)
    assert alice.put("/files", json={}).status_code == 405


def test_anonymous_commit_is_401(server, target):
    anonymous = Api(server, None)
    try:
        r = anonymous.post("/files", json=target)
    finally:
        anonymous.close()
    assert r.status_code == 401 and r.json()["field"] == "Authorization"
