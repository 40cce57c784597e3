"""A store wrapper that fails on purpose: `--store fault+URL?fault_rate=0.3` makes a
share of the server's own store calls (verifying a chunk before a commit, reading,
writing) fail as a transient store error would, from a seed.

It exists to prove, against a real server, that a flaky object store costs retries and
never a half-accepted commit. Presigning is pure computation and never fails here; the
faults devices meet on the wire are injected by a proxy instead (tests/proxy.py).
"""

from __future__ import annotations

import random
import threading
from typing import Any, Iterator

from .store import ObjectInfo, ObjectStore, TransientError


class FaultyStore:
    def __init__(self, inner: ObjectStore, *, rate: float, seed: int = 1) -> None:
        if not 0 <= rate <= 1:
            raise ValueError(f"fault_rate {rate} is not between 0 and 1")
        self.inner = inner
        self.rate = rate
        self.injected = 0
        self._random = random.Random(seed)
        self._lock = threading.Lock()  # store calls arrive from worker threads

    def _maybe_fail(self, what: str, key: str) -> None:
        with self._lock:
            fail = self._random.random() < self.rate
            self.injected += fail
        if fail:
            raise TransientError(f"{what} {key}: fault injected (fault_rate {self.rate})")

    def put(self, key: str, data: bytes) -> None:
        self._maybe_fail("put", key)
        self.inner.put(key, data)

    def get(self, key: str) -> bytes:
        self._maybe_fail("get", key)
        return self.inner.get(key)

    def head(self, key: str) -> ObjectInfo:
        self._maybe_fail("head", key)
        return self.inner.head(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def delete_many(self, keys: list[str]) -> None:
        self.inner.delete_many(keys)

    def list(self, prefix: str = "") -> Iterator[str]:
        return self.inner.list(prefix)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)  # presigning, signature checks, the local store's extras
