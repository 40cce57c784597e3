"""The drive in a web browser: the page itself, and the routes only a browser needs.

The page is plain HTML, CSS and JavaScript shipped in `web/` (no build step, no
framework): it speaks the same API as the devices, authenticated by a session cookie
(auth.py), and uploads exactly as a mount does (prepare, PUT to signed URLs, commit).
What a browser needs beyond the devices' API lives here: a file's bytes as one
answer (content.py), a folder as a zip, and search by name.

Every answer carries `X-Content-Type-Options: nosniff` and refuses framing; the page's
own documents carry a Content-Security-Policy that allows only the page's own scripts
and styles, so a hostile file name can never become markup that runs (the page also
only ever sets names as text).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Annotated, Any, Callable
from urllib.parse import urlsplit

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel

from cloudfs.backend.protocol import wire
from . import content, history, namespaces, tree
from .api import ERRORS, NodeIdPath
from .app import ServerContext, User, context_dependency, current_user
from .db import nodes
from .errors import Invalid, NotFound

WEB = Path(__file__).resolve().parent / "web"
ASSETS = {"app.js": "text/javascript", "upload.js": "text/javascript", "app.css": "text/css", "share.js": "text/javascript",
          "common.js": "text/javascript", "icon.svg": "image/svg+xml"}
PAGES = {"index": "index.html", "share": "share.html"}
SEARCH_MAX = 500

router = APIRouter(responses=ERRORS)
pages = APIRouter(include_in_schema=False)
Ctx = Annotated[ServerContext, Depends(context_dependency)]
Auth = Annotated[User, Depends(current_user)]


def page_csp(store: Any) -> str:
    """The page's policy. Uploads go to the signed URLs the server hands out: its own
    origin for the local store, the bucket's endpoint for S3 (which must allow the
    page's origin in its CORS rules)."""
    connect = ["'self'"]
    endpoint = getattr(getattr(store, "inner", store), "endpoint", None)
    if endpoint:
        parts = urlsplit(endpoint)
        connect.append(f"{parts.scheme}://{parts.netloc}")
    return ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
            f"media-src 'self'; connect-src {' '.join(connect)}; frame-src 'self'; form-action 'self'; "
            "base-uri 'none'; frame-ancestors 'none'")


class SecurityHeaders:
    """ASGI middleware: headers every answer gets unless its route set its own."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in ((b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                                    (b"referrer-policy", b"no-referrer")):
                    if name not in present:
                        headers.append((name, value))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def _static(name: str, media: str, csp: str | None) -> Response:
    try:
        body = (WEB / name).read_bytes()
    except FileNotFoundError:
        raise NotFound(f"no such page asset {name!r}", field="path") from None
    headers = {"Cache-Control": "no-cache"}
    if csp:
        headers["Content-Security-Policy"] = csp
    return Response(body, media_type=media, headers=headers)


@pages.get("/")
async def index(ctx: Ctx) -> Response:
    """The drive (it asks for a sign-in when there is no session)."""
    return _static(PAGES["index"], "text/html; charset=utf-8", page_csp(ctx.store))


@pages.get("/web/{name}")
async def asset(name: str) -> Response:
    media = ASSETS.get(name)
    if media is None:
        raise NotFound(f"no such page asset {name!r}", field="path")
    return _static(name, media + ("; charset=utf-8" if media.startswith("text/") else ""),
                   "default-src 'none'; style-src 'unsafe-inline'" if name.endswith(".svg") else None)


@pages.get("/s/{link_id}")
async def share_page(ctx: Ctx, link_id: str) -> Response:
    """A share link's public page; what it may show is decided by share_links.py."""
    return _static(PAGES["share"], "text/html; charset=utf-8", page_csp(ctx.store))


# --- bytes of files and folders ---


@router.api_route("/files/{node_id}/content", methods=["GET", "HEAD"], tags=["web"], responses=content.FILE_RESPONSES)
async def file_content(ctx: Ctx, user: Auth, request: Request, node_id: NodeIdPath,
                       rev: Annotated[int | None, Query(ge=1, le=wire.INT64_MAX)] = None,
                       inline: bool = False) -> Response:
    """The file's bytes (or an old revision's), named, with Range support. `inline`
    shows images, audio, video and PDF in the page; anything else is an attachment."""
    version = await ctx.run_db(content.file_version, ctx.db, await _namespace(ctx, user, node_id), node_id, rev)
    name = version.name
    if rev is not None and rev != version.node["rev"]:
        stem, dot, ext = name.rpartition(".")
        name = f"{stem} (rev {rev}).{ext}" if dot and stem else f"{name} (rev {rev})"
    return content.file_response(ctx.store, version, request, name=name, inline=inline)


@router.get("/dirs/{node_id}/zip", tags=["web"], responses=content.ZIP_RESPONSES)
async def dir_zip(ctx: Ctx, user: Auth, node_id: NodeIdPath) -> Response:
    """The folder and everything in it as one zip, streamed as it is read."""
    ns_id = await _namespace(ctx, user, node_id)
    plan = await ctx.run_db(content.zip_plan, ctx.db, ns_id, node_id)
    name = await ctx.run_db(_name_of, ctx, user, ns_id, node_id)
    return content.zip_response(ctx.store, plan, name)


async def _namespace(ctx: ServerContext, user: User, node_id: int) -> int:
    """Where `node_id` lives: the account's own tree or a shared folder it is a member
    of (404 otherwise, as for a node that does not exist)."""
    def locate() -> int:
        with ctx.db.read() as conn:
            return namespaces.locate(conn, user.id, node_id)
    return await ctx.run_db(locate)


def _name_of(ctx: ServerContext, user: User, ns_id: int, node_id: int) -> str:
    with ctx.db.read() as conn:
        row = tree.get(conn, ns_id, node_id)
    return row["name"] or user.name


# --- search ---


class SearchHit(BaseModel):
    node: wire.Node
    path: str


class SearchResult(BaseModel):
    hits: list[SearchHit]
    more: bool
    linked: list[wire.Linked] = []
    """As in a listing: the nodes with more than one name among the hits (a hard link's file)."""


@router.get("/search", tags=["web"])
async def search(ctx: Ctx, user: Auth, q: Annotated[str, Query(min_length=1, max_length=255)],
                 limit: Annotated[int, Query(ge=1, le=SEARCH_MAX)] = 100) -> SearchResult:
    """Live files and folders whose name contains `q` (any case), anywhere in the drive."""
    if "\0" in q:
        raise Invalid("a name never contains NUL", field="q")

    def run() -> SearchResult:
        with ctx.db.read() as conn:
            # The account's own tree and every shared folder it has mounted. A shared
            # folder is found by the name it has here (its mount row), not its owner's.
            mounted = {m["mount_ns"]: dict(m) for m in conn.execute(sa.select(nodes).where(
                nodes.c.owner_id == user.id, nodes.c.kind == "mount", nodes.c.deleted == sa.false())).mappings()}
            where = {user.id, *mounted}
            rows = conn.execute(
                sa.select(nodes).where(nodes.c.owner_id.in_(sorted(where)), nodes.c.deleted == sa.false(),
                                       nodes.c.parent_id.is_not(None),
                                       sa.func.lower(nodes.c.name).contains(q.lower(), autoescape=True))
                .order_by(nodes.c.name, nodes.c.id).limit(limit + 1)).mappings().all()
            hits, by_ns = [], defaultdict(list)
            at: dict[int, str] = {user.id: ""}  # where each namespace is in this account's tree
            for r in rows[:limit]:
                row, ns = dict(r), r["owner_id"]
                if row["kind"] == "mount":  # the shared folder's root, where this account has it
                    path = history.path_of(conn, user.id, row)
                    ns, root = namespaces.enter(conn, user.id, row)
                    row = dict(root)
                else:
                    if ns not in at:
                        at[ns] = history.path_of(conn, user.id, mounted[ns])
                    path = at[ns] + history.path_of(conn, ns, row)
                hits.append(SearchHit(node=namespaces.as_seen(conn, user.id, row), path=path))
                by_ns[ns].append(hits[-1].node)
            linked = [each for ns, found in by_ns.items() for each in tree.linked(conn, ns, found)]
        return SearchResult(hits=hits, more=len(rows) > limit, linked=linked)
    return await ctx.run_db(run)
