"""What an operator of several replicas needs: request ids, Prometheus metrics, a
readiness check and JSON logs.

- Every request carries an id: the client's `X-Request-Id` when it sends a sane one
  (a load balancer or a device may set it), else a new one. It is returned in the
  answer's `X-Request-Id`, written in the access-log line and in every log line made
  while the request runs (a contextvar), so one failed device operation can be found
  in the logs of whichever replica served it.
- `/metrics` (Prometheus text format, prometheus_client): requests by route and
  status, their latencies, commits and commit batches, long-polls held, the lag of
  journal notifications from other replicas, store and database errors, and the
  process's own CPU and memory. One registry per app, so tests can run many apps in
  one process.
- `/health` says the process answers; `/ready` says whether the database and the store
  answered a probe made every second (`Readiness`), and answers 503 while the server
  drains after SIGTERM, so that a load balancer sends nothing new to a replica that
  is going away.

Concurrency: the middleware and the routes run on the event loop; prometheus_client's
instruments take their own lock, so the writer's worker thread may count too.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable, Iterator

import anyio
from anyio.abc import TaskStatus
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import ProcessCollector, disable_created_metrics
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from cloudfs.backend.stores.store import NoSuchKeyError

if TYPE_CHECKING:
    from .app import ServerContext
    from .writer import Writer

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("cloudfs_request_id", default=None)
REQUEST_ID_HEADER = "X-Request-Id"
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
disable_created_metrics()  # a `_created` twin of every counter only doubles the scrape
READY_PROBE_KEY = "ready-probe"
"""A key no chunk has (chunk keys are `u<owner>/..`): asking for it reaches the store."""


class Metrics:
    """The server's instruments, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("cloudfs_http_requests", "HTTP requests answered", ["method", "route", "status"],
                                registry=r)
        self.latency = Histogram("cloudfs_http_request_seconds", "time to answer an HTTP request (long-polls included)",
                                 ["method", "route"], registry=r,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.long_polls = Gauge("cloudfs_long_polls_held", "GET /changes requests parked, waiting for a change",
                                registry=r)
        self.changes_reads = Counter("cloudfs_changes_reads", "journal reads made for GET /changes (one is shared by "
                                     "the long-polls of one owner and cursor)", registry=r)
        self.journal_lag = Histogram("cloudfs_journal_notify_lag_seconds",
                                     "from a journal write on any replica to its notification reaching this one",
                                     registry=r, buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5))
        self.store_errors = Counter("cloudfs_store_errors", "object store calls that failed", ["kind"], registry=r)
        self.db_errors = Counter("cloudfs_db_errors", "metadata database calls that failed", ["kind"], registry=r)
        ProcessCollector(registry=r)

    def watch_writer(self, writer: Writer) -> None:
        """Commits and batches, read from the writer's own counts when scraped."""
        self.registry.register(_WriterCollector(writer))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _WriterCollector(Collector):
    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily("cloudfs_commits", "version commits written", value=self.writer.committed)
        yield CounterMetricFamily("cloudfs_commit_jobs", "version commits tried (refusals included)",
                                  value=self.writer.jobs)
        yield CounterMetricFamily("cloudfs_commit_batches", "group-commit transactions", value=self.writer.batches)


class RequestIds:
    """Outermost ASGI middleware: gives each request its id (see the module docstring)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                rid = candidate if _SANE_ID.match(candidate) else None
                break
        rid = rid or uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id.set(rid)
        header = (b"x-request-id", rid.encode())

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)


def route_of(scope: dict) -> str:
    """The route's template (`/nodes/{node_id}`), never the raw path: a label per node
    id would grow the metrics without bound."""
    route = scope.get("route")
    if route is not None and hasattr(route, "path"):
        return route.path
    if scope.get("path") in ("/files", "/changes"):
        return scope["path"]  # served by commit_route or changes_route, outside FastAPI's router
    return "unmatched"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the request id while a
    request runs, and the traceback if any (`cloudfs server --log-format json`)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or request_id.get()
        if rid:
            entry["request_id"] = rid
        for key in ("client", "method", "path", "status", "bytes", "seconds"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class RequestIdFilter(logging.Filter):
    """Adds ` [request id]` to text log lines made while a request runs."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = request_id.get()
        record.rid = f" [{rid}]" if rid else ""
        return True


def configure_logging(level: str, fmt: str) -> None:
    """The server's logging: `text` (one line each, request id in brackets) or `json`."""
    import sys

    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.addFilter(RequestIdFilter())
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s%(rid)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))


router = APIRouter()


class Readiness:
    """What `/ready` answers: the last probe's findings (`probe_forever`).

    Why not probe in the request: a balancer checks every second, and a replica
    flooded with requests (10,000 devices reconnecting) would queue the check's
    database read behind theirs, time out, be taken out of the balancer and turn a
    busy minute into 503s for everyone. The answer costs nothing on the event loop; a
    probe that hangs makes it stale, and a stale answer is a problem too."""

    def __init__(self) -> None:
        self.problems: dict[str, str] = {"server": "starting: not probed yet"}
        self.checked_at = 0.0

    def answer(self, ctx: ServerContext) -> dict[str, str]:
        if ctx.draining or ctx.notifier.closing:
            return {"server": "shutting down"}
        age = time.monotonic() - self.checked_at
        if not self.problems and age > STALE_S:
            return {"database": f"the readiness probe has had no answer for {age:.0f} s"}
        return self.problems


STALE_S = 15.0
PROBE_TIMEOUT_S = 5.0


async def probe_forever(ctx: ServerContext, *, interval: float = 1.0,
                        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    """Ask the database and the store every `interval` seconds whether they answer
    (each within PROBE_TIMEOUT_S); `ctx.readiness` keeps what was found."""
    started = False
    while True:
        problems: dict[str, str] = {}
        for part, ping in (("database", _ping_db), ("store", _ping_store)):
            with anyio.move_on_after(PROBE_TIMEOUT_S) as scope:
                try:
                    await anyio.to_thread.run_sync(ping, ctx, abandon_on_cancel=True)
                except Exception as exc:  # noqa: BLE001 - any failure is the answer
                    problems[part] = _first_line(exc)
            if scope.cancelled_caught:
                problems[part] = f"no answer within {PROBE_TIMEOUT_S:g} s"
        ctx.readiness.problems, ctx.readiness.checked_at = problems, time.monotonic()
        if not started:
            started = True
            task_status.started()
        await anyio.sleep(interval)


@router.get("/ready", include_in_schema=False)  # for operators and balancers, not devices: no token
async def ready(request: Request) -> JSONResponse:
    """200 when the database and the store answered the last probe (at most a second
    or so ago); 503 naming what did not, or when the server is draining (SIGTERM)
    and should get no new requests."""
    ctx: ServerContext = request.app.state.ctx
    problems = ctx.readiness.answer(ctx)
    if problems:
        return JSONResponse({"status": "unavailable", "problems": problems}, status_code=503)
    return JSONResponse({"status": "ready"})


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition of this replica's instruments."""
    ctx: ServerContext = request.app.state.ctx
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _ping_db(ctx: ServerContext) -> None:
    import sqlalchemy as sa

    with ctx.db.read() as conn:
        conn.execute(sa.text("SELECT 1"))


def _ping_store(ctx: ServerContext) -> None:
    try:
        ctx.store.head(READY_PROBE_KEY)
    except NoSuchKeyError:
        pass  # the store answered


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
