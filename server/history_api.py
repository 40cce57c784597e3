"""HTTP routes for getting things back: the trash, undelete, point-in-time restore.
The logic is in history.py; each route is one transaction on the owner's tree."""

from __future__ import annotations

from typing import Annotated, Callable, TypeVar

from fastapi import APIRouter, Depends, Query

from cloudfs.backend import wire
from cloudfs.backend.names import split_path

from . import history, journal, tree
from .api import ERRORS, NodeIdPath
from .app import ServerContext, User, context_dependency, current_user, device_name
from .errors import Invalid

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


async def _write(ctx: ServerContext, user: User, fn: Callable[..., T]) -> T:
    def run() -> T:
        with ctx.db.write(user.id) as conn:
            return fn(conn)
    result = await ctx.run_db(run)
    ctx.notifier.notify(user.id)
    return result


@router.get("/trash")
async def list_trash(ctx: Ctx, user: Auth, path: PathQuery = "/",
                     limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> wire.TrashList:
    """What was deleted below `path`, newest first; a deleted directory is one entry."""
    def run() -> wire.TrashList:
        with ctx.db.read() as conn:
            top = tree.resolve(conn, user.id, user.root_id, _names(path))
            return wire.TrashList(entries=history.trash(conn, user.id, top, limit=limit))
    return await ctx.run_db(run)


@router.post("/trash/{node_id}/undelete")
async def undelete(ctx: Ctx, user: Auth, device: Device, node_id: NodeIdPath) -> wire.NodeResponse:
    """Bring a deleted node back where it was (beside, as `NAME (restored)`, if the name is
    taken), with everything its delete took and the deleted directories above it."""
    def run(conn) -> wire.NodeResponse:  # noqa: ANN001
        row, seq = history.undelete(conn, user.id, node_id, device)
        return wire.NodeResponse(node=tree.to_wire(row), cursor=seq)
    return await _write(ctx, user, run)


@router.get("/history/lookup")
async def lookup(ctx: Ctx, user: Auth, path: PathQuery) -> wire.NodeResponse:
    """The node at `path`, or the newest deleted node that had that path."""
    def run() -> wire.NodeResponse:
        with ctx.db.read() as conn:
            row = history.resolve_any(conn, user.id, user.root_id, _names(path))
            return wire.NodeResponse(node=tree.to_wire(row), cursor=journal.cursor(conn, user.id))
    return await ctx.run_db(run)


@router.delete("/trash")
async def empty_trash(ctx: Ctx, user: Auth, path: PathQuery = "/") -> wire.PurgeReport:
    """Purge what was deleted below `path` now; its chunks are collected afterwards."""
    def run(conn) -> wire.PurgeReport:  # noqa: ANN001
        top = tree.resolve(conn, user.id, user.root_id, _names(path))
        return wire.PurgeReport(purged=history.empty_trash(conn, user.id, top))
    return await _write(ctx, user, run)


@router.post("/restore")
async def restore_at(ctx: Ctx, user: Auth, device: Device, req: wire.RestoreAtRequest) -> wire.RestoreReport:
    """Put a directory (or a file) back as it was at `at`: old content, deleted nodes
    back, moves undone, what was made since into the trash. One transaction; undo it
    with another restore to just before this one."""
    def run(conn) -> wire.RestoreReport:  # noqa: ANN001
        top = history.resolve_any(conn, user.id, user.root_id, _names(req.path))
        return history.restore_at(conn, user.id, top, req.at, device)
    return await _write(ctx, user, run)
