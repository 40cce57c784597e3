"""Uploading a file while it is still being written, so it need not fit in the cache.

A file open for writing cannot be committed (the syncer waits for its close or
fsync), so its dirty blocks would fill the cache. Once a file open for writing has
`round_bytes` of new content (or a writer waits for room), the streamer runs a round
on it: walk its bytes up to the frontier (`Content.frontier`: the end of what is
known: the streamed prefix, the base, then the run of dirty blocks after them; a hole
a download manager has not filled yet stops it), cut them into chunks, PUT those the store lacks, and
record every chunk but the last as the file's streamed prefix (prefix.py), dropping
the dirty blocks they came from, batch by batch, in the transaction that records
them. Those bytes then count as clean: the cache can evict them. The commit at close
or fsync names the prefix's chunks without reading them again.

A file written in a burst is not streamed while the burst lasts: without pressure a
round waits until the file has been written for STREAM_AFTER_S. Overlapping the upload
with the writing makes a file durable sooner by at most the time it took to write,
while the round's chunking, hashing and PUTs (and the server's read-back of each chunk)
take CPU from the writer: on a 2-core machine that also ran the store, streaming during
a 1 GiB copy halved its speed until close (BENCHMARKS.md, issue 18). A writer that goes
on longer (a download, a recording, a file larger than the cache) streams as before,
and pressure on the cache starts a round at once.

Concurrency: a round holds the syncer's per-file lock, so a round and an upload of
one file never overlap. The writer goes on writing during a round; `Content.watch`
collects what it wrote, and those ranges become stale (their chunks are cut and sent
again by a later round or the commit) and their blocks are kept. A round that fails
(server unreachable, over quota) leaves the prefix as it was and is tried again after
a pause; the writers waiting for room then get ENOSPC (drive.py).
"""

from __future__ import annotations

import logging
from typing import AsyncContextManager, Callable

import trio

from ..errors import CloudFsError, OfflineError, ServerError
from ..local.cache import BLOCK_SIZE, ROOT_INO, Cache, ChunkEntry, GoneError, Inode
from ..model.content import Content, Watch
from .prefix import NO_CLIP, Prefix, Ranges
from .uploader import Uploader, drop_stored_blocks

log = logging.getLogger("cloudfs.streamer")

MiB = 1 << 20
ROUND_MAX_BYTES = 256 * MiB
ROUND_MIN_BYTES = 16 * MiB
"""Under pressure a round needs this much (or a quarter of the cache) past the prefix:
every round cuts its last chunk again, and reads 32 MiB ahead to find the first."""
RETRY_S = 2.0
STREAM_AFTER_S = 2.0
"""A file open for writing is streamed without pressure once it has been written for
this long (counted from its first write since it was opened)."""


class Streamer:
    def __init__(self, cache: Cache, content: Content, uploader: Uploader, *, writers: dict[int, int],
                 lock: Callable[[int], AsyncContextManager]) -> None:
        self.cache = cache
        self.content = content
        self.chunks = content.chunks
        self.uploader = uploader
        self.writers = writers
        self.lock = lock
        self.round_bytes = max(4 * MiB, min(self.chunks.limit // 4, ROUND_MAX_BYTES))
        """New bytes in a file open for writing that start a round without pressure."""
        self.last_error = ""
        self.streamed_bytes = 0
        """Bytes recorded into prefixes (reused chunks not counted)."""
        self.rounds = 0
        """Rounds that walked a file (each reads all its dirty blocks' keys)."""
        self._wanted: dict[int, bool] = {}
        self._wake = trio.Event()
        self._retry_at: dict[int, float] = {}
        self._writing_since: dict[int, float] = {}
        """First write to each file open for writing (dropped once it is closed)."""

    # --- asked for by the drive ---

    def written(self, node: Inode) -> None:
        """After a write: worth a round once enough new bytes are there and the file has
        been written for STREAM_AFTER_S."""
        if not self.writers.get(node.ino):
            return
        self._writing_since.setdefault(node.ino, trio.current_time())
        if node.ino in self._wanted:
            return
        if node.size - self.content.under_len(node) >= self.round_bytes:
            self.want(node.ino)  # not for writes behind the window alone: a random writer would
            # have a chunk read back and sent again per write; they wait for pressure or the commit.
            # Bytes under the base count as done too: counted from 0, every write into a large
            # file opened for writing started a round, and each walked all its dirty blocks
            # (random 4 KiB writes into a 256 MiB file: 890 IOPS, 45% of the mount in rounds).

    def press(self) -> None:
        """A writer waits for room: every file open for writing gets a round."""
        for ino in list(self.writers):
            self.want(ino, pressure=True)

    def want(self, ino: int, *, pressure: bool = False) -> None:
        self._wanted[ino] = self._wanted.get(ino, False) or pressure
        self._wake.set()

    # --- the task ---

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            now = trio.current_time()
            ready = [ino for ino, pressure in self._wanted.items()
                     if self._retry_at.get(ino, 0) <= now and (pressure or self._written_long(ino, now))]
            if not ready:
                self._writing_since = {ino: t for ino, t in self._writing_since.items() if self.writers.get(ino)}
                self._wake = trio.Event()
                with trio.move_on_after(0.5):
                    await self._wake.wait()
                continue
            ino = ready[0]
            pressure = self._wanted.pop(ino)
            try:
                async with self.lock(ino):
                    await self.round(ino, pressure=pressure)
                self._retry_at.pop(ino, None)
                self.last_error = ""
            except GoneError:
                pass
            except Exception as exc:  # noqa: BLE001 - the file stays dirty; its commit sends it all
                if not isinstance(exc, (OfflineError, ServerError, CloudFsError, OSError)):
                    log.exception("streaming inode %d failed", ino)
                elif self.last_error != str(exc):
                    log.warning("streaming inode %d stopped, retried in %.0f s: %s", ino, RETRY_S, exc)
                self.last_error = str(exc)
                self._retry_at[ino] = trio.current_time() + RETRY_S
                self._wanted.setdefault(ino, pressure)

    def _written_long(self, ino: int, now: float) -> bool:
        return now - self._writing_since.get(ino, now - STREAM_AFTER_S) >= STREAM_AFTER_S

    # --- one round ---

    async def round(self, ino: int, *, pressure: bool = False) -> None:
        node = self.cache.get(ino)
        if node is None or node.kind != "file" or not node.dirty or not self.writers.get(ino) \
                or (node.parent == 0 and node.ino != ROOT_INO):
            return  # closed (the syncer commits it), gone, or clean
        base = await self.content.base_chunks(node)
        self.rounds += 1
        prefix = self.content.walk_prefix(node, base)
        end = self.content.frontier(node)
        first = done = prefix.limit if prefix is not None else 0
        if prefix is not None and prefix.stale:
            first = min(first, prefix.stale.starts[0])
        least = min(ROUND_MIN_BYTES, self.round_bytes) if pressure else self.round_bytes
        if end - (first if pressure else done) < least:
            return
        watch = self.content.watches[ino] = Watch()
        recorder = _Recorder(self, node, prefix, watch, first)
        try:
            _, chunks, sent = await self.uploader.send_walk(node, base, prefix, end, final=False,
                                                            on_progress=recorder.record)
        finally:
            self.content.watches.pop(ino, None)
        self.uploader.sent_chunks += chunks
        self.uploader.sent_bytes += sent
        log.debug("streamed inode %d up to %d (frontier %d)", ino, recorder.recorded, end)


class _Recorder:
    """Records a round's chunks into the prefix as their batches land in the store."""

    def __init__(self, streamer: Streamer, node: Inode, old: Prefix | None, watch: Watch, first: int) -> None:
        self.streamer = streamer
        self.node = node
        self.old = old
        self.watch = watch
        self.entries: list[ChunkEntry] = []
        self.recorded = first
        """The end of what is recorded (before it: the prefix the round reuses)."""
        self.freed_from = max(0, (first // BLOCK_SIZE - 1) * BLOCK_SIZE)
        """Blocks from here on may hold bytes the round streamed (one block back: the
        block across the last recorded cut)."""

    def record(self, refs: list[tuple[str, int]]) -> None:
        offset = self.entries[-1].offset + self.entries[-1].length if self.entries else 0
        for fp, length in refs[len(self.entries):]:
            self.entries.append(ChunkEntry(fp, length, offset))
            offset += length
        if offset <= self.recorded:
            return
        old, content, cache = self.old, self.streamer.content, self.streamer.cache
        tail: list[ChunkEntry] = []
        clip = NO_CLIP
        if old is not None and offset < old.end:
            j = old.index_at(offset)
            if j is None:
                return  # inside a stretch of the old prefix being cut again: wait for a boundary
            tail, clip = old.chunks[j:], old.clip
        with cache.write(buffers=True) as txn:
            if cache.get(self.node.ino) is None:
                return
            # Stale: what was stale and not walked yet, and whatever was written during the
            # round (the stored prefix gains those itself, a prefix made of the base not).
            live = content.prefixes.get(self.node.ino) or old
            stale = Ranges(live.stale.pairs() if live is not None else [])
            stale.remove(0, offset)
            prefix = Prefix(self.entries + tail, min(clip, self.watch.truncated), stale)
            for a, b in self.watch.written.clipped(0, prefix.end):
                stale.add(a, b)
            content.prefixes.put(txn, self.node.ino, prefix)
            freed = drop_stored_blocks(cache, txn, self.node.ino, self.freed_from, offset, stale)
            self.streamer.chunks.dirty_bytes -= freed
        self.streamer.streamed_bytes += offset - self.recorded
        self.recorded = offset
        self.freed_from = max(0, (offset // BLOCK_SIZE) * BLOCK_SIZE)
