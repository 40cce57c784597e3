"""The change journal: an append-only, per-owner ordered log of what happened.

A device's cursor is the `seq` of the last entry it has applied. Entries carry the
node's state after the change, so a device can apply them without another request.
Old entries are pruned to bound the table; a cursor older than what is retained gets
410 and the device resyncs from a snapshot.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping

from cloudfs.backend import wire

from .db import journal, users
from .errors import Gone


_INSERT = journal.insert()
_FLOOR = sa.select(users.c.journal_floor).where(users.c.id == sa.bindparam("owner_id"))
_AFTER = (sa.select(journal).where(journal.c.owner_id == sa.bindparam("owner_id"), journal.c.seq > sa.bindparam("after"))
          .order_by(journal.c.seq).limit(sa.bindparam("lim")))
_LAST = sa.select(sa.func.max(journal.c.seq)).where(journal.c.owner_id == sa.bindparam("owner_id"))


def append(conn: Connection, owner_id: int, op: str, row: RowMapping, *, device: str,
           old_parent_id: int | None = None, old_name: str | None = None) -> int:
    """Record `op` on the node in `row` (its state after the change); returns the seq.
    On PostgreSQL also queues a notification, sent when the transaction commits."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_notify('cloudfs_journal', :owner)"), {"owner": str(owner_id)})
    return conn.execute(
        _INSERT, dict(
            owner_id=owner_id, node_id=row["id"], op=op, rev=row["rev"], kind=row["kind"],
            parent_id=row["parent_id"], name=row["name"], old_parent_id=old_parent_id, old_name=old_name,
            mode=row["mode"], mtime_ns=row["mtime_ns"], size=row["size"], target=row["target"],
            device=device, created_at=time.time(),
        )
    ).inserted_primary_key[0]


def cursor(conn: Connection, owner_id: int) -> int:
    """The newest position for this owner: the seq of its last entry."""
    last = conn.execute(_LAST, {"owner_id": owner_id}).scalar()
    if last is not None:
        return last
    return conn.execute(_FLOOR, {"owner_id": owner_id}).scalar() or 0


def read(conn: Connection, owner_id: int, after: int, limit: int) -> tuple[list[wire.Change], int, bool]:
    """Entries after `after`, oldest first, at most `limit`; plus the new cursor and
    whether more are waiting. Raises Gone when `after` predates retained history."""
    floor = conn.execute(_FLOOR, {"owner_id": owner_id}).scalar() or 0
    if after < floor:
        raise Gone(f"cursor {after} is older than the retained journal (which starts after {floor}); resync",
                   field="cursor", floor=floor)
    rows = conn.execute(_AFTER, {"owner_id": owner_id, "after": after, "lim": limit + 1}).mappings().all()
    if not rows:
        # Every cursor we hand out is one of this owner's seqs (or its floor); anything
        # beyond means the server's database was replaced. Compare with this owner's
        # own entries only, so nobody learns how busy the others are.
        newest = conn.execute(_LAST, {"owner_id": owner_id}).scalar() or 0
        if after > max(newest, floor):
            raise Gone(f"cursor {after} is ahead of this account's journal; resync", field="cursor", floor=floor)
    changes = [_to_change(r) for r in rows[:limit]]
    return changes, (changes[-1].seq if changes else after), len(rows) > limit


def _to_change(row: RowMapping) -> wire.Change:
    node = wire.Node(
        id=row["node_id"], parent_id=row["parent_id"], name=row["name"], kind=row["kind"], mode=row["mode"],
        mtime_ns=row["mtime_ns"], size=row["size"], rev=row["rev"], target=row["target"],
        deleted=row["op"] == "delete",
    )
    return wire.Change(seq=row["seq"], op=row["op"], node=node, old_parent_id=row["old_parent_id"],
                       old_name=row["old_name"], device=row["device"])


def prune(conn: Connection, owner_id: int, retain: int) -> int:
    """Drop all but the newest `retain` entries of one owner; returns how many went."""
    boundary = conn.execute(
        sa.select(journal.c.seq).where(journal.c.owner_id == owner_id)
        .order_by(journal.c.seq.desc()).offset(retain).limit(1)
    ).scalar()
    if boundary is None:
        return 0
    gone = conn.execute(journal.delete().where(journal.c.owner_id == owner_id, journal.c.seq <= boundary)).rowcount
    conn.execute(users.update().where(users.c.id == owner_id, users.c.journal_floor < boundary)
                 .values(journal_floor=boundary))
    return gone
