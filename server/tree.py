"""The file tree: nodes, names, moves and tombstones, one owner at a time.

Every function takes an open transaction and the owner's id, and every query filters
on that owner, so a node id from another account behaves exactly like one that does
not exist. Mutations append their journal entry in the same transaction.

Hard links: a node's first name is its own row (parent_id, name); every further name
is an *alias row* of kind "link" whose `link_to` is the node's id. Alias rows are nodes
for every name-level operation (move, rename over, delete, the unique live name, the
journal, snapshots), and nothing else: content and attributes are the node's (`inode`).
Invariant: a live alias names a live node. So deleting a node's own name while aliases
are live does not delete the node: it takes the place of its oldest alias, whose row is
tombstoned (`_promote`; a directory's subtree promotes what has names outside it first).
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloudfs.backend.protocol import wire
from . import journal
from .db import deleted_with, nodes
from .errors import InvalidMove, IsADirectory, NameExists, NotADirectory, NotEmpty, NotFound, StaleRevision
from .attrs import posix_attrs, xattrs_column
from .sql import Row, Stmt, Tx, as_tx

MAX_DEPTH = 4096
EMPTIED_WITHIN_S = 600.0
"""What the same device deleted inside a directory this long before deleting the
directory counts as part of the directory's delete (rm -r, one file at a time)."""


def to_wire(row: Row) -> wire.Node:
    if row["kind"] == "mount":  # a shared folder where a member mounted it (namespaces.py)
        return wire.Node(
            id=row["link_to"], parent_id=row["parent_id"], name=row["name"], kind="dir", mode=row["mode"],
            mtime_ns=row["mtime_ns"], size=0, rev=row["rev"], deleted=bool(row["deleted"]), ns=row["mount_ns"],
            role=row["target"], **posix_attrs(row))
    return wire.Node(
        id=row["id"], parent_id=row["parent_id"], name=row["name"], kind=row["kind"], mode=row["mode"],
        mtime_ns=row["mtime_ns"], size=row["size"], rev=row["rev"], target=row["target"], deleted=bool(row["deleted"]),
        link_to=row["link_to"], **posix_attrs(row),
    )


# The lookups every commit makes, in plain SQL (see sql.py).
_GET = Stmt("SELECT * FROM nodes WHERE id = :node_id AND owner_id = :owner_id")
_CHILD = Stmt("SELECT * FROM nodes WHERE owner_id = :owner_id AND parent_id = :parent_id AND name = :name"
              " AND deleted = {false}")
_INSERT = Stmt("""INSERT INTO nodes (owner_id, parent_id, name, kind, mode, mtime_ns, size, rev, target, deleted, rdev,
                                     link_to)
                  VALUES (:owner_id, :parent_id, :name, :kind, :mode, :mtime_ns, :size, :rev, :target, {false}, :rdev,
                          :link_to)
                  RETURNING *""")
_ALIASES = Stmt("SELECT * FROM nodes WHERE owner_id = :owner_id AND link_to = :node_id AND deleted = {false}"
                " ORDER BY id")


def get(conn: Connection | Tx, owner_id: int, node_id: int, *, allow_deleted: bool = False) -> Row:
    row = as_tx(conn).one(_GET, {"node_id": node_id, "owner_id": owner_id})
    if row is None or (row["deleted"] and not allow_deleted):
        raise NotFound(f"no node with id {node_id}", field="id")
    return row


def get_or_none(conn: Connection | Tx, owner_id: int, node_id: int) -> Row | None:
    """The node, live or deleted, if it is in this namespace."""
    return as_tx(conn).one(_GET, {"node_id": node_id, "owner_id": owner_id})


def inode(conn: Connection | Tx, owner_id: int, row: Row, *, allow_deleted: bool = False) -> Row:
    """The node a name stands for: `row` itself, or the node an alias row links to."""
    if row["kind"] != "link":
        return row
    return get(conn, owner_id, row["link_to"], allow_deleted=allow_deleted)


def aliases(conn: Connection | Tx, owner_id: int, node_id: int) -> list[Row]:
    """The live alias rows of a node, oldest first."""
    return as_tx(conn).all(_ALIASES, {"owner_id": owner_id, "node_id": node_id})


def get_dir(conn: Connection | Tx, owner_id: int, node_id: int, *, field: str = "parent_id") -> Row:
    try:
        row = get(conn, owner_id, node_id)
    except NotFound:
        raise NotFound(f"no directory with id {node_id}", field=field) from None
    if row["kind"] != "dir":
        raise NotADirectory(f"node {node_id} ({row['name']!r}) is not a directory", field=field)
    return row


def child(conn: Connection | Tx, owner_id: int, parent_id: int, name: str) -> Row | None:
    return as_tx(conn).one(_CHILD, {"owner_id": owner_id, "parent_id": parent_id, "name": name})


def has_children(conn: Connection, owner_id: int, node_id: int) -> bool:
    return conn.execute(
        sa.select(nodes.c.id).where(
            nodes.c.owner_id == owner_id, nodes.c.parent_id == node_id, nodes.c.deleted == sa.false()
        ).limit(1)
    ).first() is not None


def resolve(conn: Connection | Tx, owner_id: int, root_id: int, names: list[str]) -> Row:
    """Walk `names` from the root; NotFound names the first component that is missing."""
    conn = as_tx(conn)
    row = get(conn, owner_id, root_id)
    walked = ""
    for name in names:
        if row["kind"] != "dir":
            raise NotADirectory(f"{walked or '/'} is not a directory", field="path")
        found = child(conn, owner_id, row["id"], name)
        walked += "/" + name
        if found is None:
            raise NotFound(f"{walked} does not exist", field="path")
        row = found
    return row


def list_children(conn: Connection, owner_id: int, dir_id: int, *, after: str | None, limit: int,
                  name: str | None = None) -> tuple[list[wire.Node], str | None]:
    get_dir(conn, owner_id, dir_id, field="id")
    query = sa.select(nodes).where(
        nodes.c.owner_id == owner_id, nodes.c.parent_id == dir_id, nodes.c.deleted == sa.false()
    )
    if name is not None:
        query = query.where(nodes.c.name == name)
    if after is not None:
        query = query.where(nodes.c.name > after)
    rows = conn.execute(query.order_by(nodes.c.name).limit(limit + 1)).mappings().all()
    page = [to_wire(r) for r in rows[:limit]]
    return page, (page[-1].name if len(rows) > limit else None)


def deleted_named(conn: Connection, owner_id: int, dir_id: int, name: str, *, limit: int) -> list[wire.Node]:
    """The deleted nodes that were last named `name` in directory `dir_id` (deleted too,
    it may be), newest first."""
    directory = get(conn, owner_id, dir_id, allow_deleted=True)
    if directory["kind"] != "dir":
        raise NotADirectory(f"node {dir_id} ({directory['name']!r}) is not a directory", field="id")
    rows = conn.execute(sa.select(nodes).where(
        nodes.c.owner_id == owner_id, nodes.c.parent_id == dir_id, nodes.c.name == name, nodes.c.deleted == sa.true(),
        nodes.c.kind != "mount").order_by(nodes.c.deleted_at.desc().nulls_last(), nodes.c.id.desc()).limit(limit)
    ).mappings().all()
    return [to_wire(r) for r in rows]


def linked(conn: Connection, owner_id: int, rows: list[wire.Node]) -> list[wire.Linked]:
    """The nodes among `rows` (or named by the aliases among them) that have more than
    one live name, with how many: what a listing needs to show a hard link as its file."""
    ids = {r.id for r in rows if r.kind not in ("dir", "link")} | {r.link_to for r in rows if r.link_to is not None}
    if not ids:
        return []
    counts: dict[int, int] = {}
    for start in range(0, len(ids), 500):
        batch = sorted(ids)[start:start + 500]
        counts.update(conn.execute(
            sa.select(nodes.c.link_to, sa.func.count()).where(
                nodes.c.owner_id == owner_id, nodes.c.link_to.in_(batch), nodes.c.deleted == sa.false())
            .group_by(nodes.c.link_to)).tuples().all())
    out = []
    for node_id in sorted(counts):
        try:
            row = get(conn, owner_id, node_id)
        except NotFound:
            continue  # an alias of a deleted node (should not be): shown as it is
        out.append(wire.Linked(node=to_wire(row), names=counts[node_id] + 1))
    return out


def snapshot(conn: Connection, owner_id: int, *, after_id: int, limit: int) -> tuple[list[wire.Node], int | None]:
    rows = conn.execute(
        sa.select(nodes).where(nodes.c.owner_id == owner_id, nodes.c.deleted == sa.false(), nodes.c.id > after_id)
        .order_by(nodes.c.id).limit(limit + 1)
    ).mappings().all()
    page = [to_wire(r) for r in rows[:limit]]
    return page, (page[-1].id if len(rows) > limit else None)


def create_root(conn: Connection, owner_id: int) -> int:
    return conn.execute(
        nodes.insert().values(owner_id=owner_id, parent_id=None, name="", kind="dir", mode=0o755,
                              mtime_ns=time.time_ns(), size=0, rev=1, deleted=False)
    ).inserted_primary_key[0]


def insert(conn: Connection | Tx, owner_id: int, *, parent_id: int, name: str, kind: str, mode: int,
           mtime_ns: int | None, device: str, target: str | None = None, size: int = 0, rev: int = 1,
           rdev: int = 0, link_to: int | None = None, record: bool = True,
           name_free: bool = False) -> tuple[Row, int | None]:
    """Create a node under a checked directory; the name must be free (`name_free`:
    the caller has just looked). With `record` False the caller appends the journal
    entry itself (a file's first commit)."""
    tx = as_tx(conn)
    existing = None if name_free else child(tx, owner_id, parent_id, name)
    if existing is not None:
        raise NameExists(f"{name!r} already exists in directory {parent_id}", field="name", node=to_wire(existing).model_dump())
    row = tx.one(_INSERT, dict(owner_id=owner_id, parent_id=parent_id, name=name, kind=kind, mode=mode,
                               mtime_ns=mtime_ns if mtime_ns is not None else time.time_ns(), size=size,
                               rev=rev, target=target, rdev=rdev, link_to=link_to))
    assert row is not None
    return row, (journal.append(tx, owner_id, "create", row, device=device) if record else None)


def mkdir(conn: Connection, owner_id: int, req: wire.MkdirRequest, device: str) -> tuple[Row, int]:
    get_dir(conn, owner_id, req.parent_id)
    return insert(conn, owner_id, parent_id=req.parent_id, name=req.name, kind="dir", mode=req.mode,
                  mtime_ns=req.mtime_ns, device=device)


def symlink(conn: Connection, owner_id: int, req: wire.SymlinkRequest, device: str) -> tuple[Row, int]:
    get_dir(conn, owner_id, req.parent_id)
    return insert(conn, owner_id, parent_id=req.parent_id, name=req.name, kind="symlink", mode=0o777,
                  mtime_ns=req.mtime_ns, device=device, target=req.target, size=len(req.target.encode()))


def mknod(conn: Connection, owner_id: int, req: wire.MknodRequest, device: str) -> tuple[Row, int]:
    get_dir(conn, owner_id, req.parent_id)
    return insert(conn, owner_id, parent_id=req.parent_id, name=req.name, kind=req.kind, mode=req.mode,
                  mtime_ns=req.mtime_ns, device=device, rdev=req.rdev if req.kind in ("chr", "blk") else 0)


def link(conn: Connection, owner_id: int, req: wire.LinkRequest, device: str) -> tuple[Row, int]:
    """One more name for a node: an alias row. A link to an alias links to its node;
    directories have one name only (link(2) answers EPERM for them)."""
    get_dir(conn, owner_id, req.parent_id)
    try:
        target = inode(conn, owner_id, get(conn, owner_id, req.node_id))
    except NotFound:
        raise NotFound(f"no node with id {req.node_id}", field="node_id") from None
    if target["kind"] == "dir":
        raise IsADirectory(f"node {req.node_id} ({target['name']!r}) is a directory: it cannot have a second name",
                           field="node_id")
    return insert(conn, owner_id, parent_id=req.parent_id, name=req.name, kind="link", mode=0, mtime_ns=None,
                  device=device, link_to=target["id"])


def _is_ancestor(conn: Connection, owner_id: int, ancestor_id: int, node_id: int) -> bool:
    current: int | None = node_id
    for _ in range(MAX_DEPTH):
        if current is None:
            return False
        if current == ancestor_id:
            return True
        current = conn.execute(
            sa.select(nodes.c.parent_id).where(nodes.c.id == current, nodes.c.owner_id == owner_id)
        ).scalar()
    raise InvalidMove("directory tree deeper than the server allows", field="parent_id")


def move(conn: Connection, owner_id: int, node_id: int, req: wire.MoveRequest, device: str) -> tuple[Row, int | None]:
    """Rename and/or reparent one node: one journal entry however big the subtree.

    With `replace`, an existing destination is tombstoned in the same transaction
    (rename(2) semantics: a directory only replaces an empty directory, a file only a
    non-directory). Returns the journal seq, or None when nothing changed.
    """
    row = get(conn, owner_id, node_id)
    if row["parent_id"] is None:
        raise InvalidMove("the root directory cannot be moved", field="id")
    get_dir(conn, owner_id, req.parent_id)
    if row["kind"] == "dir" and _is_ancestor(conn, owner_id, node_id, req.parent_id):
        raise InvalidMove(f"cannot move directory {node_id} into itself or its own subtree", field="parent_id")
    if row["parent_id"] == req.parent_id and row["name"] == req.name:
        return row, None
    if req.exchange:
        return _exchange(conn, owner_id, row, req, device)
    existing = child(conn, owner_id, req.parent_id, req.name)
    if existing is not None and req.replace and inode(conn, owner_id, existing)["id"] == inode(conn, owner_id, row)["id"]:
        return row, None  # two names of one file: rename(2) does nothing
    if existing is not None:
        if not req.replace:
            raise NameExists(f"{req.name!r} already exists in directory {req.parent_id}", field="name",
                             node=to_wire(existing).model_dump())
        if existing["kind"] == "dir" and row["kind"] != "dir":
            raise IsADirectory(f"{req.name!r} is a directory; a {row['kind']} cannot replace it", field="name")
        if existing["kind"] != "dir" and row["kind"] == "dir":
            raise NotADirectory(f"{req.name!r} is not a directory; a directory cannot replace it", field="name")
        if existing["kind"] == "mount":
            raise NotEmpty(f"{req.name!r} is a shared folder: leave it (or move it away) first", field="name")
        if existing["kind"] == "dir" and has_children(conn, owner_id, existing["id"]):
            raise NotEmpty(f"{req.name!r} is a non-empty directory", field="name")
        tombstone(conn, owner_id, existing, device)
    conn.execute(nodes.update().where(nodes.c.id == node_id).values(parent_id=req.parent_id, name=req.name))
    moved = get(conn, owner_id, node_id)
    seq = journal.append(conn, owner_id, "move", moved, device=device,
                         old_parent_id=row["parent_id"], old_name=row["name"])
    return moved, seq


def unreal_name(node_id: int) -> str:
    """A name no entry can have (longer than NAME_MAX, and PostgreSQL text holds no
    NUL): where a node waits while another takes its name in the same transaction."""
    return f"{node_id}:" + "~" * 300


def _exchange(conn: Connection, owner_id: int, row: Row, req: wire.MoveRequest, device: str) -> tuple[Row, int]:
    """RENAME_EXCHANGE: swap two nodes' places in one transaction. The unique live name
    is freed on the way through a name no real entry can have (`unreal_name`)."""
    other = child(conn, owner_id, req.parent_id, req.name)
    if other is None:
        raise NotFound(f"{req.name!r} does not exist in directory {req.parent_id}: nothing to exchange with",
                       field="name")
    if other["kind"] == "dir" and _is_ancestor(conn, owner_id, other["id"], row["parent_id"]):
        raise InvalidMove(f"cannot move directory {other['id']} into itself or its own subtree", field="name")
    conn.execute(nodes.update().where(nodes.c.id == other["id"]).values(name=unreal_name(other["id"])))
    conn.execute(nodes.update().where(nodes.c.id == row["id"]).values(parent_id=req.parent_id, name=req.name))
    conn.execute(nodes.update().where(nodes.c.id == other["id"]).values(parent_id=row["parent_id"], name=row["name"]))
    moved = get(conn, owner_id, row["id"])
    journal.append(conn, owner_id, "exchange", moved, device=device,
                   old_parent_id=row["parent_id"], old_name=row["name"])
    seq = journal.append(conn, owner_id, "move", get(conn, owner_id, other["id"]), device=device,
                         old_parent_id=other["parent_id"], old_name=other["name"])
    return moved, seq


def set_attr(conn: Connection, owner_id: int, node_id: int, req: wire.AttrRequest, device: str) -> tuple[Row, int | None]:
    """Mode, owner, times and extended attributes: one journal entry, no new version.
    Those of an alias are its node's."""
    row = inode(conn, owner_id, get(conn, owner_id, node_id))
    node_id = row["id"]
    values = {k: v for k, v in (("mode", req.mode), ("mtime_ns", req.mtime_ns), ("atime_ns", req.atime_ns),
                                ("uid", req.uid), ("gid", req.gid)) if v is not None}
    if req.xattrs is not None:
        values["xattrs"] = xattrs_column(req.xattrs)
    if not values or all(row[k] == v for k, v in values.items()):
        return row, None
    conn.execute(nodes.update().where(nodes.c.id == node_id).values(**values))
    row = get(conn, owner_id, node_id)
    return row, journal.append(conn, owner_id, "attr", row, device=device)


def delete(conn: Connection, owner_id: int, node_id: int, *, recursive: bool, device: str,
           rev: int | None = None) -> tuple[Row, int]:
    """Tombstone a node (and, with `recursive`, its whole subtree) as one journal entry.
    Versions stay, so a deleted file can be restored. With `rev`, a file is deleted only
    if nobody committed to it since: a delete never silently discards a newer edit.
    A file that has other names (hard links) is not deleted but moved to the oldest of
    them: the answer is then the file, alive at its new place."""
    row = get(conn, owner_id, node_id)
    if row["parent_id"] is None:
        raise InvalidMove("the root directory cannot be deleted", field="id")
    if rev is not None and row["kind"] == "file" and row["rev"] != rev:
        raise StaleRevision(f"node {node_id} is at revision {row['rev']}, not {rev}", field="rev",
                            current_rev=row["rev"], node=to_wire(row).model_dump())
    if row["kind"] == "dir" and has_children(conn, owner_id, node_id) and not recursive:
        raise NotEmpty(f"directory {node_id} ({row['name']!r}) is not empty", field="id")
    seq = tombstone(conn, owner_id, row, device)
    return get(conn, owner_id, node_id, allow_deleted=True), seq


def tombstone(conn: Connection, owner_id: int, row: Row, device: str) -> int:
    """Delete one name (with a directory, everything below it), every node it takes
    stamped with the one journal entry that says so, so an undelete brings back exactly
    what went with it. A node that keeps other names is not deleted: it moves to one of
    them (`_promote`). Returns the last seq."""
    if row["kind"] == "dir":
        _promote_out_of(conn, owner_id, row["id"])
    elif row["kind"] != "link":
        others = aliases(conn, owner_id, row["id"])
        if others:
            return _promote(conn, owner_id, row, others[0])
    seq = journal.append(conn, owner_id, "delete", row, device=device)
    now = time.time()
    gone = dict(deleted=True, deleted_at=now, deleted_by=device, delete_seq=seq)
    conn.execute(deleted_with.insert().values(delete_seq=seq, node_id=row["id"]))
    if row["kind"] == "dir":
        below = live_subtree(owner_id, row["id"])
        conn.execute(deleted_with.insert().from_select(["delete_seq", "node_id"],
                                                       sa.select(sa.literal(seq, sa.BigInteger), below.c.id)))
        conn.execute(nodes.update().where(nodes.c.id.in_(sa.select(live_subtree(owner_id, row["id"]).c.id)))
                     .values(**gone))
        # `rm -r` on a device deletes what is inside one by one, then the directory:
        # one gesture, so one entry in the trash, and an undelete brings it all back.
        recent = sa.and_(nodes.c.deleted == sa.true(), nodes.c.deleted_by == device,
                         nodes.c.deleted_at > now - EMPTIED_WITHIN_S)
        emptied = sa.select(nodes.c.id).where(nodes.c.owner_id == owner_id, nodes.c.parent_id == row["id"],
                                              recent).cte("emptied", recursive=True)
        emptied = emptied.union_all(sa.select(nodes.c.id).where(nodes.c.parent_id == emptied.c.id, recent))
        taken = sa.exists().where(deleted_with.c.delete_seq == seq, deleted_with.c.node_id == emptied.c.id)
        conn.execute(deleted_with.insert().from_select(
            ["delete_seq", "node_id"], sa.select(sa.literal(seq, sa.BigInteger), emptied.c.id).where(~taken).distinct()))
        conn.execute(nodes.update().where(nodes.c.id.in_(sa.select(emptied.c.id))).values(delete_seq=seq))
    conn.execute(nodes.update().where(nodes.c.id == row["id"]).values(**gone))
    return seq


def live_subtree(owner_id: int, dir_id: int) -> sa.CTE:
    """The ids of every live node below a directory (not the directory itself)."""
    subtree = sa.select(nodes.c.id).where(
        nodes.c.owner_id == owner_id, nodes.c.parent_id == dir_id, nodes.c.deleted == sa.false()
    ).cte("subtree", recursive=True)
    return subtree.union_all(
        sa.select(nodes.c.id).where(nodes.c.parent_id == subtree.c.id, nodes.c.deleted == sa.false())
    )


def _promote(conn: Connection, owner_id: int, row: Row, alias: Row) -> int:
    """`row` loses its own name but keeps `alias`: it takes the alias's place and the alias
    row goes, so ids of nodes never change kind and versions stay where they are. Two
    entries by the server itself (wire.SERVER_DEVICE): the alias's delete, then the move."""
    conn.execute(nodes.update().where(nodes.c.id == alias["id"]).values(deleted=True))
    journal.append(conn, owner_id, "delete", get(conn, owner_id, alias["id"], allow_deleted=True),
                   device=wire.SERVER_DEVICE)
    conn.execute(nodes.update().where(nodes.c.id == row["id"]).values(parent_id=alias["parent_id"], name=alias["name"]))
    return journal.append(conn, owner_id, "move", get(conn, owner_id, row["id"]), device=wire.SERVER_DEVICE,
                          old_parent_id=row["parent_id"], old_name=row["name"])


def _promote_out_of(conn: Connection, owner_id: int, dir_id: int) -> None:
    """Before a directory's subtree is deleted: every node in it with a name outside it
    moves out to its oldest such name. Names inside go with the subtree."""
    subtree = live_subtree(owner_id, dir_id)
    inside = sa.select(subtree.c.id)
    outside = conn.execute(
        sa.select(nodes).where(nodes.c.owner_id == owner_id, nodes.c.deleted == sa.false(),
                               nodes.c.link_to.in_(inside), nodes.c.id.not_in(inside))
        .order_by(nodes.c.link_to, nodes.c.id)
    ).mappings().all()
    promoted: set[int] = set()
    for alias in outside:
        if alias["link_to"] not in promoted:
            promoted.add(alias["link_to"])
            _promote(conn, owner_id, get(conn, owner_id, alias["link_to"]), dict(alias))
