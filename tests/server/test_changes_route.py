"""`GET /changes` without FastAPI (changes_route.py) answers exactly as the FastAPI
route, takes every well-formed request, and hands everything unusual to that route."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import httpx
import pytest

from tests.conftest import run_async

from cloudfs.backend.stores.store import open_store
from cloudfs.server import users
from cloudfs.server.app import ServerContext, create_app
from cloudfs.server.changes_route import parse_query
from cloudfs.server.db import open_database

QUERIES: list[Any] = [
    {}, {"cursor": 0}, {"cursor": 0, "limit": 2}, {"cursor": 2, "limit": 2}, {"cursor": 4, "limit": 5000},
    {"cursor": 1, "wait": 0}, {"cursor": 5, "wait": 0.2}, {"cursor": 5, "wait": "0.25"},  # empty, after the wait
    {"cursor": 99}, {"cursor": 5, "extra": "ignored"},
    {"cursor": -1}, {"cursor": "x"}, {"cursor": 2**63}, {"limit": 0}, {"limit": 5001}, {"wait": 61}, {"wait": "abc"},
    [("cursor", "1"), ("cursor", "2")], {"cursor": " 1"}, {"cursor": ""},
]
FAST = 9
"""The first nine are well formed (the ninth answers 410): served without FastAPI."""


@contextlib.asynccontextmanager
async def five_entries(tmp: Path, *, fast: bool, path: str) -> AsyncIterator[tuple[httpx.AsyncClient, list[bool]]]:
    """A fresh server in process whose account has five journal entries, a client of it,
    and, for each request to `path`, whether FastAPI's router saw it (it puts the route
    it matched into the scope)."""
    database = open_database(tmp / "db", None)
    token = users.add_user(database, "u")
    ctx = ServerContext(db=database, store=open_store(str(tmp / "chunks"), data_dir=tmp, secret=b"s" * 32))
    app = create_app(ctx, fast_routes=fast)
    routed: list[bool] = []

    async def watched(scope: dict, receive: Callable, send: Callable) -> None:
        await app(scope, receive, send)
        if scope.get("path") == path:
            routed.append("route" in scope)

    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=watched), base_url="http://t",
                                     headers={"Authorization": f"Bearer {token}"}) as c:
            root = (await c.get("/me")).json()["root_id"]
            for i in range(5):
                r = await c.post("/dirs", json={"parent_id": root, "name": f"d{i}", "mtime_ns": 5})
                assert r.status_code == 201
            yield c, routed
    finally:
        database.dispose()


async def run_sequence(tmp: Path, *, fast: bool) -> tuple[list[tuple[int, Any]], list[bool]]:
    """The same requests each time; their answers, and whether FastAPI saw each."""
    answers: list[tuple[int, Any]] = []
    async with five_entries(tmp, fast=fast, path="/changes") as (c, routed):
        for query in QUERIES:
            r = await c.get("/changes", params=query)
            answers.append((r.status_code, r.json()))
        for headers in ({"Authorization": "Bearer nobody"}, {"Authorization": "Basic x"}):
            r = await c.get("/changes", headers=headers)
            answers.append((r.status_code, r.json()))
    return answers, routed


def test_the_fast_path_answers_as_the_fastapi_route(tmp_path):
    fast, fast_routed = run_async(lambda: run_sequence(tmp_path / "fast", fast=True))
    slow, slow_routed = run_async(lambda: run_sequence(tmp_path / "slow", fast=False))
    assert [a[0] for a in fast[:FAST + 8]] == [200] * 8 + [410] + [200] + [422] * 7, fast
    assert [a[0] for a in fast[-2:]] == [401, 401]
    assert [len(a[1]["changes"]) for a in fast[:5]] == [5, 5, 2, 2, 1]
    assert fast[6][1] == {"changes": [], "cursor": 5, "has_more": False}
    for i, (a, b) in enumerate(zip(fast, slow)):
        assert a == b, f"request {i}: {QUERIES[i] if i < len(QUERIES) else 'headers'}"
    assert slow_routed == [True] * len(slow)
    assert fast_routed == [False] * FAST + [True] * (len(fast) - FAST)


@pytest.mark.parametrize("raw, parsed", [
    (b"", (0, 0.0, 1000)), (b"cursor=7&wait=25&limit=10", (7, 25.0, 10)), (b"wait=0.5", (0, 0.5, 1000)),
    (b"cursor=9223372036854775807", (2**63 - 1, 0.0, 1000)),
    (b"cursor=9223372036854775808", None), (b"cursor=1&cursor=2", None), (b"cursor=1&", None), (b"cursor", None),
    (b"wait=60.000001", None), (b"wait=-1", None), (b"limit=0", None), (b"x=1", None), (b"cursor=%FF", None),
])
def test_what_the_fast_path_takes(raw, parsed):
    assert parse_query(raw) == parsed
