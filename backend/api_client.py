"""The device's HTTP client for the cloudfs server and the signed chunk URLs.

Async (httpx on trio). Every chunk downloaded is checked against its fingerprint
before anyone sees it; every error answer becomes a `ServerError` subclass carrying
the server's JSON body.
"""

from __future__ import annotations

from typing import Any, AsyncIterator

import httpx

from . import wire
from .compress import decode
from .errors import CorruptChunkError, OfflineError, from_response


class ApiClient:
    def __init__(self, base_url: str, token: str, *, device: str = "unknown", timeout: float = 30.0) -> None:
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

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.blobs.aclose()

    async def __aenter__(self) -> "ApiClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _call(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                    timeout: float | None = None) -> dict[str, Any]:
        try:
            response = await self.http.request(method, path, json=json, params=params,
                                               timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT)
        except httpx.TransportError as exc:
            raise OfflineError(f"{method} {path}: {exc!r}") from exc
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"error": "http_error", "detail": response.text[:200]}
            raise from_response(response.status_code, body)
        return response.json()

    # --- metadata ---

    async def me(self) -> wire.Me:
        return wire.Me.model_validate(await self._call("GET", "/me"))

    async def resolve(self, path: str) -> wire.Node:
        return wire.NodeResponse.model_validate(await self._call("GET", "/resolve", params={"path": path})).node

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

    async def move(self, node_id: int, parent_id: int, name: str, *, replace: bool = False) -> wire.NodeResponse:
        return wire.NodeResponse.model_validate(await self._call(
            "POST", f"/nodes/{node_id}/move", json={"parent_id": parent_id, "name": name, "replace": replace}))

    async def set_attr(self, node_id: int, *, mode: int | None = None, mtime_ns: int | None = None) -> wire.NodeResponse:
        body = {k: v for k, v in (("mode", mode), ("mtime_ns", mtime_ns)) if v is not None}
        return wire.NodeResponse.model_validate(await self._call("PATCH", f"/nodes/{node_id}", json=body))

    async def delete(self, node_id: int, *, recursive: bool = False) -> wire.NodeResponse:
        return wire.NodeResponse.model_validate(
            await self._call("DELETE", f"/nodes/{node_id}", params={"recursive": str(recursive).lower()}))

    async def changes(self, cursor: int, *, wait: float = 0, limit: int = 1000) -> wire.ChangesResponse:
        return wire.ChangesResponse.model_validate(await self._call(
            "GET", "/changes", params={"cursor": cursor, "wait": wait, "limit": limit}, timeout=wait + 30))

    async def snapshot(self, after_id: int = 0) -> wire.Snapshot:
        return wire.Snapshot.model_validate(await self._call("GET", "/nodes", params={"after_id": after_id}))

    # --- files ---

    async def prepare_upload(self, chunks: list[wire.ChunkUpload]) -> wire.PrepareUploadResponse:
        body = {"chunks": [c.model_dump(exclude_none=True) for c in chunks]}
        return wire.PrepareUploadResponse.model_validate(await self._call("POST", "/uploads/prepare", json=body))

    async def put_chunk(self, ticket: wire.ChunkTicket, data: bytes | memoryview) -> None:
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
            await self._call("POST", "/downloads/prepare", json={"fingerprints": fingerprints}))

    async def commit(self, req: wire.CommitRequest) -> wire.CommitResponse:
        return wire.CommitResponse.model_validate(
            await self._call("POST", "/files", json=req.model_dump(exclude_none=True)))

    async def file_info(self, node_id: int, *, rev: int | None = None, urls: bool = True) -> wire.FileInfo:
        params: dict[str, Any] = {"urls": str(urls).lower()}
        if rev is not None:
            params["rev"] = rev
        return wire.FileInfo.model_validate(await self._call("GET", f"/files/{node_id}", params=params))

    async def versions(self, node_id: int) -> wire.VersionList:
        return wire.VersionList.model_validate(await self._call("GET", f"/files/{node_id}/versions"))

    async def restore(self, node_id: int, rev: int) -> wire.CommitResponse:
        return wire.CommitResponse.model_validate(await self._call("POST", f"/files/{node_id}/restore", json={"rev": rev}))

    async def fetch_chunk(self, fingerprint: str, download: wire.SignedRequest, compression: str = "none") -> bytes:
        """Download one chunk and return its plain bytes, verified against `fingerprint`
        (in either encoding, and never inflated past the largest chunk: see compress.py)."""
        try:
            # Streamed, so the body is ours alone (see _SentOnce for why that matters).
            async with self.blobs.stream(download.method, download.url, headers=download.headers) as response:
                if response.status_code >= 300:
                    await response.aread()
                    raise from_response(response.status_code, _error_body(response))
                body = b"".join([piece async for piece in response.aiter_bytes()])
        except httpx.TransportError as exc:
            raise OfflineError(f"download of chunk {fingerprint}: {exc!r}") from exc
        data = decode(body, compression, fingerprint)
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
