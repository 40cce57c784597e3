"""File content as the mount sees it: the committed base version overlaid with dirty
blocks, clipped by truncation.

A file's bytes at offset `o` are, in order of precedence:
  1. its dirty block `o // BLOCK_SIZE`, if one exists (past the block's end: zeros);
  2. its streamed prefix's chunks, if `o < prefix.limit` (prefix.py: a file being
     written whose first chunks are already in the store);
  3. the base version's bytes, if `o < base_len` (truncation lowers `base_len`);
  4. zeros, up to `size`.
Rules 2-4 are "the bytes under the blocks" (`_segments`). A dirty block always holds
every byte of its range that was valid before it was first written, so rule 1 never
needs what is under it.

Writes and truncations change LMDB in one write transaction with no `await` inside,
after any chunks they need have been fetched. While an upload or a streaming round
reads a file, `watch` collects the ranges written meanwhile: the blocks there must
outlive the upload, whose chunks hold the older bytes.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import trio

from ..local.cache import _QQ, BLOCK_SIZE, Cache, ChunkEntry, Inode
from ..local.chunkcache import ChunkCache
from ..sync.prefix import NO_CLIP, Prefix, Prefixes, Ranges
from .fetcher import URL_BATCH, Fetcher

if TYPE_CHECKING:
    import lmdb

log = logging.getLogger("cloudfs.cache")

WINDOW = 8
"""Chunks a sequential read keeps downloading ahead of itself (bounded in bytes by the
caller's `readahead` and by a quarter of the cache): one round trip per window."""
URLS_WITH_LIST_BYTES = 16 << 20
"""Files up to this size get their chunks' signed URLs with the chunk list."""


class StaleListError(OSError):
    """A chunk list held across an await is not the file's any more (a commit landed)."""


Segment = tuple[ChunkEntry | None, int, int]
"""(chunk, start, end) in file offsets: bytes [start, end) of the file come from that
chunk (None: zeros)."""


@dataclass
class Watch:
    """What happened to a file while an upload read it."""
    written: Ranges = field(default_factory=Ranges)
    truncated: int = NO_CLIP
    """The lowest length it was truncated to."""


class Content:
    def __init__(self, cache: Cache, chunks: ChunkCache, fetcher: Fetcher) -> None:
        self.cache = cache
        self.chunks = chunks
        self.fetcher = fetcher
        self.prefixes = Prefixes(cache)
        self.watches: dict[int, Watch] = {}
        self._settled_checked: dict[int, set[int] | None] = {}
        """Per settled file, the offsets of its version's chunks checked in this process
        (`_read_settled`); None: all of them (`settled_here`)."""
        self._frontiers: dict[int, tuple[int, int]] = {}
        """(frontier not clipped by the size, truncations then) per inode, for `frontier`."""
        self._truncations: dict[int, int] = {}
        """Truncations per inode, so a write knows whether bytes it fetched still hold."""
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

    def _ahead(self, chunks: list[ChunkEntry], start: int, end: int) -> tuple[list[str], Callable[[], list[str]]]:
        """The window to read ahead over [start, end): WINDOW chunks at most, as many as
        fill a quarter of the cache at most (read-ahead into a small cache would evict
        what is being read); and a callable naming the chunks after it, whose signed URLs
        are asked for with the window's."""
        room, out = self.chunks.limit // 4, []
        if start >= end or not chunks:
            return out, list
        i = max(bisect.bisect_right(chunks, start, key=lambda c: c.offset) - 1, 0)
        first = i
        while i < len(chunks) and chunks[i].offset < end and i - first < WINDOW:
            room -= chunks[i].length
            if room < 0:
                break
            out.append(chunks[i].fingerprint)
            i += 1
        return out, lambda: [c.fingerprint for c in chunks[i:i + URL_BATCH]]

    def _segments(self, node: Inode, base: list[ChunkEntry], start: int, end: int) -> list[Segment]:
        """Where bytes [start, end) come from under the dirty blocks (rules 2-4)."""
        out: list[Segment] = []
        prefix = self.prefixes.get(node.ino)
        if prefix is not None and start < min(end, prefix.limit):
            stop = min(end, prefix.limit)
            for c in self._covering(prefix.chunks, start, stop):
                out.append((c, max(start, c.offset), min(stop, c.offset + c.length)))
            start = stop
        stop = min(end, node.base_len)
        if start < stop:
            covering = self._covering(base, start, stop)
            if not covering or covering[0].offset > start or covering[-1].offset + covering[-1].length < stop:
                raise StaleListError(f"the chunk list of inode {node.ino} does not cover bytes {start}-{stop} "
                                     f"(rev {node.rev}): it changed meanwhile")
            for c in covering:
                out.append((c, max(start, c.offset), min(stop, c.offset + c.length)))
            start = stop
        if start < end:
            out.append((None, start, end))
        return out

    def _under_bytes(self, node: Inode, base: list[ChunkEntry], start: int, end: int) -> bytes | None:
        """Bytes [start, end) under the blocks, from cached chunks only; None if one is
        missing (or `base` is not the node's chunk list any more)."""
        parts = []
        try:
            segments = self._segments(node, base, start, end)
        except StaleListError:
            return None
        for c, lo, hi in segments:
            if c is None:
                parts.append(bytes(hi - lo))
                continue
            data = self.chunks.read_range(c.fingerprint, lo - c.offset, hi - c.offset)
            if data is None:
                return None
            parts.append(data)
        return b"".join(parts)

    async def _under_bytes_fetching(self, node: Inode, base: list[ChunkEntry], start: int, end: int) -> bytes:
        """Bytes [start, end) under the blocks, fetched as needed one chunk at a time: a
        range across a chunk boundary must not need both chunks in a cache that holds one.
        The base list is asked for again: a commit during the caller's awaits moves it."""
        base = await self.base_chunks(node)
        parts = []
        for c, lo, hi in self._segments(node, base, start, end):
            if c is None:
                parts.append(bytes(hi - lo))
                continue
            part = self.chunks.read_range(c.fingerprint, lo - c.offset, hi - c.offset)
            if part is None:
                await self.fetcher.ensure([c.fingerprint])
                part = self.chunks.read_range(c.fingerprint, lo - c.offset, hi - c.offset)
            if part is None:  # evicted at once: the cache is full of changes
                part = (await self.fetcher.fetch(c.fingerprint))[lo - c.offset:hi - c.offset]
            parts.append(part)
        return b"".join(parts)

    def walk_prefix(self, node: Inode, base: list[ChunkEntry]) -> Prefix | None:
        """What an upload of `node` may name without reading: its streamed prefix, or
        else the base version's chunks (all but the last, which ended with the file,
        not on a cut) with every dirty block's range stale, so an edit to a large file
        reads and sends only the chunks around it."""
        prefix = self.prefixes.get(node.ino)
        if prefix is not None:
            return prefix
        chunks = [c for c in base[:-1] if c.offset + c.length <= node.base_len]
        if not chunks:
            return None
        stale = Ranges()
        with self.cache.read() as txn:
            cursor = txn.cursor(db=self.cache.blocks)
            if cursor.set_range(_QQ.pack(node.ino, 0)):
                for key in cursor.iternext(keys=True, values=False):
                    ino, block_no = _QQ.unpack(key) if len(key) == 16 else (-1, 0)
                    if ino != node.ino:
                        break
                    stale.add(block_no * BLOCK_SIZE, (block_no + 1) * BLOCK_SIZE)
                    self.cache.mapped(BLOCK_SIZE)
        return Prefix(chunks, node.base_len, stale)

    async def blocks_cover(self, node: Inode, size: int) -> bool:
        """Whether the file's blocks hold every byte of [0, `size`): a commit of those
        bytes can leave them as its cached copy (`Cache.settle`), and its upload need not
        keep what it sends. A walk over block keys, in a worker thread (it faults in the
        blocks' pages: a 1 GiB file's in 0.1 s)."""
        last = -(-size // BLOCK_SIZE)
        return size > 0 and await trio.to_thread.run_sync(self._end_of_run, node.ino, 0, last) == last

    def frontier(self, node: Inode) -> int:
        """The end of the bytes known from 0 on: the streamed prefix and the base, then
        the run of dirty blocks after them (a hole nobody wrote yet ends it). It only
        grows (but for a truncation), so the walk over block keys starts where the last
        one ended: a writer waiting for room asks every 0.2 s, and a walk over a full
        1 GiB cache's keys cost the 8 GiB run a third of the mount's CPU."""
        known = self.under_len(node)
        truncations = self._truncations.get(node.ino, 0)
        start = known
        held = self._frontiers.get(node.ino)
        if held is not None and held[1] == truncations and held[0] > known:
            start = held[0]  # only a truncation moves it back: blocks below it leave only into the prefix
        reach = max(known, self._end_of_run(node.ino, start // BLOCK_SIZE) * BLOCK_SIZE)
        self._frontiers[node.ino] = (reach, truncations)
        return min(node.size, reach)

    def _end_of_run(self, ino: int, first: int, stop: int | None = None) -> int:
        """The first block number from `first` on (up to `stop`) that the file has no
        block of: the end of the run of blocks starting at `first`."""
        expected = first
        with self.cache.read() as txn:
            cursor = txn.cursor(db=self.cache.blocks)
            if cursor.set_range(_QQ.pack(ino, first)):
                for key in cursor.iternext(keys=True, values=False):
                    if expected == stop or len(key) != 16 or _QQ.unpack(key) != (ino, expected):
                        break
                    expected += 1
                    self.cache.mapped(BLOCK_SIZE)
        return expected

    def under_len(self, node: Inode) -> int:
        """Where the bytes under the blocks turn to zeros."""
        prefix = self.prefixes.get(node.ino)
        return max(node.base_len, prefix.limit if prefix is not None else 0)

    # --- reads ---

    async def read(self, node: Inode, off: int, size: int, *, readahead: int = 0) -> bytes:
        end = min(off + size, node.size)
        if off >= end:
            return b""
        if node.ino in self.cache.settled:
            settled = await self._read_settled(node, off, end)
            if settled is not None:
                return settled
        chunks = await self.base_chunks(node)
        needed = self._needed(node, chunks, off, end)
        upcoming = None
        if readahead and needed:  # a reader of blocks alone (an edited settled file) reads on in blocks
            ahead, upcoming = self._ahead(chunks, end, min(end + readahead, node.base_len))
            self.fetcher.prefetch(ahead, upcoming=upcoming)
        if needed:
            await self.fetcher.ensure(needed, upcoming=upcoming)
        chunks = await self.base_chunks(node)  # a commit during the awaits above moves it
        with self.cache.read(buffers=True) as txn:
            changed = self.cache.any_block(txn, node.ino, off // BLOCK_SIZE, (end - 1) // BLOCK_SIZE)
        if not changed:  # most reads: pieces of cached chunks, no walk over blocks (no await since the check)
            data = self._under_bytes(node, chunks, off, end)
            if data is not None:
                return data
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
                parts.append(await self._under_bytes_fetching(node, chunks, pos, stop))
            pos = stop
        return b"".join(parts)

    def _needed(self, node: Inode, chunks: list[ChunkEntry], off: int, end: int) -> list[str]:
        """The chunks a read of [off, end) takes bytes from: those under the blocks it
        lacks. A block holds its range's bytes whatever lies under it, and a file written
        or cut since it was settled has every block and no chunk in the chunk cache:
        fetched all the same, its chunks were downloaded again on the first read after an
        edit, and the read failed while the server was away."""
        first, last = off // BLOCK_SIZE, (end - 1) // BLOCK_SIZE
        with self.cache.read(buffers=True) as txn:
            present = self.cache.blocks_in(txn, node.ino, first, last)
        gaps: list[tuple[int, int]] = []
        for block_no in range(first, last + 1):
            if block_no in present:
                continue
            lo, hi = max(off, block_no * BLOCK_SIZE), min(end, (block_no + 1) * BLOCK_SIZE)
            if gaps and gaps[-1][1] == lo:
                gaps[-1] = (gaps[-1][0], hi)
            else:
                gaps.append((lo, hi))
        needed: dict[str, None] = {}
        for lo, hi in gaps:
            for c, _, _ in self._segments(node, chunks, lo, hi):
                if c is not None:
                    needed[c.fingerprint] = None
        return list(needed)

    async def _read_settled(self, node: Inode, off: int, end: int) -> bytes | None:
        """Bytes [off, end) of a settled file from its blocks alone: nothing fetched nor
        read ahead. Each chunk of its version is checked against its fingerprint the first
        time this process reads it (`verify_settled`), as cached chunks are against their
        sums: blocks damaged on disk are never served. None when the blocks are gone
        (evicted, damaged) or the file changed meanwhile: the caller reads it as any file."""
        checked = self._settled_checked.setdefault(node.ino, set())
        if checked is not None:
            for chunk in self._covering(await self.base_chunks(node), off, end):
                if chunk.offset not in checked:
                    if not self.verify_settled(node, chunk):
                        return None
                    checked.add(chunk.offset)
        data = self.settled_bytes(node, off, end) if node.ino in self.cache.settled else None
        if data is not None:
            self.chunks.touch_settled(node.ino)
        return data

    def settled_here(self, ino: int) -> None:
        """`ino` was just settled by this process: its blocks are what it sent, checked."""
        self._settled_checked[ino] = None

    def verify_settled(self, node: Inode, chunk: ChunkEntry) -> bool:
        """Whether a settled file's blocks still hold `chunk` of its version (their bytes
        hash to its fingerprint). If they do not, they are dropped: the file is read as
        any other from then on, its chunks fetched. False too when it is not settled (any
        more): its blocks are not that version's bytes then."""
        if node.ino not in self.cache.settled:
            return False
        data = self.settled_bytes(node, chunk.offset, chunk.offset + chunk.length)
        if data is not None and hashlib.sha256(data).hexdigest() == chunk.fingerprint:
            return True
        log.error("the cached blocks of inode %d (%s) do not hold chunk %s of its version: damaged on disk, "
                  "dropped; it will be fetched again", node.ino, node.name, chunk.fingerprint)
        with self.cache.write() as txn:
            self.chunks.dirty_bytes -= self.cache.drop_blocks(txn, node.ino, from_block=0)
        return False

    def settled_bytes(self, node: Inode, off: int, end: int) -> bytes | None:
        """Bytes [off, end) of a settled file's blocks; None where one is missing."""
        parts = []
        with self.cache.read(buffers=True) as txn:
            for block_no in range(off // BLOCK_SIZE, (end - 1) // BLOCK_SIZE + 1):
                view = self.cache.get_block(txn, node.ino, block_no)
                if view is None:
                    return None
                start = block_no * BLOCK_SIZE
                lo, hi = max(off, start), min(end, start + BLOCK_SIZE)
                part = bytes(view[lo - start:hi - start])
                parts.append(part + bytes(hi - lo - len(part)))
        self.cache.mapped(end - off)
        return b"".join(parts)

    # --- writes ---

    async def write(self, node: Inode, off: int, data: bytes,
                    in_txn: Callable[["lmdb.Transaction"], None] = lambda txn: None) -> None:
        """Overlay `data` at `off`. Base chunks under partially written blocks are fetched
        first; then one write transaction updates blocks and inode (and runs `in_txn`).
        A settled file (`Cache.settle`) is not evicted meanwhile: its blocks may be what
        lies under the written ones."""
        with self.chunks.hold(node.ino):
            await self._write(node, off, data, in_txn)

    async def _write(self, node: Inode, off: int, data: bytes,
                     in_txn: Callable[["lmdb.Transaction"], None]) -> None:
        end = off + len(data)
        first, last = off // BLOCK_SIZE, (end - 1) // BLOCK_SIZE
        chunks = await self.base_chunks(node)
        under: dict[int, bytes] = {}  # what lies under partly written blocks, fetched before the transaction
        truncations = self._truncations.get(node.ino, 0)
        for block_no in {first, last}:
            start = block_no * BLOCK_SIZE
            if start < self.under_len(node) and not self._has_block(node.ino, block_no):
                under[block_no] = await self._under_bytes_fetching(node, chunks, start,
                                                                   min(start + BLOCK_SIZE, node.size))
        for _ in range(3):  # a commit during the awaits above moved the base: the new list
            rev = (node.node_id, node.rev)
            chunks = await self.base_chunks(node)
            if (node.node_id, node.rev) == rev:
                break
        if self._truncations.get(node.ino, 0) != truncations:
            under.clear()  # truncated meanwhile: read again below (from the cache)
        view = memoryview(data)
        # The drive made room before the awaits above, but a chunk fetched meanwhile (the
        # bytes under a block, or another reader's) may have taken it: without this, the
        # cache passed its limit by a block or two (test_out_of_order_writer_gets_what_a_local_file_gets).
        self.chunks.evict((last - first + 1) * BLOCK_SIZE)
        with self.cache.write(buffers=True) as txn:  # no copies of blocks we only measure
            in_txn(txn)
            if node.ino in self.cache.settled:
                self._base_as_prefix(txn, node, chunks)
            self.chunks.dirty_bytes += self.cache.unsettle(txn, node.ino)  # every block of it is a change now
            self._written(txn, node.ino, off, end)
            for block_no in range(first, last + 1):
                start = block_no * BLOCK_SIZE
                lo, hi = max(off, start), min(end, start + BLOCK_SIZE)
                if lo == start and hi - start == BLOCK_SIZE:
                    block = view[lo - off:hi - off]
                else:
                    old = self._old_block(txn, node, chunks, block_no, under.get(block_no))
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

    def _base_as_prefix(self, txn: "lmdb.Transaction", node: Inode, base: list[ChunkEntry]) -> None:
        """A settled file is about to be written: its blocks hold its base version's bytes,
        and all of them become changes again (`Cache.unsettle`), so the next upload read
        and cut the whole file to find the chunks around the write (a 1 GiB file: about
        2 s of CPU per save). The base's chunks become the file's prefix instead
        (prefix.py: chunks in the store, every range written since stale, `_written`),
        which an upload names without reading, as after a stream; kept in LMDB with the
        blocks, so across a restart too. The last chunk ended with the file, not on a
        cut: it is cut again with what follows."""
        chunks = [c for c in base[:-1] if c.offset + c.length <= node.base_len]
        if chunks and self.prefixes.get(node.ino) is None:
            self.prefixes.put(txn, node.ino, Prefix(chunks))

    def _has_block(self, ino: int, block_no: int) -> bool:
        with self.cache.read(buffers=True) as txn:
            return self.cache.get_block(txn, ino, block_no) is not None

    def _old_block(self, txn: "lmdb.Transaction", node: Inode, chunks: list[ChunkEntry], block_no: int,
                   fetched: bytes | None) -> bytes:
        existing = self.cache.get_block(txn, node.ino, block_no)
        if existing is not None:
            return bytes(existing)
        start = block_no * BLOCK_SIZE
        valid_end = min(start + BLOCK_SIZE, node.size)
        if start >= valid_end:
            return b""
        if fetched is not None:  # nothing but a truncation changes the bytes under a block it has not got
            return fetched[:valid_end - start] + bytes(max(0, valid_end - start - len(fetched)))
        under = self._under_bytes(node, chunks, start, valid_end)
        if under is None:
            raise OSError(f"a chunk under block {block_no} of inode {node.ino} was evicted mid-write")
        return under

    def _written(self, txn: "lmdb.Transaction", ino: int, start: int, end: int) -> None:
        """Bytes [start, end) changed: a watching upload keeps their blocks, and the
        streamed chunks they fall in will be cut and sent again."""
        watch = self.watches.get(ino)
        if watch is not None:
            watch.written.add(start, end)
        prefix = self.prefixes.get(ino)
        if prefix is not None and start < prefix.end:
            prefix.stale.add(start, min(end, prefix.end))
            self.prefixes.put(txn, ino, prefix)

    def truncate(self, txn: "lmdb.Transaction", node: Inode, length: int) -> None:
        self._truncations[node.ino] = self._truncations.get(node.ino, 0) + 1
        self.chunks.dirty_bytes += self.cache.unsettle(txn, node.ino)
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
            watch = self.watches.get(node.ino)
            if watch is not None:
                watch.truncated = min(watch.truncated, length)
            prefix = self.prefixes.get(node.ino)
            if prefix is not None and length < prefix.limit:
                prefix.clip = length
                self.prefixes.put(txn, node.ino, prefix)
        node.size = length
        node.gen += 1
        node.dirty = True
        self.cache.put(txn, node)


class ContentReader:
    """A blocking file-like view of one file's content from `start` to `size`, for
    the chunker thread.

    Runs in a worker thread: LMDB reads happen here, and a chunk under the blocks that
    is not cached is fetched by calling back into trio (`trio.from_thread.run`).
    """

    def __init__(self, content: Content, node: Inode, chunks: list[ChunkEntry], size: int, start: int = 0) -> None:
        self.content = content
        self.node = node
        self.ino = node.ino
        self.chunks = chunks
        self.size = size
        self.pos = start

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
                data = self.content._under_bytes(self.node, self.chunks, self.pos, stop)
                if data is None:
                    data = trio.from_thread.run(self.content._under_bytes_fetching, self.node, self.chunks,
                                                self.pos, stop)
                parts.append(data)
            self.pos = stop
        return b"".join(parts)
