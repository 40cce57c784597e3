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
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel

from cloudfs.backend import wire
from cloudfs.backend.names import split_path
from cloudfs.backend.compress import CompressionError, plain_digest
from cloudfs.backend.store import StoreError, chunk_key

from . import commits, files, journal, tree
from .app import ServerContext, User, context_dependency, current_user, device_name
from .errors import Invalid, NotFound, StoreUnavailable

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
    def run() -> tuple[int, int]:
        with ctx.db.read() as conn:
            used = tree.used_bytes(conn, user.id) if user.quota_bytes is not None else 0
            return journal.cursor(conn, user.id), used
    cursor, used = await ctx.run_db(run)
    return wire.Me(user_id=user.id, name=user.name, root_id=user.root_id, cursor=cursor,
                   quota_bytes=user.quota_bytes, used_bytes=used)


# --- tree ------------------------------------------------------------------------------


async def _mutate(ctx: ServerContext, user: User, fn, *args) -> wire.NodeResponse:  # noqa: ANN001
    def run() -> wire.NodeResponse:
        with ctx.db.write(user.id) as conn:
            row, seq = fn(conn, user.id, *args)
            cursor = seq if seq is not None else journal.cursor(conn, user.id)
        return wire.NodeResponse(node=tree.to_wire(row), cursor=cursor)

    response = await ctx.run_db(run)
    ctx.notifier.notify(user.id)
    return response


@router.get("/resolve", tags=["tree"])
async def resolve(ctx: Ctx, user: Auth, path: Annotated[str, Query(max_length=4095, description="absolute path, '/' is the root")]) -> wire.NodeResponse:
    try:
        names = split_path(path)
    except ValueError as exc:
        raise Invalid(f"path {path!r}: {exc}", field="path") from None

    def run() -> wire.NodeResponse:
        with ctx.db.read() as conn:
            row = tree.resolve(conn, user.id, user.root_id, names)
            return wire.NodeResponse(node=tree.to_wire(row), cursor=journal.cursor(conn, user.id))
    return await ctx.run_db(run)


@router.get("/nodes", tags=["tree"])
async def snapshot(ctx: Ctx, user: Auth, after_id: Annotated[int, Query(ge=0, le=wire.INT64_MAX)] = 0,
                   limit: Annotated[int, Query(ge=1, le=10_000)] = 5000) -> wire.Snapshot:
    """Every live node, paged by id: how a new or lost device rebuilds its mirror.
    Take `cursor` from the first page and follow `/changes` from there afterwards."""
    def run() -> wire.Snapshot:
        with ctx.db.read() as conn:
            cursor = journal.cursor(conn, user.id)
            page, next_after = tree.snapshot(conn, user.id, after_id=after_id, limit=limit)
        return wire.Snapshot(nodes=page, next_after_id=next_after, cursor=cursor)
    return await ctx.run_db(run)


@router.get("/nodes/{node_id}", tags=["tree"])
async def get_node(ctx: Ctx, user: Auth, node_id: NodeIdPath) -> wire.NodeResponse:
    def run() -> wire.NodeResponse:
        with ctx.db.read() as conn:
            return wire.NodeResponse(node=tree.to_wire(tree.get(conn, user.id, node_id)), cursor=journal.cursor(conn, user.id))
    return await ctx.run_db(run)


@router.get("/nodes/{node_id}/children", tags=["tree"])
async def list_dir(ctx: Ctx, user: Auth, node_id: NodeIdPath,
                   after: Annotated[str | None, Query(max_length=255, description="last name of the previous page")] = None,
                   limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
                   linked: Annotated[bool, Query(description="also the nodes behind hard links (`linked`)")] = False,
                   ) -> wire.Listing:
    """A directory's entries by name. A device wants the names only; the web page asks
    for `linked` too, to show a hard link with its file's size and dates."""
    if after is not None and "\0" in after:
        raise Invalid("a name never contains NUL", field="after")

    def run() -> wire.Listing:
        with ctx.db.read() as conn:
            entries, next_after = tree.list_children(conn, user.id, node_id, after=after, limit=limit)
            more = tree.linked(conn, user.id, entries) if linked else []
        return wire.Listing(entries=entries, next_after=next_after, linked=more)
    return await ctx.run_db(run)


@router.post("/dirs", status_code=201, tags=["tree"])
async def mkdir(ctx: Ctx, user: Auth, device: Device, req: wire.MkdirRequest) -> wire.NodeResponse:
    return await _mutate(ctx, user, tree.mkdir, req, device)


@router.post("/symlinks", status_code=201, tags=["tree"])
async def symlink(ctx: Ctx, user: Auth, device: Device, req: wire.SymlinkRequest) -> wire.NodeResponse:
    return await _mutate(ctx, user, tree.symlink, req, device)


@router.post("/special", status_code=201, tags=["tree"])
async def mknod(ctx: Ctx, user: Auth, device: Device, req: wire.MknodRequest) -> wire.NodeResponse:
    """A FIFO, unix socket, or character or block device node: metadata only."""
    return await _mutate(ctx, user, tree.mknod, req, device)


@router.post("/links", status_code=201, tags=["tree"])
async def link(ctx: Ctx, user: Auth, device: Device, req: wire.LinkRequest) -> wire.NodeResponse:
    """A hard link: one more name for a file, symlink or special file (an *alias*, kind
    `link`, whose `link_to` is the node). An alias moves, is renamed over and is deleted
    like any node; content and attribute calls on its id act on its node. Deleting a
    node's own name while it has aliases moves it to the oldest one instead."""
    return await _mutate(ctx, user, tree.link, req, device)


@router.post("/nodes/{node_id}/move", tags=["tree"])
async def move(ctx: Ctx, user: Auth, device: Device, node_id: NodeIdPath, req: wire.MoveRequest) -> wire.NodeResponse:
    """Rename or move a node; a directory moves with its whole subtree in one step."""
    return await _mutate(ctx, user, tree.move, node_id, req, device)


@router.patch("/nodes/{node_id}", tags=["tree"])
async def set_attr(ctx: Ctx, user: Auth, device: Device, node_id: NodeIdPath, req: wire.AttrRequest) -> wire.NodeResponse:
    return await _mutate(ctx, user, tree.set_attr, node_id, req, device)


@router.delete("/nodes/{node_id}", tags=["tree"])
async def delete(ctx: Ctx, user: Auth, device: Device, node_id: NodeIdPath, recursive: bool = False,
                 rev: Annotated[int | None, Query(ge=0, description="delete a file only if it is still at this revision")] = None,
                 ) -> wire.NodeResponse:
    """Tombstone a node; a non-empty directory needs `recursive=true`. A file deleted with
    a `rev` it no longer has answers 409 stale_revision, like a commit would."""
    return await _mutate(ctx, user, lambda conn, owner: tree.delete(conn, owner, node_id, recursive=recursive,
                                                                   device=device, rev=rev))


# --- files -----------------------------------------------------------------------------


@router.post("/uploads/prepare", tags=["files"])
async def prepare_upload(ctx: Ctx, user: Auth, request: Request, req: wire.PrepareUploadRequest) -> wire.PrepareUploadResponse:
    """Which of these chunks this account lacks, with a signed PUT for each."""
    return await ctx.run_db(files.prepare_upload, ctx.db, _signer(ctx, request), user.id, req)


@router.post("/downloads/prepare", tags=["files"])
async def prepare_download(ctx: Ctx, user: Auth, request: Request, req: wire.PrepareDownloadRequest) -> wire.PrepareDownloadResponse:
    """Fresh signed GET URLs for chunks of this account. A chunk uploaded but not yet
    named by a commit (a file streamed while written) is looked at in the store first."""
    try:
        return await ctx.run_db(files.prepare_download, ctx.db, _signer(ctx, request), user.id, req)
    except NotFound:
        pending = await ctx.run_db(files.pending_rows, ctx.db, user.id, req.fingerprints)
        if not pending:
            raise
    verified, _ = await _check_in_store(ctx, user.id, commits.Unverified({}, pending))
    if verified:
        await ctx.run_db(files.record_verified, ctx.db, user.id, verified)
    return await ctx.run_db(files.prepare_download, ctx.db, _signer(ctx, request), user.id, req)


@router.post("/files", tags=["files"], response_model=wire.CommitResponse)
async def commit(ctx: Ctx, user: Auth, device: Device, req: wire.CommitRequest) -> Response:
    """Commit a version. Every chunk must be uploaded first (422 names the missing ones);
    a stale `base_rev` is 409 with the current revision."""
    return await commit_version(ctx, user, device, req)


async def commit_version(ctx: ServerContext, user: User, device: str, req: wire.CommitRequest) -> Response:
    """The commit route's work; `commit_route.py` calls it too, for well-formed requests
    that it serves without FastAPI's per-request machinery."""
    commits.check_size(req)
    if req.inline:
        stored = await _store_inline(ctx, user.id, req)
        return _json(await ctx.writer.submit(user.id, commits.stored_then_commit, user.id, user.root_id, req, device,
                                             stored))
    try:
        response = await ctx.writer.submit(user.id, commits.commit, user.id, user.root_id, req, device)
    except commits.Unverified as unverified:
        # Chunks uploaded straight to the store (S3) have not been looked at yet: look
        # now, outside any transaction, then write what was found and the commit together.
        verified, problems = await _check_in_store(ctx, user.id, unverified)
        response = await ctx.writer.submit(user.id, commits.verify_then_commit, user.id, user.root_id, req, device,
                                           verified, problems)
    return _json(response)


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
    return await ctx.run_db(files.file_info, ctx.db, _signer(ctx, request), user.id, node_id, rev=rev, urls=urls)


@router.get("/files/{node_id}/versions", tags=["files"])
async def versions(ctx: Ctx, user: Auth, node_id: NodeIdPath, limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> wire.VersionList:
    return await ctx.run_db(files.list_versions, ctx.db, user.id, node_id, limit=limit)


@router.post("/files/{node_id}/restore", tags=["files"], response_model=wire.CommitResponse)
async def restore(ctx: Ctx, user: Auth, device: Device, node_id: NodeIdPath, req: wire.RestoreRequest) -> Response:
    """Make an old revision current again, as a new commit."""
    return _json(await ctx.writer.submit(user.id, commits.restore, user.id, node_id, req, device))


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
        ctx.metrics.long_polls.inc()
        try:
            with anyio.move_on_after(remaining) as timer:
                await woken.wait()
        finally:
            ctx.metrics.long_polls.dec()
        if timer.cancelled_caught:
            # Not woken: nothing was committed for this owner since the read above (the
            # waiter was taken before it), so its empty page is still the answer. Reading
            # again cost every idle device a second database query per long-poll.
            return Response(content=body, media_type="application/json")


LONG_POLL_SPREAD = 0.2
"""A long-poll of `wait` >= 5 s ends after a random 80-100 % of it."""


def held_for(wait: float) -> float:
    """How long to hold a long-poll that nothing wakes. Devices that reconnected together
    (a replica restarted, a balancer failed over) would otherwise time out together, every
    `wait` seconds, forever: 10,000 devices re-polling within a few seconds of each other
    (scripts/bench_cluster.py). A random share of the wait spreads them out within a few
    rounds; the API promises "up to `wait` seconds", and short waits stay exact."""
    return wait if wait < 5 else wait * (1 - LONG_POLL_SPREAD * random.random())
