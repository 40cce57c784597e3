"""Lazy chunk downloads: from the chunk cache if present, else from the store.

Each chunk is fetched once however many readers want it (in-flight requests are
shared), several chunks download in parallel, and every chunk is verified against
its fingerprint (in `ApiClient.fetch_chunk`) before it is cached or returned.
Signed URLs are asked for in batches and reused until shortly before they expire.

A sequential reader keeps a window of chunks downloading ahead of it (`prefetch`, sized
by content.py: WINDOW chunks, at most a fixed number of bytes and a quarter of the
cache), so a cold read costs one round trip per window, not one per chunk; the URLs of
the chunks after the window come in the same batch as the window's (`upcoming`).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Callable

import trio

from ..errors import CorruptChunkError, OfflineError, ServerError
from ..local.chunkcache import ChunkCache
from ..protocol import wire
from ..protocol.api_client import ApiClient

log = logging.getLogger("cloudfs.fetcher")
URL_REUSE_S = 45 * 60
URL_BATCH = 256
"""Signed URLs asked for at once when a read-ahead needs some: the chunks it will want
next come along, so a sequential read asks the server once per this many chunks."""
SPARE_BYTES = 32 << 20
"""Chunks downloaded while the cache had no room for them (full of changes not uploaded
yet) are kept in memory up to this much, newest first, for the reader that asked."""


class Fetcher:
    def __init__(self, client: ApiClient, chunks: ChunkCache, *, parallel: int = 12) -> None:
        self.client = client
        self.chunks = chunks
        self._limiter = trio.CapacityLimiter(parallel)
        self._inflight: dict[str, trio.Event] = {}
        self._errors: dict[str, BaseException] = {}
        self._urls: dict[str, tuple[float, wire.ChunkDownload]] = {}
        self.downloaded_bytes = 0
        self.corrupt_downloads = 0
        self.nursery: trio.Nursery | None = None  # set by the session; hosts read-ahead
        self._spare: OrderedDict[str, bytes] = OrderedDict()

    def remember_urls(self, chunks: list[wire.VersionChunk]) -> None:
        """Signed URLs that came with a chunk list (GET /files/{id}?urls=true)."""
        expires = time.monotonic() + URL_REUSE_S
        for c in chunks:
            if c.download is not None:
                self._urls[c.fingerprint] = (expires, wire.ChunkDownload(
                    fingerprint=c.fingerprint, length=c.length, compression=c.compression, download=c.download))

    def has_url(self, fingerprint: str) -> bool:
        hit = self._urls.get(fingerprint)
        return hit is not None and hit[0] > time.monotonic()

    async def _urls_for(self, fingerprints: list[str],
                        upcoming: Callable[[], list[str]] | None = None) -> dict[str, wire.ChunkDownload]:
        """Signed URLs of `fingerprints`; when some must be asked for, those of
        `upcoming()` (chunks wanted soon) that lack one are asked for in the same request."""
        now = time.monotonic()
        out, wanted = {}, []
        for fp in fingerprints:
            hit = self._urls.get(fp)
            if hit and hit[0] > now:
                out[fp] = hit[1]
            else:
                wanted.append(fp)
        if wanted and upcoming is not None:
            asked = set(wanted)
            for fp in upcoming():
                if len(wanted) >= URL_BATCH:
                    break
                if fp not in asked and not self.has_url(fp) and fp not in self.chunks:
                    asked.add(fp)
                    wanted.append(fp)
        for i in range(0, len(wanted), 1000):
            answer = await self.client.prepare_download(wanted[i:i + 1000])
            for chunk in answer.chunks:
                self._urls[chunk.fingerprint] = (now + URL_REUSE_S, chunk)
                out[chunk.fingerprint] = chunk
        return out

    async def ensure(self, fingerprints: list[str], *, on_fetched: Callable[[str], None] | None = None,
                     upcoming: Callable[[], list[str]] | None = None) -> None:
        """Make sure every chunk is in the cache, downloading the missing ones in parallel.
        `on_fetched` is told of each chunk this call downloaded, as it lands (the
        progress of pinned files: pins.py); `upcoming` names chunks wanted soon, whose
        URLs come along if any must be asked for (`_urls_for`)."""
        missing = [fp for fp in dict.fromkeys(fingerprints) if fp not in self.chunks and fp not in self._spare]
        if not missing:
            return
        mine = [fp for fp in missing if fp not in self._inflight]
        for fp in mine:
            self._inflight[fp] = trio.Event()
        try:
            urls = await self._urls_for(mine, upcoming) if mine else {}
        except BaseException as exc:
            for fp in mine:
                self._errors[fp] = exc
                self._inflight.pop(fp).set()
            raise

        async def one(fp: str) -> None:
            try:
                async with self._limiter:
                    chunk = urls[fp]
                    data = await self.client.fetch_chunk(fp, chunk.download, chunk.compression)
                self._keep(fp, data)
                self.downloaded_bytes += len(data)
                self._errors.pop(fp, None)
                if on_fetched is not None:
                    on_fetched(fp)
            except CorruptChunkError as exc:
                log.error("chunk %s from the store does not match its fingerprint: %s", fp, exc)
                self._errors[fp] = exc
                self.corrupt_downloads += 1
                if self.nursery is not None:
                    self.nursery.start_soon(self._report, fp)
            except Exception as exc:  # noqa: BLE001 - handed to every waiter below
                log.warning("fetching chunk %s failed: %s", fp, exc)
                self._errors[fp] = exc
            finally:
                self._inflight.pop(fp).set()

        async with trio.open_nursery() as nursery:
            for fp in mine:
                nursery.start_soon(one, fp)
        for fp in missing:
            event = self._inflight.get(fp)
            if event is not None:
                await event.wait()
            if fp not in self.chunks and fp not in self._spare and fp in self._errors:
                raise self._errors.pop(fp)
            # Not there without an error: evicted again at once (a cache full of changes,
            # many readers). The caller reads what it can and uses `fetch` for the rest.

    def _keep(self, fingerprint: str, data: bytes) -> None:
        if self.chunks.put(fingerprint, data):
            return
        self._spare[fingerprint] = data
        self._spare.move_to_end(fingerprint)
        while len(self._spare) > 1 and sum(map(len, self._spare.values())) > SPARE_BYTES:
            self._spare.popitem(last=False)

    async def fetch(self, fingerprint: str) -> bytes:
        """One chunk's bytes, downloaded and verified even if the cache cannot keep them
        (full of changes not uploaded yet: a write behind a streaming window)."""
        data = self.chunks.get(fingerprint)
        if data is None:
            data = self._spare.get(fingerprint)
        if data is not None:
            return data
        urls = await self._urls_for([fingerprint])
        chunk = urls[fingerprint]
        async with self._limiter:
            data = await self.client.fetch_chunk(fingerprint, chunk.download, chunk.compression)
        self.downloaded_bytes += len(data)
        self._keep(fingerprint, data)
        return data

    async def _report(self, fingerprint: str) -> None:
        """Tell the server, which checks the stored object itself and marks it bad so
        the next upload of those bytes replaces it."""
        try:
            report = await self.client.report_chunk(fingerprint)
            log.warning("reported chunk %s: the server found it %s (%s)", fingerprint, report.state,
                        report.problem or "no problem in the store")
        except (OfflineError, ServerError) as exc:
            log.warning("could not report chunk %s: %s", fingerprint, exc)

    def prefetch(self, fingerprints: list[str], *, upcoming: Callable[[], list[str]] | None = None) -> None:
        """Read-ahead: fetch these in the background (in the session's nursery), all at
        once (the caller bounds the window); a failure only means the later read fetches
        again. Nothing while changes not uploaded yet fill three quarters of the cache."""
        if self.nursery is None or self.chunks.dirty_bytes + self.chunks.limit // 4 > self.chunks.limit:
            return
        wanted = [fp for fp in fingerprints if fp not in self._inflight and fp not in self.chunks]
        if wanted:
            self.nursery.start_soon(self._prefetch, wanted, upcoming)

    async def _prefetch(self, fingerprints: list[str], upcoming: Callable[[], list[str]] | None) -> None:
        try:
            await self.ensure(fingerprints, upcoming=upcoming)
        except Exception as exc:  # noqa: BLE001 - read-ahead is best effort
            log.debug("read-ahead failed: %s", exc)

    async def read_range(self, fingerprint: str, start: int, end: int) -> bytes:
        data = self.chunks.read_range(fingerprint, start, end)
        if data is None:
            data = (await self.fetch(fingerprint))[start:end]
        return data
