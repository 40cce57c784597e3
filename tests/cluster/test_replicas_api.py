"""What one server guarantees, held across two replicas of one database and bucket:
cursors and wake-ups, 409s, 410s, group commit, quotas, verification, signed URLs.
Each test talks to replica 1 as `a` and to replica 2 as `b`, as two devices of one
account behind a balancer would."""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from cloudfs.server import journal
from cloudfs.server.db import Database
from tests.cluster.harness import Cluster, cluster
from tests.conftest import Api
from tests.harness import postgres_database


@pytest.fixture
def pair(two_replicas: Cluster) -> Iterator[tuple[Api, Api]]:
    token = two_replicas.add_user(f"api-{uuid.uuid4().hex[:8]}")
    first, second = two_replicas.replicas
    a = Api(two_replicas.as_server(first), token, device="dev-a")
    b = Api(two_replicas.as_server(second), token, device="dev-b")
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def inline(path: str, data: bytes, base_rev: int = 0, **extra: object) -> dict:
    fp = hashlib.sha256(data).hexdigest()
    return {"path": path, "base_rev": base_rev, "size": len(data), "mtime_ns": 1,
            "chunks": [{"fingerprint": fp, "length": len(data)}],
            "inline": [{"fingerprint": fp, "data": base64.b64encode(data).decode()}], **extra}


def test_a_commit_on_one_replica_wakes_a_long_poll_on_the_other_and_409s_hold(pair):
    a, b = pair
    cursor = b.get("/me").json()["cursor"]
    answer: list[httpx.Response] = []
    poll = threading.Thread(target=lambda: answer.append(b.get("/changes", params={"cursor": cursor, "wait": 30})))
    poll.start()
    time.sleep(0.5)  # parked on b
    sent = time.monotonic()
    made = a.post("/files", json=inline("/woken.txt", b"one"))
    assert made.status_code == 200, made.text
    poll.join(30)
    took = time.monotonic() - sent
    changes = answer[0].json()["changes"]
    assert [c["node"]["name"] for c in changes] == ["woken.txt"], changes
    assert answer[0].json()["cursor"] == made.json()["cursor"] == a.get("/me").json()["cursor"]
    assert took < 5, took  # woken, not timed out (30 s)

    node_id = made.json()["node"]["id"]
    assert a.post("/files", json={**inline("/woken.txt", b"two", base_rev=1), "path": None, "node_id": node_id}
                  ).status_code == 200
    stale = b.post("/files", json={**inline("/woken.txt", b"three", base_rev=1), "path": None, "node_id": node_id})
    assert stale.status_code == 409 and stale.json()["error"] == "stale_revision", stale.text
    assert stale.json()["current_rev"] == 2


def test_group_commits_on_both_replicas_keep_one_order(pair):
    """Eight writers on each replica: all move one file forward from rev 1 (one wins,
    the rest are 409), and each creates files of its own; one journal, no seq twice,
    every create exactly once."""
    a, b = pair
    base = a.post("/files", json=inline("/contended", b"base")).json()
    node_id = base["node"]["id"]
    start_cursor = base["cursor"]
    results: list[int] = []
    barrier = threading.Barrier(16)

    def writer(api: Api, w: int) -> None:
        with Api(api.server, api.token, device=f"w{w}") as mine:
            barrier.wait(10)
            results.append(mine.post("/files", json={**inline("/x", f"w{w}".encode(), base_rev=1), "path": None,
                                                     "node_id": node_id}).status_code)
            for i in range(5):
                r = mine.post("/files", json=inline(f"/w{w}-{i}", f"{w}/{i}".encode()))
                assert r.status_code == 200, r.text

    threads = [threading.Thread(target=writer, args=(a if w % 2 else b, w)) for w in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == [200] + [409] * 15, results
    seqs, names, cursor = [], [], start_cursor
    while True:
        page = b.get("/changes", params={"cursor": cursor, "limit": 50}).json()
        seqs += [c["seq"] for c in page["changes"]]
        names += [c["node"]["name"] for c in page["changes"] if c["op"] != "delete"]
        cursor = page["cursor"]
        if not page["has_more"]:
            break
    assert seqs == sorted(set(seqs)) and len(seqs) == 81, seqs
    assert sorted(n for n in names if n != "contended") == sorted(f"w{w}-{i}" for w in range(16) for i in range(5))


def test_quota_missing_chunks_and_410_are_the_same_on_both(two_replicas: Cluster):
    token = two_replicas.add_user(f"q-{uuid.uuid4().hex[:8]}", "--quota", "100")
    first, second = two_replicas.replicas
    with Api(two_replicas.as_server(first), token) as a, Api(two_replicas.as_server(second), token) as b:
        assert a.post("/files", json=inline("/80", b"x" * 80)).status_code == 200
        over = b.post("/files", json=inline("/30", b"y" * 30))
        assert over.status_code == 507 and over.json()["used_bytes"] == 80, over.text

        ghost = "ab" * 32
        missing = b.post("/files", json={"path": "/ghost", "base_rev": 0, "size": 4, "mtime_ns": 1,
                                         "chunks": [{"fingerprint": ghost, "length": 4}]})
        assert missing.status_code == 422 and missing.json()["error"] == "missing_chunks", missing.text

        # Uploaded through replica 1's signed URL, straight to the bucket; committed on replica 2,
        # which looks in the store itself before it accepts.
        data = os.urandom(20)
        fp = hashlib.sha256(data).hexdigest()
        ticket = a.post("/uploads/prepare", json={"chunks": [{"fingerprint": fp, "length": 20}]}).json()["missing"][0]
        put = httpx.request(ticket["upload"]["method"], ticket["upload"]["url"], content=data,
                            headers=ticket["upload"].get("headers", {}))
        assert put.status_code < 300, put.text
        done = b.post("/files", json={"path": "/uploaded", "base_rev": 0, "size": 20, "mtime_ns": 1,
                                      "chunks": [{"fingerprint": fp, "length": 20}]})
        assert done.status_code == 200, done.text

        user_id = a.me["user_id"]
        db = Database(two_replicas.db_url)
        try:
            with db.write(user_id) as conn:
                assert journal.prune(conn, user_id, 1) >= 1
        finally:
            db.dispose()
        for api in (a, b):
            gone = api.get("/changes", params={"cursor": 0})
            assert gone.status_code == 410 and gone.json()["error"] == "cursor_expired", gone.text


def test_signed_urls_of_one_replica_work_on_the_other(pg_admin_url: str, tmp_path: Path):
    """Two replicas sharing a local chunk directory: a PUT signed by replica 1 is
    accepted by replica 2's /blobs route, a GET signed by 2 is served by 1: the
    signing secret lives in the database they share."""
    store = tmp_path / "chunks"
    with postgres_database(pg_admin_url) as db_url, cluster(tmp_path, db_url, str(store), 2, balancer=False) as c:
        token = c.add_user("shared")
        first, second = c.replicas
        with Api(c.as_server(first), token) as a, Api(c.as_server(second), token) as b:
            data = os.urandom(64)
            fp = hashlib.sha256(data).hexdigest()
            ticket = a.post("/uploads/prepare", json={"chunks": [{"fingerprint": fp, "length": 64}]}).json()["missing"][0]
            url = ticket["upload"]["url"].replace(first.url, second.url)
            assert url.startswith(second.url), url
            put = httpx.request(ticket["upload"]["method"], url, content=data, headers=ticket["upload"].get("headers", {}))
            assert put.status_code < 300, put.text
            made = b.post("/files", json={"path": "/f", "base_rev": 0, "size": 64, "mtime_ns": 1,
                                          "chunks": [{"fingerprint": fp, "length": 64}]})
            assert made.status_code == 200, made.text
            download = b.get(f"/files/{made.json()['node']['id']}").json()["chunks"][0]["download"]
            got = httpx.request(download["method"], download["url"].replace(second.url, first.url),
                                headers=download.get("headers", {}))
            assert got.status_code == 200 and got.content == data
            forged = download["url"].replace(second.url, first.url).replace("sig=", "sig=x")
            assert httpx.get(forged).status_code in (401, 403)
