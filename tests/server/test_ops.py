"""What an operator sees (server/ops.py): request ids, /metrics, /ready, JSON logs,
and the device logging the request id of a request that failed. Real server
processes; the store that goes away is a moto server of the test's own."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
import trio

from cloudfs.backend.protocol.api_client import ApiClient
from cloudfs.backend.errors import OfflineError, ServerError
from tests.conftest import Api
from tests.harness import cloudfs_server, moto_server, postgres_database, wait_until
from tests.server.helpers import metric as _metric


def _inline_commit(path: str, data: bytes) -> dict:
    fp = hashlib.sha256(data).hexdigest()
    return {"path": path, "base_rev": 0, "size": len(data), "mtime_ns": 1,
            "chunks": [{"fingerprint": fp, "length": len(data)}],
            "inline": [{"fingerprint": fp, "data": base64.b64encode(data).decode()}]}


def test_request_ids_are_returned_and_logged(server, alice):
    mine = f"test-{uuid.uuid4().hex[:8]}"
    r = alice.get("/me", headers={"X-Request-Id": mine})
    assert r.headers["x-request-id"] == mine
    made = alice.post("/dirs", json={"parent_id": alice.root_id, "name": f"d-{mine}"})
    generated = made.headers["x-request-id"]
    assert generated and generated != mine
    weird = alice.get("/me", headers={"X-Request-Id": "no spaces\tor tabs" + "x" * 200})
    assert weird.headers["x-request-id"] != "no spaces\tor tabs" + "x" * 200  # replaced, never echoed
    wait_until(lambda: f"[{generated}]" in server.log() and '"POST /dirs" 201' in server.log(),
               timeout=10, what="the access-log line with the request id")


def test_metrics_count_requests_commits_and_held_long_polls(server, alice):
    before = httpx.get(server.url + "/metrics").text
    assert alice.post("/files", json=_inline_commit(f"/m-{uuid.uuid4().hex[:6]}", b"metered")).status_code == 200
    cursor = alice.get("/me").json()["cursor"]
    answered: list[int] = []

    def long_poll() -> None:
        with Api(server, alice.token) as other:
            answered.append(other.get("/changes", params={"cursor": cursor, "wait": 20}).status_code)

    poller = threading.Thread(target=long_poll)
    poller.start()
    try:
        text = wait_until(lambda: (t := httpx.get(server.url + "/metrics").text)
                          and _metric(t, "cloudfs_long_polls_held") >= 1 and t, timeout=15, what="a held long-poll")
    finally:
        alice.post("/dirs", json={"parent_id": alice.root_id, "name": f"wake-{uuid.uuid4().hex[:6]}"})
        poller.join(30)
    assert answered == [200]
    assert _metric(text, "cloudfs_commits_total") >= _metric(before, "cloudfs_commits_total") + 1
    assert _metric(text, "cloudfs_commit_batches_total") >= 1
    assert _metric(text, "cloudfs_http_requests_total", method="POST", route="/files", status="200") >= 1
    assert _metric(text, "cloudfs_http_request_seconds_count", method="GET", route="/me") >= 1
    assert _metric(text, "process_resident_memory_bytes") > 10 * 2**20
    after = httpx.get(server.url + "/metrics").text
    assert _metric(after, "cloudfs_long_polls_held") == 0
    assert 'route="/nodes/{node_id}"' in after or "/nodes/" not in after  # templates, never raw ids


def test_ready_and_device_request_ids_when_the_store_goes_away(pg_admin_url, tmp_path: Path, caplog):
    """/ready is 200 with both reachable, 503 naming the store once its S3 is gone and
    the database once it is gone; /health stays 200 (the process is alive). A commit
    that fails with 503 meanwhile is logged by the device with the request id that
    the server logged too."""

    with contextlib.ExitStack() as stack:
        db_url = stack.enter_context(postgres_database(pg_admin_url))
        moto_cm = moto_server()
        moto = moto_cm.__enter__()
        try:
            store = f"s3://ready-{uuid.uuid4().hex[:8]}?endpoint={moto}&region=us-east-1"
            srv = stack.enter_context(cloudfs_server(tmp_path, db_url=db_url, store_url=store))
            token = srv.add_user("ops")
            assert httpx.get(srv.url + "/ready").json() == {"status": "ready"}
        finally:
            moto_cm.__exit__(None, None, None)  # the store goes away, the server stays
        r = wait_until(lambda: (r := httpx.get(srv.url + "/ready", timeout=10)).status_code == 503 and r,
                       timeout=30, what="/ready to notice the store is gone")
        assert "store" in r.json()["problems"], r.text
        assert httpx.get(srv.url + "/health").status_code == 200

        async def commit() -> None:
            async with ApiClient(srv.url, token, device="ops-dev") as client:
                # 503 first; the quick retry may time out instead while boto3 retries the dead S3
                with pytest.raises((ServerError, OfflineError)):
                    await client.request_json("POST", "/files", json=_inline_commit("/x", b"lost store"))

        with caplog.at_level(logging.WARNING, logger="cloudfs.api"):
            trio.run(commit)
        ids = [r.getMessage().split("request id ", 1)[1].split(")", 1)[0]
               for r in caplog.records if "POST /files" in r.getMessage() and "503 store_unavailable" in r.getMessage()]
        assert ids, caplog.text
        wait_until(lambda: all(f"[{rid}]" in srv.log() for rid in ids), timeout=10,
                   what="the device's request ids in the server log")
        metrics = httpx.get(srv.url + "/metrics").text
        assert _metric(metrics, "cloudfs_store_errors_total", kind="StoreUnavailable") \
            + _metric(metrics, "cloudfs_store_errors_total", kind="TransientError") >= 1, metrics

        with psycopg_connect(pg_admin_url) as admin:
            admin.execute(f'DROP DATABASE "{db_url.rsplit("/", 1)[1]}" WITH (FORCE)')
        r = wait_until(lambda: (r := httpx.get(srv.url + "/ready", timeout=10)).status_code == 503
                       and "database" in r.json()["problems"] and r, timeout=30, what="/ready to notice the database is gone")


def psycopg_connect(url: str):  # noqa: ANN201
    import psycopg

    return psycopg.connect(url, autocommit=True)


def test_json_logs_carry_the_request_id(tmp_path: Path):
    with cloudfs_server(tmp_path, extra_args=["--log-format", "json"]) as srv:
        r = httpx.get(srv.url + "/nodes", headers={"X-Request-Id": "json-log-1"})
        assert r.status_code == 401

        def line() -> dict | None:
            for text in srv.log().splitlines():
                if text.startswith("{") and '"json-log-1"' in text:
                    return json.loads(text)
            return None
        entry = wait_until(line, timeout=10, what="a JSON access-log line")
    assert entry["request_id"] == "json-log-1" and entry["status"] == 401 and entry["path"] == "/nodes"
    assert entry["level"] == "INFO" and entry["logger"] == "cloudfs.access"
    assert all(text.startswith("{") for text in srv.log().splitlines() if text.strip()), srv.log()[-2000:]


def test_the_connection_pool_is_bounded(pg_admin_url, tmp_path: Path):
    """`--db-pool 3`: 40 requests at once never have the server hold more than three
    connections to its database, plus the one that LISTENs (the server's own: `user add`
    may still be leaving when the burst begins)."""
    import psycopg

    with postgres_database(pg_admin_url) as db_url, \
            cloudfs_server(tmp_path, db_url=db_url, extra_args=["--db-pool", "3"]) as srv:
        token = srv.add_user("pool")
        name = db_url.rsplit("/", 1)[1]
        peak = 0
        stop = threading.Event()

        def watch() -> None:
            nonlocal peak
            with psycopg.connect(pg_admin_url, autocommit=True) as admin:
                while not stop.is_set():
                    n = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                                      " AND application_name = 'cloudfs server'", (name,)).fetchone()[0]
                    peak = max(peak, n)
                    time.sleep(0.01)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            def burst(i: int) -> int:
                with Api(srv, token) as api:
                    return api.post("/files", json=_inline_commit(f"/p{i}", f"pool {i}".encode())).status_code \
                        + api.get("/nodes").status_code
            with concurrent.futures.ThreadPoolExecutor(40) as pool:
                assert set(pool.map(burst, range(40))) == {400}
        finally:
            stop.set()
            watcher.join(10)
        assert 1 < peak <= 4, peak
