#!/usr/bin/env python
"""Count the PostgreSQL round trips of group commits, from libpq's own protocol trace,
and what a commit costs in CPU here and in PostgreSQL.

A round trip is a wait for the server: every `Sync` or `Flush` the client sends (outside
pipeline mode each statement ends with a Sync; in pipeline mode a Flush marks each point
where a result is needed). Unlike commits/s, the count does not depend on how busy the
machine is, so it compares code before and after a change exactly. Measured in this
process on the writer (server/writer.py) with the real commit jobs (server/commits.py):
batches of 1 and of 8 inline commits of new files, and of revisions.

Then, untraced, the same batches again many times: wall time per commit, this
process's CPU per commit (the writer's side: SQLAlchemy, psycopg, the jobs), and the
CPU of the PostgreSQL backends it used (from /proc; run as root on the database's
machine). The wall time is over loopback, where a round trip costs ~0.05 ms; across a
network each round trip saved is worth its RTT, so the script also prints what the
counted round trips cost at `--rtt-ms` (computed, not measured).

To compare with older code, run this file from an export of that commit whose
`cloudfs/` holds links to its `server`, `backend` and `fs`, so those are imported:

    .venv/bin/python scripts/bench_pg_round_trips.py [--db ADMIN_URL] [--rounds N] [--rtt-ms MS]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cloudfs.backend.protocol import wire  # noqa: E402
from cloudfs.server import commits, files  # noqa: E402
from cloudfs.server.db import Database, open_database, users  # noqa: E402
from cloudfs.server.notifier import ChangeNotifier  # noqa: E402
from cloudfs.server.users import add_user  # noqa: E402
from cloudfs.server.writer import Writer  # noqa: E402
from tests.harness import postgres_database  # noqa: E402


class Traced:
    """Every connection the engine hands out writes libpq's trace into one file."""

    def __init__(self, db: Database, path: Path) -> None:
        self.path = path
        self.file = open(path, "w")
        sa.event.listen(db.engine, "checkout", self._checkout)
        sa.event.listen(db.engine, "checkin", self._checkin)

        self.on = True
        self.backends: set[int] = set()

    def _checkout(self, dbapi_conn, _record, _proxy) -> None:  # noqa: ANN001
        self.backends.add(dbapi_conn.info.backend_pid)
        if self.on:
            dbapi_conn.pgconn.trace(self.file.fileno())

    def _checkin(self, dbapi_conn, _record) -> None:  # noqa: ANN001
        if self.on:
            dbapi_conn.pgconn.untrace()

    def syncs(self) -> int:
        self.file.flush()
        return sum(1 for line in self.path.read_text().splitlines() if "\tF\t" in line and ("\tSync" in line or "\tFlush" in line))


def request(name: str, data: bytes, node_id: int | None = None, base_rev: int = 0) -> tuple[wire.CommitRequest, list]:
    fp = hashlib.sha256(data).hexdigest()
    req = wire.CommitRequest.model_validate({
        **({"node_id": node_id} if node_id else {"path": f"/{name}"}), "base_rev": base_rev, "size": len(data),
        "mtime_ns": 1, "chunks": [{"fingerprint": fp, "length": len(data)}]})
    return req, [files.Stored(fp, len(data), len(data), fp, "none")]


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(db: Database, traced: Traced, owner: int, root: int, batch: int, label: str,
                  revise: dict[str, list[int]] | None, rounds: int = 5) -> tuple[float, float, float, float]:
    """Per commit, over `rounds` rounds of `batch` commits submitted together (the first
    of a round is written alone, the others queue behind it and form a batch): round
    trips, wall seconds, this process's CPU seconds, the PostgreSQL backends' CPU
    seconds. `revise`: name -> [node id, rev] of the files to move forward instead."""
    writer = Writer(db, ChangeNotifier())
    before = traced.syncs()
    backends = sorted(traced.backends)
    pg0 = sum(cpu_s(pid) for pid in backends)
    cpu0, t0 = time.process_time(), time.perf_counter()
    for r in range(rounds):
        jobs = []
        for i in range(batch):
            name = f"{label}-{r}-{i}" if revise is None else f"rev-{i}"
            data = os.urandom(32)
            if revise is None:
                req, stored = request(name, data)
            else:
                req, stored = request(name, data, node_id=revise[name][0], base_rev=revise[name][1])
                revise[name][1] += 1
            jobs.append((req, stored))

        async with anyio.create_task_group() as tg:
            for req, stored in jobs:
                tg.start_soon(lambda q=req, s=stored: writer.submit(owner, commits.stored_then_commit, owner, root, q,
                                                                    "bench", s))
                await anyio.sleep(0)
    n = rounds * batch
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if sorted(traced.backends) != backends:  # a new connection: its earlier CPU is not ours to count
        return (traced.syncs() - before) / n, wall / n, cpu / n, float("nan")
    return (traced.syncs() - before) / n, wall / n, cpu / n, (sum(cpu_s(pid) for pid in backends) - pg0) / n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", help="PostgreSQL admin URL (default: scripts/postgres.sh's)")
    parser.add_argument("--rounds", type=int, default=60, help="timed rounds per batch size (default 60)")
    parser.add_argument("--rtt-ms", type=float, default=0.5, help="a network round trip to price the counts at")
    args = parser.parse_args(argv)
    admin = args.db or os.environ.get("CLOUDFS_TEST_PG") or subprocess.run(
        ["bash", str(REPO / "scripts" / "postgres.sh")], capture_output=True, text=True, check=True
    ).stdout.strip().splitlines()[-1]
    with postgres_database(admin) as url, tempfile.TemporaryDirectory() as tmp:
        db = open_database(Path(tmp), url)
        try:
            add_user(db, "rt")
            with db.read() as conn:
                owner, root = conn.execute(sa.select(users.c.id, users.c.root_id)).one()
            traced = Traced(db, Path(tmp) / "trace")
            # one file per batch slot, to revise
            writer = Writer(db, ChangeNotifier())
            revise: dict[str, list[int]] = {}

            async def seed() -> None:
                for i in range(8):
                    req, stored = request(f"rev-{i}", b"seed")
                    answer = await writer.submit(owner, commits.stored_then_commit, owner, root, req, "bench", stored)
                    revise[f"rev-{i}"] = [answer.node.id, 1]
            anyio.run(seed)
            configs = [("new files", b, None) for b in (1, 8)] + [("revisions", b, revise) for b in (1, 8)]

            passes = iter(range(1000))

            def run(rounds: int) -> list[tuple[float, float, float, float]]:
                out, n = [], next(passes)
                for what, batch, files_ in configs:
                    mine = None if files_ is None else {k: v for k, v in files_.items() if int(k.split("-")[1]) < batch}
                    out.append(anyio.run(measure, db, traced, owner, root, batch, f"{what[:3]}{batch}-p{n}", mine,
                                         rounds))
                return out

            counted = run(5)
            traced.on = False
            run(3)  # warm: every connection of the pool has run every statement
            timed = run(args.rounds)
            print("Inline 1-chunk commits through the writer; per commit:")
            print(f"  {'':32} {'round trips':>11} {'wall ms':>8} {'client CPU ms':>13} {'PostgreSQL CPU ms':>17} "
                  f"{f'round trips at {args.rtt_ms:g} ms RTT':>24}")
            for (what, batch, _), (trips, *_), (_, wall, cpu, pg) in zip(configs, counted, timed):
                print(f"  {what + f', {batch} submitted together':32} {trips:11.2f} {wall * 1000:8.2f} {cpu * 1000:13.2f} "
                      f"{pg * 1000:17.2f} {trips * args.rtt_ms:21.2f} ms")
        finally:
            db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
