"""The change journal: an append-only, per-owner ordered log of what happened.

A device's cursor is the `seq` of the last entry it has applied. Entries carry the
node's state after the change, so a device can apply them without another request.
Old entries are pruned to bound the table; a cursor older than what is retained gets
410 and the device resyncs from a snapshot.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloudfs.backend import wire

from .db import journal, users
from .errors import Gone
from .notifier import CHANNEL
from .attrs import posix_attrs
from .sql import Row, Stmt, Tx, as_tx

_INSERT = Stmt("""INSERT INTO journal (owner_id, node_id, op, rev, kind, parent_id, name, old_parent_id, old_name,
                                       mode, mtime_ns, size, target, device, created_at, uid, gid, rdev, atime_ns, xattrs,
                                       link_to)
                  VALUES (:owner_id, :node_id, :op, :rev, :kind, :parent_id, :name, :old_parent_id, :old_name,
                          :mode, :mtime_ns, :size, :target, :device, :created_at, :uid, :gid, :rdev, :atime_ns, :xattrs,
                          :link_to)
                  RETURNING seq""")
_NOTIFY = Stmt(f"SELECT pg_notify('{CHANNEL}', :owner)")
_FLOOR = Stmt("SELECT journal_floor FROM users WHERE id = :owner_id")
_AFTER = Stmt("SELECT * FROM journal WHERE owner_id = :owner_id AND seq > :after ORDER BY seq LIMIT :lim")
_LAST = Stmt("SELECT max(seq) FROM journal WHERE owner_id = :owner_id")


def append(conn: Connection | Tx, owner_id: int, op: str, row: Row, *, device: str,
           old_parent_id: int | None = None, old_name: str | None = None, wake_replicas: bool = True) -> int:
    """Record `op` on the node in `row` (its state after the change); returns the seq.
    On PostgreSQL also queues a notification, sent when the transaction commits,
    unless the caller sends one for many appends itself (`wake_replicas`)."""
    tx = as_tx(conn)
    if wake_replicas:
        wake_other_replicas(tx, owner_id)
    return tx.scalar(_INSERT, dict(
        owner_id=owner_id, node_id=row["id"], op=op, rev=row["rev"], kind=row["kind"],
        parent_id=row["parent_id"], name=row["name"], old_parent_id=old_parent_id, old_name=old_name,
        mode=row["mode"], mtime_ns=row["mtime_ns"], size=row["size"], target=row["target"],
        device=device, created_at=time.time(), uid=row["uid"], gid=row["gid"], rdev=row["rdev"],
        atime_ns=row["atime_ns"], xattrs=row["xattrs"], link_to=row["link_to"],
    ))


def wake_other_replicas(tx: Tx, owner_id: int, *, sent_at: float | None = None) -> None:
    """PostgreSQL: `pg_notify` for this owner, delivered when (and only if) the
    transaction commits, to the long-polls held by every replica (notifier.py).
    `sent_at` (unix time) rides along so the receivers can measure the lag; without
    it, PostgreSQL folds the identical notifications of one transaction into one."""
    if tx.is_postgresql:
        tx.send(_NOTIFY, {"owner": str(owner_id) if sent_at is None else f"{owner_id} {sent_at:.6f}"})


def cursor(conn: Connection | Tx, owner_id: int) -> int:
    """The newest position for this owner: the seq of its last entry."""
    tx = as_tx(conn)
    last = tx.scalar(_LAST, {"owner_id": owner_id})
    if last is not None:
        return last
    return tx.scalar(_FLOOR, {"owner_id": owner_id}) or 0


def read(conn: Connection | Tx, owner_id: int, after: int, limit: int) -> tuple[list[wire.Change], int, bool]:
    """Entries after `after`, oldest first, at most `limit`; plus the new cursor and
    whether more are waiting. Raises Gone when `after` predates retained history."""
    tx = as_tx(conn)
    floor = tx.scalar(_FLOOR, {"owner_id": owner_id}) or 0
    if after < floor:
        raise Gone(f"cursor {after} is older than the retained journal (which starts after {floor}); resync",
                   field="cursor", floor=floor)
    rows = tx.all(_AFTER, {"owner_id": owner_id, "after": after, "lim": limit + 1})
    if not rows:
        # Every cursor we hand out is one of this owner's seqs (or its floor); anything
        # beyond means the server's database was replaced. Compare with this owner's
        # own entries only, so nobody learns how busy the others are.
        newest = tx.scalar(_LAST, {"owner_id": owner_id}) or 0
        if after > max(newest, floor):
            raise Gone(f"cursor {after} is ahead of this account's journal; resync", field="cursor", floor=floor)
    changes = [_to_change(r) for r in rows[:limit]]
    return changes, (changes[-1].seq if changes else after), len(rows) > limit


def _to_change(row: Row) -> wire.Change:
    node = wire.Node(
        id=row["node_id"], parent_id=row["parent_id"], name=row["name"], kind=row["kind"], mode=row["mode"],
        mtime_ns=row["mtime_ns"], size=row["size"], rev=row["rev"], target=row["target"],
        deleted=row["op"] == "delete", link_to=row["link_to"], **posix_attrs(row),
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
