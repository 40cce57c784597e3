"""File content as the mount sees it: the committed base version overlaid with dirty
blocks, clipped by truncation.

A file's bytes at offset `o` are, in order of precedence:
  1. its dirty block `o // BLOCK_SIZE`, if one exists (past the block's end: zeros);
  2. the base version's bytes, if `o < base_len` (truncation lowers `base_len`);
  3. zeros, up to `size`.
A dirty block always holds every byte of its range that was valid before it was first
written, so rule 1 never needs the base.

Writes and truncations change LMDB in one write transaction with no `await` inside,
after any base chunks they need have been fetched.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Callable

import trio

from .cache import BLOCK_SIZE, Cache, ChunkEntry, Inode
from .chunkcache import ChunkCache
from .fetcher import Fetcher

if TYPE_CHECKING:
    import lmdb

URLS_WITH_LIST_BYTES = 16 << 20
"""Files up to this size get their chunks' signed URLs with the chunk list."""


class Content:
    def __init__(self, cache: Cache, chunks: ChunkCache, fetcher: Fetcher) -> None:
        self.cache = cache
        self.chunks = chunks
        self.fetcher = fetcher
        self._lists: dict[int, tuple[tuple[int, int], list[ChunkEntry]]] = {}
        """Unpacked chunk lists by inode, tagged with the (node id, rev) they belong to (a
        conflicted copy committed as a new node starts at rev 1 again, like many others):
        a read must not unpack a whole list from LMDB for every 128 KiB request."""

    # --- the base version ---

    async def base_chunks(self, node: Inode) -> list[ChunkEntry]:
        """The committed chunk list `node` overlays, fetched from the server once per rev."""
        if node.base_len == 0 or node.rev == 0:
            return []
        memo = self._lists.get(node.ino)
        if memo is not None and memo[0] == (node.node_id, node.rev):
            return memo[1]
        held = self.cache.chunklist(node.ino)
        if held is None or held[0] != node.rev:
            # A small file's chunks are about to be read: their signed URLs come along,
            # which saves a round trip before the first byte (a big file's are asked
            # for in batches as it is read).
            urls = node.base_len <= URLS_WITH_LIST_BYTES
            info = await self.fetcher.client.file_info(node.node_id, rev=node.rev, urls=urls)
            if urls:
                self.fetcher.remember_urls(info.chunks)
            pairs = [(c.fingerprint, c.length) for c in info.chunks]
            with self.cache.write() as txn:
                self.cache.set_chunklist(txn, node.ino, node.rev, pairs)
            held = self.cache.chunklist(node.ino)
        if len(self._lists) > 1024:
            self._lists.clear()
        self._lists[node.ino] = ((node.node_id, held[0]), held[1])
        return held[1]

    @staticmethod
    def _covering(chunks: list[ChunkEntry], start: int, end: int) -> list[ChunkEntry]:
        if start >= end or not chunks:
            return []
        i = max(bisect.bisect_right(chunks, start, key=lambda c: c.offset) - 1, 0)
        out = []
        while i < len(chunks) and chunks[i].offset < end:
            out.append(chunks[i])
            i += 1
        return out

    def _ahead(self, chunks: list[ChunkEntry], start: int, end: int) -> list[str]:
        """The chunks to read ahead over [start, end), as many as fill a quarter of the
        cache at most: read-ahead into a small cache would evict what is being read."""
        room, out = self.chunks.limit // 4, []
        for c in self._covering(chunks, start, end):
            room -= c.length
            if room < 0:
                break
            out.append(c.fingerprint)
        return out

    def _base_bytes(self, chunks: list[ChunkEntry], start: int, end: int) -> bytes | None:
        """Base bytes [start, end) from cached chunks only; None if one is missing."""
        parts = []
        for c in self._covering(chunks, start, end):
            lo, hi = max(start, c.offset), min(end, c.offset + c.length)
            data = self.chunks.read_range(c.fingerprint, lo - c.offset, hi - c.offset)
            if data is None:
                return None
            parts.append(data)
        return b"".join(parts)

    async def _base_bytes_fetching(self, chunks: list[ChunkEntry], start: int, end: int) -> bytes:
        """Base bytes [start, end), fetched as needed one chunk at a time: a range across
        a chunk boundary must not need both chunks in a cache that holds one."""
        parts = []
        for c in self._covering(chunks, start, end):
            lo, hi = max(start, c.offset), min(end, c.offset + c.length)
            part = self.chunks.read_range(c.fingerprint, lo - c.offset, hi - c.offset)
            for _ in range(3):
                if part is not None:
                    break
                await self.fetcher.ensure([c.fingerprint])
                part = self.chunks.read_range(c.fingerprint, lo - c.offset, hi - c.offset)
            if part is None:
                raise OSError(f"the chunk for bytes {lo}-{hi} keeps getting evicted: cache too small")
            parts.append(part)
        return b"".join(parts)

    # --- reads ---

    async def read(self, node: Inode, off: int, size: int, *, readahead: int = 0) -> bytes:
        end = min(off + size, node.size)
        if off >= end:
            return b""
        chunks = await self.base_chunks(node)
        needed = self._covering(chunks, off, min(end, node.base_len))
        if readahead:
            self.fetcher.prefetch(self._ahead(chunks, end, min(end + readahead, node.base_len)))
        if needed:
            await self.fetcher.ensure([c.fingerprint for c in needed])
        parts = []
        pos = off
        while pos < end:
            block_no = pos // BLOCK_SIZE
            block_start = block_no * BLOCK_SIZE
            stop = min(block_start + BLOCK_SIZE, end)
            with self.cache.read(buffers=True) as txn:
                view = self.cache.get_block(txn, node.ino, block_no)
                block = bytes(view[pos - block_start:stop - block_start]) if view is not None else None
            if block is not None:
                parts.append(block + bytes(stop - pos - len(block)))
            else:
                base_end = min(stop, node.base_len)
                if pos < base_end:
                    parts.append(await self._base_bytes_fetching(chunks, pos, base_end))
                    parts.append(bytes(stop - base_end))
                else:
                    parts.append(bytes(stop - pos))
            pos = stop
        return b"".join(parts)

    # --- writes ---

    async def write(self, node: Inode, off: int, data: bytes,
                    in_txn: Callable[["lmdb.Transaction"], None] = lambda txn: None) -> None:
        """Overlay `data` at `off`. Base chunks under partially written blocks are fetched
        first; then one write transaction updates blocks and inode (and runs `in_txn`)."""
        end = off + len(data)
        first, last = off // BLOCK_SIZE, (end - 1) // BLOCK_SIZE
        chunks = await self.base_chunks(node)
        for block_no in (first, last):
            start = block_no * BLOCK_SIZE
            if start < node.base_len and not self._has_block(node.ino, block_no):
                await self._base_bytes_fetching(chunks, start, min(start + BLOCK_SIZE, node.base_len, node.size))
        view = memoryview(data)
        with self.cache.write(buffers=True) as txn:  # no copies of blocks we only measure
            in_txn(txn)
            for block_no in range(first, last + 1):
                start = block_no * BLOCK_SIZE
                lo, hi = max(off, start), min(end, start + BLOCK_SIZE)
                if lo == start and hi - start == BLOCK_SIZE:
                    block = view[lo - off:hi - off]
                else:
                    old = self._old_block(txn, node, chunks, block_no)
                    length = max(len(old), hi - start)
                    buf = bytearray(old) + bytearray(length - len(old))
                    buf[lo - start:hi - start] = view[lo - off:hi - off]
                    block = buf
                previous = self.cache.get_block(txn, node.ino, block_no)
                previous_len = len(previous) if previous is not None else 0  # before the put reuses its page
                self.cache.put_block(txn, node.ino, block_no, block)
                self.chunks.dirty_bytes += len(block) - previous_len
            node.size = max(node.size, end)
            node.gen += 1
            node.dirty = True
            self.cache.put(txn, node)

    def _has_block(self, ino: int, block_no: int) -> bool:
        with self.cache.read(buffers=True) as txn:
            return self.cache.get_block(txn, ino, block_no) is not None

    def _old_block(self, txn: "lmdb.Transaction", node: Inode, chunks: list[ChunkEntry], block_no: int) -> bytes:
        existing = self.cache.get_block(txn, node.ino, block_no)
        if existing is not None:
            return bytes(existing)
        start = block_no * BLOCK_SIZE
        valid_end = min(start + BLOCK_SIZE, node.size)
        base_end = min(valid_end, node.base_len)
        if start >= valid_end:
            return b""
        base = b""
        if start < base_end:
            base = self._base_bytes(chunks, start, base_end)
            if base is None:
                raise OSError(f"base chunk for block {block_no} of inode {node.ino} was evicted mid-write")
        return base + bytes(valid_end - start - len(base))

    def truncate(self, txn: "lmdb.Transaction", node: Inode, length: int) -> None:
        if length < node.size:
            self.chunks.dirty_bytes -= self.cache.drop_blocks(txn, node.ino, from_block=-(-length // BLOCK_SIZE))
            block_no = length // BLOCK_SIZE
            if length % BLOCK_SIZE:
                block = self.cache.get_block(txn, node.ino, block_no)
                keep = length - block_no * BLOCK_SIZE
                if block is not None and len(block) > keep:
                    self.cache.put_block(txn, node.ino, block_no, bytes(block[:keep]))
                    self.chunks.dirty_bytes -= len(block) - keep
            node.base_len = min(node.base_len, length)
            node.min_trunc = length if node.min_trunc < 0 else min(node.min_trunc, length)
        node.size = length
        node.gen += 1
        node.dirty = True
        self.cache.put(txn, node)


class ContentReader:
    """A blocking file-like view of one file's content for the chunker thread.

    Runs in a worker thread: LMDB reads happen here, and a base chunk that is not
    cached is fetched by calling back into trio (`trio.from_thread.run`).
    """

    def __init__(self, content: Content, node: Inode, chunks: list[ChunkEntry], size: int) -> None:
        self.content = content
        self.ino = node.ino
        self.base_len = min(node.base_len, size)
        self.chunks = chunks
        self.size = size
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = self.size - self.pos
        end = min(self.pos + n, self.size)
        parts = []
        while self.pos < end:
            block_no = self.pos // BLOCK_SIZE
            start = block_no * BLOCK_SIZE
            stop = min(start + BLOCK_SIZE, end)
            with self.content.cache.read(buffers=True) as txn:
                view = self.content.cache.get_block(txn, self.ino, block_no)
                block = bytes(view[self.pos - start:stop - start]) if view is not None else None
            if block is not None:
                parts.append(block + bytes(stop - self.pos - len(block)))
            else:
                base_end = min(stop, self.base_len)
                if self.pos < base_end:
                    data = self.content._base_bytes(self.chunks, self.pos, base_end)
                    if data is None:
                        data = trio.from_thread.run(self.content._base_bytes_fetching, self.chunks, self.pos, base_end)
                    parts.append(data)
                    parts.append(bytes(stop - base_end))
                else:
                    parts.append(bytes(stop - self.pos))
            self.pos = stop
        return b"".join(parts)
