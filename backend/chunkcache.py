"""The clean chunk cache: verified plain bytes by fingerprint, bounded, LRU.

Chunks are immutable and content-addressed, so a cached chunk never goes stale; a
file changed elsewhere simply stops referencing it. Only clean chunks are evicted;
dirty blocks (write-back data) count towards the limit but are never dropped here.

The LRU order lives in memory (rebuilt from LMDB at start, oldest first by key order,
which is good enough after a restart); it is touched on every hit without a write
transaction, so reads stay cheap.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from .cache import Cache

log = logging.getLogger("cloudfs.cache")


class ChunkCache:
    def __init__(self, cache: Cache, limit_bytes: int) -> None:
        self.cache = cache
        self.limit = limit_bytes
        self._lru: OrderedDict[bytes, int] = OrderedDict()
        self.clean_bytes = 0
        with cache.read(buffers=True) as txn:
            for key, value in txn.cursor(db=cache.chunks):
                self._lru[bytes(key)] = len(value)
                self.clean_bytes += len(value)
        self.dirty_bytes = cache.dirty_bytes()

    def __contains__(self, fingerprint: str) -> bool:
        return bytes.fromhex(fingerprint) in self._lru

    def get(self, fingerprint: str) -> bytes | None:
        key = bytes.fromhex(fingerprint)
        if key not in self._lru:
            return None
        with self.cache.read() as txn:
            data = txn.get(key, db=self.cache.chunks)
        if data is None:
            self.clean_bytes -= self._lru.pop(key)
            return None
        self._lru.move_to_end(key)
        return data

    def read_range(self, fingerprint: str, start: int, end: int) -> bytes | None:
        """Bytes [start, end) of a cached chunk, copying only that slice out of the map."""
        key = bytes.fromhex(fingerprint)
        if key not in self._lru:
            return None
        with self.cache.read(buffers=True) as txn:
            view = txn.get(key, db=self.cache.chunks)
            data = bytes(view[start:end]) if view is not None else None
        if data is None:
            self.clean_bytes -= self._lru.pop(key)
            return None
        self._lru.move_to_end(key)
        return data

    def put(self, fingerprint: str, data: bytes) -> None:
        key = bytes.fromhex(fingerprint)
        if key in self._lru:
            self._lru.move_to_end(key)
            return
        self.evict(len(data))
        with self.cache.write() as txn:
            txn.put(key, data, db=self.cache.chunks)
        self._lru[key] = len(data)
        self.clean_bytes += len(data)

    def evict(self, incoming: int = 0) -> None:
        """Drop least recently used clean chunks until `incoming` more bytes fit."""
        excess = self.clean_bytes + self.dirty_bytes + incoming - self.limit
        if excess <= 0 or not self._lru:
            return
        victims = []
        while excess > 0 and self._lru:
            key, size = self._lru.popitem(last=False)
            victims.append(key)
            excess -= size
            self.clean_bytes -= size
        with self.cache.write() as txn:
            for key in victims:
                txn.delete(key, db=self.cache.chunks)
        log.debug("evicted %d clean chunks", len(victims))

    @property
    def used_bytes(self) -> int:
        return self.clean_bytes + self.dirty_bytes
