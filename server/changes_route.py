"""`GET /changes` served straight from ASGI, as commit_route.py serves commits.

Why: an idle device holds a long-poll and takes the next one when it times out, so
with thousands of devices re-polls are most of what a server answers (10,000 devices
at the follower's 25 s: ~400 a second). Once the notifier knows the page is empty
such a request needs no database, and FastAPI's per-request machinery (dependencies,
route matching, query validation, the exception layers) became most of its cost:
about 1 ms of CPU per re-poll (bench_cluster --profile).

What it does: a request with a known bearer token and a query of only well-formed
`cursor`, `wait` and `limit` (digits within the route's bounds, each at most once)
runs the same `api.long_poll` as the FastAPI route and answers the same way, 410
included. Anything else goes to the FastAPI route, which stays the one /openapi.json
documents and the one that words every refusal. It sits inside BodyLimit and
AccessLog (app.py), so the access log and the request metrics count it as before.
"""

from __future__ import annotations

import re
from typing import Callable
from urllib.parse import parse_qsl

from cloudfs.backend.protocol import wire
from .api import DEFAULT_CHANGES, MAX_CHANGES, MAX_WAIT_S, long_poll
from .app import error_response, user_of_header
from .errors import ApiError
from .fast_route import FastRoute, headers

PATH = "/changes"
_DIGITS = re.compile(r"^[0-9]{1,19}$")
_SECONDS = re.compile(r"^[0-9]{1,2}(\.[0-9]{1,6})?$")


class ChangesRoute(FastRoute):
    """ASGI middleware: serves well-formed `GET /changes` itself, passes the rest on."""

    method, path = "GET", PATH

    async def serve(self, scope: dict, receive: Callable, send: Callable) -> None:
        query = parse_query(scope["query_string"])
        if query is None:
            return await self.app(scope, receive, send)
        [auth] = headers(scope, b"authorization")
        user = await user_of_header(self.ctx, auth)
        if user is None:
            return await self.app(scope, receive, send)
        cursor, wait, limit = query
        try:
            response = await long_poll(self.ctx, user.id, cursor, wait, limit)
        except ApiError as exc:
            response = error_response(exc)
        await response(scope, receive, send)


def parse_query(raw: bytes) -> tuple[int, float, int] | None:
    """(cursor, wait, limit) when the query is one the FastAPI route would take as it
    stands; None for anything it might refuse or read otherwise."""
    try:
        pairs = parse_qsl(raw.decode("ascii"), keep_blank_values=True, strict_parsing=bool(raw))
    except (UnicodeDecodeError, ValueError):
        return None
    values: dict[str, str] = {}
    for key, value in pairs:
        if key in values:
            return None
        values[key] = value
    if not set(values) <= {"cursor", "wait", "limit"}:
        return None
    cursor_s, wait_s, limit_s = values.get("cursor", "0"), values.get("wait", "0"), values.get("limit", str(DEFAULT_CHANGES))
    if not (_DIGITS.match(cursor_s) and _SECONDS.match(wait_s) and _DIGITS.match(limit_s)):
        return None
    cursor, wait, limit = int(cursor_s), float(wait_s), int(limit_s)
    if cursor > wire.INT64_MAX or wait > MAX_WAIT_S or not 1 <= limit <= MAX_CHANGES:
        return None
    return cursor, wait, limit
