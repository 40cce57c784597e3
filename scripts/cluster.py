#!/usr/bin/env python
"""Start or stop a cloudfs cluster on this machine: the S3 stand-in (moto server), N
`cloudfs server` replicas on one PostgreSQL database and one bucket, and HAProxy in
front. Called by scripts/cluster.sh, which installs what is needed and starts
PostgreSQL first.

    cluster.py up N --pg ADMIN_URL   # prints the balancer's URL on its last line
    cluster.py down                  # stops what `up` started, drops its database

Every process is started in a session of its own, so it outlives this script; their
pids, ports and URLs are kept in STATE/cluster.json (STATE: $CLOUDFS_CLUSTER_DIR, or
/tmp/cloudfs-cluster), their logs beside it. The bucket lives in moto's memory, so
`down` also drops the database: a cluster starts empty each time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.cluster.harness import DRAIN_S, HAPROXY, balancer_maxconn, haproxy_config  # noqa: E402
from tests.harness import BIN, CLOUDFS, S3_ENV, free_port, wait_until  # noqa: E402

STATE = Path(os.environ.get("CLOUDFS_CLUSTER_DIR", "/tmp/cloudfs-cluster"))
DB_NAME = os.environ.get("CLOUDFS_CLUSTER_DB", "cloudfs_cluster")


def _spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, **(env or {})})


def up(n: int, pg_admin: str) -> int:
    if (STATE / "cluster.json").exists():
        print(f"cluster.sh up: a cluster is already up ({STATE / 'cluster.json'}): run scripts/cluster.sh down first",
              file=sys.stderr)
        return 1
    STATE.mkdir(parents=True, exist_ok=True)
    state: dict = {"pids": {}, "replicas": {}}
    try:
        with psycopg.connect(pg_admin, autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone():
                conn.execute(f'CREATE DATABASE "{DB_NAME}"')
        db_url = state["db_url"] = pg_admin.rsplit("/", 1)[0] + "/" + DB_NAME
        state["pg_admin"] = pg_admin

        moto_port = free_port()
        moto = _spawn([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(moto_port)], STATE / "moto.log", S3_ENV)
        state["pids"]["moto"] = moto.pid
        moto_url = state["moto_url"] = f"http://127.0.0.1:{moto_port}"
        _save(state)
        wait_until(lambda: httpx.get(moto_url + "/moto-api/", timeout=1).status_code < 500, timeout=30,
                   what="moto server", proc=moto)
        store = state["store_url"] = f"s3://cloudfs?endpoint={moto_url}&region=us-east-1"

        # One replica first: it migrates the schema; the others then start at once.
        for i in range(n):
            name, port = f"r{i + 1}", free_port()
            data = STATE / name
            data.mkdir(exist_ok=True)
            proc = _spawn([*CLOUDFS, "server", "--data", str(data), "--port", str(port), "--db", db_url,
                           "--store", store, "--drain", str(DRAIN_S)], STATE / f"{name}.log", S3_ENV)
            state["pids"][name] = proc.pid
            state["replicas"][name] = f"http://127.0.0.1:{port}"
            _save(state)
            if i == 0:
                _ready(state["replicas"][name], proc)
        for name, url in state["replicas"].items():
            _ready(url, None)

        port, stats = free_port(), free_port()
        cfg = STATE / "haproxy.cfg"
        cfg.write_text(haproxy_config(port, [(name, int(url.rsplit(":", 1)[1])) for name, url in state["replicas"].items()],
                                      stats_port=stats, maxconn=balancer_maxconn(9000)))
        balancer = _spawn([HAPROXY, "-f", str(cfg), "-db"], STATE / "haproxy.log")
        state["pids"]["haproxy"] = balancer.pid
        state["url"], state["stats_url"] = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{stats}/stats"
        _save(state)
        wait_until(lambda: httpx.get(state["url"] + "/ready", timeout=2).status_code == 200, timeout=30,
                   what="the balancer", proc=balancer)
    except BaseException as exc:
        print(f"cluster.sh up: {exc}; stopping what was started (logs in {STATE})", file=sys.stderr)
        down()
        return 1
    print(f"cluster: {n} replicas ({', '.join(state['replicas'].values())}), PostgreSQL {DB_NAME}, "
          f"S3 {moto_url}, HAProxy stats {state['stats_url']}; logs in {STATE}")
    print(f"add a user:  .venv/bin/cloudfs user add NAME --db {db_url}")
    print(f"mount:       .venv/bin/cloudfs mount {state['url']} MOUNTPOINT --token TOKEN")
    print(state["url"])
    return 0


def _ready(url: str, proc: subprocess.Popen | None) -> None:
    wait_until(lambda: httpx.get(url + "/ready", timeout=2).status_code == 200, timeout=60, what=f"replica {url}",
               proc=proc, interval=0.2)


def _save(state: dict) -> None:
    (STATE / "cluster.json").write_text(json.dumps(state, indent=1))


def down() -> int:
    path = STATE / "cluster.json"
    if not path.exists():
        print(f"cluster.sh down: no cluster is up ({path} does not exist)", file=sys.stderr)
        return 0
    state = json.loads(path.read_text())
    pids = state.get("pids", {})
    replicas = sorted(k for k in pids if k.startswith("r"))
    for group in (["haproxy"], replicas, ["moto"]):  # replicas drain together
        _terminate([pids[name] for name in group if name in pids])
    if state.get("pg_admin"):
        try:
            with psycopg.connect(state["pg_admin"], autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        except psycopg.Error as exc:
            print(f"cluster.sh down: could not drop the database {DB_NAME}: {exc}", file=sys.stderr)
    shutil.rmtree(STATE, ignore_errors=True)
    print(f"cluster: stopped {', '.join(pids)}")
    return 0


def _terminate(pids: list[int], timeout: float = 15) -> None:
    """SIGTERM (a replica drains, then exits), SIGKILL what is left after `timeout`."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(_gone(pid) for pid in pids):
        time.sleep(0.1)
    for pid in pids:
        if not _gone(pid):
            os.kill(pid, signal.SIGKILL)


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    start = verbs.add_parser("up")
    start.add_argument("n", type=int, nargs="?", default=3)
    start.add_argument("--pg", required=True, help="PostgreSQL admin URL (scripts/postgres.sh prints it)")
    verbs.add_parser("down")
    args = parser.parse_args(argv)
    if args.verb == "up":
        if not 1 <= args.n <= 16:
            parser.error("N: from 1 to 16 replicas")
        return up(args.n, args.pg)
    return down()


if __name__ == "__main__":
    sys.exit(main())
