"""The collector: old history is purged after the retention period, then every chunk no
retained version names is deleted from the store.

What is kept: every live node; a tombstone for `retain` after its delete; every
version that was current at some moment within `retain` (a version is purged once the
one after it is older than the period, so `restore --at` any moment in the period finds
what it needs). The period is the server's `--retain-days`, or the account's own.

Collecting chunks is safe while devices upload. A chunk is a candidate when no version
of its owner names it and it is not an upload in flight (a `pending` chunk younger than
UPLOAD_GRACE_S: its signed PUT URL may still be used). In one transaction, serialised
with the owner's commits, candidates become `purging`; from then on nothing can take
them back: a commit naming one is told the chunk is missing (422), a prepare asking for
one is told to come back (503) until the collector is done. Only then are the objects
deleted, then the rows. A crash half way leaves `purging` rows, which the next run
finishes first: collection resumes.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import anyio
import sqlalchemy as sa

from cloudfs.backend.stores.store import DELETE_BATCH, ObjectStore, chunk_key

from . import history
from .db import Database, chunks, namespaces, nodes, users, version_chunks, versions

log = logging.getLogger("cloudfs.retention")

DAY_S = 86_400.0
UPLOAD_GRACE_S = 2 * DAY_S
"""Longer than a signed PUT URL lives (files.URL_TTL) by a wide margin."""
BATCH = 1000
DELETERS = 8


@dataclass
class Collected:
    versions: int = 0
    nodes: int = 0
    chunks_examined: int = 0
    chunks_deleted: int = 0
    bytes_deleted: int = 0
    seconds: float = 0.0
    owners: list[int] = field(default_factory=list)

    def __str__(self) -> str:
        return (f"purged {self.versions} old version(s) and {self.nodes} deleted node(s); examined "
                f"{self.chunks_examined} chunk(s), deleted {self.chunks_deleted} ({self.bytes_deleted} bytes) "
                f"in {self.seconds:.2f}s")


def retain_seconds(db: Database, owner_id: int, default_days: float) -> float:
    """The retention period of a namespace: its owner's (a shared folder's is its owner's)."""
    with db.read() as conn:
        days = conn.execute(sa.select(users.c.retain_days).join(namespaces, namespaces.c.owner_id == users.c.id)
                            .where(namespaces.c.id == owner_id)).scalar()
    return (days if days is not None else default_days) * DAY_S


def purge_history(db: Database, owner_id: int, cutoff: float) -> tuple[int, int]:
    """Tombstones deleted before `cutoff`, and versions superseded before it."""
    with db.write(owner_id) as conn:
        doomed = list(conn.execute(sa.select(nodes.c.id).where(
            nodes.c.owner_id == owner_id, nodes.c.deleted == sa.true(),
            sa.func.coalesce(nodes.c.deleted_at, 0.0) < cutoff)).scalars())
        history.purge(conn, owner_id, doomed)
        later = versions.alias("later")
        superseded = (sa.select(versions.c.id)
                      .join(nodes, nodes.c.id == versions.c.node_id)
                      .join(later, sa.and_(later.c.node_id == versions.c.node_id, later.c.rev == versions.c.rev + 1))
                      .where(nodes.c.owner_id == owner_id, versions.c.rev < nodes.c.rev, later.c.created_at < cutoff))
        old = list(conn.execute(superseded).scalars())
        for start in range(0, len(old), BATCH):
            batch = old[start:start + BATCH]
            conn.execute(version_chunks.delete().where(version_chunks.c.version_id.in_(batch)))
            conn.execute(versions.delete().where(versions.c.id.in_(batch)))
    return len(old), len(doomed)


def _referenced(owner_id: int) -> sa.Exists:
    return (sa.select(version_chunks.c.fingerprint)
            .join(versions, versions.c.id == version_chunks.c.version_id)
            .join(nodes, nodes.c.id == versions.c.node_id)
            .where(nodes.c.owner_id == owner_id, version_chunks.c.fingerprint == chunks.c.fingerprint)
            .exists())


def mark_unreferenced(db: Database, owner_id: int, now: float) -> tuple[int, int]:
    """Turn candidates into `purging` (one transaction); returns (examined, marked)."""
    with db.write(owner_id) as conn:
        examined = conn.execute(sa.select(sa.func.count()).where(chunks.c.owner_id == owner_id)).scalar() or 0
        candidates = sa.select(chunks.c.fingerprint).where(
            chunks.c.owner_id == owner_id, chunks.c.state != "purging",
            sa.or_(chunks.c.state != "pending", chunks.c.created_at < now - UPLOAD_GRACE_S),
            ~_referenced(owner_id))
        marked = conn.execute(chunks.update().where(chunks.c.owner_id == owner_id,
                                                    chunks.c.fingerprint.in_(candidates)).values(state="purging")).rowcount
    return int(examined), int(marked or 0)


def delete_purging(db: Database, store: ObjectStore, owner_id: int) -> tuple[int, int]:
    """Delete the objects of `purging` chunks, then their rows; (chunks, bytes)."""
    deleted = freed = 0
    while True:
        with db.read() as conn:
            rows = conn.execute(sa.select(chunks.c.fingerprint, chunks.c.stored_length, chunks.c.store_ns).where(
                chunks.c.owner_id == owner_id, chunks.c.state == "purging").limit(DELETE_BATCH)).all()
            # An object another namespace's row points at stays (a shared folder's chunk):
            # only the row goes. Rows are given from verified rows only, never purging ones.
            kept = {fp for fp, _, store_ns in rows if _pointed_at(conn, owner_id, store_ns or owner_id, fp)}
        if not rows:
            return deleted, freed
        keys = [chunk_key(store_ns or owner_id, fp) for fp, _, store_ns in rows  # idempotent: a crashed run's too
                if fp not in kept]
        with ThreadPoolExecutor(DELETERS) as pool:  # a local store's unlinks wait on the disk, not the GIL
            list(pool.map(store.delete_many, [keys[i::DELETERS] for i in range(DELETERS)]))
        freed += sum(stored_length for fp, stored_length, _ in rows if fp not in kept)
        with db.write(owner_id) as conn:
            conn.execute(chunks.delete().where(chunks.c.owner_id == owner_id, chunks.c.state == "purging",
                                               chunks.c.fingerprint.in_([r[0] for r in rows])))
        deleted += len(rows)


def _pointed_at(conn: sa.Connection, owner_id: int, store_ns: int, fingerprint: str) -> bool:
    """Does a row of another namespace point at the object (`store_ns`, `fingerprint`)?"""
    return conn.execute(sa.select(chunks.c.owner_id).where(
        chunks.c.fingerprint == fingerprint, chunks.c.owner_id != owner_id,
        sa.or_(chunks.c.store_ns == store_ns, sa.and_(chunks.c.store_ns.is_(None), chunks.c.owner_id == store_ns)),
    ).limit(1)).first() is not None


def collect(db: Database, store: ObjectStore, *, retain_days: float, now: float | None = None) -> Collected:
    """One pass over every namespace (accounts' trees and shared folders). Blocking: run
    it in a worker thread."""
    started = time.monotonic()
    now = time.time() if now is None else now
    result = Collected()
    with db.read() as conn:
        owner_ids = list(conn.execute(sa.select(namespaces.c.id).order_by(namespaces.c.id)).scalars())
    for owner_id in owner_ids:
        v, n = purge_history(db, owner_id, now - retain_seconds(db, owner_id, retain_days))
        deleted, freed = delete_purging(db, store, owner_id)  # what a crashed run left
        examined, _ = mark_unreferenced(db, owner_id, now)
        more, more_freed = delete_purging(db, store, owner_id)
        result.versions += v
        result.nodes += n
        result.chunks_examined += examined
        result.chunks_deleted += deleted + more
        result.bytes_deleted += freed + more_freed
    result.seconds = time.monotonic() - started
    return result


async def collect_forever(db: Database, store: ObjectStore, *, retain_days: float, interval: float,
                          clock_offset: float = 0.0) -> None:
    """The server's background collector: a pass every `interval` seconds."""
    while True:
        await anyio.sleep(interval)
        result = await anyio.to_thread.run_sync(
            lambda: collect(db, store, retain_days=retain_days, now=time.time() + clock_offset))
        if result.versions or result.nodes or result.chunks_deleted:
            log.info("collector: %s", result)
