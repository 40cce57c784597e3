"""Writing a version: a commit or a restore is version + node + journal entry, together.

Each function here is a job for the writer (`writer.py`): it runs inside the writer's
batch transaction, in its own savepoint, and either writes everything it means to or
raises before the savepoint is released, so a refused commit never leaves half a
version behind and never disturbs the other commits of its batch. Checks run inside
the same transaction as the write, so they see every commit ahead of them in the batch:
two commits from the same base revision in one batch are a success and a 409, exactly
as when they arrive a second apart.

Trust but verify: every chunk must already be known good (verified) for this owner.
Chunks still pending (uploaded to S3 on a presigned URL, never looked at) make the job
raise `Unverified`; the caller looks in the store outside any transaction and then
submits `verify_then_commit`.
"""

from __future__ import annotations

import time
from typing import Protocol

from cloudfs.backend.protocol import wire
from cloudfs.backend.protocol.names import split_path

from . import crossing, files, journal, namespaces, tree
from .errors import Invalid, IsADirectory, NameExists, NotADirectory, NotFound, QuotaExceeded, StaleRevision
from .sql import Row, Stmt, Tx
from .writer import Refused


class Actor(Protocol):
    """The account a job acts for (app.User)."""

    id: int
    root_id: int

_VERSION = Stmt("""INSERT INTO versions (node_id, rev, size, mtime_ns, device, created_at, user_id)
                   VALUES (:node_id, :rev, :size, :mtime_ns, :device, :created_at, :user_id) RETURNING id""")
_VERSION_CHUNK = Stmt("""INSERT INTO version_chunks (version_id, idx, fingerprint, length)
                         VALUES (:version_id, :idx, :fingerprint, :length)""")
_QUOTA = Stmt("""SELECT u.id, u.quota_bytes FROM namespaces n JOIN users u ON u.id = n.owner_id
                 WHERE n.id = :owner_id""")
_USED = Stmt("""SELECT COALESCE(SUM(size), 0) FROM nodes
                WHERE owner_id IN (SELECT id FROM namespaces WHERE owner_id = :user_id)
                  AND kind = 'file' AND deleted = {false}""")
_NODE_UPDATE = Stmt("""UPDATE nodes SET size = :size, mtime_ns = :mtime_ns, rev = :rev, deleted = {false},
                         deleted_at = NULL, deleted_by = NULL
                       WHERE id = :id RETURNING *""")
_NODE_UPDATE_MODE = Stmt("""UPDATE nodes SET size = :size, mtime_ns = :mtime_ns, rev = :rev, deleted = {false},
                              deleted_at = NULL, deleted_by = NULL,
                            mode = :mode WHERE id = :id RETURNING *""")


class Elsewhere(Exception):
    """The commit's file (or directory) is in another namespace than the one its job was
    submitted for (the route guessed the account's own tree, or the node moved
    meanwhile): submit it again there. Not an API error; the route catches it."""

    def __init__(self, ns_id: int) -> None:
        super().__init__(f"in namespace {ns_id}")
        self.ns_id = ns_id


class Unverified(Exception):
    """Some chunks of the commit are pending: the store must be asked first. Not an
    API error; the route catches it (api.py)."""

    def __init__(self, problems: dict[str, str], pending: list[Row]) -> None:
        super().__init__(f"{len(pending)} chunk(s) to verify")
        self.problems = problems
        self.pending = pending


def check_size(req: wire.CommitRequest) -> None:
    """The part of a commit's validation that needs no database."""
    total = sum(c.length for c in req.chunks)
    if total != req.size:
        raise Invalid(f"size is {req.size} but the chunks add up to {total}", field="size")


def commit(tx: Tx, owner_id: int, user: Actor, req: wire.CommitRequest, device: str) -> wire.CommitResponse:
    """A new version of a file in namespace `owner_id`: refused (Elsewhere) unless the file
    is there, (ReadOnly) unless `user` may write there, (MissingChunks, Unverified)
    unless every chunk is verified, then (404/409) unless the target and base revision
    still hold."""
    node, parent_id, name = _target(tx, owner_id, user, req)
    if owner_id != user.id:
        namespaces.check_role(tx, user.id, owner_id, write=True, field="node_id")
    _check_chunks(tx, owner_id, user, req.chunks)
    return write_version(tx, owner_id, node, parent_id, name, size=req.size, mtime_ns=req.mtime_ns, mode=req.mode,
                          refs=[(c.fingerprint, c.length) for c in req.chunks], base_rev=req.base_rev, device=device)


def verify_then_commit(tx: Tx, owner_id: int, user: Actor, req: wire.CommitRequest, device: str,
                       verified: dict[int, list[str]], problems: dict[str, str]) -> wire.CommitResponse | Refused:
    """After the store was asked about the pending chunks (by namespace: some may be the
    account's in another namespace): remember the good ones even when the commit is
    refused for the others, hence `Refused` instead of raising."""
    for ns_id, fingerprints in verified.items():
        files.mark_verified(tx, ns_id, fingerprints)
    if problems:
        return Refused(files.missing_chunks(problems))
    return commit(tx, owner_id, user, req, device)


def stored_then_commit(tx: Tx, owner_id: int, user: Actor, req: wire.CommitRequest, device: str,
                       stored: list[files.Stored]) -> wire.CommitResponse:
    """After the route stored the commit's inline chunks: record them verified, commit."""
    files.record_stored(tx, owner_id, stored)
    return commit(tx, owner_id, user, req, device)


def restore(tx: Tx, owner_id: int, user: Actor, node_id: int, req: wire.RestoreRequest,
            device: str) -> wire.CommitResponse:
    """Make an old revision current again, as a new commit (history only grows).
    A deleted file comes back at its old place if that name is still free."""
    _here(tx, owner_id, user, node_id, "id")
    node = tree.inode(tx, owner_id, tree.get(tx, owner_id, node_id, allow_deleted=True), allow_deleted=True)
    node_id = node["id"]
    if node["kind"] != "file":
        raise IsADirectory(f"node {node_id} is a {node['kind']}; only files have versions", field="id")
    vrow = files.load_version(tx, node_id, req.rev, node["rev"])
    if vrow is None:
        raise NotFound(f"node {node_id} has no revision {req.rev}", field="rev")
    if node["deleted"]:
        tree.get_dir(tx, owner_id, node["parent_id"])
        taken = tree.child(tx, owner_id, node["parent_id"], node["name"])
        if taken is not None:
            raise NameExists(f"{node['name']!r} is taken again in directory {node['parent_id']}",
                             field="id", node=tree.to_wire(taken).model_dump())
    base = req.base_rev if req.base_rev is not None else node["rev"]
    return write_version(tx, owner_id, node, node["parent_id"], node["name"], size=vrow["size"],
                          mtime_ns=time.time_ns(), mode=None, refs=files.version_chunks(tx, vrow["id"]),
                          base_rev=base, device=device)


def _here(tx: Tx, owner_id: int, user: Actor, node_id: int, field: str, what: str = "node") -> None:
    """Raise Elsewhere (or NotFound, ReadOnly) unless `node_id` is in this namespace and
    `user` may write there."""
    try:
        ns_id = namespaces.locate(tx, user.id, node_id, write=True, field=field)
    except NotFound:
        raise NotFound(f"no {what} with id {node_id}", field=field) from None
    if ns_id != owner_id:
        raise Elsewhere(ns_id)


def _check_chunks(tx: Tx, owner_id: int, user: Actor, refs: list[wire.ChunkRef]) -> None:
    distinct = {r.fingerprint: r.length for r in refs}
    if not distinct:
        return
    rows = files.chunk_rows(tx, owner_id, list(distinct))
    lacking = [fp for fp in distinct if rows.get(fp) is None or rows[fp]["state"] == "bad"]
    pending: list[Row] = []
    if lacking:  # uploaded to another namespace of this account (a file moved meanwhile): given, not sent again
        visible = [v.id for v in namespaces.visible(tx, user.id, user.root_id) if v.id != owner_id]
        if crossing.give_chunks(tx, owner_id, lacking, visible):
            rows = files.chunk_rows(tx, owner_id, list(distinct))
        elsewhere = [fp for fp in lacking if rows.get(fp) is None]
        for ns_id in visible:  # ... and not verified there yet: looked at first, then given
            if not elsewhere:
                break
            found = [r for r in files.chunk_rows(tx, ns_id, elsewhere).values() if r["state"] == "pending"]
            pending += [r for r in found if r["length"] == distinct[r["fingerprint"]]]
            elsewhere = [fp for fp in elsewhere if fp not in {r["fingerprint"] for r in found}]
    problems: dict[str, str] = {}
    for fp, length in distinct.items():
        row = rows.get(fp)
        if row is None and any(r["fingerprint"] == fp for r in pending):
            continue
        if row is None or row["state"] == "bad":
            problems[fp] = "not uploaded"
        elif row["state"] == "purging":
            problems[fp] = "collected as unused meanwhile; upload it again"
        elif row["length"] != length:
            problems[fp] = f"length {length} given, {row['length']} uploaded"
        elif row["state"] == "pending":
            pending.append(row)
    if pending:
        raise Unverified(problems, pending)
    if problems:
        raise files.missing_chunks(problems)


def _target(tx: Tx, owner_id: int, user: Actor, req: wire.CommitRequest) -> tuple[Row | None, int, str]:
    """The existing file the commit updates (or None) and the parent + name it lives at.
    Raises Elsewhere when those are in another namespace than `owner_id`."""
    ways = sum(x is not None for x in (req.node_id, req.path, req.parent_id))
    if ways != 1 or (req.parent_id is None) != (req.name is None):
        raise Invalid("name the file by exactly one of: node_id, path, or parent_id + name", field="node_id")
    if req.node_id is not None:
        if owner_id != user.id or tree.get_or_none(tx, owner_id, req.node_id) is None:
            _here(tx, owner_id, user, req.node_id, "node_id", "file")
        try:
            row = tree.inode(tx, owner_id, tree.get(tx, owner_id, req.node_id))  # an alias: its file
        except NotFound:
            raise NotFound(f"no file with id {req.node_id}", field="node_id") from None
        if row["kind"] != "file":
            raise IsADirectory(f"node {req.node_id} is a {row['kind']}, not a file", field="node_id")
        return row, row["parent_id"], row["name"]
    if req.path is not None:
        try:
            names = split_path(req.path)
        except ValueError as exc:
            raise Invalid(f"path {req.path!r}: {exc}", field="path") from None
        if not names:
            raise IsADirectory("the root is a directory, not a file", field="path")
        parent_ns, parent = namespaces.resolve(tx, user.id, user.root_id, names[:-1])
        if parent_ns != owner_id:
            raise Elsewhere(parent_ns)
        if parent["kind"] != "dir":
            raise NotADirectory(f"/{'/'.join(names[:-1])} is not a directory", field="path")
        parent_id, name = parent["id"], names[-1]
    else:
        assert req.parent_id is not None and req.name is not None
        if owner_id != user.id or tree.get_or_none(tx, owner_id, req.parent_id) is None:
            _here(tx, owner_id, user, req.parent_id, "parent_id", "directory")
        parent_id, name = tree.get_dir(tx, owner_id, req.parent_id)["id"], req.name
    existing = tree.child(tx, owner_id, parent_id, name)
    if existing is not None:
        existing = tree.inode(tx, owner_id, existing)  # a hard link: the commit is to its file
    field = "path" if req.path is not None else "name"
    if existing is not None and existing["kind"] == "file" and req.base_rev == 0:
        # A create onto a taken name is a name conflict, not an edit of that file.
        raise NameExists(f"{name!r} already exists in directory {parent_id}", field=field,
                         node=tree.to_wire(existing).model_dump())
    if existing is not None and existing["kind"] != "file":
        raise IsADirectory(f"{name!r} is a {existing['kind']}", field=field, node=tree.to_wire(existing).model_dump())
    return existing, parent_id, name


def write_version(tx: Tx, owner_id: int, node: Row | None, parent_id: int, name: str,
                   *, size: int, mtime_ns: int, mode: int | None, refs: list[tuple[str, int]],
                   base_rev: int, device: str) -> wire.CommitResponse:
    check_quota(tx, owner_id, size - (node["size"] if node is not None and not node["deleted"] else 0))
    if node is None:
        if base_rev != 0:
            raise NotFound(f"{name!r} does not exist in directory {parent_id} (base_rev {base_rev})", field="base_rev")
        # A new file is born at revision 1 with this version's size: one statement.
        node, _ = tree.insert(tx, owner_id, parent_id=parent_id, name=name, kind="file",
                              mode=mode if mode is not None else 0o644, mtime_ns=mtime_ns, device=device,
                              size=size, rev=1, record=False, name_free=True)
        op, rev = "create", 1
    elif node["rev"] != base_rev:
        raise StaleRevision(f"node {node['id']} is at revision {node['rev']}, not {base_rev}", field="base_rev",
                            current_rev=node["rev"], node=tree.to_wire(node).model_dump())
    else:
        op, rev = ("create" if node["deleted"] else "modify"), node["rev"] + 1
        update = {"id": node["id"], "size": size, "mtime_ns": mtime_ns, "rev": rev}
        if mode is not None:
            update["mode"] = mode
        node = tx.one(_NODE_UPDATE_MODE if mode is not None else _NODE_UPDATE, update)
        assert node is not None
    created = time.time()
    version_id = tx.scalar(_VERSION, dict(node_id=node["id"], rev=rev, size=size, mtime_ns=mtime_ns, device=device,
                                          created_at=created, user_id=journal.ACTOR.get()))
    if refs:
        tx.many(_VERSION_CHUNK, [{"version_id": version_id, "idx": i, "fingerprint": fp, "length": length}
                                 for i, (fp, length) in enumerate(refs)])
    # The writer wakes other replicas once per batch (writer.py), not per entry.
    seq = journal.append(tx, owner_id, op, node, device=device, wake_replicas=False)
    return wire.CommitResponse(node=tree.to_wire(node), version=wire.Version(rev=rev, size=size, mtime_ns=mtime_ns,
                                                                            device=device, created_at=created,
                                                                            user_id=journal.ACTOR.get()),
                               cursor=seq)


def quota_owner(tx: Tx, ns_id: int) -> int | None:
    """The account whose quota a namespace's bytes count against: its owner's (a shared
    folder's bytes are its owner's, whoever writes them)."""
    row = tx.one(_QUOTA, {"owner_id": ns_id})
    return None if row is None else row["id"]


def used_bytes(tx: Tx, user_id: int) -> int:
    """What an account's quota counts: live files of every namespace it owns."""
    return int(tx.scalar(_USED, {"user_id": user_id}) or 0)


def check_quota(tx: Tx, owner_id: int, growth: int) -> None:
    """The quota counts the sizes of live files, of the account's own tree and of every
    folder it shares. Only an account with a quota pays for the sum, and only a commit
    that grows the account is refused (507, EDQUOT on the device): shrinking or
    replacing a file always works, so room can be made."""
    if growth <= 0:
        return
    row = tx.one(_QUOTA, {"owner_id": owner_id})
    quota = None if row is None else row["quota_bytes"]
    if quota is None:
        return
    used = used_bytes(tx, row["id"])
    if used + growth > quota:
        raise QuotaExceeded(f"this commit needs {growth} more bytes; {used} of the quota's {quota} are used",
                            field="size", quota_bytes=quota, used_bytes=used)
