"""The ASGI application: shared context, authentication, limits and error bodies.

Routes live in `api.py` (metadata) and `blobs.py` (local-store chunk transfer); this
module wires them to one `ServerContext` and makes every failure a JSON body of the
shape `{"error", "detail", "field"}`.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import anyio
import sqlalchemy as sa
from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from cloudfs.backend.protocol.names import DEVICE_RE, DEVICE_RULE
from cloudfs.backend.stores.store import NoSuchKeyError, ObjectStore, StoreError

from . import auth
from . import journal
from .db import Database
from .errors import ApiError, Forbidden, Invalid, StoreUnavailable, Unauthorized
from .notifier import ChangeNotifier
from .ops import Metrics, Readiness, RequestIds, route_of
from .writer import Writer

log = logging.getLogger("cloudfs.server")
T = TypeVar("T")

JSON_BODY_LIMIT = 16 * 1024 * 1024
BLOB_BODY_LIMIT = 80 * 1024 * 1024
TOKEN_CACHE_TTL = 30.0
TOKEN_CACHE_SIZE = 100_000
"""Tokens remembered, least recently used dropped first: one per device that polls
(10,000 devices of their own tokens cleared a cache of 10,000 at every new one)."""


@dataclass(frozen=True)
class User:
    id: int
    name: str
    root_id: int
    quota_bytes: int | None


@dataclass
class ServerContext:
    db: Database
    store: ObjectStore
    notifier: ChangeNotifier = field(default_factory=ChangeNotifier)
    db_limiter: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(16))
    store_limiter: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(16))
    _token_cache: OrderedDict[str, tuple[float, User, str]] = field(default_factory=OrderedDict)
    shared_pages: dict[tuple[int, int, int, int], Any] = field(default_factory=dict)
    """In-flight /changes reads shared by long-polls (see api._changes_page)."""
    writer: Writer = field(init=False)
    """Every version commit goes through it, grouped into batch transactions."""
    quiet_summary_s: float = 600.0
    """How often the access log says how many heartbeats and idle long-polls it did not log."""
    metrics: Metrics = field(default_factory=Metrics)
    draining: bool = False
    readiness: Readiness = field(default_factory=Readiness)
    """SIGTERM with `--drain`: /ready says 503 while requests are still served."""
    ns_guess: dict[int, int] = field(default_factory=dict)
    """Node id -> the namespace it was last seen in: where a commit naming it is tried
    first (the job checks, and says where it really is: api.commit_version)."""

    def guess_ns(self, node_id: int, ns_id: int) -> None:
        if len(self.ns_guess) > 100_000:
            self.ns_guess.clear()
        self.ns_guess[node_id] = ns_id

    def __post_init__(self) -> None:
        self.writer = Writer(self.db, self.notifier, self.db_limiter)
        self.metrics.watch_writer(self.writer)

    async def run_db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking metadata function in a worker thread."""
        try:
            return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=self.db_limiter)
        except sa.exc.DBAPIError as exc:
            self.metrics.db_errors.labels(type(exc.orig).__name__).inc()
            raise

    async def run_store(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=self.store_limiter)
        except (StoreError, StoreUnavailable) as exc:
            if not isinstance(exc, NoSuchKeyError):  # an answer, not a failure
                self.metrics.store_errors.labels(type(exc).__name__).inc()
            raise

    async def authenticate(self, token: str, *, kind: str = "device", device: str | None = None) -> User | None:
        """The account of a device token (or, with kind 'session', a browser's cookie);
        None when unknown. A revoked token raises auth.TokenRevoked (401)."""
        hit = self._token_cache.get(token)
        if hit is not None and hit[0] > time.monotonic() and hit[2] == kind:
            self._token_cache.move_to_end(token)
            return hit[1]
        row = await self.run_db(auth.lookup_token, self.db, token, kind, device)
        if row is None:
            return None
        user = User(row.user_id, row.name, row.root_id, row.quota_bytes)
        self._token_cache[token] = (time.monotonic() + TOKEN_CACHE_TTL, user, kind)
        self._token_cache.move_to_end(token)
        while len(self._token_cache) > TOKEN_CACHE_SIZE:
            self._token_cache.popitem(last=False)
        return user

    def forget_tokens(self) -> None:
        """After a revocation: this process asks the database again (other replicas'
        caches expire within TOKEN_CACHE_TTL)."""
        self._token_cache.clear()


bearer = HTTPBearer(auto_error=False, description="the token printed by `cloudfs user add`")


def context(request: Request) -> ServerContext:
    return request.app.state.ctx


async def context_dependency(request: Request) -> ServerContext:
    """`context` as a FastAPI dependency: async, so FastAPI calls it inline instead of
    sending it to a worker thread (FastAPI runs every plain `def` dependency there)."""
    return request.app.state.ctx


async def current_user(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
) -> User:
    """A device's bearer token, or a browser's session cookie (auth.py), which must come
    with the CSRF header on anything but a read."""
    if credentials is None:
        session = request.cookies.get(auth.SESSION_COOKIE)
        if session is not None:
            return await _session_user(request, session)
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("send 'Authorization: Bearer <token>'", field="Authorization")
    token = credentials.credentials
    if len(token) > 200 or not token.isascii():
        raise Unauthorized("malformed token", field="Authorization")
    user = await context(request).authenticate(token, device=request.headers.get("x-cloudfs-device"))
    if user is None:
        raise Unauthorized("unknown token", field="Authorization")
    journal.ACTOR.set(user.id)  # every journal entry this request makes names the account
    return user


async def _session_user(request: Request, session: str) -> User:
    if len(session) > 200 or not session.isascii():
        raise Unauthorized("malformed session cookie: sign in again", field="cookie")
    if request.method not in ("GET", "HEAD") and not auth.csrf_ok(session, request.headers.get(auth.CSRF_HEADER)):
        raise Forbidden(f"a change made with the session cookie needs the {auth.CSRF_HEADER} header "
                        f"(from GET /auth/session)", field=auth.CSRF_HEADER)
    agent = request.headers.get("user-agent", "")
    device = "web" + (" (Firefox)" if "Firefox/" in agent else " (Chromium)" if "Chrome/" in agent else "")
    user = await context(request).authenticate(session, kind="session", device=device)
    if user is None:
        raise Unauthorized("signed out: sign in again", field="cookie")
    return user


async def user_of_header(ctx: ServerContext, authorization: bytes | None) -> User | None:
    """The user of a raw `Authorization` header, for the routes served without FastAPI:
    the same checks as `current_user`, but None wherever it would refuse, so that the
    FastAPI route words the refusal."""
    if not authorization:
        return None
    scheme, _, token = authorization.decode("latin-1").partition(" ")
    token = token.strip()
    if not token or scheme.lower() != "bearer" or len(token) > 200 or not token.isascii():
        return None
    try:
        return await ctx.authenticate(token)
    except ApiError:  # a revoked token: the FastAPI route says so
        return None


async def device_name(x_cloudfs_device: str | None = Header(default=None, description="name of the device making the change")) -> str:
    if x_cloudfs_device is None:
        return "unknown"
    if not DEVICE_RE.match(x_cloudfs_device):
        raise Invalid(f"device name: {DEVICE_RULE}", field="X-Cloudfs-Device")
    return x_cloudfs_device


class BodyLimit:
    """Refuse oversized request bodies with 413 before they are read into memory.

    A declared Content-Length over the limit is refused before the app runs. A body
    without one (chunked) is counted as it arrives; once it passes the limit, reading
    raises `_TooLarge`. FastAPI turns any error while reading a JSON body into its own
    400, so whatever the app answers after the limit was hit is replaced by the 413.

    A client is usually still sending when the 413 is ready, and closing a socket with
    unread bytes in it resets the connection, which can destroy the answer before the
    client reads it. So the rest of a moderately oversized body (up to the limit again)
    is read and dropped first; past that the answer says `Connection: close` and the
    client may see a reset instead.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = BLOB_BODY_LIMIT if scope["path"].startswith("/blobs/") else JSON_BODY_LIMIT
        too_large = {"error": "payload_too_large", "field": "body",
                     "detail": f"request bodies here are at most {limit} bytes"}
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            drained = declared.isdigit() and int(declared) <= 2 * limit and await _drain(receive, 2 * limit)
            return await _send_json(send, 413, too_large, close=not drained)
        seen = 0
        body_done = False
        over = False  # the limit was passed before the app started answering
        started = False  # a response start went out (the app's own, or our 413)

        async def limited_receive() -> dict:
            nonlocal seen, body_done, over
            message = await receive()
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    over = not started
                    raise _TooLarge()
            return message

        async def refuse() -> None:
            nonlocal started
            started = True
            drained = body_done or await _drain(receive, 2 * limit - seen)
            await _send_json(send, 413, too_large, close=not drained)

        async def tracking_send(message: dict) -> None:
            nonlocal started
            if over:  # the app's answer to a body it could not read: answer 413 instead
                if message["type"] == "http.response.start" and not started:
                    await refuse()
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await refuse()


class AccessLog:
    """One log line per request: client, method, path (never the query, which may hold
    URL signatures), status, response bytes and seconds.

    Idle devices ask all the time (a heartbeat every few seconds, a long-poll answered
    empty every 25 s): those lines are DEBUG, and counted instead, with one INFO line
    every `summary_s` saying how many there were (thousands of devices would otherwise
    print thousands of lines a second)."""

    def __init__(self, app: Any, *, metrics: Metrics, summary_s: float = 600.0) -> None:
        self.app = app
        self.metrics = metrics
        self.log = logging.getLogger("cloudfs.access")
        self.quiet = {"heartbeats": 0, "idle long-polls": 0}
        self.summary_s = summary_s
        self._summary_at = time.monotonic() + summary_s

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status, size, empty = 0, 0, False

        async def counting_send(message: dict) -> None:
            nonlocal status, size, empty
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                empty = empty or (size == 0 and body.startswith(b'{"changes":[]'))
                size += len(body)
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            seconds = time.perf_counter() - started
            route = route_of(scope)
            self.metrics.requests.labels(scope["method"], route, status or 0).inc()
            self.metrics.latency.labels(scope["method"], route).observe(seconds)
            client = scope.get("client") or ("-", 0)
            quiet = self._quiet_kind(scope, status, empty)
            if quiet is not None:
                self.quiet[quiet] += 1
                level = logging.DEBUG
            else:
                level = logging.INFO
            if self.log.isEnabledFor(level):
                self.log.log(level, '%s:%s "%s %s" %s %d %.6fs', client[0], client[1], scope["method"], scope["path"],
                             status or "-", size, seconds,
                             extra={"client": f"{client[0]}:{client[1]}", "method": scope["method"],
                                    "path": scope["path"], "status": status, "bytes": size,
                                    "seconds": round(seconds, 6)})
            if time.monotonic() >= self._summary_at:
                self._summarise()

    @staticmethod
    def _quiet_kind(scope: dict, status: int, empty: bool) -> str | None:
        if status != 200:
            return None
        if scope["method"] == "GET" and scope["path"] in ("/health", "/me", "/ready", "/metrics"):
            return "heartbeats"
        if (scope["method"], scope["path"]) in (("GET", "/changes"), ("POST", "/sync")) and empty:
            return "idle long-polls"
        return None

    def _summarise(self) -> None:
        self._summary_at = time.monotonic() + self.summary_s
        if any(self.quiet.values()):
            self.log.info("in the last %.0f s: %s (not logged one by one; --log-level debug shows them)",
                          self.summary_s, ", ".join(f"{n} {what}" for what, n in self.quiet.items()))
        self.quiet = dict.fromkeys(self.quiet, 0)


class _TooLarge(Exception):
    pass


async def _drain(receive: Callable, budget: int) -> bool:
    """Read and drop the rest of the request body, at most `budget` bytes; True when
    the body ended (or the client went away) within that."""
    while budget >= 0:
        message = await receive()
        if message["type"] != "http.request":
            return True
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return budget >= 0
    return False


async def _send_json(send: Callable, status: int, body: dict, *, close: bool = False) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


LOCATIONS = ("body", "query", "path", "header", "cookie")


def _field_of(loc: tuple) -> str:
    """`("body", "chunks", 3, "length")` -> `"chunks[3].length"`. Only the first element
    is a location: a field that happens to be called `path` keeps its name."""
    parts = [str(p) for p in (loc[1:] if loc and loc[0] in LOCATIONS else loc)]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (("." if out else "") + p)
    return out or (str(loc[0]) if loc else "body")


def error_response(exc: ApiError) -> JSONResponse:
    retry_after = exc.extra.get("retry_after")
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def create_app(ctx: ServerContext, *, fast_routes: bool = True) -> FastAPI:
    """The app; `fast_routes=False` leaves out `commit_route.CommitRoute`,
    `changes_route.ChangesRoute` and `sync_route.SyncRoute`, so that a test can hold
    their answers against the FastAPI routes'."""
    from . import api, auth_api, blobs, history_api, integrity, ops, share_links_api, shares_api, web
    from .changes_route import ChangesRoute
    from .commit_route import CommitRoute
    from .sync_route import SyncRoute

    app = FastAPI(
        title="cloudfs",
        version="1",
        description="Metadata, change journal and chunk-store URLs for cloudfs devices.",
    )
    app.state.ctx = ctx

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
        detail = first.get("msg", "invalid request")
        field = _field_of(tuple(first.get("loc", ())))
        ctx = first.get("ctx") or {}
        if first.get("type") == "value_error" and "error" in ctx:
            detail = str(ctx["error"])  # our own validators' words, without pydantic's "Value error, "
        elif first.get("type") == "missing" and field == "body":
            detail = "a JSON body is required"
        elif first.get("type") == "json_invalid":
            loc = tuple(first.get("loc", ()))
            reason = ctx.get("error", "")
            at = f" at byte {loc[1]}" if len(loc) > 1 else ""
            detail, field = f"the body is not valid JSON{': ' + reason if reason else ''}{at}", "body"
        return JSONResponse({"error": "invalid", "detail": detail, "field": field,
                             "problems": len(errors)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.__cause__ is not None:
            # FastAPI could not decode the JSON body: deeper nesting than the parser
            # allows, an integer of thousands of digits. Same answer as malformed JSON.
            reason = str(exc.__cause__)[:200] or type(exc.__cause__).__name__
            return JSONResponse({"error": "invalid", "detail": f"the body is not valid JSON: {reason}",
                                 "field": "body", "problems": 1}, status_code=422)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": code, "detail": str(exc.detail), "field": None}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal", "detail": "internal server error", "field": None}, status_code=500)

    app.include_router(api.router)
    app.include_router(blobs.router)
    app.include_router(integrity.router)
    app.include_router(history_api.router)
    app.include_router(auth_api.router)
    app.include_router(web.router)
    app.include_router(shares_api.router)
    app.include_router(share_links_api.router)
    app.include_router(web.pages)
    app.include_router(ops.router)
    if fast_routes:  # innermost: the limits and the access log apply to them
        app.add_middleware(CommitRoute, ctx=ctx)
        app.add_middleware(ChangesRoute, ctx=ctx)
        app.add_middleware(SyncRoute, ctx=ctx)
    app.add_middleware(BodyLimit)
    app.add_middleware(web.SecurityHeaders)
    app.add_middleware(AccessLog, metrics=ctx.metrics, summary_s=ctx.quiet_summary_s)
    app.add_middleware(RequestIds)  # outermost: the access log and every log line see the id
    return app
