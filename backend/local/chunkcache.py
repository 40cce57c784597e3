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

Every entry starts with the xxh3-64 of its bytes. An entry is checked the first time
this process reads it (and by `verify_all`, for fsck): bytes damaged on disk are
dropped and fetched again instead of being returned. Checking once per process keeps
reads cheap (a 4 MiB chunk read in 128 KiB pieces is hashed once, not 32 times).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections import OrderedDict
from typing import Callable, Iterator

import xxhash

from .cache import Cache, u64

log = logging.getLogger("cloudfs.cache")

FORMAT = "xxh3-prefix-1"
SUM = 8  # bytes of xxh3-64 in front of each entry



def settled_key(ino: int) -> bytes:
    """A settled file's place in the LRU order (9 bytes: never a fingerprint's 32)."""
    return b"s" + u64(ino)


def _settled_ino(key: bytes) -> int | None:
    return int.from_bytes(key[1:], "big") if len(key) == 9 else None


def _seal(data: bytes) -> bytes:
    return xxhash.xxh3_64_digest(data) + data


def seal(data: bytes | memoryview) -> bytes:
    """What `put_sealed` stores: the caller can let go of `data` before LMDB copies the
    sealed bytes into its write transaction's pages."""
    return _seal(data)


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
                cache.set_meta(txn, "chunk_format", FORMAT)
        for ino in cache.settled:  # oldest first, before every chunk: their order is not kept
            self._lru[settled_key(ino)] = cache.settled[ino]
        with cache.read(buffers=True) as txn:
            for key, value in txn.cursor(db=cache.chunks):
                self._lru[bytes(key)] = len(value) - SUM
                self.clean_bytes += len(value) - SUM
        self.dirty_bytes = cache.dirty_bytes()

    def _intact(self, key: bytes, view: memoryview | bytes) -> bool:
        """First read of `key` in this process: do the bytes still match their sum?"""
        if key in self._checked:
            return True
        self.cache.mapped(len(view))
        if len(view) >= SUM and xxhash.xxh3_64_digest(view[SUM:]) == bytes(view[:SUM]):
            self._checked.add(key)
            return True
        return False

    def _drop_corrupt(self, key: bytes) -> None:
        log.error("cached chunk %s is damaged on disk: dropped, it will be fetched again", key.hex())
        self.corrupt_dropped += 1
        self.clean_bytes -= self._lru.pop(key, 0)
        with self.cache.write() as txn:
            txn.delete(key, db=self.cache.chunks)

    def __contains__(self, fingerprint: str) -> bool:
        return bytes.fromhex(fingerprint) in self._lru

    def get(self, fingerprint: str) -> bytes | None:
        key = bytes.fromhex(fingerprint)
        if key not in self._lru:
            return None
        with self.cache.read() as txn:
            data = txn.get(key, db=self.cache.chunks)
        if data is None:
            self.clean_bytes -= self._lru.pop(key, 0)
            return None
        if not self._intact(key, data):
            self._drop_corrupt(key)
            return None
        self._touch(key)
        return data[SUM:]

    def read_range(self, fingerprint: str, start: int, end: int) -> bytes | None:
        """Bytes [start, end) of a cached chunk, copying only that slice out of the map."""
        key = bytes.fromhex(fingerprint)
        if key not in self._lru:
            return None
        corrupt = False
        with self.cache.read(buffers=True) as txn:
            view = txn.get(key, db=self.cache.chunks)
            if view is not None and not self._intact(key, view):
                corrupt, view = True, None
            data = bytes(view[SUM + start:SUM + end]) if view is not None else None
        self.cache.mapped(end - start)
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
        return self.put_sealed(fingerprint, len(data), lambda: _seal(data))

    def put_sealed(self, fingerprint: str, length: int, sealed: Callable[[], bytes]) -> bool:
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
        value = sealed()
        with self.cache.write() as txn:
            txn.put(key, value, db=self.cache.chunks)
            del value  # LMDB holds its own copy until the commit
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
                    txn.delete(key, db=self.cache.chunks)
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
        """fsck, one entry: its sum and its fingerprint (SHA-256) must both match; a bad
        entry is dropped (the next read fetches it again)."""
        key = bytes.fromhex(fingerprint)
        with self.cache.read(buffers=True) as txn:
            view = txn.get(key, db=self.cache.chunks)
            if view is None:
                return True  # evicted meanwhile
            ok = len(view) >= SUM and xxhash.xxh3_64_digest(view[SUM:]) == bytes(view[:SUM]) \
                and hashlib.sha256(view[SUM:]).digest() == key
        if not ok:
            self._checked.discard(key)
            self._drop_corrupt(key)
        return ok

    @property
    def used_bytes(self) -> int:
        return self.clean_bytes + self.cache.settled_bytes + self.dirty_bytes
