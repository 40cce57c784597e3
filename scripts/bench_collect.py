#!/usr/bin/env python3
"""Collector throughput: chunks examined and deleted per second on a store of many chunks.

Builds an account with N chunks (default 100,000), half of them named by versions of
live files and half by versions of files deleted long ago, straight into the database
and the store (the upload path is what other benchmarks measure), then times one pass
of the collector (server/retention.py) a month later: the deleted files' history is
purged and their chunks are deleted from the store, the live ones are kept. Prints the
figures; exit 1 if a kept chunk went missing or a purged one stayed.

    scripts/bench_collect.py [--chunks N] [--db postgresql://...] [--store DIR | s3://...]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cloudfs.backend.stores.store import chunk_key, open_store  # noqa: E402
from cloudfs.server.db import Database, chunks, nodes, version_chunks, versions  # noqa: E402
from cloudfs.server.retention import collect  # noqa: E402
from cloudfs.server.users import add_user  # noqa: E402

MONTH_S = 31 * 86_400
PER_FILE = 10


def populate(db: Database, store, count: int) -> tuple[int, list[str], list[str]]:  # noqa: ANN001
    add_user(db, "collector-bench")
    with db.read() as conn:
        owner, root = conn.execute(sa.text("SELECT id, root_id FROM users WHERE name = 'collector-bench'")).one()
    long_ago = time.time() - 2 * MONTH_S
    kept, doomed = [], []
    started = time.monotonic()
    with db.write(owner) as conn:
        for start in range(0, count, PER_FILE):
            fps = [hashlib.sha256(f"{start + i}".encode()).hexdigest() for i in range(min(PER_FILE, count - start))]
            live = (start // PER_FILE) % 2 == 0
            node_id = conn.execute(nodes.insert().values(
                owner_id=owner, parent_id=root, name=f"f{start}", kind="file", mode=0o644, mtime_ns=1, size=len(fps),
                rev=1, deleted=not live, deleted_at=None if live else long_ago)).inserted_primary_key[0]
            version_id = conn.execute(versions.insert().values(
                node_id=node_id, rev=1, size=len(fps), mtime_ns=1, device="bench", created_at=long_ago
            )).inserted_primary_key[0]
            conn.execute(version_chunks.insert(), [dict(version_id=version_id, idx=i, fingerprint=fp, length=1)
                                                   for i, fp in enumerate(fps)])
            conn.execute(chunks.insert(), [dict(owner_id=owner, fingerprint=fp, length=1, stored_length=1,
                                                stored_sha256=fp, compression="none", state="verified",
                                                created_at=long_ago) for fp in fps])
            (kept if live else doomed).extend(fps)
    keys = [chunk_key(owner, fp) for fp in kept + doomed]
    root = getattr(store, "root", None)
    if root is not None:  # the local store: plain files, without the fsync each upload pays
        for key in keys:
            path = Path(root) / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
    else:
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda key: store.put(key, b"x"), keys))
    print(f"populated {count} chunks ({len(doomed)} of deleted files) in {time.monotonic() - started:.1f}s")
    return owner, kept, doomed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--db", help="database URL (default: a SQLite file in a temporary directory)")
    parser.add_argument("--store", help="chunk store (default: a temporary directory)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-collect-") as tmp:
        db = Database(args.db or str(Path(tmp) / "db.sqlite3"))
        db.upgrade_schema()
        store = open_store(args.store or str(Path(tmp) / "chunks"), data_dir=Path(tmp), secret=os.urandom(32))
        owner, kept, doomed = populate(db, store, args.chunks)
        result = collect(db, store, retain_days=30)
        missing = [fp for fp in kept[:: max(1, len(kept) // 1000)] if not _exists(store, owner, fp)]
        stayed = [fp for fp in doomed[:: max(1, len(doomed) // 1000)] if _exists(store, owner, fp)]
        print(f"machine: {platform.node()} {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M')}; "
              f"{'PostgreSQL' if args.db else 'SQLite'}, {'S3' if (args.store or '').startswith('s3') else 'local store'}")
        print(f"collector: {result}")
        print(f"  examined {result.chunks_examined / result.seconds:,.0f} chunks/s, "
              f"deleted {result.chunks_deleted / result.seconds:,.0f} chunks/s")
        db.dispose()
        if missing or stayed or result.chunks_deleted != len(doomed):
            print(f"WRONG: {len(missing)} kept chunk(s) missing, {len(stayed)} purged chunk(s) left, "
                  f"{result.chunks_deleted} deleted of {len(doomed)}")
            return 1
    return 0


def _exists(store, owner: int, fp: str) -> bool:  # noqa: ANN001
    try:
        store.head(chunk_key(owner, fp))
        return True
    except Exception:  # noqa: BLE001 - NoSuchKeyError and friends: not there
        return False


if __name__ == "__main__":
    sys.exit(main())
