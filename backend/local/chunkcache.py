"""The clean chunk cache: verified plain bytes by fingerprint, bounded, LRU.

Chunks are immutable and content-addressed, so a cached chunk never goes stale; a
file changed elsewhere simply stops referencing it. Only clean chunks are evicted, and
never those of pinned files (`pinned`, kept by pins.py); dirty blocks (write-back
data) count towards the limit but are never dropped here.

Settled files (`Cache.settle`: blocks kept as the cached copy of the version their
commit made) are evicted here too, a whole file at a time, in the same LRU order as
chunks (`touch_settled`), except while a write to one is under way (`writing`): the
bytes under a partly written block are its blocks until the write's transaction.

The LRU order lives in memory (rebuilt from LMDB at start, oldest first by key order,
which is good enough after a restart); it is touched on every hit without a write
transaction, so reads stay cheap.

A chunk is kept in pieces of PIECE bytes, each its own LMDB value (key: fingerprint and
piece number), and its length under its fingerprint in a database of their own
(`chunk_lengths`), written in the same transaction: a length means every piece is
there. py-lmdb touches every page of a value it returns, so that page faults happen
without the GIL: a 4 KiB read out of a 4 MiB chunk kept whole touched 1,024 pages, a
third of a random read's time, and the start of a mount read every cached byte to learn
the lengths, which now lie together in a few pages (cache format 7 cut the whole
chunks of format 6 into pieces: cache_format.py).

Every piece starts with the xxh3-64 of its bytes. A chunk's pieces are checked the first
time this process reads the chunk (and by `verify_entry`, for fsck): bytes damaged on
disk are dropped and fetched again instead of being returned. Checking once per process
keeps reads cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import struct
from collections import OrderedDict
from typing import Callable, Iterator

import lmdb
import xxhash

from .cache import Cache, u64

log = logging.getLogger("cloudfs.cache")

FORMAT = "xxh3-pieces-1"
WHOLE_FORMAT = "xxh3-prefix-1"
"""Cache format 6's chunks: each one value, the xxh3-64 of its bytes in front."""
SUM = 8  # bytes of xxh3-64 in front of each piece
PIECE = 128 * 1024
"""Bytes of a chunk per LMDB value (the last piece is shorter): what a read of a few
pages touches, and the read-around window (fs/pagecache.py) in one value."""
_PIECE_NO = struct.Struct(">I")
_LENGTH = struct.Struct(">Q")
KEY = 32  # a fingerprint's bytes: the front of its pieces' keys


def settled_key(ino: int) -> bytes:
    """A settled file's place in the LRU order (9 bytes: never a fingerprint's 32)."""
    return b"s" + u64(ino)


def _settled_ino(key: bytes) -> int | None:
    return int.from_bytes(key[1:], "big") if len(key) == 9 else None


def _piece_key(key: bytes, n: int) -> bytes:
    return key + _PIECE_NO.pack(n)


def seal(data: bytes | memoryview) -> list[bytes]:
    """A chunk's pieces as `put_sealed` stores them, each behind its xxh3-64: the caller
    can let go of `data` before LMDB copies them into its write transaction's pages."""
    view = memoryview(data)
    return [xxhash.xxh3_64_digest(view[i:i + PIECE]) + view[i:i + PIECE] for i in range(0, len(view), PIECE)]


def write_sealed(txn: lmdb.Transaction, cache: Cache, key: bytes, length: int, pieces: list[bytes]) -> None:
    """A chunk's length and pieces, in the caller's transaction."""
    txn.put(key, _LENGTH.pack(length), db=cache.chunk_lengths)
    for n, piece in enumerate(pieces):
        txn.put(_piece_key(key, n), piece, db=cache.chunks)


def piece_intact(view: memoryview | bytes) -> bool:
    return len(view) >= SUM and xxhash.xxh3_64_digest(view[SUM:]) == bytes(view[:SUM])


class ChunkCache:
    def __init__(self, cache: Cache, limit_bytes: int) -> None:
        self.cache = cache
        self.limit = limit_bytes
        self._lru: OrderedDict[bytes, int] = OrderedDict()
        self._checked: set[bytes] = set()
        self.clean_bytes = 0
        self.corrupt_dropped = 0
        self.pinned: set[bytes] = set()
        """Chunks of pinned files (pins.py), and their `settled_key` if settled: never evicted."""
        self.writing: dict[int, int] = {}
        """Settled files with writes under way (`hold`), which eviction passes over."""
        if cache.get_meta("chunk_format") != FORMAT:
            with cache.write() as txn:  # a cache from before checksums: clean chunks are only a cache
                txn.drop(cache.chunks, delete=False)
                txn.drop(cache.chunk_lengths, delete=False)
                cache.set_meta(txn, "chunk_format", FORMAT)
        for ino in cache.settled:  # oldest first, before every chunk: their order is not kept
            self._lru[settled_key(ino)] = cache.settled[ino]
        with cache.read() as txn:  # the lengths alone, not a byte of the pieces
            for key, raw in txn.cursor(db=cache.chunk_lengths):
                length = _LENGTH.unpack(raw)[0]
                self._lru[key] = length
                self.clean_bytes += length
        self.dirty_bytes = cache.dirty_bytes()

    def _pieces(self, txn: lmdb.Transaction, key: bytes, length: int) -> Iterator[memoryview | bytes | None]:
        """Every piece of a chunk `length` bytes long, None for one that is missing."""
        for n in range(-(-length // PIECE)):
            yield txn.get(_piece_key(key, n), db=self.cache.chunks)

    def _intact(self, txn: lmdb.Transaction, key: bytes, length: int) -> bool:
        """First read of `key` in this process: do its pieces still match their sums?"""
        if key in self._checked:
            return True
        self.cache.mapped(length)
        total = 0
        for view in self._pieces(txn, key, length):
            if view is None or not piece_intact(view):
                return False
            total += len(view) - SUM
        if total != length:
            return False
        self._checked.add(key)
        return True

    def _drop_corrupt(self, key: bytes) -> None:
        log.error("cached chunk %s is damaged on disk: dropped, it will be fetched again", key.hex())
        self.corrupt_dropped += 1
        self.clean_bytes -= self._lru.pop(key, 0)
        self._checked.discard(key)
        with self.cache.write() as txn:
            self._delete(txn, key)

    def _delete(self, txn: lmdb.Transaction, key: bytes) -> None:
        """A chunk's length and pieces (whatever is left of them)."""
        txn.delete(key, db=self.cache.chunk_lengths)
        cursor = txn.cursor(db=self.cache.chunks)
        if cursor.set_range(key):
            while bytes(cursor.key()[:KEY]) == key and cursor.delete():
                pass

    def __contains__(self, fingerprint: str) -> bool:
        return bytes.fromhex(fingerprint) in self._lru

    def get(self, fingerprint: str) -> bytes | None:
        return self._read(bytes.fromhex(fingerprint), 0, None)

    def read_range(self, fingerprint: str, start: int, end: int) -> bytes | None:
        """Bytes [start, end) of a cached chunk, copying only that slice out of the map."""
        return self._read(bytes.fromhex(fingerprint), start, end)

    def _read(self, key: bytes, start: int, end: int | None) -> bytes | None:
        """Bytes [start, end) of a chunk (end None: to its end), touching only the pieces
        under them; None when it is not cached, gone (evicted by the trio thread while a
        worker thread reads) or damaged (dropped)."""
        length = self._lru.get(key)
        if length is None:
            return None
        end = length if end is None else end
        first, last = start // PIECE, max(start, end - 1) // PIECE
        corrupt = False
        data = None
        with self.cache.read(buffers=True) as txn:
            if not self._intact(txn, key, length):
                corrupt = txn.get(key, db=self.cache.chunk_lengths) is not None
            else:
                views = [txn.get(_piece_key(key, n), db=self.cache.chunks) for n in range(first, last + 1)]
                if all(v is not None for v in views):
                    data = b"".join(v[SUM + max(start - n * PIECE, 0):SUM + min(end - n * PIECE, PIECE)]
                                    for n, v in zip(range(first, last + 1), views))
        self.cache.mapped((last - first + 1) * PIECE)
        if corrupt:
            self._drop_corrupt(key)
            return None
        if data is None:
            self.clean_bytes -= self._lru.pop(key, 0)
            return None
        self._touch(key)
        return data

    def _touch(self, key: bytes) -> None:
        """Used just now. `get` and `read_range` run in worker threads too (an upload's
        walk reads the chunks under a file's stale ranges), and the trio thread may evict
        the key while the thread is in LMDB without the GIL: the bytes read stand, and
        the chunk stays evicted (the CI run of d816fac: KeyError in a streamer round)."""
        try:
            self._lru.move_to_end(key)
        except KeyError:
            pass

    def put(self, fingerprint: str, data: bytes) -> bool:
        """Cache a verified chunk; False (not cached) when changes not uploaded yet leave
        no room for it: the limit holds even then."""
        return self.put_sealed(fingerprint, len(data), lambda: seal(data))

    def put_sealed(self, fingerprint: str, length: int, sealed: Callable[[], list[bytes]]) -> bool:
        """`put`, for a caller that hands over its chunk: `sealed()` returns `seal(data)`
        and drops the caller's own copy, so a chunk is held twice (sealed, and in LMDB's
        dirty pages until the commit), not three times. At 64 MiB chunks that is 64 MiB
        less at the peak of every upload that keeps what it sent."""
        key = bytes.fromhex(fingerprint)
        if key in self._lru:
            self._lru.move_to_end(key)
            return True
        if self.dirty_bytes + length > self.limit:
            return False
        self.evict(length)
        pieces = sealed()
        with self.cache.write() as txn:
            write_sealed(txn, self.cache, key, length, pieces)
            del pieces  # LMDB holds its own copy until the commit
        self._checked.add(key)
        self._lru[key] = length
        self.clean_bytes += length
        return True

    def evict(self, incoming: int = 0) -> None:
        """Drop least recently used clean chunks and settled files until `incoming` more
        bytes fit. Those of pinned files are passed over, and settled files being written
        (moved to the recent end, so the next eviction does not walk them again)."""
        excess = self.used_bytes + incoming - self.limit
        if excess <= 0 or not self._lru:
            return
        victims, settled, passed = [], [], []
        for _ in range(len(self._lru)):
            if excess <= 0:
                break
            key, size = self._lru.popitem(last=False)
            ino = _settled_ino(key)
            if ino is None:
                if key in self.pinned:
                    passed.append((key, size))
                    continue
                victims.append(key)
                excess -= size
                self.clean_bytes -= size
                continue
            if ino not in self.cache.settled:
                continue  # written or dropped since it settled
            if key in self.pinned or ino in self.writing:
                passed.append((key, size))
                continue
            settled.append(ino)
            excess -= self.cache.settled[ino]
        for key, size in passed:
            self._lru[key] = size
        if victims or settled:
            with self.cache.write() as txn:
                for key in victims:
                    self._delete(txn, key)
                for ino in settled:
                    self.dirty_bytes -= self.cache.drop_blocks(txn, ino, from_block=0)
        log.debug("evicted %d clean chunks and %d settled files", len(victims), len(settled))

    def touch_settled(self, ino: int) -> None:
        """A settled file was just settled or read: the most recently used."""
        key = settled_key(ino)
        if ino in self.cache.settled:
            self._lru[key] = self.cache.settled[ino]
            self._lru.move_to_end(key)

    @contextlib.contextmanager
    def hold(self, ino: int) -> Iterator[None]:
        """Around a write to `ino`: if settled, it is not evicted meanwhile."""
        self.writing[ino] = self.writing.get(ino, 0) + 1
        try:
            yield
        finally:
            self.writing[ino] -= 1
            if not self.writing[ino]:
                del self.writing[ino]

    def keys(self) -> list[str]:
        return [k.hex() for k in self._lru if _settled_ino(k) is None]

    def verify_entry(self, fingerprint: str) -> bool:
        """fsck, one entry: the sums of its pieces and its fingerprint (SHA-256) must all
        match; a bad entry is dropped (the next read fetches it again)."""
        key = bytes.fromhex(fingerprint)
        length = self._lru.get(key)
        if length is None:
            return True  # evicted meanwhile
        digest = hashlib.sha256()
        with self.cache.read(buffers=True) as txn:
            if txn.get(key, db=self.cache.chunk_lengths) is None:
                return True
            self._checked.discard(key)
            ok = self._intact(txn, key, length)
            if ok:
                for view in self._pieces(txn, key, length):
                    digest.update(view[SUM:])
                ok = digest.digest() == key
        if not ok:
            self._drop_corrupt(key)
        return ok

    @property
    def used_bytes(self) -> int:
        return self.clean_bytes + self.cache.settled_bytes + self.dirty_bytes
