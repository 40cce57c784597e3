"""Nodes and chunks crossing from one namespace into another.

A move between namespaces (a file dragged into a shared folder, or out of one) keeps
the node's id, its versions and its whole subtree (tombstones included, so history
goes along): their rows change namespace in one transaction. The destination is given
every chunk their versions name, as rows that point at the bytes where they already
are (`store_ns`): nothing is uploaded again, and nobody gains access to bytes they
could not read before (the mover could read them, and chose to put them there).

The journal says it twice: a `delete` in the namespace the node left, marked with
where it went (`to_ns`), then a `move` in the one it entered (its old place as
old_parent_id/old_name). A member who sees only one of them sees a delete or an add;
a device that follows both skips the delete and applies the move.

Chunk rows given this way are ordinary rows of their namespace (dedup, verification,
collection work on them as on any other). The collector deletes an object only when no
row of any namespace points at it any more (retention.py). A source row is locked
while it is copied (PostgreSQL), so the collector cannot mark it for deletion at the
same moment.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloudfs.backend.protocol import wire
from . import commits, journal, tree
from .db import chunks, nodes, version_chunks, versions
from .errors import IsADirectory, NameExists, NotADirectory, NotEmpty, SharedFolderConflict
from .sql import Row, Stmt, Tx, as_tx, expand, values_params

IN_BATCH = 500

_SOURCES = ("SELECT * FROM chunks WHERE owner_id IN ({values}) AND fingerprint = :fp AND state = 'verified'"
            " ORDER BY owner_id")
_GIVE = Stmt("""INSERT INTO chunks (owner_id, fingerprint, length, stored_length, stored_sha256, compression, state,
                                    created_at, store_ns)
                VALUES (:owner_id, :fingerprint, :length, :stored_length, :stored_sha256, :compression, 'verified',
                        :created_at, :store_ns)
                ON CONFLICT (owner_id, fingerprint) DO UPDATE SET
                  length = excluded.length, stored_length = excluded.stored_length,
                  stored_sha256 = excluded.stored_sha256, compression = excluded.compression,
                  state = 'verified', store_ns = excluded.store_ns""")


def store_ns(row: Row) -> int:
    """The namespace whose store key holds a chunk row's bytes."""
    return row["store_ns"] if row.get("store_ns") is not None else row["owner_id"]


def give_chunks(conn: Connection | Tx, to_ns: int, fingerprints: list[str], from_nss: list[int]) -> list[str]:
    """Give `to_ns` the chunks it lacks (or has only pending, bad or unverified) that one
    of `from_nss` holds verified: rows pointing at the same stored bytes. Returns the
    fingerprints given. The caller has checked that the account may read `from_nss`."""
    tx = as_tx(conn)
    sources = [ns for ns in dict.fromkeys(from_nss) if ns != to_ns]
    if not sources or not fingerprints:
        return []
    lock = " FOR UPDATE" if tx.is_postgresql else ""
    stmt = expand(_SOURCES + lock, len(sources))
    given = []
    now = time.time()
    for fp in fingerprints:
        row = tx.one(stmt, values_params(sources, fp=fp))
        if row is None:
            continue
        tx.run(_GIVE, dict(owner_id=to_ns, fingerprint=fp, length=row["length"], stored_length=row["stored_length"],
                           stored_sha256=row["stored_sha256"], compression=row["compression"], created_at=now,
                           store_ns=store_ns(row)))
        given.append(fp)
    return given


def subtree(ns_id: int, node_id: int) -> sa.CTE:
    """Every node below `node_id` in a namespace, live or deleted, and the node itself."""
    below = sa.select(nodes.c.id).where(nodes.c.id == node_id, nodes.c.owner_id == ns_id).cte("below", recursive=True)
    return below.union_all(sa.select(nodes.c.id).where(nodes.c.parent_id == below.c.id, nodes.c.owner_id == ns_id))


def live_bytes(conn: Connection, ns_id: int, node_id: int) -> int:
    """What a quota counts of a subtree: the sizes of its live files."""
    return int(conn.execute(sa.select(sa.func.coalesce(sa.func.sum(nodes.c.size), 0)).where(
        nodes.c.id.in_(sa.select(subtree(ns_id, node_id).c.id)), nodes.c.kind == "file",
        nodes.c.deleted == sa.false())).scalar() or 0)


def move_subtree(conn: Connection, from_ns: int, to_ns: int, node_id: int) -> list[int]:
    """Change the namespace of a node and everything below it, and give the destination
    the chunks of all their versions. Returns the ids that moved."""
    ids = list(conn.execute(sa.select(subtree(from_ns, node_id).c.id)).scalars())
    fingerprints: set[str] = set()
    for i in range(0, len(ids), IN_BATCH):
        batch = ids[i:i + IN_BATCH]
        fingerprints.update(conn.execute(
            sa.select(version_chunks.c.fingerprint).distinct()
            .join(versions, versions.c.id == version_chunks.c.version_id)
            .where(versions.c.node_id.in_(batch))).scalars())
        conn.execute(nodes.update().where(nodes.c.id.in_(batch)).values(owner_id=to_ns))
    _copy_chunks(conn, from_ns, to_ns, sorted(fingerprints))
    return ids


def _copy_chunks(conn: Connection, from_ns: int, to_ns: int, fingerprints: list[str]) -> None:
    """Rows of `from_ns` (verified or bad: the state travels) that `to_ns` lacks."""
    for i in range(0, len(fingerprints), IN_BATCH):
        batch = fingerprints[i:i + IN_BATCH]
        have = set(conn.execute(sa.select(chunks.c.fingerprint).where(
            chunks.c.owner_id == to_ns, chunks.c.fingerprint.in_(batch))).scalars())
        rows = conn.execute(sa.select(chunks).where(
            chunks.c.owner_id == from_ns, chunks.c.fingerprint.in_([fp for fp in batch if fp not in have]),
            chunks.c.state.in_(("verified", "bad")))).mappings().all()
        if rows:
            conn.execute(chunks.insert(), [
                {**dict(r), "owner_id": to_ns, "store_ns": store_ns(dict(r))} for r in rows])


def check_movable(conn: Connection, ns_id: int, row: Row) -> None:
    """A node may leave its namespace unless it takes a shared folder along (no shared
    folder inside another) or splits a file's names (hard links) across the boundary."""
    inside = subtree(ns_id, row["id"])
    mount = conn.execute(sa.select(nodes.c.name).where(
        nodes.c.id.in_(sa.select(inside.c.id)), nodes.c.kind == "mount", nodes.c.deleted == sa.false()).limit(1)).scalar()
    if mount is not None:
        raise SharedFolderConflict(f"{row['name']!r} holds the shared folder {mount!r}: a shared folder cannot go "
                                   "inside another", field="parent_id")
    live = sa.and_(nodes.c.deleted == sa.false(), nodes.c.kind == "link")
    out = conn.execute(sa.select(nodes.c.id).where(
        nodes.c.id.in_(sa.select(inside.c.id)), live, nodes.c.link_to.not_in(sa.select(inside.c.id))).limit(1)).scalar()
    into = conn.execute(sa.select(nodes.c.id).where(
        nodes.c.owner_id == ns_id, live, nodes.c.link_to.in_(sa.select(inside.c.id)),
        nodes.c.id.not_in(sa.select(inside.c.id))).limit(1)).scalar()
    if out is not None or into is not None:
        raise SharedFolderConflict(f"{row['name']!r} has hard links on the other side: a file's names stay in one "
                                   "shared folder (copy it instead)", field="parent_id", errno="EXDEV")


def move_across(conn: Connection, from_ns: int, to_ns: int, row: Row, req: wire.MoveRequest,
                device: str) -> tuple[Row, int]:
    """Move `row` (in `from_ns`) to `req.parent_id` (a directory in `to_ns`), see the
    module docstring. rename(2)'s rules for `replace` hold as for a move in one tree."""
    if req.exchange:
        raise SharedFolderConflict("RENAME_EXCHANGE across a shared folder's boundary is not supported", field="exchange",
                                   errno="EXDEV")
    check_movable(conn, from_ns, row)
    existing = tree.child(conn, to_ns, req.parent_id, req.name)
    if existing is not None:
        if not req.replace:
            raise NameExists(f"{req.name!r} already exists in directory {req.parent_id}", field="name",
                             node=tree.to_wire(existing).model_dump())
        if existing["kind"] in ("dir", "mount") and row["kind"] != "dir":
            raise IsADirectory(f"{req.name!r} is a directory; a {row['kind']} cannot replace it", field="name")
        if existing["kind"] not in ("dir", "mount") and row["kind"] == "dir":
            raise NotADirectory(f"{req.name!r} is not a directory; a directory cannot replace it", field="name")
        if existing["kind"] == "mount" or (existing["kind"] == "dir" and tree.has_children(conn, to_ns, existing["id"])):
            raise NotEmpty(f"{req.name!r} is a non-empty directory", field="name")
        tree.tombstone(conn, to_ns, existing, device)
    if commits.quota_owner(as_tx(conn), from_ns) != commits.quota_owner(as_tx(conn), to_ns):
        commits.check_quota(as_tx(conn), to_ns, live_bytes(conn, from_ns, row["id"]))
    move_subtree(conn, from_ns, to_ns, row["id"])
    journal.append(conn, from_ns, "delete", row, device=device, to_ns=to_ns)
    conn.execute(nodes.update().where(nodes.c.id == row["id"]).values(parent_id=req.parent_id, name=req.name))
    moved = tree.get(conn, to_ns, row["id"])
    seq = journal.append(conn, to_ns, "move", moved, device=device, old_parent_id=row["parent_id"],
                         old_name=row["name"])
    return moved, seq
