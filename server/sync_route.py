"""`POST /sync` served straight from ASGI, as changes_route.py serves `GET /changes`.

Why: every device follows its account with this long-poll (one request over all the
namespaces it sees) and takes the next one when it times out, so with thousands of
devices re-polls are most of what a server answers. Once the notifier knows the answer
is empty such a request needs no database, and FastAPI's per-request machinery
(dependencies, route matching, body validation, the exception layers) became most of
its cost (bench_cluster --profile).

What it does: a request with a known bearer token and a JSON body that validates as
`SyncRequest` runs the same `shares_api.feed` as the FastAPI route and answers the
same way. Anything else is replayed, body and all, to the FastAPI route, which stays
the one /openapi.json documents and the one that words every refusal. It sits inside
BodyLimit and AccessLog (app.py), so body limits, the access log and the request
metrics apply to it as before.
"""

from __future__ import annotations

from typing import Callable

from cloudfs.backend.protocol import wire_shares
from .app import error_response, user_of_header
from .errors import ApiError
from .fast_route import FastRoute, headers, is_json, parse, read_body, replay
from .shares_api import feed

PATH = "/sync"


class SyncRoute(FastRoute):
    """ASGI middleware: serves well-formed `POST /sync` itself, passes the rest on."""

    method, path = "POST", PATH

    async def serve(self, scope: dict, receive: Callable, send: Callable) -> None:
        auth, content_type = headers(scope, b"authorization", b"content-type")
        user = await user_of_header(self.ctx, auth) if is_json(content_type) else None
        if user is None:
            return await self.app(scope, receive, send)
        body, messages = await read_body(receive)
        req = parse(wire_shares.SyncRequest, body) if body is not None else None
        if req is None:
            return await self.app(scope, replay(messages, receive), send)
        try:
            response = await feed(self.ctx, user, req)
        except ApiError as exc:
            response = error_response(exc)
        await response(scope, receive, send)
