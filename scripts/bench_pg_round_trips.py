#!/usr/bin/env python
"""Count the PostgreSQL round trips of group commits, from libpq's own protocol trace.

A round trip is a wait for the server: every `Sync` or `Flush` the client sends (outside
pipeline mode each statement ends with a Sync; in pipeline mode a Flush marks each point
where a result is needed). Unlike commits/s, the count does not depend on how busy the
machine is, so it compares code before and after a change exactly. Measured in this
process on the writer (server/writer.py) with the real commit jobs (server/commits.py):
batches of 1 and of 8 inline commits of new files, and of revisions.

    .venv/bin/python scripts/bench_pg_round_trips.py [--db ADMIN_URL]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import anyio
import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cloudfs.backend import wire  # noqa: E402
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

    def _checkout(self, dbapi_conn, _record, _proxy) -> None:  # noqa: ANN001
        dbapi_conn.pgconn.trace(self.file.fileno())

    def _checkin(self, dbapi_conn, _record) -> None:  # noqa: ANN001
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


async def measure(db: Database, traced: Traced, owner: int, root: int, batch: int, label: str,
                  revise: dict[str, list[int]] | None) -> float:
    """Round trips per commit over 5 rounds of `batch` commits submitted together (the
    first of a round is written alone, the others queue behind it and form a batch);
    `revise`: name -> [node id, rev] of the files to move forward instead."""
    writer = Writer(db, ChangeNotifier())
    before = traced.syncs()
    rounds = 5
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
    return (traced.syncs() - before) / (rounds * batch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", help="PostgreSQL admin URL (default: scripts/postgres.sh's)")
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
            print("PostgreSQL round trips per commit (libpq Sync and Flush messages), inline 1-chunk commits:")
            for batch in (1, 8):
                new = anyio.run(measure, db, traced, owner, root, batch, f"new{batch}", None)
                print(f"  new files, {batch} submitted together: {new:.2f}")
            for batch in (1, 8):
                rev = anyio.run(measure, db, traced, owner, root, batch, "rev",
                                {k: v for k, v in revise.items() if int(k.split("-")[1]) < batch})
                print(f"  revisions, {batch} submitted together: {rev:.2f}")
        finally:
            db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
