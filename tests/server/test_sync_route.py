"""`POST /sync` without FastAPI (sync_route.py) answers exactly as the FastAPI route,
takes every well-formed request, and hands everything unusual, body and all, to that
route."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.conftest import run_async
from tests.server.test_changes_route import five_entries

JSON = {"Content-Type": "application/json"}


def bodies(ns: int) -> list[tuple[dict, Any]]:
    """(extra headers, body): the first FAST are well formed and served without FastAPI."""
    me = str(ns)
    return [
        ({}, {"cursors": {me: 0}}), ({}, {"cursors": {me: 0}, "limit": 2}), ({}, {"cursors": {me: 2}, "limit": 2}),
        ({}, {"cursors": {me: 5}, "wait": 0.2}),  # empty, after the wait
        ({}, {"cursors": {me: 5}, "wait": 0}), ({}, {"cursors": {}}),  # differs from what it sees: at once
        ({}, {"cursors": {me: 5, "999": 0}}), ({}, {"cursors": {me: 5, "x": 0}}),  # 422 from feed itself
        ({}, {"cursors": {me: 5, "\u00b37": 0}}),  # a Unicode digit: isdigit(), but no int (schemathesis)
        ({}, {"cursors": {me: -1}}), ({}, {"cursors": {me: 2**63}}), ({}, {"cursors": {me: "1"}}),
        ({}, {"cursors": {me: 0}, "wait": 61}), ({}, {"cursors": {me: 0}, "limit": 0}),
        ({}, {"cursors": {me: 0}, "extra": 1}), ({}, {"wait": 1}), ({}, [1]), ({}, "not json {"),
        ({"Content-Type": "text/plain"}, {"cursors": {me: 0}}),
        ({"Authorization": "Bearer nobody"}, {"cursors": {me: 0}}), ({"Authorization": "Basic x"}, {"cursors": {}}),
    ]


FAST = 9
"""The first nine validate as SyncRequest (the last three of them are refused by the
route's own check of namespace ids): served without FastAPI."""


async def run_sequence(tmp: Path, *, fast: bool) -> tuple[list[tuple[int, Any]], list[bool]]:
    """The same requests each time; their answers, and whether FastAPI saw each."""
    answers: list[tuple[int, Any]] = []
    async with five_entries(tmp, fast=fast, path="/sync") as (c, routed):
        ns = (await c.post("/sync", json={"cursors": {}})).json()["namespaces"][0]["id"]
        routed.clear()
        for extra, body in bodies(ns):
            content = body.encode() if isinstance(body, str) else httpx.Request("POST", "/", json=body).content
            r = await c.post("/sync", content=content, headers={**JSON, **extra})
            answers.append((r.status_code, r.json()))
    return answers, routed


def test_the_fast_path_answers_as_the_fastapi_route(tmp_path):
    fast, fast_routed = run_async(lambda: run_sequence(tmp_path / "fast", fast=True))
    slow, slow_routed = run_async(lambda: run_sequence(tmp_path / "slow", fast=False))
    statuses = [a[0] for a in fast]
    assert statuses == [200] * 7 + [422] * 12 + [401, 401], fast
    assert [len(a[1]["changes"]) for a in fast[:4]] == [5, 2, 2, 0]
    assert fast[3][1]["has_more"] is False and len(fast[5][1]["namespaces"]) == 1
    for i, (a, b) in enumerate(zip(fast, slow)):
        assert a == b, f"request {i}"
    assert slow_routed == [True] * len(slow)
    assert fast_routed == [False] * FAST + [True] * (len(fast) - FAST)
