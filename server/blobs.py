"""Chunk transfer for the embedded local store, on URLs the server signed itself.

This is the only place file bytes pass through the server, and they are streamed:
an upload goes to a temp file while being hashed and is published only if it hashes
to the fingerprint the URL was signed for. With S3 these routes answer 404; devices
talk to S3 directly.
"""

from __future__ import annotations

import logging
import re

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from starlette.requests import ClientDisconnect

from cloudfs.backend.stores.localstore import BlobWriter, LocalStore
from cloudfs.backend.stores.store import CorruptChunkError, NoSuchKeyError

from . import files
from .app import context
from .errors import ApiError, NotFound

log = logging.getLogger("cloudfs.blobs")

router = APIRouter(include_in_schema=False)
KEY_RE = re.compile(r"^u(\d{1,19})/[0-9a-f]{2}/([0-9a-f]{64})$")


class Forbidden(ApiError):
    status, code = 403, "bad_signature"


class CorruptUpload(ApiError):
    status, code = 422, "corrupt_chunk"


def _local_store(request: Request) -> LocalStore:
    store = context(request).store
    store = getattr(store, "inner", store)  # under a fault-injecting wrapper (tests)
    if not isinstance(store, LocalStore):
        raise NotFound("this server's chunks live in S3; use the signed S3 URLs", field="url")
    return store


def _params(request: Request, names: tuple[str, ...]) -> tuple[dict[str, str], str]:
    q = request.query_params
    if any(n not in q for n in names) or "sig" not in q:
        raise Forbidden("the URL is not signed (missing parameters)", field="sig")
    return {n: q[n] for n in names}, q["sig"]


@router.put("/blobs/{key:path}", status_code=201)
async def put_blob(key: str, request: Request) -> Response:
    store = _local_store(request)
    match = KEY_RE.match(key)
    if match is None:
        raise NotFound(f"no such blob key {key!r}", field="key")
    params, sig = _params(request, ("exp", "sha", "len", "c", "plen"))
    if not store.check_signature("PUT", key, params, sig):
        raise Forbidden("signature invalid or expired: ask /uploads/prepare again", field="sig")
    owner_id, fingerprint = int(match.group(1)), match.group(2)
    length, plain_length = int(params["len"]), int(params["plen"])
    writer = BlobWriter(store, key, expected_sha256=params["sha"], expected_length=length,
                        compression=params["c"], plain_sha256=fingerprint, plain_length=plain_length)
    try:
        async for piece in request.stream():
            writer.write(piece)
        await anyio.to_thread.run_sync(writer.finish)
    except CorruptChunkError as exc:
        raise CorruptUpload(str(exc), field="body") from None
    except ClientDisconnect:
        # The device went away mid-body (it retries); nothing was stored, nobody to answer.
        log.info("upload of %s abandoned by the client after part of its body", key)
        return Response(status_code=499)
    finally:
        writer.abort()
    ctx = context(request)
    await ctx.run_db(files.mark_uploaded, ctx.db, owner_id, fingerprint, params["sha"], length)
    return Response(status_code=201)


@router.get("/blobs/{key:path}")
async def get_blob(key: str, request: Request) -> Response:
    store = _local_store(request)
    params, sig = _params(request, ("exp",))
    if not KEY_RE.match(key) or not store.check_signature("GET", key, params, sig):
        raise Forbidden("signature invalid or expired: ask /downloads/prepare again", field="sig")
    try:
        path = store.open_path(key)
    except NoSuchKeyError:
        raise NotFound(f"blob {key} is not in the store", field="key") from None
    return FileResponse(path, media_type="application/octet-stream")


