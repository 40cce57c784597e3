"""What the routes served straight from ASGI share (commit_route.py, sync_route.py):
reading their request's headers and JSON body, and handing a request they will not
serve to FastAPI with its body intact.

Why here: each fast route takes only the common, well-formed case past FastAPI's
per-request machinery; anything unusual is replayed, body and all, to the FastAPI
route, which words every refusal. Those rules must be the same for every fast route.
"""

from __future__ import annotations

import json
import re
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from pydantic import BaseModel

if TYPE_CHECKING:
    from .app import ServerContext

_JSON_TYPE = re.compile(r"^application/([a-z0-9.!#$&^_-]+\+)?json$")
Model = TypeVar("Model", bound=BaseModel)


class FastRoute:
    """ASGI middleware that serves requests of one method and path itself (`serve`) and
    passes every other request on to the app untouched."""

    method = ""
    path = ""

    def __init__(self, app: Any, ctx: ServerContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != self.method:
            return await self.app(scope, receive, send)
        await self.serve(scope, receive, send)

    async def serve(self, scope: dict, receive: Callable, send: Callable) -> None:
        """Answer the request, or hand it to `self.app` (with `replay` if its body was read)."""
        raise NotImplementedError


def headers(scope: dict, *names: bytes) -> list[bytes | None]:
    """The first value of each named header (ASGI names are lower case), None if absent."""
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in names and name not in found:
            found[name] = value
    return [found.get(name) for name in names]


def is_json(content_type: bytes | None) -> bool:
    """What FastAPI reads as a JSON body; anything unusual goes to FastAPI itself."""
    if content_type is None:
        return False
    return _JSON_TYPE.match(content_type.decode("latin-1").split(";", 1)[0].strip().lower()) is not None


async def read_body(receive: Callable) -> tuple[bytes | None, list[dict]]:
    """The whole body (None when the client went away first) and the messages it came
    in, for `replay`. BodyLimit, outside every fast route, bounds how much that is."""
    messages: list[dict] = []
    body = b""
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return None, messages
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return body, messages


def parse(model: type[Model], body: bytes) -> Model | None:
    """As FastAPI does it (json.loads, then the model), or None to let FastAPI say why not."""
    try:
        return model.model_validate(json.loads(body))
    except Exception:  # noqa: BLE001 - any refusal is worded by the FastAPI route
        return None


def replay(messages: list[dict], receive: Callable) -> Callable:
    """A `receive` that hands out what was already read, then reads on."""
    pending = deque(messages)

    async def again() -> dict:
        if pending:
            return pending.popleft()
        return await receive()
    return again
