"""HTTP routes of share links: the owner's (`/share-links`, signed in) and the public ones
under `/s/{link}` that the link's page calls without any account. What a public
request may reach is checked by share_links.py on every call."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, Field

from cloudfs.backend.protocol import wire
from . import auth, content, share_links, tree
from .api import ERRORS, NodeIdPath
from .app import ServerContext, User, context_dependency, current_user
from .errors import Invalid, IsADirectory, NotADirectory

router = APIRouter(responses={**ERRORS, 429: {"model": wire.ErrorBody, "description": "too many wrong passwords"}},
                   tags=["share links"])
Ctx = Annotated[ServerContext, Depends(context_dependency)]
Auth = Annotated[User, Depends(current_user)]
LinkId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{16,64}$", description="a link's id (its URL's last part)")]
UNLOCK_COOKIE = "cloudfs_share"


class NewLink(BaseModel):
    node_id: Annotated[int, Field(ge=1, le=wire.INT64_MAX)]
    expires_at: Annotated[float, Field(ge=0, le=1e11, description="unix seconds; none: never")] | None = None
    password: Annotated[str, Field(min_length=1, max_length=auth.PASSWORD_MAX)] | None = None
    max_downloads: Annotated[int, Field(ge=1, le=1_000_000)] | None = None


class Link(BaseModel):
    id: str
    url: str
    node_id: int
    name: str
    kind: str
    path: str
    node_deleted: bool
    created_at: float
    expires_at: float | None
    has_password: bool
    max_downloads: int | None
    downloads: int
    expired: bool


class LinkList(BaseModel):
    links: list[Link]


class PublicInfo(BaseModel):
    name: str
    kind: str
    size: int
    mtime_ns: int
    node_id: int
    expires_at: float | None
    needs_password: bool
    downloads_left: int | None


class PublicListing(BaseModel):
    dir: wire.Node
    crumbs: list[dict]
    entries: list[wire.Node]


class Unlock(BaseModel):
    password: Annotated[str, Field(min_length=1, max_length=auth.PASSWORD_MAX)]


def _link(request: Request, d: dict) -> Link:
    return Link(url=f"{str(request.base_url).rstrip('/')}/s/{d['id']}", **d)


@router.post("/share-links", status_code=201)
async def create_link(ctx: Ctx, user: Auth, request: Request, req: NewLink) -> Link:
    """A read-only link to a file or folder; optional expiry, password, download limit."""
    if req.expires_at is not None and req.expires_at <= time.time():
        raise Invalid("the expiry is in the past", field="expires_at")
    hashed = None
    if req.password is not None:
        hashed = await auth.make_password_hash(req.password)
    d = await ctx.run_db(share_links.create, ctx.db, user.id, req.node_id, expires_at=req.expires_at,
                         password_hash=hashed, max_downloads=req.max_downloads)
    return _link(request, d)


@router.get("/share-links")
async def list_links(ctx: Ctx, user: Auth, request: Request) -> LinkList:
    return LinkList(links=[_link(request, d) for d in await ctx.run_db(share_links.owned, ctx.db, user.id)])


@router.delete("/share-links/{link_id}")
async def revoke_link(ctx: Ctx, user: Auth, link_id: LinkId) -> dict[str, bool]:
    """The link answers 404 from now on."""
    await ctx.run_db(share_links.revoke, ctx.db, user.id, link_id)
    return {"revoked": True}


# --- public: no account, only the link ---


async def _open(ctx: ServerContext, request: Request, link_id: str) -> dict:
    row = await ctx.run_db(share_links.opened, ctx.db, link_id)
    if not share_links.unlocked(row, request.cookies.get(UNLOCK_COOKIE)):
        raise share_links.PasswordNeeded("this link needs its password", field="password")
    return row


@router.get("/s/{link_id}/info")
async def public_info(ctx: Ctx, request: Request, link_id: LinkId) -> PublicInfo:
    row = await ctx.run_db(share_links.opened, ctx.db, link_id)
    node = await ctx.run_db(share_links.node_below, ctx.db, row, None)
    locked = not share_links.unlocked(row, request.cookies.get(UNLOCK_COOKIE))
    left = None if row["max_downloads"] is None else row["max_downloads"] - row["downloads"]
    return PublicInfo(name=node["name"], kind=node["kind"], size=0 if locked else node["size"],
                      mtime_ns=0 if locked else node["mtime_ns"], node_id=node["id"], expires_at=row["expires_at"],
                      needs_password=locked, downloads_left=left)


@router.post("/s/{link_id}/unlock")
async def unlock(ctx: Ctx, request: Request, response: Response, link_id: LinkId, req: Unlock) -> dict[str, bool]:
    """Give the link's password; a cookie for this link alone keeps it open."""
    row = await ctx.run_db(share_links.opened, ctx.db, link_id)
    if row["password_hash"] is None:
        return {"unlocked": True}
    address = request.client.host if request.client else "-"

    async def attempt() -> bool:
        return await auth.check_password(row["password_hash"], req.password)

    if not await auth.guarded(ctx, auth.throttle_keys(f"share:{link_id}", address), attempt):
        raise share_links.PasswordNeeded("wrong password for this link", field="password")
    response.set_cookie(UNLOCK_COOKIE, share_links.unlock_value(row), path=f"/s/{link_id}", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
    return {"unlocked": True}


@router.get("/s/{link_id}/list")
async def public_list(ctx: Ctx, request: Request, link_id: LinkId,
                      dir: Annotated[int | None, Query(ge=1, le=wire.INT64_MAX)] = None) -> PublicListing:
    row = await _open(ctx, request, link_id)
    node = await ctx.run_db(share_links.node_below, ctx.db, row, dir)
    if node["kind"] != "dir":
        raise NotADirectory(f"{node['name']!r} is not a folder", field="dir")

    crumbs = await ctx.run_db(share_links.path_in_link, ctx.db, row, node)
    return PublicListing(dir=tree.to_wire(node).model_copy(update={"xattrs": {}}), crumbs=crumbs,
                         entries=await ctx.run_db(share_links.public_entries, ctx.db, row, node["id"]))


@router.api_route("/s/{link_id}/file/{node_id}", methods=["GET", "HEAD"], responses=content.FILE_RESPONSES)
async def public_file(ctx: Ctx, request: Request, link_id: LinkId, node_id: NodeIdPath,
                      inline: bool = False) -> Response:
    row = await _open(ctx, request, link_id)
    name, node = await ctx.run_db(share_links.file_below, ctx.db, row, node_id)
    if node["kind"] != "file":
        raise IsADirectory(f"{node['name']!r} is a folder: download it as a zip", field="node")
    starts_at_zero = request.headers.get("range", "bytes=0-").replace(" ", "").startswith("bytes=0-")
    if request.method == "GET" and starts_at_zero:  # a preview counts too: it is the whole file
        await ctx.run_db(share_links.count_download, ctx.db, link_id)

    def load() -> content.Version:
        with ctx.db.read() as conn:
            return content.load_version(conn, row["owner_id"], node, None)

    version = await ctx.run_db(load)
    return content.file_response(ctx.store, version, request, name=name, inline=inline)


@router.get("/s/{link_id}/zip", responses=content.ZIP_RESPONSES)
async def public_zip(ctx: Ctx, request: Request, link_id: LinkId,
                     dir: Annotated[int | None, Query(ge=1, le=wire.INT64_MAX)] = None) -> Response:
    row = await _open(ctx, request, link_id)
    node = await ctx.run_db(share_links.node_below, ctx.db, row, dir)
    if node["kind"] != "dir":
        raise NotADirectory(f"{node['name']!r} is not a folder", field="dir")
    plan = await ctx.run_db(content.zip_plan, ctx.db, row["owner_id"], node["id"])
    await ctx.run_db(share_links.count_download, ctx.db, link_id)
    return content.zip_response(ctx.store, plan, node["name"])
