"""HTTP routes for getting things back: the trash, undelete, point-in-time restore.
The logic is in history.py; each route is one transaction on the owner's tree."""

from __future__ import annotations

from typing import Annotated, Callable, TypeVar

from fastapi import APIRouter, Depends, Query
from sqlalchemy.engine import Connection

from cloudfs.backend.protocol import wire
from cloudfs.backend.protocol.names import split_path

from . import history, journal, namespaces
from .api import ERRORS, NodeIdPath
from .app import ServerContext, User, context_dependency, current_user, device_name
from .errors import Invalid
from .sql import Row

router = APIRouter(responses=ERRORS, tags=["history"])
Ctx = Annotated[ServerContext, Depends(context_dependency)]
Auth = Annotated[User, Depends(current_user)]
Device = Annotated[str, Depends(device_name)]
PathQuery = Annotated[str, Query(min_length=1, max_length=4095, description="a directory of the drive; / is the root")]
T = TypeVar("T")


def _names(path: str) -> list[str]:
    try:
        return split_path(path)
    except ValueError as exc:
        raise Invalid(f"path {path!r}: {exc}", field="path") from None


def _at_path(user: User, path: str, *, deleted: bool = False) -> Callable[[Connection], tuple[int, Row]]:
    """The namespace and node at `path` (through shared folders; with `deleted`, also a
    deleted one), which the account must be allowed to change."""
    names = _names(path)

    def find(conn: Connection) -> tuple[int, Row]:
        ns_id, row = (history.resolve_any if deleted else namespaces.resolve)(conn, user.id, user.root_id, names)
        namespaces.check_role(conn, user.id, ns_id, write=True, field="path")
        return ns_id, row
    return find


async def _write(ctx: ServerContext, locate: Callable[[Connection], tuple[int, ...]], fn: Callable[..., T]) -> T:
    touched, result = await ctx.run_db(namespaces.write_in, ctx.db, locate, fn)
    for ns_id in touched:
        ctx.notifier.notify(ns_id)
    return result


@router.get("/trash")
async def list_trash(ctx: Ctx, user: Auth, path: PathQuery = "/",
                     limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> wire.TrashList:
    """What was deleted below `path`, newest first; a deleted directory is one entry."""
    def run() -> wire.TrashList:
        with ctx.db.read() as conn:
            ns_id, top = namespaces.resolve(conn, user.id, user.root_id, _names(path))
            return wire.TrashList(entries=history.trash(conn, ns_id, top, limit=limit))
    return await ctx.run_db(run)


@router.post("/trash/{node_id}/undelete")
async def undelete(ctx: Ctx, user: Auth, device: Device, node_id: NodeIdPath) -> wire.NodeResponse:
    """Bring a deleted node back where it was (beside, as `NAME (restored)`, if the name is
    taken), with everything its delete took and the deleted directories above it."""
    def locate(conn: Connection) -> tuple[int, ...]:
        return (namespaces.locate(conn, user.id, node_id, write=True),)

    def run(conn: Connection) -> wire.NodeResponse:
        (ns_id,) = locate(conn)
        row, seq = history.undelete(conn, ns_id, node_id, device)
        return wire.NodeResponse(node=namespaces.as_seen(conn, user.id, row), cursor=seq)
    return await _write(ctx, locate, run)


@router.get("/history/lookup")
async def lookup(ctx: Ctx, user: Auth, path: PathQuery) -> wire.NodeResponse:
    """The node at `path`, or the newest deleted node that had that path."""
    def run() -> wire.NodeResponse:
        with ctx.db.read() as conn:
            ns_id, row = history.resolve_any(conn, user.id, user.root_id, _names(path))
            return wire.NodeResponse(node=namespaces.as_seen(conn, user.id, row), cursor=journal.cursor(conn, ns_id))
    return await ctx.run_db(run)


@router.delete("/trash")
async def empty_trash(ctx: Ctx, user: Auth, path: PathQuery = "/") -> wire.PurgeReport:
    """Purge what was deleted below `path` now; its chunks are collected afterwards."""
    find = _at_path(user, path)

    def run(conn: Connection) -> wire.PurgeReport:
        ns_id, top = find(conn)
        return wire.PurgeReport(purged=history.empty_trash(conn, ns_id, top))
    return await _write(ctx, lambda conn: (find(conn)[0],), run)


@router.post("/restore")
async def restore_at(ctx: Ctx, user: Auth, device: Device, req: wire.RestoreAtRequest) -> wire.RestoreReport:
    """Put a directory (or a file) back as it was at `at`: old content, deleted nodes
    back, moves undone, what was made since into the trash. One transaction; undo it
    with another restore to just before this one. Within one namespace: a shared folder
    is restored on its own, as it is not part of its members' trees' history."""
    find = _at_path(user, req.path, deleted=True)

    def run(conn: Connection) -> wire.RestoreReport:
        ns_id, top = find(conn)
        return history.restore_at(conn, ns_id, top, req.at, device)
    return await _write(ctx, lambda conn: (find(conn)[0],), run)
