"""HTTP routes for devices: tree, files, versions and the change feed.

Each handler validates, runs one metadata function in a worker thread, and wakes
long-polls when it wrote to the journal. Version commits and restores instead go to
the writer (`writer.py`), which groups them into batch transactions and wakes
long-polls itself. The logic lives in `tree.py`, `files.py`, `commits.py` and
`journal.py`.
"""

from __future__ import annotations

import hashlib
import random
from typing import Annotated, Callable

import anyio
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel
from sqlalchemy.engine import Connection

from cloudfs.backend.protocol import wire
from cloudfs.backend.protocol.names import split_path
from cloudfs.backend.stores.compress import CompressionError, plain_digest
from cloudfs.backend.stores.store import StoreError, chunk_key

from . import commits, crossing, files, journal, namespaces, shares, tree
from .app import ServerContext, User, context_dependency, current_user, device_name
from .errors import Conflict, Invalid, NotEmpty, NotFound, SharedFolderConflict, StoreUnavailable
from .sql import Row, Tx

ERRORS = {
    status: {"model": wire.ErrorBody, "description": description}
    for status, description in [
        (400, "bad request"), (401, "missing or unknown token"), (404, "no such node, or not yours"),
        (409, "conflict: stale revision, name taken, not empty ..."), (410, "cursor older than retained history"),
        (413, "body too large"), (422, "invalid input or missing chunks"),
    ]
}
router = APIRouter(responses=ERRORS)

Ctx = Annotated[ServerContext, Depends(context_dependency)]
Auth = Annotated[User, Depends(current_user)]
Device = Annotated[str, Depends(device_name)]
NodeIdPath = Annotated[int, Path(ge=1, le=wire.INT64_MAX)]
Cursor = Annotated[int, Query(ge=0, le=wire.INT64_MAX, description="seq of the last change applied; 0 for all")]


def _signer(ctx: ServerContext, request: Request) -> files.Signer:
    return files.Signer(ctx.store, str(request.base_url))


@router.get("/health", tags=["server"])
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/me", tags=["server"])
async def me(ctx: Ctx, user: Auth) -> wire.Me:
    """The account, its own tree's cursor (and every namespace's in `cursors`), and what
    its quota counts: live files of its own tree and of the folders it shares."""
    def run() -> tuple[dict[str, int], int]:
        with ctx.db.read() as conn:
            tx = Tx.of(conn)
            used = commits.used_bytes(tx, user.id) if user.quota_bytes is not None else 0
            cursors = {str(v.id): journal.cursor(tx, v.id) for v in namespaces.visible(tx, user.id, user.root_id)}
            return cursors, used
    cursors, used = await ctx.run_db(run)
    return wire.Me(user_id=user.id, name=user.name, root_id=user.root_id, cursor=cursors[str(user.id)],
                   quota_bytes=user.quota_bytes, used_bytes=used, cursors=cursors)


# --- tree ------------------------------------------------------------------------------


async def _mutate(ctx: ServerContext, user: User, locate: Callable[[Connection], tuple[int, ...]],
                  fn: Callable[[Connection], tuple[Row, int | None, int]]) -> wire.NodeResponse:
    """A tree change: `locate` names (and checks) the namespaces it writes, `fn` makes
    it and returns (row, seq or None, namespace of the cursor) (namespaces.write_in)."""
    def body(conn: Connection) -> wire.NodeResponse:
        row, seq, ns_id = fn(conn)
        cursor = seq if seq is not None else journal.cursor(conn, ns_id)
        return wire.NodeResponse(node=namespaces.as_seen(conn, user.id, row), cursor=cursor)

    touched, response = await ctx.run_db(namespaces.write_in, ctx.db, locate, body)
    for ns_id in touched:
        ctx.notifier.notify(ns_id)
    return response


def _writable(user: User, *node_ids: tuple[int, str]) -> Callable[[Connection], tuple[int, ...]]:
    """A `locate` for `_mutate`: the namespaces of these (node id, field) pairs, which the
    account must be allowed to change."""
    def locate(conn: Connection) -> tuple[int, ...]:
        return tuple(namespaces.locate(conn, user.id, node_id, write=True, field=field) for node_id, field in node_ids)
    return locate


def _locked(nss: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(sorted(set(nss)))


@router.get("/resolve", tags=["tree"])
async def resolve(ctx: Ctx, user: Auth, path: Annotated[str, Query(max_length=4095, description="absolute path, '/' is the root")]) -> wire.NodeResponse:
    try:
        names = split_path(path)
    except ValueError as exc:
        raise Invalid(f"path {path!r}: {exc}", field="path") from None

    def run() -> wire.NodeResponse:
        with ctx.db.read() as conn:
            ns_id, row = namespaces.resolve(conn, user.id, user.root_id, names)
            return wire.NodeResponse(node=namespaces.as_seen(conn, user.id, row), cursor=journal.cursor(conn, ns_id))
    return await ctx.run_db(run)


@router.get("/nodes", tags=["tree"])
async def snapshot(ctx: Ctx, user: Auth, after_id: Annotated[int, Query(ge=0, le=wire.INT64_MAX)] = 0,
                   limit: Annotated[int, Query(ge=1, le=10_000)] = 5000,
                   ns: Annotated[int | None, Query(ge=1, le=wire.INT64_MAX, description="a shared folder's namespace; "
                                                  "default the account's own tree")] = None) -> wire.Snapshot:
    """Every live node of one namespace, paged by id: how a new or lost device rebuilds
    its mirror. Take `cursor` from the first page and follow `/changes` (or that
    namespace's cursor in `/sync`) from there afterwards. A shared folder's root comes
    first, where this account mounted it."""
    ns_id = user.id if ns is None else ns

    def run() -> wire.Snapshot:
        with ctx.db.read() as conn:
            namespaces.check_role(conn, user.id, ns_id, write=False, what="shared folder", field="ns")
            cursor = journal.cursor(conn, ns_id)
            page, next_after = tree.snapshot(conn, ns_id, after_id=after_id, limit=limit)
            if ns_id != user.id:
                page = [namespaces.as_seen(conn, user.id, tree.get(conn, ns_id, n.id)) if n.parent_id is None else n
                        for n in page]
        return wire.Snapshot(nodes=page, next_after_id=next_after, cursor=cursor)
    return await ctx.run_db(run)


@router.get("/nodes/{node_id}", tags=["tree"])
async def get_node(ctx: Ctx, user: Auth, node_id: NodeIdPath) -> wire.NodeResponse:
    def run() -> wire.NodeResponse:
        with ctx.db.read() as conn:
            ns_id = namespaces.locate(conn, user.id, node_id)
            return wire.NodeResponse(node=namespaces.as_seen(conn, user.id, tree.get(conn, ns_id, node_id)),
                                     cursor=journal.cursor(conn, ns_id))
    return await ctx.run_db(run)


@router.get("/nodes/{node_id}/children", tags=["tree"])
async def list_dir(ctx: Ctx, user: Auth, node_id: NodeIdPath,
                   after: Annotated[str | None, Query(max_length=255, description="last name of the previous page")] = None,
                   limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
                   linked: Annotated[bool, Query(description="also the nodes behind hard links (`linked`)")] = False,
                   name: Annotated[str | None, Query(min_length=1, max_length=255,
                                                     description="only the entry of this name")] = None,
                   ) -> wire.Listing:
    """A directory's entries by name. A device wants the names only; the web page asks
    for `linked` too, to show a hard link with its file's size and dates. With `name`,
    the one entry of that name (none if there is none)."""
    if after is not None and "\0" in after:
        raise Invalid("a name never contains NUL", field="after")
    if name is not None and "\0" in name:
        raise Invalid("a name never contains NUL", field="name")

    def run() -> wire.Listing:
        with ctx.db.read() as conn:
            ns_id = _directory_ns(conn, user, node_id)
            entries, next_after = tree.list_children(conn, ns_id, node_id, after=after, limit=limit, name=name)
            more = tree.linked(conn, ns_id, entries) if linked else []
        return wire.Listing(entries=entries, next_after=next_after, linked=more)
    return await ctx.run_db(run)


@router.get("/nodes/{node_id}/deleted", tags=["tree"])
async def list_deleted(ctx: Ctx, user: Auth, node_id: NodeIdPath,
                       name: Annotated[str, Query(min_length=1, max_length=255, description="the name they had")],
                       limit: Annotated[int, Query(ge=1, le=100)] = 20) -> wire.Listing:
    """The deleted nodes that were last named `name` in this directory, newest first. A
    device retrying a create whose answer it never had asks: its first try may have
    landed, and another device deleted that file since (then it was ours, and stays
    deleted)."""
    if "\0" in name or "/" in name:
        raise Invalid("a name never contains NUL or /", field="name")

    def run() -> wire.Listing:
        with ctx.db.read() as conn:
            ns_id = _directory_ns(conn, user, node_id)
            return wire.Listing(entries=tree.deleted_named(conn, ns_id, node_id, name, limit=limit), next_after=None)
    return await ctx.run_db(run)


@router.get("/nodes/{node_id}/created", tags=["tree"])
async def list_created(ctx: Ctx, user: Auth, node_id: NodeIdPath,
                       name: Annotated[str, Query(min_length=1, max_length=255, description="the name they were given")],
                       after: Annotated[int, Query(ge=0, le=wire.INT64_MAX,
                                                   description="a journal position before the create")],
                       limit: Annotated[int, Query(ge=1, le=100)] = 20) -> wire.Listing:
    """The nodes created under `name` in this directory after journal position `after`,
    as they are now (moved, changed or deleted since), oldest first. A device retrying a
    create whose answer it never had asks: its first try may have landed, and another
    device may have moved that file away since, so the name alone no longer finds it."""
    if "\0" in name or "/" in name:
        raise Invalid("a name never contains NUL or /", field="name")

    def run() -> wire.Listing:
        with ctx.db.read() as conn:
            ns_id = _directory_ns(conn, user, node_id)
            rows = (tree.get_or_none(conn, ns_id, made) for made in
                    journal.created_at(conn, ns_id, node_id, name, after=after, limit=limit))
            return wire.Listing(entries=[tree.to_wire(r) for r in rows if r is not None], next_after=None)
    return await ctx.run_db(run)


def _directory_ns(conn: Connection, user: User, node_id: int) -> int:
    """The namespace of the directory a listing is asked of, as a 404 naming it."""
    try:
        return namespaces.locate(conn, user.id, node_id)
    except NotFound:
        raise NotFound(f"no directory with id {node_id}", field="id") from None


def _create(user: User, fn: Callable[..., tuple[Row, int | None]], req, device: str):  # noqa: ANN001, ANN202
    """mkdir, symlink, mknod: in the parent's namespace."""
    locate = _writable(user, (req.parent_id, "parent_id"))

    def run(conn: Connection) -> tuple[Row, int | None, int]:
        (ns_id,) = locate(conn)
        return (*fn(conn, ns_id, req, device), ns_id)
    return locate, run


@router.post("/dirs", status_code=201, tags=["tree"])
async def mkdir(ctx: Ctx, user: Auth, device: Device, req: wire.MkdirRequest) -> wire.NodeResponse:
    return await _mutate(ctx, user, *_create(user, tree.mkdir, req, device))


@router.post("/symlinks", status_code=201, tags=["tree"])
async def symlink(ctx: Ctx, user: Auth, device: Device, req: wire.SymlinkRequest) -> wire.NodeResponse:
    return await _mutate(ctx, user, *_create(user, tree.symlink, req, device))


@router.post("/special", status_code=201, tags=["tree"])
async def mknod(ctx: Ctx, user: Auth, device: Device, req: wire.MknodRequest) -> wire.NodeResponse:
    """A FIFO, unix socket, or character or block device node: metadata only."""
    return await _mutate(ctx, user, *_create(user, tree.mknod, req, device))


@router.post("/links", status_code=201, tags=["tree"])
async def link(ctx: Ctx, user: Auth, device: Device, req: wire.LinkRequest) -> wire.NodeResponse:
    """A hard link: one more name for a file, symlink or special file (an *alias*, kind
    `link`, whose `link_to` is the node). An alias moves, is renamed over and is deleted
    like any node; content and attribute calls on its id act on its node. Deleting a
    node's own name while it has aliases moves it to the oldest one instead. A file's
    names stay in one namespace: a link across a shared folder's boundary is 409."""
    locate = _writable(user, (req.parent_id, "parent_id"))

    def run(conn: Connection) -> tuple[Row, int | None, int]:
        (ns_id,) = locate(conn)
        other = namespaces.ns_of(conn, req.node_id)
        if other not in (ns_id, None) and namespaces.role_in(conn, user.id, other) is not None:
            raise SharedFolderConflict("a file's names stay on one side of a shared folder's boundary",
                                       field="node_id", errno="EXDEV")
        return (*tree.link(conn, ns_id, req, device), ns_id)
    return await _mutate(ctx, user, locate, run)


@router.post("/nodes/{node_id}/move", tags=["tree"])
async def move(ctx: Ctx, user: Auth, device: Device, node_id: NodeIdPath, req: wire.MoveRequest) -> wire.NodeResponse:
    """Rename or move a node; a directory moves with its whole subtree in one step. Into
    or out of a shared folder, the node changes namespace (a delete for the members who
    see only one side, crossing.py); a shared folder itself moves in this account's tree
    alone (its mount)."""
    def nodes_of(conn: Connection) -> tuple[int, int, bool]:
        from_ns, mount = _node_ns(conn, user, node_id)
        return from_ns, namespaces.locate(conn, user.id, req.parent_id, write=True, field="parent_id"), mount

    def locate(conn: Connection) -> tuple[int, ...]:
        from_ns, to_ns, mount = nodes_of(conn)
        return _locked((user.id, from_ns) if mount else (from_ns, to_ns))

    def run(conn: Connection) -> tuple[Row, int | None, int]:
        from_ns, to_ns, mount = nodes_of(conn)
        if mount:
            return (*shares.move_mount(conn, user, from_ns, req, device), user.id)
        row = tree.get(conn, from_ns, node_id)
        if row["kind"] == "mount":
            return (*shares.move_mount(conn, user, row["mount_ns"], req, device), user.id)
        if from_ns != to_ns:
            return (*crossing.move_across(conn, from_ns, to_ns, row, req, device), to_ns)
        return (*tree.move(conn, from_ns, node_id, req, device), from_ns)
    return await _mutate(ctx, user, locate, run)


def _node_ns(conn: Connection, user: User, node_id: int) -> tuple[int, bool]:
    """The namespace of a node to move or delete, and whether it is a shared folder's
    root: that one is the caller's to move or delete (leave) whatever their role."""
    ns_id = namespaces.locate(conn, user.id, node_id)
    if _shared_root(conn, ns_id, node_id):
        return ns_id, True
    namespaces.check_role(conn, user.id, ns_id, write=True)
    return ns_id, False


def _shared_root(conn: Connection, ns_id: int, node_id: int) -> bool:
    row = tree.get_or_none(conn, ns_id, node_id)
    return row is not None and row["parent_id"] is None and ns_id != namespaces.owner_root(conn, ns_id)


@router.patch("/nodes/{node_id}", tags=["tree"])
async def set_attr(ctx: Ctx, user: Auth, device: Device, node_id: NodeIdPath, req: wire.AttrRequest) -> wire.NodeResponse:
    locate = _writable(user, (node_id, "id"))

    def run(conn: Connection) -> tuple[Row, int | None, int]:
        (ns_id,) = locate(conn)
        return (*tree.set_attr(conn, ns_id, node_id, req, device), ns_id)
    return await _mutate(ctx, user, locate, run)


@router.delete("/nodes/{node_id}", tags=["tree"])
async def delete(ctx: Ctx, user: Auth, device: Device, node_id: NodeIdPath, recursive: bool = False,
                 rev: Annotated[int | None, Query(ge=0, le=wire.INT64_MAX, description="delete a file only if it is still at this revision")] = None,
                 ) -> wire.NodeResponse:
    """Tombstone a node; a non-empty directory needs `recursive=true`. A file deleted with
    a `rev` it no longer has answers 409 stale_revision, like a commit would. A shared
    folder deleted by a member: they leave it; by its owner: only once nobody else is a
    member (it becomes a folder of theirs again, and goes to their trash)."""
    def locate(conn: Connection) -> tuple[int, ...]:
        ns_id, mount = _node_ns(conn, user, node_id)
        if mount:
            return _locked((user.id, ns_id))
        if ns_id == user.id:
            row = tree.get_or_none(conn, ns_id, node_id)
            below = shares.mounts_below(conn, user.id, node_id) if row is not None and row["kind"] == "dir" else []
            mounts = [row["mount_ns"]] if row is not None and row["kind"] == "mount" else []
            return _locked((ns_id, *mounts, *(m["mount_ns"] for m in below)))
        return (ns_id,)

    def run(conn: Connection) -> tuple[Row, int | None, int]:
        ns_id, mount = _node_ns(conn, user, node_id)
        if mount:
            return (*shares.delete_root(conn, user, ns_id, device), user.id)
        row = tree.get(conn, ns_id, node_id)
        if row["kind"] == "mount":
            return (*shares.delete_root(conn, user, row["mount_ns"], device), user.id)
        if row["kind"] == "dir" and ns_id == user.id:
            below = shares.mounts_below(conn, user.id, node_id)
            if below and not recursive:
                raise NotEmpty(f"directory {node_id} ({row['name']!r}) is not empty", field="id")
            for mount in below:  # the shared folders in it: left, or dissolved (their owner, alone in them)
                shares.delete_root(conn, user, mount["mount_ns"], device)
        return (*tree.delete(conn, ns_id, node_id, recursive=recursive, device=device, rev=rev), ns_id)
    return await _mutate(ctx, user, locate, run)


# --- files -----------------------------------------------------------------------------


@router.post("/uploads/prepare", tags=["files"])
async def prepare_upload(ctx: Ctx, user: Auth, request: Request, req: wire.PrepareUploadRequest) -> wire.PrepareUploadResponse:
    """Which of these chunks the namespace lacks, with a signed PUT for each: the
    namespace of `node_id` (the file, or the directory a new file goes into), by default
    the account's own tree."""
    ns_id = user.id
    if req.node_id is not None:
        ns_id = await ctx.run_db(_locate, ctx, user, req.node_id, True, "node_id")
    prepared = await ctx.run_db(files.prepare_upload, ctx.db, _signer(ctx, request), ns_id, req)
    prepared.check_after_put = bool(prepared.missing) and ctx.store.reads_back
    return prepared


@router.post("/chunks/check", tags=["files"], response_model=wire.CheckChunksResponse)
async def check_chunks(ctx: Ctx, user: Auth, req: wire.CheckChunksRequest) -> wire.CheckChunksResponse:
    """Verify chunks just PUT now, not at the commit that names them. Where the store
    keeps no checksum it checked on PUT (moto, some S3 clones), verifying reads every
    chunk back: a device that asks after each batch of PUTs has the read-back of one
    batch overlap the PUTs of the next, and its commit finds the chunks verified."""
    ns_id = user.id
    if req.node_id is not None:
        ns_id = await ctx.run_db(_locate, ctx, user, req.node_id, True, "node_id")
    pending = await ctx.run_db(files.pending_rows, ctx.db, ns_id, req.fingerprints)
    verified, problems = await _check_in_store(ctx, ns_id, commits.Unverified({}, pending)) if pending else ([], {})
    if verified:
        await ctx.run_db(files.record_verified, ctx.db, ns_id, verified)
    already = set(req.fingerprints) - {row["fingerprint"] for row in pending}
    good = await ctx.run_db(files.verified_among, ctx.db, ns_id, sorted(already)) if already else []
    return wire.CheckChunksResponse(verified=sorted(set(verified) | set(good)), problems=problems)


def _locate(ctx: ServerContext, user: User, node_id: int, write: bool, field: str) -> int:
    with ctx.db.read() as conn:
        return namespaces.locate(conn, user.id, node_id, write=write, field=field)


def _visible(ctx: ServerContext, user: User) -> list[int]:
    with ctx.db.read() as conn:
        return [v.id for v in namespaces.visible(conn, user.id, user.root_id)]


@router.post("/downloads/prepare", tags=["files"])
async def prepare_download(ctx: Ctx, user: Auth, request: Request, req: wire.PrepareDownloadRequest) -> wire.PrepareDownloadResponse:
    """Fresh signed GET URLs for chunks of this account's namespaces (its own tree and
    the shared folders it has). A chunk uploaded but not yet named by a commit (a file
    streamed while written) is looked at in the store first."""
    visible = await ctx.run_db(_visible, ctx, user)
    try:
        return await ctx.run_db(files.prepare_download, ctx.db, _signer(ctx, request), visible, req)
    except NotFound:
        found = False
        for ns_id in visible:
            pending = await ctx.run_db(files.pending_rows, ctx.db, ns_id, req.fingerprints)
            if pending:
                verified, _ = await _check_in_store(ctx, ns_id, commits.Unverified({}, pending))
                if verified:
                    await ctx.run_db(files.record_verified, ctx.db, ns_id, verified)
                    found = True
        if not found:
            raise
    return await ctx.run_db(files.prepare_download, ctx.db, _signer(ctx, request), visible, req)


@router.post("/files", tags=["files"], response_model=wire.CommitResponse)
async def commit(ctx: Ctx, user: Auth, device: Device, req: wire.CommitRequest) -> Response:
    """Commit a version. Every chunk must be uploaded first (422 names the missing ones);
    a stale `base_rev` is 409 with the current revision. In a shared folder, chunks the
    account uploaded to another of its namespaces are given to the folder, not asked for."""
    return await commit_version(ctx, user, device, req)


async def commit_version(ctx: ServerContext, user: User, device: str, req: wire.CommitRequest) -> Response:
    """The commit route's work; `commit_route.py` calls it too, for well-formed requests
    that it serves without FastAPI's per-request machinery. The job runs in the
    namespace of the file (or its directory): guessed (the account's own tree, or
    where this node was last seen), and submitted again where the job finds it is."""
    commits.check_size(req)
    hint = req.node_id or req.parent_id
    ns_id = ctx.ns_guess.get(hint, user.id) if hint else user.id
    for _ in range(4):
        try:
            response = await _commit_in(ctx, ns_id, user, device, req)
        except commits.Elsewhere as elsewhere:
            ns_id = elsewhere.ns_id
            if hint:
                ctx.guess_ns(hint, ns_id)
            continue
        if ns_id != user.id:
            ctx.guess_ns(response.node.id, ns_id)
        return _json(response)
    raise Conflict("the file kept moving between shared folders during the commit; commit again", field="node_id")


async def _commit_in(ctx: ServerContext, ns_id: int, user: User, device: str, req: wire.CommitRequest) -> BaseModel:
    if req.inline:
        stored = await _store_inline(ctx, ns_id, req)
        return await ctx.writer.submit(ns_id, commits.stored_then_commit, ns_id, user, req, device, stored)
    try:
        return await ctx.writer.submit(ns_id, commits.commit, ns_id, user, req, device)
    except commits.Unverified as unverified:
        # Chunks uploaded straight to the store (S3) have not been looked at yet: look
        # now, outside any transaction, then write what was found and the commit together.
        verified, problems = await _check_in_store(ctx, ns_id, unverified)
        by_ns: dict[int, list[str]] = {}
        for row in unverified.pending:
            if row["fingerprint"] in verified:
                by_ns.setdefault(row["owner_id"], []).append(row["fingerprint"])
        return await ctx.writer.submit(ns_id, commits.verify_then_commit, ns_id, user, req, device, by_ns, problems)


async def _store_inline(ctx: ServerContext, owner_id: int, req: wire.CommitRequest) -> list[files.Stored]:
    """Hash each inline chunk and put it into the store: verified by construction, so a
    small file needs no prepare, no PUT and no look into the store at commit."""
    lengths = {c.fingerprint: c.length for c in req.chunks}
    stored: dict[str, wire.InlineChunk] = {}
    for i, chunk in enumerate(req.inline or []):
        fp, length = chunk.fingerprint, lengths.get(chunk.fingerprint)
        if length is None:
            raise Invalid(f"inline chunk {fp} is not one of the commit's chunks", field=f"inline[{i}]")
        try:
            digest, plain_length = plain_digest((chunk.data,), chunk.compression, max_length=length)
        except CompressionError as exc:
            raise Invalid(f"inline chunk {fp} is not a valid {chunk.compression} body: {exc}",
                          field=f"inline[{i}].data") from None
        if plain_length != length:
            raise Invalid(f"inline chunk {fp} holds {plain_length} bytes, the commit says {length}",
                          field=f"inline[{i}].data")
        if digest != fp:
            raise Invalid(f"inline chunk {fp}: its bytes hash to something else", field=f"inline[{i}].data")
        stored[fp] = chunk
    if sum(lengths[fp] for fp in stored) > wire.INLINE_MAX_BYTES:
        raise Invalid(f"inline chunks hold more than {wire.INLINE_MAX_BYTES} plain bytes; PUT them to signed URLs",
                      field="inline")

    failed: list[StoreUnavailable] = []

    async def put(chunk: wire.InlineChunk) -> None:
        try:
            await ctx.run_store(ctx.store.put, chunk_key(owner_id, chunk.fingerprint), chunk.data)
        except StoreError as exc:  # raised below as itself, not inside an ExceptionGroup
            failed.append(StoreUnavailable(f"object store unavailable while storing chunk {chunk.fingerprint}: {exc}"))

    async with anyio.create_task_group() as nursery:
        for chunk in stored.values():
            nursery.start_soon(put, chunk)
    if failed:
        raise failed[0]
    return [files.Stored(fp, lengths[fp], len(c.data), hashlib.sha256(c.data).hexdigest(), c.compression)
            for fp, c in stored.items()]


async def _check_in_store(ctx: ServerContext, owner_id: int, unverified: commits.Unverified) -> tuple[list[str], dict[str, str]]:
    pending = unverified.pending
    verdicts: list[str | None] = [None] * len(pending)

    unavailable: list[StoreUnavailable] = []

    async def check(i: int) -> None:
        try:
            verdicts[i] = await ctx.run_store(files.check_stored, ctx.store, owner_id, pending[i])
        except StoreUnavailable as exc:  # raised below as itself, not inside an ExceptionGroup
            unavailable.append(exc)

    async with anyio.create_task_group() as nursery:
        for i in range(len(pending)):
            nursery.start_soon(check, i)
    if unavailable:
        raise unavailable[0]
    problems = dict(unverified.problems)
    verified = []
    for row, verdict in zip(pending, verdicts):
        if verdict is None:
            verified.append(row["fingerprint"])
        else:
            problems[row["fingerprint"]] = verdict
    return verified, problems


def _json(model: BaseModel) -> Response:
    """Rendered once by pydantic, skipping FastAPI's validation of the response model
    (the route's `response_model` still documents it)."""
    return Response(content=model.model_dump_json(), media_type="application/json")


@router.get("/files/{node_id}", tags=["files"])
async def file_info(ctx: Ctx, user: Auth, request: Request, node_id: NodeIdPath,
                    rev: Annotated[int | None, Query(ge=1, le=wire.INT64_MAX)] = None, urls: bool = True) -> wire.FileInfo:
    """Metadata, ordered chunk list and signed GET URLs of the current (or `rev`) version."""
    ns_id = await ctx.run_db(_locate, ctx, user, node_id, False, "id")
    info = await ctx.run_db(files.file_info, ctx.db, _signer(ctx, request), ns_id, node_id, rev=rev, urls=urls)
    if info.node.parent_id is None and ns_id != user.id:
        info.node = await ctx.run_db(_seen, ctx, user, ns_id, info.node.id)
    return info


def _seen(ctx: ServerContext, user: User, ns_id: int, node_id: int) -> wire.Node:
    with ctx.db.read() as conn:
        return namespaces.as_seen(conn, user.id, tree.get(conn, ns_id, node_id))


@router.get("/files/{node_id}/versions", tags=["files"])
async def versions(ctx: Ctx, user: Auth, node_id: NodeIdPath, limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> wire.VersionList:
    ns_id = await ctx.run_db(_locate, ctx, user, node_id, False, "id")
    return await ctx.run_db(files.list_versions, ctx.db, ns_id, node_id, limit=limit)


@router.post("/files/{node_id}/restore", tags=["files"], response_model=wire.CommitResponse)
async def restore(ctx: Ctx, user: Auth, device: Device, node_id: NodeIdPath, req: wire.RestoreRequest) -> Response:
    """Make an old revision current again, as a new commit."""
    ns_id = await ctx.run_db(_locate, ctx, user, node_id, True, "id")
    for _ in range(4):
        try:
            return _json(await ctx.writer.submit(ns_id, commits.restore, ns_id, user, node_id, req, device))
        except commits.Elsewhere as elsewhere:
            ns_id = elsewhere.ns_id
    raise Conflict("the file kept moving between shared folders during the restore; try again", field="id")


# --- change feed -----------------------------------------------------------------------


class _SharedPage:
    """One journal read and its rendered JSON, shared by every long-poll of the same
    owner, cursor and limit that took its waiter in the same notifier generation."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.value: tuple[bool, bytes] | None = None
        self.error: BaseException | None = None


async def _changes_page(ctx: ServerContext, owner_id: int, cursor: int, limit: int, generation: int) -> tuple[bool, bytes]:
    key = (owner_id, cursor, limit, generation)
    pages = ctx.shared_pages
    page = pages.get(key)
    if page is None:
        page = pages[key] = _SharedPage()

        def read() -> tuple[bool, bytes]:
            with ctx.db.read() as conn:
                entries, new_cursor, has_more = journal.read(conn, owner_id, cursor, limit)
            return bool(entries), wire.ChangesResponse(changes=entries, cursor=new_cursor, has_more=has_more).model_dump_json().encode()

        ctx.metrics.changes_reads.inc()
        try:
            try:
                page.value = await ctx.run_db(read)
            except Exception as exc:  # noqa: BLE001 - re-raised in every sharer below
                page.error = exc
        finally:
            del pages[key]
            page.done.set()
    else:
        await page.done.wait()
        if page.value is None and page.error is None:  # the reader was cancelled: read ourselves
            return await _changes_page(ctx, owner_id, cursor, limit, generation)
    if page.error is not None:
        raise page.error
    assert page.value is not None
    return page.value


MAX_WAIT_S = 60
MAX_CHANGES = 5000
DEFAULT_CHANGES = 1000


@router.get("/changes", tags=["sync"], response_model=wire.ChangesResponse)
async def changes(ctx: Ctx, user: Auth, cursor: Cursor = 0,
                  wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="seconds to hold the request open when nothing is new")] = 0,
                  limit: Annotated[int, Query(ge=1, le=MAX_CHANGES)] = DEFAULT_CHANGES) -> Response:
    """Journal entries after `cursor`, oldest first. With `wait`, long-polls until something
    arrives. 410 means the cursor is older than retained history: resync from `/nodes`."""
    return await long_poll(ctx, user.id, cursor, wait, limit)


async def long_poll(ctx: ServerContext, owner_id: int, cursor: int, wait: float, limit: int) -> Response:
    """`GET /changes` once its input is valid: here and in changes_route.ChangesRoute,
    which serves well-formed long-polls without FastAPI. Raises ApiError (410)."""
    deadline = anyio.current_time() + held_for(wait)
    while True:
        woken = ctx.notifier.waiter(owner_id)
        generation = ctx.notifier.generation(owner_id)
        known = ctx.notifier.known_empty(owner_id, cursor) if wait > 0 else None
        if known is not None:  # an idle device's next long-poll: nothing to read (notifier.py)
            found, body = False, known
        else:
            found, body = await _changes_page(ctx, owner_id, cursor, limit, generation)
            if not found:
                ctx.notifier.remember_empty(owner_id, cursor, generation, body)
        remaining = deadline - anyio.current_time()
        if found or remaining <= 0 or ctx.notifier.closing:
            return Response(content=body, media_type="application/json")
        if not await park(ctx, woken, remaining):
            # Not woken: nothing was committed for this owner since the read above (the
            # waiter was taken before it), so its empty page is still the answer. Reading
            # again cost every idle device a second database query per long-poll.
            return Response(content=body, media_type="application/json")


async def park(ctx: ServerContext, woken: anyio.Event, seconds: float) -> bool:
    """Hold a long-poll until `woken` is set or `seconds` pass (counted in /metrics as
    waiting). True when woken."""
    ctx.metrics.long_polls.inc()
    try:
        with anyio.move_on_after(seconds) as timer:
            await woken.wait()
    finally:
        ctx.metrics.long_polls.dec()
    return not timer.cancelled_caught


LONG_POLL_SPREAD = 0.2
"""A long-poll of `wait` >= 5 s ends after a random 80-100 % of it."""


def held_for(wait: float) -> float:
    """How long to hold a long-poll that nothing wakes. Devices that reconnected together
    (a replica restarted, a balancer failed over) would otherwise time out together, every
    `wait` seconds, forever: 10,000 devices re-polling within a few seconds of each other
    (scripts/bench_cluster.py). A random share of the wait spreads them out within a few
    rounds; the API promises "up to `wait` seconds", and short waits stay exact."""
    return wait if wait < 5 else wait * (1 - LONG_POLL_SPREAD * random.random())
