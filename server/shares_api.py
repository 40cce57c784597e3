"""HTTP routes for shared folders (shares.py) and the feed over several namespaces.

`POST /sync` is how a device follows everything its account sees with one request: a
cursor per namespace in, the entries of all of them after those cursors out (merged in
seq order), long-polling while there are none. A namespace whose cursor is out of its
retained journal is listed in `gone` (the 410 of `/changes`, for that one alone) while
the others are served. The answer also lists the namespaces the account sees now, so
a device learns of a folder it was given or lost even before the journal says so; it
comes back at once when they differ from the cursors it sent.
"""

from __future__ import annotations

from typing import Annotated, Callable

import anyio
from fastapi import APIRouter, Depends, Path, Response
from sqlalchemy.engine import Connection

from cloudfs.backend.protocol import wire_shares
from cloudfs.backend.protocol.names import USER_NAME_RE, split_path

from . import journal, namespaces, shares, tree
from .api import ERRORS, held_for, park
from .app import ServerContext, User, context_dependency, current_user, device_name
from .errors import Invalid

router = APIRouter(responses=ERRORS)
Ctx = Annotated[ServerContext, Depends(context_dependency)]
Auth = Annotated[User, Depends(current_user)]
Device = Annotated[str, Depends(device_name)]
NsPath = Annotated[int, Path(ge=1, le=2**63 - 1, description="the shared folder (its namespace id)")]
UserPath = Annotated[str, Path(min_length=1, max_length=64, pattern=USER_NAME_RE.pattern, description="an account name")]


async def _write(ctx: ServerContext, locate: Callable[[Connection], tuple[int, ...]],
                 fn: Callable[[Connection], None], user: User, ns_id: Callable[[Connection], int] | int,
                 ) -> wire_shares.Share:
    def body(conn: Connection) -> wire_shares.Share:
        fn(conn)
        return shares.info(conn, user, ns_id(conn) if callable(ns_id) else ns_id)
    touched, share = await ctx.run_db(namespaces.write_in, ctx.db, locate, body)
    for touched_ns in touched:
        ctx.notifier.notify(touched_ns)
    return share


@router.post("/shares", status_code=201, tags=["shares"])
async def share(ctx: Ctx, user: Auth, device: Device, req: wire_shares.ShareRequest) -> wire_shares.Share:
    """Share a folder (by `node_id` or `path`) with another account as `editor` or
    `viewer`: the folder becomes a shared folder (if it is not one yet) and the account
    is invited. Refused for a file, for the drive's root, for a folder inside a shared
    folder or holding one, and for an account that is already a member."""
    if (req.node_id is None) == (req.path is None):
        raise Invalid("name the folder by exactly one of node_id or path", field="path")
    shares.check_role_name(req.role)
    names: list[str] = []
    if req.path is not None:
        try:
            names = split_path(req.path)
        except ValueError as exc:
            raise Invalid(f"path {req.path!r}: {exc}", field="path") from None
    made: list[int] = []

    def folder(conn: Connection) -> tuple[int, dict]:
        if req.node_id is not None:
            ns_id = namespaces.locate(conn, user.id, req.node_id, field="node_id")
            return ns_id, tree.get(conn, ns_id, req.node_id)
        return namespaces.resolve(conn, user.id, user.root_id, names)

    def locate(conn: Connection) -> tuple[int, ...]:
        return tuple(sorted({user.id, folder(conn)[0]}))

    def run(conn: Connection) -> None:
        ns_id, row = folder(conn)
        made.append(shares.share(conn, user, ns_id, row, req.user, req.role, device))
    return await _write(ctx, locate, run, user, lambda conn: made[-1])


@router.get("/shares", tags=["shares"])
async def list_shares(ctx: Ctx, user: Auth) -> wire_shares.ShareList:
    """The shared folders this account has, or is invited to, with their members."""
    def run() -> wire_shares.ShareList:
        with ctx.db.read() as conn:
            return wire_shares.ShareList(shares=shares.listing(conn, user))
    return await ctx.run_db(run)


@router.get("/shares/{ns_id}", tags=["shares"])
async def get_share(ctx: Ctx, user: Auth, ns_id: NsPath) -> wire_shares.Share:
    def run() -> wire_shares.Share:
        with ctx.db.read() as conn:
            return shares.info(conn, user, ns_id)
    return await ctx.run_db(run)


@router.post("/shares/{ns_id}/accept", tags=["shares"])
async def accept(ctx: Ctx, user: Auth, device: Device, ns_id: NsPath,
                 req: wire_shares.AcceptRequest | None = None) -> wire_shares.Share:
    """Accept an invitation: the folder appears at `path` (default /NAME) in this
    account's drive, on all its devices."""
    path = req.path if req is not None else None
    return await _write(ctx, lambda conn: tuple(sorted({user.id, ns_id})),
                        lambda conn: shares.accept(conn, user, ns_id, path, device), user, ns_id)


@router.post("/shares/{ns_id}/decline", tags=["shares"])
async def decline(ctx: Ctx, user: Auth, ns_id: NsPath) -> wire_shares.Share:
    return await _write(ctx, lambda conn: (ns_id,), lambda conn: shares.decline(conn, user, ns_id), user, ns_id)


@router.post("/shares/{ns_id}/leave", tags=["shares"])
async def leave(ctx: Ctx, user: Auth, device: Device, ns_id: NsPath) -> wire_shares.Share:
    """Stop being a member: the folder leaves this account's drive (its devices keep,
    as a folder of their own, whatever they had not uploaded yet)."""
    return await _write(ctx, lambda conn: tuple(sorted({user.id, ns_id})),
                        lambda conn: shares.leave(conn, user, ns_id, device), user, ns_id)


@router.post("/shares/{ns_id}/members", status_code=201, tags=["shares"])
async def invite(ctx: Ctx, user: Auth, ns_id: NsPath, req: wire_shares.MemberRequest) -> wire_shares.Share:
    """The owner invites one more account."""
    def run(conn: Connection) -> None:
        ns = shares._owner_only(conn, user, ns_id)
        target = shares.account(conn, req.user)
        if target["id"] == ns["owner_id"]:
            raise Invalid(f"{req.user} owns this folder", field="user")
        shares.invite(conn, ns_id, target, req.role, user.id)
    return await _write(ctx, lambda conn: (ns_id,), run, user, ns_id)


@router.patch("/shares/{ns_id}/members/{name}", tags=["shares"])
async def set_role(ctx: Ctx, user: Auth, device: Device, ns_id: NsPath, name: UserPath,
                   req: wire_shares.RoleRequest) -> wire_shares.Share:
    """The owner makes a member an editor or a viewer."""
    return await _write(ctx, lambda conn: shares.lock_set(conn, ns_id, name),
                        lambda conn: shares.set_role(conn, user, ns_id, name, req.role, device), user, ns_id)


@router.delete("/shares/{ns_id}/members/{name}", tags=["shares"])
async def remove(ctx: Ctx, user: Auth, device: Device, ns_id: NsPath, name: UserPath) -> wire_shares.Share:
    """The owner withdraws an invitation or removes a member: the folder leaves their
    drive and their devices."""
    return await _write(ctx, lambda conn: shares.lock_set(conn, ns_id, name),
                        lambda conn: shares.remove(conn, user, ns_id, name, device), user, ns_id)


# --- the feed over every namespace ---


@router.post("/sync", tags=["sync"], response_model=wire_shares.SyncResponse)
async def sync(ctx: Ctx, user: Auth, req: wire_shares.SyncRequest) -> Response:
    """Journal entries of every namespace after its cursor, in seq order; with `wait`,
    long-polls until one of them has something (one request however many namespaces)."""
    return await feed(ctx, user, req)


async def feed(ctx: ServerContext, user: User, req: wire_shares.SyncRequest) -> Response:
    """`POST /sync` once its body is valid: here and in sync_route.SyncRoute, which
    serves well-formed long-polls without FastAPI. Raises ApiError (422)."""
    cursors: dict[int, int] = {}
    for key, value in req.cursors.items():
        if not (key.isascii() and key.isdigit()) or not 0 < int(key) < 2**63:  # "³7".isdigit() too
            raise Invalid(f"cursors: {key!r} is not a namespace id", field="cursors")
        cursors[int(key)] = value

    def read() -> tuple[wire_shares.SyncResponse, bool]:
        with ctx.db.read() as conn:
            seen = namespaces.visible(conn, user.id, user.root_id)
            mine = {v.id for v in seen}
            followed = {ns: c for ns, c in cursors.items() if ns in mine}
            changes, new, more, gone = journal.read_many(conn, followed, req.limit)
        answer = wire_shares.SyncResponse(
            changes=changes, cursors={str(ns): c for ns, c in new.items()}, has_more=more, gone=gone,
            namespaces=[wire_shares.NamespaceInfo(id=v.id, root_id=v.root_id, role=v.role, kind=v.kind) for v in seen])
        return answer, mine != set(cursors)

    watched = sorted({user.id, *cursors})
    asked = (tuple(sorted(cursors.items())), req.limit)
    deadline = anyio.current_time() + held_for(req.wait)
    while True:
        woken = ctx.notifier.listen(watched)
        try:
            generations = tuple(ctx.notifier.generation(ns) for ns in watched)
            body = ctx.notifier.known_empty_sync(user.id, asked, generations) if req.wait > 0 else None
            if body is None:  # not an idle device's next long-poll (notifier.py, "Known-empty pages")
                answer, differs = await ctx.run_db(read)
                body = answer.model_dump_json().encode()
                if answer.changes or answer.gone or differs:
                    return Response(content=body, media_type="application/json")
                ctx.notifier.remember_empty_sync(user.id, asked, generations, body)
            remaining = deadline - anyio.current_time()
            if remaining <= 0 or ctx.notifier.closing:
                return Response(content=body, media_type="application/json")
            if not await park(ctx, woken, remaining):
                # Not woken: nothing changed in any of these namespaces since the read
                # (the event was taken before it), so its empty answer still holds.
                return Response(content=body, media_type="application/json")
        finally:
            ctx.notifier.unlisten(watched, woken)

