"""`cloudfs user add` and `cloudfs server` as a user runs them."""

from __future__ import annotations

import re
import subprocess
import time

import httpx
import sqlalchemy as sa

from cloudfs.server.db import Database
from tests.harness import CLOUDFS, cloudfs_server, wait_until


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLOUDFS, *args], capture_output=True, text=True, timeout=60)


def test_user_add_prints_token_last_and_stores_only_its_hash(tmp_path):
    out = run("user", "add", "carol", "--data", str(tmp_path))
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip().splitlines()[-1]
    assert token.startswith("cfs_") and len(token) > 40
    db = Database(str(tmp_path / "cloudfs.sqlite3"))
    with db.read() as conn:
        stored = [r[0] for r in conn.execute(sa.text("select token_hash from tokens"))]
    db.dispose()
    assert token not in stored and len(stored) == 1
    assert token.encode() not in (tmp_path / "cloudfs.sqlite3").read_bytes()


def test_user_add_twice_fails_clearly(tmp_path):
    assert run("user", "add", "dave", "--data", str(tmp_path)).returncode == 0
    again = run("user", "add", "dave", "--data", str(tmp_path))
    assert again.returncode != 0 and "already exists" in again.stderr


def test_user_add_rejects_bad_names(tmp_path):
    bad = run("user", "add", "no/slashes", "--data", str(tmp_path))
    assert bad.returncode != 0 and "user name" in bad.stderr


def test_server_logs_one_line_per_request_but_not_per_heartbeat(server, alice):
    alice.get("/health")
    alice.get("/changes", params={"cursor": alice.get("/me").json()["cursor"]})  # an idle long-poll's answer
    alice.get("/nodes/999999999")
    wait_until(lambda: '"GET /nodes/999999999' in server.log(), timeout=5, what="access log line")
    lines = [line for line in server.log().splitlines() if "cloudfs.access" in line]
    assert any('"GET /nodes/999999999' in line and " 404 " in line for line in lines)
    assert not any('"GET /health' in line or '"GET /changes' in line for line in lines)


def test_quiet_requests_are_counted_and_shown_at_debug(tmp_path):
    with cloudfs_server(tmp_path, extra_args=["--log-level", "debug", "--quiet-summary", "0.2"]) as srv:
        for _ in range(3):
            httpx.get(srv.url + "/health")
        time.sleep(0.3)
        httpx.get(srv.url + "/health")
        wait_until(lambda: "heartbeats" in srv.log(), timeout=5, what="the summary line")
        assert srv.log().count('"GET /health" 200') >= 4  # debug: each one too
        counted = [int(n) for n in re.findall(r"in the last 0 s: (\d+) heartbeats, 0 idle long-polls", srv.log())]
        assert sum(counted) >= 3 and counted[-1] >= 1
