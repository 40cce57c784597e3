"""The device's HTTP client for the cloudfs server and the signed chunk URLs.

Async (httpx on trio). Every chunk downloaded is checked against its fingerprint
before anyone sees it; every error answer becomes a `ServerError` subclass carrying
the server's JSON body.

Transient failures (connection errors, timeouts, 5xx, 429) are retried with
exponential backoff and jitter (tenacity), for up to RETRY_FOR_S in the background and
once, quickly, for requests a reader waits on; then the error goes to the caller (the
syncer keeps the work queued, a read answers EIO). Retrying a commit is safe: one that
landed although its answer was lost is recognised by the uploader.

Each request carries a new `X-Request-Id`; a request that fails (no answer, or a 5xx)
is logged with it, so the server's log line for it can be found, on whichever
replica behind a load balancer served it.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import httpcore
import httpx
import tenacity
import trio

from ..errors import CorruptChunkError, OfflineError, ServerError, from_response
from ..stores.compress import decode
from . import wire, wire_shares

T = TypeVar("T")
RETRY_FOR_S = 20.0
log = logging.getLogger("cloudfs.api")
RECEIVE_BYTES = 1 << 20
"""Bytes asked of the socket per receive of an answer. httpcore asks 64 KiB, and every
piece then passes through h11, httpcore's and httpx's stream layers on the trio loop: in
a cold read of 1 GiB that cost more of the mount's CPU than the bytes did (mount CPU
6.1-6.8 s at 64 KiB, 4.2-5.3 s at 1 MiB; BENCHMARKS.md, issue 18)."""


def receive_in_large_pieces() -> None:
    """httpcore has no setting for its receive size but this class attribute of its
    HTTP/1.1 connections (httpcore 1.x), so it is set once for the process. A receive
    returns what the socket has: a small answer is read in one piece as before, into a
    larger buffer that is trimmed to it."""
    for connection in (httpcore.AsyncHTTP11Connection, httpcore.HTTP11Connection):
        if getattr(connection, "READ_NUM_BYTES", RECEIVE_BYTES) < RECEIVE_BYTES:
            connection.READ_NUM_BYTES = RECEIVE_BYTES


receive_in_large_pieces()


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, OfflineError):
        return True
    return isinstance(exc, ServerError) and (exc.status >= 500 or exc.status in (408, 429)) and exc.status != 507


def _transient_quick(exc: BaseException) -> bool:
    """A reader waits: retry a reset or a 5xx once, never a timeout (it already cost seconds)."""
    return _transient(exc) and not isinstance(exc.__cause__, httpx.TimeoutException)


class ApiClient:
    INTERACTIVE = httpx.Timeout(3.0, connect=2.0)
    """For requests a reader is blocked on: a read of uncached bytes fails with EIO
    within seconds when the server hangs, instead of after the background timeout.
    While the server is known to be unreachable they get only UNREACHABLE (the kernel
    often retries a failed read at once, and the reader waits for both)."""
    UNREACHABLE = httpx.Timeout(1.0)

    def __init__(self, base_url: str, token: str, *, device: str = "unknown", timeout: float = 30.0) -> None:
        self.device = device
        self.base_url = base_url.rstrip("/")
        self.http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}", "X-Cloudfs-Device": device},
            timeout=httpx.Timeout(timeout, connect=5.0),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )
        # Signed URLs carry their own authority; never send the bearer token to the store.
        self.blobs = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=5.0),
                                       limits=httpx.Limits(max_connections=64, max_keepalive_connections=32))

    reachable = True
    """How the last request to the server went (a transport error or a 5xx: False)."""
    refused: str | None = None
    """Why the server refused the token (401), until a request is accepted again: a
    revoked device says so in `cloudfs status` instead of looking merely offline."""

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.blobs.aclose()

    async def __aenter__(self) -> "ApiClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    retries = 0
    """Requests repeated after a transient failure (for status and tests)."""

    async def _retried(self, attempt: Callable[..., Awaitable[T]], *args: Any, interactive: bool) -> T:
        """`attempt` must be an async function (tenacity calls anything else as sync)."""
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(_transient_quick if interactive else _transient),
            wait=tenacity.wait_random_exponential(multiplier=0.05, max=0.2 if interactive else 5.0),
            stop=tenacity.stop_after_attempt(2) if interactive else tenacity.stop_after_delay(RETRY_FOR_S),
            sleep=trio.sleep, reraise=True,
            before_sleep=lambda state: setattr(self, "retries", self.retries + 1))
        return await retrying(attempt, *args)

    async def _call(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                    timeout: float | httpx.Timeout | None = None, retry: bool = True,
                    headers: dict[str, str] | None = None) -> dict[str, Any]:
        async def attempt() -> dict[str, Any]:
            return await self._call_once(method, path, json=json, params=params, timeout=timeout, headers=headers)
        if not retry:
            return await attempt()
        return await self._retried(attempt, interactive=timeout is self.INTERACTIVE)

    async def _call_once(self, method: str, path: str, *, json: Any, params: dict[str, Any] | None,
                         timeout: float | httpx.Timeout | None, headers: dict[str, str] | None = None) -> dict[str, Any]:
        if timeout is self.INTERACTIVE and not self.reachable:
            timeout = self.UNREACHABLE
        request_id = uuid.uuid4().hex[:16]
        headers = {**(headers or {}), "X-Request-Id": request_id}
        try:
            response = await self.http.request(method, path, json=json, params=params, headers=headers,
                                               timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT)
        except httpx.TransportError as exc:
            self.reachable = False
            log.info("%s %s (request id %s): no answer: %r", method, path, request_id, exc)
            raise OfflineError(f"{method} {path}: {exc!r}") from exc
        self.reachable = response.status_code < 500
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"error": "http_error", "detail": response.text[:200]}
            if response.status_code == 401:
                self.refused = str(body.get("detail") or "the server refused this device's token")
            if response.status_code >= 500:
                log.warning("%s %s (request id %s): %s %s", method, path,
                            response.headers.get("x-request-id", request_id), response.status_code, body.get("error"))
            raise from_response(response.status_code, body)
        if path != "/health":  # the one route that does not look at the token
            self.refused = None
        return response.json()

    async def request_json(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                           json: Any = None, device: str | None = None) -> dict[str, Any]:
        """One call on behalf of the command line (history, trash, restore): retried
        quickly once, errors raised as ServerError/OfflineError for the caller to word.
        `device` names the change in the journal; a mount skips entries of its own
        device, so what the command line changes must carry another name to reach it."""
        headers = {"X-Cloudfs-Device": device[:64]} if device else None
        return await self._call(method, path, params=params, json=json, timeout=self.INTERACTIVE, headers=headers)

    # --- metadata ---

    async def health(self, timeout: float) -> None:
        """A cheap round trip; `reachable` says how the last one went."""
        await self._call("GET", "/health", timeout=httpx.Timeout(timeout, connect=min(timeout, 2.0)), retry=False)

    async def me(self) -> wire.Me:
        return wire.Me.model_validate(await self._call("GET", "/me"))

    async def resolve(self, path: str) -> wire.Node:
        return wire.NodeResponse.model_validate(await self._call("GET", "/resolve", params={"path": path})).node

    async def node(self, node_id: int) -> wire.Node | None:
        """The node's current state, or None once it is deleted (or never was ours)."""
        try:
            return wire.NodeResponse.model_validate(await self._call("GET", f"/nodes/{node_id}")).node
        except ServerError as exc:
            if exc.status == 404:
                return None
            raise

    async def list_dir(self, node_id: int) -> list[wire.Node]:
        entries: list[wire.Node] = []
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 5000}
            if after is not None:
                params["after"] = after
            page = wire.Listing.model_validate(await self._call("GET", f"/nodes/{node_id}/children", params=params))
            entries.extend(page.entries)
            if page.next_after is None:
                return entries
            after = page.next_after

    async def mkdir(self, parent_id: int, name: str, *, mode: int = 0o755, mtime_ns: int | None = None) -> wire.NodeResponse:
        body = {"parent_id": parent_id, "name": name, "mode": mode}
        if mtime_ns is not None:
            body["mtime_ns"] = mtime_ns
        return wire.NodeResponse.model_validate(await self._call("POST", "/dirs", json=body))

    async def symlink(self, parent_id: int, name: str, target: str, *, mtime_ns: int | None = None) -> wire.NodeResponse:
        body: dict[str, Any] = {"parent_id": parent_id, "name": name, "target": target}
        if mtime_ns is not None:
            body["mtime_ns"] = mtime_ns
        return wire.NodeResponse.model_validate(await self._call("POST", "/symlinks", json=body))

    async def link(self, parent_id: int, name: str, node_id: int) -> wire.NodeResponse:
        """A hard link: one more name for `node_id` (an alias row)."""
        body = {"parent_id": parent_id, "name": name, "node_id": node_id}
        return wire.NodeResponse.model_validate(await self._call("POST", "/links", json=body))

    async def move(self, node_id: int, parent_id: int, name: str, *, replace: bool = False,
                   exchange: bool = False) -> wire.NodeResponse:
        body = {"parent_id": parent_id, "name": name, "replace": replace, "exchange": exchange}
        return wire.NodeResponse.model_validate(await self._call("POST", f"/nodes/{node_id}/move", json=body))

    async def mknod(self, parent_id: int, name: str, kind: str, *, mode: int, rdev: int = 0,
                    mtime_ns: int | None = None) -> wire.NodeResponse:
        body = {"parent_id": parent_id, "name": name, "kind": kind, "mode": mode, "rdev": rdev}
        if mtime_ns is not None:
            body["mtime_ns"] = mtime_ns
        return wire.NodeResponse.model_validate(await self._call("POST", "/special", json=body))

    async def set_attr(self, node_id: int, **attrs: Any) -> wire.NodeResponse:
        """PATCH the given wire.AttrRequest fields; the others stay as they are."""
        body = {k: v for k, v in attrs.items() if v is not None}
        return wire.NodeResponse.model_validate(await self._call("PATCH", f"/nodes/{node_id}", json=body))

    async def delete(self, node_id: int, *, recursive: bool = False, rev: int | None = None) -> wire.NodeResponse:
        params: dict[str, Any] = {"recursive": str(recursive).lower()}
        if rev is not None:
            params["rev"] = rev
        return wire.NodeResponse.model_validate(await self._call("DELETE", f"/nodes/{node_id}", params=params))

    async def changes(self, cursor: int, *, wait: float = 0, limit: int = 1000) -> wire.ChangesResponse:
        return wire.ChangesResponse.model_validate(await self._call(
            "GET", "/changes", params={"cursor": cursor, "wait": wait, "limit": limit}, timeout=wait + 30,
            retry=False))  # the follower has its own loop

    async def sync(self, cursors: dict[int, int], *, wait: float = 0, limit: int = 1000) -> wire_shares.SyncResponse:
        """Every namespace's entries after its cursor (one long-poll for all of them)."""
        body = {"cursors": {str(ns): cursor for ns, cursor in cursors.items()}, "wait": wait, "limit": limit}
        return wire_shares.SyncResponse.model_validate(await self._call(
            "POST", "/sync", json=body, timeout=wait + 30, retry=False))  # the follower has its own loop

    async def snapshot(self, after_id: int = 0, *, ns: int | None = None) -> wire.Snapshot:
        params = {"after_id": after_id} if ns is None else {"after_id": after_id, "ns": ns}
        return wire.Snapshot.model_validate(await self._call("GET", "/nodes", params=params))

    # --- files ---

    async def prepare_upload(self, chunks: list[wire.ChunkUpload], *, node_id: int | None = None,
                             ) -> wire.PrepareUploadResponse:
        """`node_id`: the file or its directory, whose namespace gets the chunks (a shared folder)."""
        body: dict[str, Any] = {"chunks": [c.model_dump(exclude_none=True) for c in chunks]}
        if node_id:
            body["node_id"] = node_id
        return wire.PrepareUploadResponse.model_validate(await self._call("POST", "/uploads/prepare", json=body))

    async def check_chunks(self, fingerprints: list[str], *, node_id: int | None = None) -> wire.CheckChunksResponse:
        """Have chunks just PUT verified now rather than by the commit that names them
        (only worth it where the server said `check_after_put`). Not retried: the commit
        checks whatever this did not."""
        body: dict[str, Any] = {"fingerprints": fingerprints}
        if node_id:
            body["node_id"] = node_id
        return wire.CheckChunksResponse.model_validate(
            await self._call("POST", "/chunks/check", json=body, retry=False))

    async def put_chunk(self, ticket: wire.ChunkTicket, data: bytes | memoryview) -> None:
        await self._retried(self._put_once, ticket, data, interactive=False)

    async def _put_once(self, ticket: wire.ChunkTicket, data: bytes | memoryview) -> None:
        upload = ticket.upload
        headers = {**upload.headers, "Content-Length": str(len(data))}
        try:
            response = await self.blobs.request(upload.method, upload.url, content=_SentOnce(data), headers=headers)
        except httpx.TransportError as exc:
            raise OfflineError(f"upload of chunk {ticket.fingerprint}: {exc!r}") from exc
        if response.status_code >= 300:
            raise from_response(response.status_code, _error_body(response))

    async def prepare_download(self, fingerprints: list[str]) -> wire.PrepareDownloadResponse:
        return wire.PrepareDownloadResponse.model_validate(
            await self._call("POST", "/downloads/prepare", json={"fingerprints": fingerprints},
                             timeout=self.INTERACTIVE))

    async def commit(self, req: wire.CommitRequest, *,
                     landed: Callable[[], Awaitable[wire.CommitResponse | None]] | None = None) -> wire.CommitResponse:
        """`landed` is asked before each retry: an earlier try may have landed with its
        answer lost, and the server may no longer say so when asked again (a new file
        deleted meanwhile on another device: the name is free). Its answer, when it
        has one, is the commit's."""
        body = req.model_dump(mode="json", exclude_none=True)
        tries = 0

        async def attempt() -> wire.CommitResponse:
            nonlocal tries
            tries += 1
            if tries > 1 and landed is not None:
                found = await landed()
                if found is not None:
                    return found
            return wire.CommitResponse.model_validate(
                await self._call_once("POST", "/files", json=body, params=None, timeout=None))
        return await self._retried(attempt, interactive=False)

    async def file_info(self, node_id: int, *, rev: int | None = None, urls: bool = True) -> wire.FileInfo:
        params: dict[str, Any] = {"urls": str(urls).lower()}
        if rev is not None:
            params["rev"] = rev
        return wire.FileInfo.model_validate(await self._call("GET", f"/files/{node_id}", params=params,
                                                             timeout=self.INTERACTIVE))

    async def child_named(self, dir_id: int, name: str) -> wire.Node | None:
        """The live entry `name` of directory `dir_id`, if there is one."""
        listing = wire.Listing.model_validate(
            await self._call("GET", f"/nodes/{dir_id}/children", params={"name": name}, timeout=self.INTERACTIVE))
        return listing.entries[0] if listing.entries else None

    async def deleted_named(self, dir_id: int, name: str) -> list[wire.Node]:
        """The deleted nodes last named `name` in directory `dir_id`, newest first."""
        listing = wire.Listing.model_validate(
            await self._call("GET", f"/nodes/{dir_id}/deleted", params={"name": name}, timeout=self.INTERACTIVE))
        return listing.entries

    async def created_named(self, dir_id: int, name: str, *, after: int) -> list[wire.Node]:
        """The nodes created as `name` in directory `dir_id` after journal position
        `after`, as they are now (moved or deleted since, they may be), oldest first."""
        listing = wire.Listing.model_validate(await self._call(
            "GET", f"/nodes/{dir_id}/created", params={"name": name, "after": after}, timeout=self.INTERACTIVE))
        return listing.entries

    async def versions(self, node_id: int) -> wire.VersionList:
        return wire.VersionList.model_validate(await self._call("GET", f"/files/{node_id}/versions"))

    async def restore(self, node_id: int, rev: int) -> wire.CommitResponse:
        return wire.CommitResponse.model_validate(await self._call("POST", f"/files/{node_id}/restore", json={"rev": rev}))

    async def report_chunk(self, fingerprint: str) -> wire.ChunkReport:
        return wire.ChunkReport.model_validate(await self._call("POST", f"/chunks/{fingerprint}/report"))

    async def fsck(self) -> wire.FsckReport:
        return wire.FsckReport.model_validate(await self._call("POST", "/fsck", timeout=3600))

    async def fetch_chunk(self, fingerprint: str, download: wire.SignedRequest, compression: str = "none") -> bytes:
        """Download one chunk and return its plain bytes, verified against `fingerprint`
        (in either encoding, and never inflated past the largest chunk: see compress.py)."""
        return await self._retried(self._fetch_once, fingerprint, download, compression, interactive=True)

    async def _fetch_once(self, fingerprint: str, download: wire.SignedRequest, compression: str) -> bytes:
        try:
            # Streamed, so the body is ours alone (see _SentOnce for why that matters).
            async with self.blobs.stream(download.method, download.url, headers=download.headers,
                                         timeout=self.INTERACTIVE if self.reachable else self.UNREACHABLE) as response:
                if response.status_code >= 300:
                    await response.aread()
                    raise from_response(response.status_code, _error_body(response))
                body = b"".join([piece async for piece in response.aiter_bytes()])
        except httpx.TransportError as exc:
            raise OfflineError(f"download of chunk {fingerprint}: {exc!r}") from exc
        # Hashing (and inflating) a chunk takes milliseconds and releases the GIL: in a
        # worker thread it runs beside the loop, which meanwhile answers the kernel's reads
        # and receives the other chunks of a read-ahead window (a cold read: 15% of the
        # loop's time was this hash).
        data = await trio.to_thread.run_sync(decode, body, compression, fingerprint)
        if data is None:
            raise CorruptChunkError(f"chunk {fingerprint}: the downloaded bytes ({len(body)}, "
                                    f"stored as {compression}) do not hash to it")
        return data


class _SentOnce:
    """A request body that forgets its bytes once sent.

    httpx's Request, Response and their streams form reference cycles, which only the
    cyclic GC frees, and large bytes objects never trigger a collection: a chunk passed
    as `content=` (or read with `response.content`) stayed in memory long after its
    transfer. At 16 MiB chunks that was ~120 MiB of finished uploads and ~300 MiB of
    finished downloads in the mount (gc.collect() freed them). Sent as 1 MiB views."""

    def __init__(self, data: bytes | memoryview) -> None:
        self._data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        data, self._data = self._data, b""
        view = memoryview(data)
        for start in range(0, len(view), 1 << 20):
            yield view[start:start + (1 << 20)]


def _error_body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
        if isinstance(body, dict):
            return body
    except ValueError:
        pass
    return {"error": "http_error", "detail": response.text[:300]}
