"""Uploading one file's content: chunk, ask what is missing, PUT it, commit.

The file is streamed through the chunker in a worker thread (`ContentReader`), so
memory holds only the chunks in flight, whatever the file size. Pieces flow through a
bounded channel to upload tasks; the server is asked in batches which chunks it
lacks, and only those are sent. The commit names the base revision the device
started from; the dirty blocks are dropped only after the commit succeeded, and only
if the file did not change meanwhile (its `gen` is unchanged).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from . import wire
from .api_client import ApiClient
from .cache import Cache, Inode
from .chunker import Piece, iter_pieces
from .chunkcache import ChunkCache
from .content import Content, ContentReader
from .errors import ConflictError, one_error

log = logging.getLogger("cloudfs.uploader")

BATCH = 16
BATCH_BYTES = 32 * 1024 * 1024
QUEUED_PIECES = 2
PARALLEL_PUTS = 8


@dataclass
class UploadResult:
    response: wire.CommitResponse
    refs: list[tuple[str, int]]
    gen: int
    size: int
    sent_chunks: int
    sent_bytes: int


class Uploader:
    def __init__(self, client: ApiClient, cache: Cache, chunks: ChunkCache, content: Content) -> None:
        self.client = client
        self.cache = cache
        self.chunks = chunks
        self.content = content
        self.sent_chunks = 0
        self.sent_bytes = 0

    async def upload(self, node: Inode, *, parent_node_id: int) -> UploadResult:
        """Commit `node`'s current content as a new version; raises the server's error
        (StaleRevisionError, MissingChunksError ...) untouched for the caller to handle."""
        gen, size, mtime_ns = node.gen, node.size, node.mtime_ns
        base = await self.content.base_chunks(node)
        refs: list[tuple[str, int]] = []
        sent_chunks = sent_bytes = 0
        # Memory bound: QUEUED_PIECES in the channel + one batch (<= BATCH_BYTES + a chunk).
        send, receive = trio.open_memory_channel[Piece | None](QUEUED_PIECES)

        def produce() -> None:
            reader = ContentReader(self.content, node, base, size)
            for piece in iter_pieces(reader, size):
                trio.from_thread.run(send.send, piece)
            trio.from_thread.run(send.aclose)

        async def consume() -> None:
            nonlocal sent_chunks, sent_bytes
            batch: list[Piece] = []
            async with receive:
                async for piece in receive:
                    refs.append((piece.fingerprint, piece.length))
                    batch.append(piece)
                    if len(batch) >= BATCH or sum(p.length for p in batch) >= BATCH_BYTES:
                        c, b = await self._send_batch(batch)
                        sent_chunks, sent_bytes, batch = sent_chunks + c, sent_bytes + b, []
                if batch:
                    c, b = await self._send_batch(batch)
                    sent_chunks, sent_bytes = sent_chunks + c, sent_bytes + b

        async with one_error(), trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            await trio.to_thread.run_sync(produce)

        existing = node.node_id if not node.extra.get("detached") else 0  # detached: its node is gone
        request = wire.CommitRequest(
            node_id=existing or None,
            parent_id=None if existing else parent_node_id,
            name=None if existing else node.name,
            base_rev=node.rev if existing else 0,
            size=size, mtime_ns=mtime_ns, mode=node.mode,
            chunks=[wire.ChunkRef(fingerprint=fp, length=length) for fp, length in refs],
        )
        try:
            response = await self.client.commit(request)
        except ConflictError as exc:
            response = await self._landed_already(exc, refs, size, mtime_ns)
            if response is None:
                raise
        self.sent_chunks += sent_chunks
        self.sent_bytes += sent_bytes
        return UploadResult(response, refs, gen, size, sent_chunks, sent_bytes)

    async def _landed_already(self, exc: ConflictError, refs: list[tuple[str, int]], size: int,
                              mtime_ns: int) -> wire.CommitResponse | None:
        """A commit retried after its answer was lost meets its own first attempt (a stale
        base revision, or its own new file under the name). If the server's current
        version is exactly what we sent, from this device, it was ours: success."""
        if exc.code not in ("stale_revision", "name_exists"):
            return None
        node_id = int((exc.body.get("node") or {}).get("id", 0))
        if not node_id:
            return None
        info = await self.client.file_info(node_id, urls=False)
        version = info.version
        if version is None or (version.device, version.size, version.mtime_ns) != (self.client.device, size, mtime_ns):
            return None
        if [(c.fingerprint, c.length) for c in info.chunks] != refs:
            return None
        log.info("the commit of node %d rev %d had landed before its answer was lost", node_id, version.rev)
        return wire.CommitResponse(node=info.node, version=version, cursor=info.cursor)

    async def _send_batch(self, batch: list[Piece]) -> tuple[int, int]:
        by_fp = {p.fingerprint: p for p in batch}
        prepared = await self.client.prepare_upload(
            [wire.ChunkUpload(fingerprint=p.fingerprint, length=p.length) for p in by_fp.values()])
        limiter = trio.CapacityLimiter(PARALLEL_PUTS)
        sent = 0

        async def put(ticket: wire.ChunkTicket) -> None:
            nonlocal sent
            async with limiter:
                data = by_fp[ticket.fingerprint].data
                await self.client.put_chunk(ticket, data)
                sent += len(data)

        async with one_error(), trio.open_nursery() as nursery:
            for ticket in prepared.missing:
                nursery.start_soon(put, ticket)
        # Keep what we just uploaded: the next read of this file is then local.
        for p in by_fp.values():
            if p.fingerprint not in self.chunks and self.chunks.used_bytes + p.length < self.chunks.limit:
                self.chunks.put(p.fingerprint, p.data)
        return len(prepared.missing), sent


def finish_upload(cache: Cache, chunks: ChunkCache, node: Inode, result: UploadResult) -> bool:
    """Record a successful commit; drop the dirty blocks if nothing changed since.
    Returns True when the file is now clean. Runs in one write transaction."""
    with cache.write() as txn:
        current = cache.get(node.ino)
        if current is None:
            return True
        if not current.node_id or current.extra.pop("detached", False):
            cache.bind_node_id(txn, current, result.response.node.id)
        remote = result.response.node
        current.srv_parent = (cache.ino_for_node(remote.parent_id) or 0) if remote.parent_id else 0
        current.srv_name = remote.name
        current.rev = result.response.version.rev
        current.srv_mode = result.response.node.mode
        current.srv_mtime_ns = result.response.node.mtime_ns
        cache.set_chunklist(txn, current.ino, current.rev, result.refs)
        current.extra["srv_size"] = result.size  # what the server counts against a quota
        clean = current.gen == result.gen
        if clean:
            chunks.dirty_bytes -= cache.drop_blocks(txn, current.ino, from_block=0)
            current.base_len = result.size
            current.dirty = False
            current.min_trunc = -1
        else:
            trunc = current.min_trunc
            current.base_len = result.size if trunc < 0 else min(result.size, trunc)
        cache.put(txn, current)
    log.info("committed inode %d as node %d rev %d (%d bytes, %s)", node.ino, result.response.node.id,
             result.response.version.rev, result.size, "clean" if clean else "changed meanwhile")
    return clean
