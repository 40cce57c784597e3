"""Getting things back: the trash, undelete, and a directory put back as it was at a
moment in the past.

Nothing here deletes history: a tombstone keeps its row, its place and its versions
until the collector (retention.py) purges it after the retention period. A delete
stamps every node it takes with its own journal entry (`delete_seq`), so an undelete
brings back exactly what went with a directory.

Every delete also records each node it took (`deleted_with`), for as long as the node
is kept, so walking back past that delete finds them again (a file that went with its
directory has no delete entry of its own), however often they were brought back and
deleted since. A point-in-time restore starts from the tree as it is and walks the journal backwards
to the moment asked for, undoing each entry (a create: the node was not there; a
delete: it was; a move: it was at the old place; a commit: the revision before). The
difference is then applied in one transaction, so an interrupted restore leaves every
file as it was or as restored, and written to the journal like any change, so devices
follow it and another restore to just before it undoes it. Moves are journalled through
a temporary name first: a device applying them in order never finds a name still taken
by a node that leaves it later in the same restore (a cycle of renames).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloudfs.backend.protocol import wire
from . import commits, files, journal, namespaces, tree
from .db import journal as journal_table
from .db import deleted_with, nodes, version_chunks, versions
from .db import namespaces as namespace_table
from .errors import Invalid, NotFound
from .sql import Row, Tx, as_tx

MAX_WALK = 1_000_000
"""Journal entries a restore may undo: a bound, so a request cannot run forever."""


# --- paths of live and deleted nodes ---


def path_of(conn: Connection, owner_id: int, row: Row) -> str:
    """The path a node has, or had when it was deleted (through deleted parents too)."""
    names: list[str] = []
    for _ in range(tree.MAX_DEPTH):
        if row["parent_id"] is None:
            return "/" + "/".join(reversed(names))
        names.append(row["name"])
        row = tree.get(conn, owner_id, row["parent_id"], allow_deleted=True)
    raise Invalid("directory tree deeper than the server allows", field="path")


def _is_below(conn: Connection, owner_id: int, row: Row, top_id: int) -> bool:
    for _ in range(tree.MAX_DEPTH):
        if row["id"] == top_id:
            return True
        if row["parent_id"] is None:
            return False
        row = tree.get(conn, owner_id, row["parent_id"], allow_deleted=True)
    return False


def resolve_any(conn: Connection, user_id: int, root_id: int, names: list[str]) -> tuple[int, Row]:
    """Like namespaces.resolve, but the last name may be a deleted node (the newest
    deleted one of that name, when nothing live has it): what `versions` and `undelete`
    need. Returns the namespace and the row."""
    try:
        return namespaces.resolve(conn, user_id, root_id, names)
    except NotFound:
        if not names:
            raise
    ns_id, parent = resolve_any(conn, user_id, root_id, names[:-1])
    row = conn.execute(sa.select(nodes).where(nodes.c.owner_id == ns_id, nodes.c.parent_id == parent["id"],
                                              nodes.c.name == names[-1], nodes.c.kind != "mount")
                       .order_by(nodes.c.deleted_at.desc().nulls_last(), nodes.c.id.desc()).limit(1)).mappings().first()
    if row is None:
        raise NotFound(f"/{'/'.join(names)} does not exist and was never deleted here", field="path")
    return ns_id, dict(row)


# --- the trash ---


def trash(conn: Connection, owner_id: int, top: Row, *, limit: int) -> list[wire.TrashEntry]:
    """What was deleted below `top`, newest first: each delete once (a directory, not
    everything in it). An extra name of a file (a hard link) that went is no loss: not listed."""
    deleted_directly = sa.exists().where(journal_table.c.seq == nodes.c.delete_seq,
                                         journal_table.c.node_id == nodes.c.id)
    rows = conn.execute(
        sa.select(nodes).where(nodes.c.owner_id == owner_id, nodes.c.deleted == sa.true(),
                               nodes.c.kind.not_in(("link", "mount")),
                               sa.or_(deleted_directly, nodes.c.delete_seq.is_(None)))
        .order_by(nodes.c.deleted_at.desc().nulls_last(), nodes.c.id.desc())
    ).mappings().all()
    out: list[wire.TrashEntry] = []
    for row in rows:
        if len(out) >= limit:
            break
        if row["delete_seq"] is None and row["parent_id"] is not None:
            parent = tree.get(conn, owner_id, row["parent_id"], allow_deleted=True)
            if parent["deleted"]:
                continue  # a tombstone from before 0003 that went with its directory
        if row["id"] != top["id"] and _is_below(conn, owner_id, dict(row), top["id"]):
            out.append(_trash_entry(conn, owner_id, dict(row)))
    return out


def _trash_entry(conn: Connection, owner_id: int, row: Row) -> wire.TrashEntry:
    inside = 0
    if row["delete_seq"] is not None:
        inside = conn.execute(sa.select(sa.func.count()).where(
            nodes.c.owner_id == owner_id, nodes.c.delete_seq == row["delete_seq"], nodes.c.deleted == sa.true(),
            nodes.c.id != row["id"])).scalar()
    return wire.TrashEntry(node=tree.to_wire(row), path=path_of(conn, owner_id, row), deleted_at=row["deleted_at"],
                           device=row["deleted_by"], inside=int(inside or 0))


def undelete(conn: Connection, owner_id: int, node_id: int, device: str) -> tuple[Row, int]:
    """Bring a deleted node back where it was, with everything its delete took. Deleted
    directories on the way back come back too (only themselves); a name taken meanwhile
    makes it come back beside, as `NAME (restored N).EXT`."""
    row = tree.get(conn, owner_id, node_id, allow_deleted=True)
    if not row["deleted"]:
        raise Invalid(f"node {node_id} ({row['name']!r}) is not deleted", field="id")
    chain = []
    parent = tree.get(conn, owner_id, row["parent_id"], allow_deleted=True)
    for _ in range(tree.MAX_DEPTH):
        if not parent["deleted"]:
            break
        chain.append(parent)
        parent = tree.get(conn, owner_id, parent["parent_id"], allow_deleted=True)
    seq = 0
    for ancestor in reversed(chain):
        _, seq = _bring_back(conn, owner_id, ancestor, device)
    group = [] if row["delete_seq"] is None else conn.execute(
        sa.select(nodes).where(nodes.c.owner_id == owner_id, nodes.c.delete_seq == row["delete_seq"],
                               nodes.c.deleted == sa.true(), nodes.c.id != row["id"])
        .order_by(nodes.c.id)).mappings().all()
    group = [dict(r) for r in group if _is_below(conn, owner_id, dict(r), row["id"])]  # what was in it, only
    coming = {r["id"] for r in group} | {row["id"]}
    top, seq = _bring_back(conn, owner_id, row, device, instead=_gone_file(conn, owner_id, row, coming))
    for member in _parents_first(group):
        _, seq = _bring_back(conn, owner_id, member, device, keep_name=True,
                             instead=_gone_file(conn, owner_id, member, coming))
    return top, seq


def _gone_file(conn: Connection, owner_id: int, row: Row, coming: set[int]) -> Row | None:
    """For a hard link coming back whose file was deleted since (its last name went
    later) and does not come back with it: that file, to come back in the link's place.
    A live link never names a deleted file (tree.py)."""
    if row["kind"] != "link" or row["link_to"] in coming:
        return None
    file = tree.get(conn, owner_id, row["link_to"], allow_deleted=True)
    return file if file["deleted"] else None


def _bring_back(conn: Connection, owner_id: int, row: Row, device: str, *, keep_name: bool = False,
                instead: Row | None = None) -> tuple[Row, int]:
    """`row` back at its place; with `instead` (a deleted file `row` was a link to), that
    file comes back at the place and `row` stays in the trash."""
    name = row["name"] if keep_name else free_name(conn, owner_id, row["parent_id"], row["name"])
    target = row if instead is None else instead
    conn.execute(nodes.update().where(nodes.c.id == target["id"]).values(
        deleted=False, deleted_at=None, deleted_by=None, name=name, parent_id=row["parent_id"]))
    # delete_seq stays: see _walk_back
    back = tree.get(conn, owner_id, target["id"])
    return back, journal.append(conn, owner_id, "create", back, device=device)


def free_name(conn: Connection | Tx, owner_id: int, parent_id: int, name: str) -> str:
    """`name`, or `NAME (restored N).EXT` for the first N that is free in the directory."""
    if tree.child(conn, owner_id, parent_id, name) is None:
        return name
    stem, dot, ext = name.rpartition(".") if "." in name.lstrip(".") else (name, "", "")
    for n in range(1, 10_000):
        label = " (restored)" if n == 1 else f" (restored {n})"
        candidate = f"{stem}{label}{dot}{ext}".encode()[:255].decode("utf-8", "ignore")
        if tree.child(conn, owner_id, parent_id, candidate) is None:
            return candidate
    raise Invalid(f"no free name for {name!r} in directory {parent_id}", field="name")


def _parents_first(rows) -> list[Row]:  # noqa: ANN001 - an iterable of rows
    rows = list(rows)
    ids = {r["id"] for r in rows}
    placed: set[int] = set()
    ordered: list[Row] = []
    for _ in range(len(rows) + 1):
        progress = False
        for r in rows:
            if r["id"] not in placed and (r["parent_id"] not in ids or r["parent_id"] in placed):
                ordered.append(r)
                placed.add(r["id"])
                progress = True
        if not progress:
            break
    return ordered


def purge(conn: Connection, owner_id: int, node_ids: list[int]) -> int:
    """Forget tombstoned nodes for good: their rows and versions. Their chunks are
    collected later, once no retained version names them (retention.py)."""
    for start in range(0, len(node_ids), 500):
        batch = node_ids[start:start + 500]
        version_ids = sa.select(versions.c.id).where(versions.c.node_id.in_(batch))
        conn.execute(version_chunks.delete().where(version_chunks.c.version_id.in_(version_ids)))
        conn.execute(versions.delete().where(versions.c.node_id.in_(batch)))
        conn.execute(nodes.delete().where(nodes.c.owner_id == owner_id, nodes.c.id.in_(batch),
                                          nodes.c.deleted == sa.true()))
        conn.execute(deleted_with.delete().where(
            deleted_with.c.node_id.in_(batch),
            ~sa.exists().where(nodes.c.id == deleted_with.c.node_id)))
    return len(node_ids)


def empty_trash(conn: Connection, owner_id: int, top: Row) -> int:
    """Purge every tombstone below `top` now (everything each delete took, too)."""
    doomed = [r["id"] for r in conn.execute(sa.select(nodes).where(nodes.c.owner_id == owner_id,
                                                                   nodes.c.deleted == sa.true())).mappings()
              if _is_below(conn, owner_id, dict(r), top["id"])]
    return purge(conn, owner_id, doomed)


# --- point-in-time restore ---


@dataclass
class _Past:
    """A node as it was at the moment asked for, and as it is now."""

    row: Row
    present: bool
    parent_id: int | None
    name: str
    rev: int
    attrs: dict = field(default_factory=dict)


def oldest_restorable(conn: Connection, owner_id: int) -> float:
    """The earliest moment the journal still reaches back to (its first retained entry,
    or the account's creation when nothing was pruned)."""
    floor = conn.execute(sa.select(namespace_table.c.journal_floor, namespace_table.c.created_at)
                         .where(namespace_table.c.id == owner_id)).one()
    if not floor.journal_floor:
        return floor.created_at
    first = conn.execute(sa.select(sa.func.min(journal_table.c.created_at)).where(
        journal_table.c.owner_id == owner_id)).scalar()
    return first if first is not None else time.time()


def restore_at(conn: Connection, owner_id: int, top: Row, at: float, device: str) -> wire.RestoreReport:
    """Put `top` (a directory or a file) back as it was at `at` (unix seconds)."""
    now = time.time()
    if at > now:
        raise Invalid(f"{time.ctime(at)} is in the future", field="at")
    oldest = oldest_restorable(conn, owner_id)
    if at < oldest:
        raise Invalid(f"{time.ctime(at)} is before the retained history, which starts at {time.ctime(oldest)}",
                      field="at")
    past = _walk_back(conn, owner_id, at)
    if top["id"] not in past:
        past[top["id"]] = _Past(top, not top["deleted"], top["parent_id"], top["name"], top["rev"])
    scope = _in_scope(conn, owner_id, top["id"], past)
    if not past[top["id"]].present:
        raise Invalid(f"{path_of(conn, owner_id, top)} did not exist at {time.ctime(at)}", field="at")
    tx = as_tx(conn)
    report = wire.RestoreReport(at=at)
    me = past[top["id"]]
    me.parent_id, me.name = top["parent_id"], top["name"]  # the directory itself stays where it is now
    moving = [i for i in scope if past[i].present and (past[i].row["deleted"] or
                                                       (past[i].parent_id, past[i].name) !=
                                                       (past[i].row["parent_id"], past[i].row["name"]))]
    # 1. What moves steps aside first, to a temporary name right below the top: out of
    #    directories about to go, and out of every name another node is about to take.
    for node_id in moving:
        row = past[node_id].row
        if not row["deleted"]:
            conn.execute(nodes.update().where(nodes.c.id == node_id).values(
                parent_id=top["id"], name=free_name(conn, owner_id, top["id"], f".cloudfs-restoring-{node_id}")))
            journal.append(conn, owner_id, "move", tree.get(conn, owner_id, node_id), device=device,
                           old_parent_id=row["parent_id"], old_name=row["name"])
    # 2. What did not exist then goes to the trash, deepest first (each keeps its place).
    for node_id in sorted(scope, key=lambda i: -_depth(past, i)):
        p = past[node_id]
        if not p.present and not tree.get(conn, owner_id, node_id, allow_deleted=True)["deleted"]:
            tree.tombstone(conn, owner_id, tree.get(conn, owner_id, node_id), device)
            report.trashed += 1
    # 3. Then everything takes its old place, parents first; deleted nodes come back.
    for node_id in sorted(moving, key=lambda i: _depth(past, i)):
        p = past[node_id]
        name = free_name(conn, owner_id, p.parent_id, p.name)
        temp = tree.get(conn, owner_id, node_id, allow_deleted=True)
        conn.execute(nodes.update().where(nodes.c.id == node_id).values(
            parent_id=p.parent_id, name=name, deleted=False, deleted_at=None, deleted_by=None))
        back = tree.get(conn, owner_id, node_id)
        if p.row["deleted"]:
            journal.append(conn, owner_id, "create", back, device=device)
            report.undeleted += 1
        else:
            journal.append(conn, owner_id, "move", back, device=device, old_parent_id=temp["parent_id"],
                           old_name=temp["name"])
            report.moved += 1
    # 3. Content and attributes as they were.
    for node_id in scope:
        p = past[node_id]
        if not p.present:
            continue
        row = tree.get(conn, owner_id, node_id)
        if row["kind"] == "file" and p.rev != row["rev"] and p.rev >= 1:
            vrow = files.load_version(tx, node_id, p.rev, row["rev"])
            if vrow is None:
                raise NotFound(f"{path_of(conn, owner_id, row)}: revision {p.rev} is no longer retained", field="at")
            refs = files.version_chunks(tx, vrow["id"])
            now_row = files.load_version(tx, node_id, row["rev"], row["rev"])
            if now_row is None or refs != files.version_chunks(tx, now_row["id"]):  # the same bytes: nothing to do
                commits.write_version(tx, owner_id, row, row["parent_id"], row["name"], size=vrow["size"],
                                      mtime_ns=vrow["mtime_ns"], mode=None, refs=refs, base_rev=row["rev"],
                                      device=device)
                report.reverted += 1
        changed = {k: v for k, v in p.attrs.items() if row[k] != v}
        if changed:
            conn.execute(nodes.update().where(nodes.c.id == node_id).values(**changed))
            journal.append(conn, owner_id, "attr", tree.get(conn, owner_id, node_id), device=device)
    report.cursor = journal.cursor(conn, owner_id)
    return report


_ATTRS = ("mode", "uid", "gid", "xattrs", "atime_ns")


def _walk_back(conn: Connection, owner_id: int, at: float) -> dict[int, _Past]:
    """Every node the journal touched after `at`, as it was at `at`."""
    past: dict[int, _Past] = {}

    def load(node_id: int) -> _Past | None:
        if node_id not in past:
            row = conn.execute(sa.select(nodes).where(nodes.c.id == node_id, nodes.c.owner_id == owner_id)
                               ).mappings().first()
            if row is None or row["kind"] == "mount":
                return None  # purged since, or moved to another namespace; a shared folder is not restored
            row = dict(row)
            past[node_id] = _Past(row, not row["deleted"], row["parent_id"], row["name"], row["rev"])
        return past[node_id]

    entries = conn.execute(sa.select(journal_table).where(journal_table.c.owner_id == owner_id,
                                                          journal_table.c.created_at > at)
                           .order_by(journal_table.c.seq.desc()).limit(MAX_WALK + 1)).mappings().all()
    if len(entries) > MAX_WALK:
        raise Invalid(f"more than {MAX_WALK} changes since then; restore a moment closer to now", field="at")
    for entry in entries:
        p = load(entry["node_id"])
        if p is None:
            continue
        op = entry["op"]
        if op == "create":
            p.present = False
            p.rev = entry["rev"] - 1 if p.row["kind"] == "file" else p.rev
        elif op == "delete":
            p.present = True
            for member in conn.execute(sa.select(deleted_with.c.node_id).where(
                    deleted_with.c.delete_seq == entry["seq"])).scalars():
                q = load(member)
                if q is not None:
                    q.present = True
        elif op in ("move", "exchange"):
            p.parent_id, p.name = entry["old_parent_id"], entry["old_name"]
        elif op == "modify":
            p.rev = entry["rev"] - 1
        elif op == "attr":
            before = conn.execute(sa.select(journal_table).where(
                journal_table.c.owner_id == owner_id, journal_table.c.node_id == entry["node_id"],
                journal_table.c.seq < entry["seq"]).order_by(journal_table.c.seq.desc()).limit(1)).mappings().first()
            if before is not None:
                p.attrs = {k: before[k] for k in _ATTRS}
    return past


def _in_scope(conn: Connection, owner_id: int, top_id: int, past: dict[int, _Past]) -> set[int]:
    """Nodes below `top` then or now (the top itself included)."""
    below = tree.live_subtree(owner_id, top_id)
    now_below = {top_id} | set(conn.execute(sa.select(nodes.c.id).where(
        nodes.c.id.in_(sa.select(below.c.id)), nodes.c.kind != "mount")).scalars())
    for node_id in now_below:
        if node_id not in past:
            row = dict(tree.get(conn, owner_id, node_id))
            past[node_id] = _Past(row, True, row["parent_id"], row["name"], row["rev"])
    # Deleted since and not journalled on their own: they went with a directory deleted since.
    scope = set(now_below)
    for node_id, p in past.items():
        if p.present and _was_below(past, conn, owner_id, node_id, top_id):
            scope.add(node_id)
    return scope


def _was_below(past: dict[int, _Past], conn: Connection, owner_id: int, node_id: int, top_id: int) -> bool:
    for _ in range(tree.MAX_DEPTH):
        if node_id == top_id:
            return True
        p = past.get(node_id)
        parent = p.parent_id if p is not None else tree.get(conn, owner_id, node_id, allow_deleted=True)["parent_id"]
        if parent is None:
            return False
        node_id = parent
    return False


def _depth(past: dict[int, _Past], node_id: int) -> int:
    depth = 0
    for _ in range(tree.MAX_DEPTH):
        p = past.get(node_id)
        if p is None or p.parent_id is None:
            break
        node_id, depth = p.parent_id, depth + 1
    return depth
