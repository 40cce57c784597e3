"""The change journal: an append-only, per-namespace ordered log of what happened.

A device's cursor is the `seq` of the last entry it has applied. Entries carry the
node's state after the change, so a device can apply them without another request.
Old entries are pruned to bound the table; a cursor older than what is retained gets
410 and the device resyncs from a snapshot.

Seqs are one sequence over every namespace, so entries of several namespaces merge
into one order: `read_many` serves a device that follows all of its namespaces with
one request, a cursor for each. Each entry records the account that made it
(`ACTOR`, set by the route for the request; None for the server's own entries).
"""

from __future__ import annotations

import functools
import time
from contextvars import ContextVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloudfs.backend.protocol import wire
from .db import journal, namespaces
from .errors import Gone
from .notifier import CHANNEL
from .attrs import posix_attrs
from .sql import Row, Stmt, Tx, as_tx, expand, values_params

ACTOR: ContextVar[int | None] = ContextVar("cloudfs_actor", default=None)
"""The account whose request is being served: recorded in every entry it makes."""

_INSERT = Stmt("""INSERT INTO journal (owner_id, node_id, op, rev, kind, parent_id, name, old_parent_id, old_name,
                                       mode, mtime_ns, size, target, device, created_at, uid, gid, rdev, atime_ns, xattrs,
                                       link_to, other_ns, user_id)
                  VALUES (:owner_id, :node_id, :op, :rev, :kind, :parent_id, :name, :old_parent_id, :old_name,
                          :mode, :mtime_ns, :size, :target, :device, :created_at, :uid, :gid, :rdev, :atime_ns, :xattrs,
                          :link_to, :other_ns, :user_id)
                  RETURNING seq""")
_NOTIFY = Stmt(f"SELECT pg_notify('{CHANNEL}', :owner)")
_FLOOR = Stmt("SELECT journal_floor FROM namespaces WHERE id = :owner_id")
_AFTER = Stmt("SELECT * FROM journal WHERE owner_id = :owner_id AND seq > :after ORDER BY seq LIMIT :lim")
_LAST = Stmt("SELECT max(seq) FROM journal WHERE owner_id = :owner_id")


def append(conn: Connection | Tx, owner_id: int, op: str, row: Row, *, device: str,
           old_parent_id: int | None = None, old_name: str | None = None, wake_replicas: bool = True,
           to_ns: int | None = None) -> int:
    """Record `op` on the node in `row` (its state after the change); returns the seq.
    On PostgreSQL also queues a notification, sent when the transaction commits,
    unless the caller sends one for many appends itself (`wake_replicas`). `to_ns`: a
    delete of a node that went on living in that namespace (crossing.py)."""
    tx = as_tx(conn)
    if wake_replicas:
        wake_other_replicas(tx, owner_id)
    return tx.scalar(_INSERT, dict(
        other_ns=to_ns if to_ns is not None else row.get("mount_ns"), user_id=ACTOR.get(), owner_id=owner_id, node_id=row["id"], op=op, rev=row["rev"], kind=row["kind"],
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


_CREATED_AT = Stmt("""SELECT node_id, min(seq) AS first FROM journal
                       WHERE owner_id = :owner_id AND seq > :after AND op = 'create' AND parent_id = :dir_id
                         AND name = :name AND kind != 'mount'
                       GROUP BY node_id ORDER BY first LIMIT :lim""")


def created_at(conn: Connection | Tx, owner_id: int, dir_id: int, name: str, *, after: int, limit: int) -> list[int]:
    """The nodes that entries after `after` created as `name` in directory `dir_id`,
    oldest first, wherever they are now. A create retried with its first answer lost
    asks this: a node it made may have been moved away since, where the name alone no
    longer finds it. Only what the retained journal holds (an `after` below the floor
    finds what is left)."""
    rows = as_tx(conn).all(_CREATED_AT, {"owner_id": owner_id, "after": after, "dir_id": dir_id, "name": name,
                                         "lim": limit})
    return [r["node_id"] for r in rows]


def _to_change(row: Row, ns: int | None = None) -> wire.Change:
    to_ns = None
    if row["kind"] == "mount":  # shown as the shared folder's root where it is mounted (namespaces.py)
        node = wire.Node(
            id=row["link_to"], parent_id=row["parent_id"], name=row["name"], kind="dir", mode=row["mode"],
            mtime_ns=row["mtime_ns"], size=0, rev=row["rev"], deleted=row["op"] == "delete", ns=row["other_ns"],
            role=row["target"], **posix_attrs(row))
    else:
        node = wire.Node(
            id=row["node_id"], parent_id=row["parent_id"], name=row["name"], kind=row["kind"], mode=row["mode"],
            mtime_ns=row["mtime_ns"], size=row["size"], rev=row["rev"], target=row["target"],
            deleted=row["op"] == "delete", link_to=row["link_to"], **posix_attrs(row),
        )
        to_ns = row["other_ns"]
    return wire.Change(seq=row["seq"], op=row["op"], node=node, old_parent_id=row["old_parent_id"],
                       old_name=row["old_name"], device=row["device"], user_id=row["user_id"], ns=ns, to_ns=to_ns)


_HEADS = "SELECT id, journal_floor, (SELECT max(seq) FROM journal WHERE owner_id = namespaces.id) AS head" \
         " FROM namespaces WHERE id IN ({values})"


def read_many(conn: Connection | Tx, cursors: dict[int, int], limit: int,
              ) -> tuple[list[wire.Change], dict[int, int], bool, list[int]]:
    """Entries after each namespace's cursor, merged in seq order, at most `limit`:
    (changes, new cursors, more waiting, namespaces whose cursor is out of their
    retained journal). One statement finds which namespaces have anything new (their
    newest seq beside their floor), and one reads only those; so an idle device that
    follows many namespaces costs two index probes per namespace per wake-up."""
    tx = as_tx(conn)
    ids = list(cursors)
    heads = {r["id"]: r for r in tx.all(expand(_HEADS, len(ids)), values_params(ids))} if ids else {}
    gone: list[int] = []
    behind: list[int] = []
    for ns, after in cursors.items():
        r = heads.get(ns)
        floor, head = (r["journal_floor"] or 0, r["head"] or 0) if r else (0, 0)
        if after < floor or after > max(head, floor):
            gone.append(ns)
        elif head > after:
            behind.append(ns)
    if not behind:
        return [], dict(cursors), False, gone
    where = " OR ".join(f"(owner_id = :o{i} AND seq > :c{i})" for i in range(len(behind)))
    params: dict[str, int] = {"lim": limit + 1}
    for i, ns in enumerate(behind):
        params[f"o{i}"], params[f"c{i}"] = ns, cursors[ns]
    rows = tx.all(_stmt(f"SELECT * FROM journal WHERE {where} ORDER BY seq LIMIT :lim"), params)
    changes = [_to_change(r, r["owner_id"]) for r in rows[:limit]]
    new = dict(cursors)
    for change in changes:
        new[change.ns] = change.seq  # type: ignore[index]
    return changes, new, len(rows) > limit, gone


@functools.lru_cache(maxsize=512)
def _stmt(sql: str) -> Stmt:
    return Stmt(sql)


def prune(conn: Connection, owner_id: int, retain: int) -> int:
    """Drop all but the newest `retain` entries of one owner; returns how many went."""
    boundary = conn.execute(
        sa.select(journal.c.seq).where(journal.c.owner_id == owner_id)
        .order_by(journal.c.seq.desc()).offset(retain).limit(1)
    ).scalar()
    if boundary is None:
        return 0
    gone = conn.execute(journal.delete().where(journal.c.owner_id == owner_id, journal.c.seq <= boundary)).rowcount
    conn.execute(namespaces.update().where(namespaces.c.id == owner_id, namespaces.c.journal_floor < boundary)
                 .values(journal_floor=boundary))
    return gone
