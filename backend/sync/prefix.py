"""The streamed prefix of a file still being written: chunks already in the store.

A file larger than the cache cannot wait for its close to be uploaded. The streamer
(streamer.py) uploads the chunks the writer has moved past and records them here, in
the `streams` database (ino -> one value), in the same write transaction that drops
the dirty blocks they came from. The prefix is not a version: no other device sees
it until the commit at close or fsync names its chunks, like any others.

A file's bytes at offset `o`, in order of precedence (content.py):
  1. its dirty block, if any;
  2. the prefix's chunks, if `o < min(prefix end, clip)`;
  3. the base version, if `o < base_len`; then zeros.

`stale` lists the byte ranges written after they were streamed (a header rewritten,
a download manager filling out of order): the chunks they touch are read again (from
the cache, or fetched back from the store), cut again, and the changed ones sent
again. `clip` is where a truncation cut the prefix (like `base_len` for the base).
Every chunk of a prefix ended on a content-defined cut (chunker.py): cutting again
from any of its boundaries finds the same chunks, which is what lets `walk` stop
re-reading as soon as its cuts meet the old ones again.
"""

from __future__ import annotations

import bisect
import json
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterator

from ..chunker import Piece, iter_pieces
from ..local.cache import Cache, ChunkEntry, u64

if TYPE_CHECKING:
    import lmdb

NO_CLIP = 1 << 62
_HEAD = struct.Struct(">I")
_CHUNK = struct.Struct(">32sI")


class Ranges:
    """Disjoint, sorted byte ranges [start, end), merged as they are added."""

    def __init__(self, pairs: list[tuple[int, int]] | None = None) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        for a, b in pairs or []:
            self.add(a, b)

    def add(self, start: int, end: int) -> None:
        if start >= end:
            return
        i = bisect.bisect_left(self.ends, start)  # the first range ending at or after start
        j = bisect.bisect_right(self.starts, end)  # ranges starting at or before end
        if i < j:
            start, end = min(start, self.starts[i]), max(end, self.ends[j - 1])
        self.starts[i:j], self.ends[i:j] = [start], [end]

    def intersects(self, start: int, end: int) -> bool:
        i = bisect.bisect_right(self.ends, start)
        return i < len(self.starts) and self.starts[i] < end

    def remove(self, start: int, end: int) -> None:
        kept = [(a, b) for a, b in self.pairs() if b <= start or a >= end]
        kept += [(a, start) for a, b in self.pairs() if a < start < b]
        kept += [(end, b) for a, b in self.pairs() if a < end < b]
        self.starts, self.ends = [], []
        for a, b in sorted(kept):
            self.add(a, b)

    def clipped(self, start: int, end: int) -> list[tuple[int, int]]:
        return [(max(a, start), min(b, end)) for a, b in self.pairs() if a < end and b > start]

    def pairs(self) -> list[tuple[int, int]]:
        return list(zip(self.starts, self.ends))

    def __bool__(self) -> bool:
        return bool(self.starts)


@dataclass
class Prefix:
    chunks: list[ChunkEntry] = field(default_factory=list)
    clip: int = NO_CLIP
    stale: Ranges = field(default_factory=Ranges)

    @property
    def end(self) -> int:
        return self.chunks[-1].offset + self.chunks[-1].length if self.chunks else 0

    @property
    def limit(self) -> int:
        """Bytes below this come from the prefix (under the dirty blocks)."""
        return min(self.end, self.clip)

    def reusable(self, c: ChunkEntry) -> bool:
        """`c` still holds the file's bytes: not cut by a truncation, not written since."""
        return c.offset + c.length <= self.clip and not self.stale.intersects(c.offset, c.offset + c.length)

    def index_at(self, offset: int) -> int | None:
        """The index of the chunk starting exactly at `offset`, if one does."""
        i = bisect.bisect_left(self.chunks, offset, key=lambda c: c.offset)
        return i if i < len(self.chunks) and self.chunks[i].offset == offset else None

    def encode(self) -> bytes:
        head = json.dumps({"clip": self.clip, "stale": self.stale.pairs()}).encode()
        return _HEAD.pack(len(head)) + head + b"".join(
            _CHUNK.pack(bytes.fromhex(c.fingerprint), c.length) for c in self.chunks)

    @classmethod
    def decode(cls, raw: bytes) -> "Prefix":
        (n,) = _HEAD.unpack_from(raw)
        head = json.loads(bytes(raw[4:4 + n]))
        chunks, offset = [], 0
        for fp, length in _CHUNK.iter_unpack(raw[4 + n:]):
            chunks.append(ChunkEntry(fp.hex(), length, offset))
            offset += length
        return cls(chunks, head["clip"], Ranges([tuple(p) for p in head["stale"]]))


class Prefixes:
    """The `streams` database, with decoded prefixes kept in memory (a read must not
    unpack a chunk list per 128 KiB). Written on the trio thread only, like the cache."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.db = cache.streams
        self._memo: dict[int, Prefix | None] = {}
        cache.on_abort.append(self.forget)

    def get(self, ino: int) -> Prefix | None:
        """The prefix, decoded once; callers change it only inside a write transaction
        that `put`s it back."""
        if ino in self._memo:
            return self._memo[ino]
        with self.cache.read() as txn:
            raw = txn.get(u64(ino), db=self.db)
        prefix = Prefix.decode(raw) if raw is not None else None
        if len(self._memo) > 1024:
            self._memo.clear()
        self._memo[ino] = prefix
        return prefix

    def put(self, txn: "lmdb.Transaction", ino: int, prefix: Prefix) -> None:
        txn.put(u64(ino), prefix.encode(), db=self.db)
        self._memo[ino] = prefix

    def drop(self, txn: "lmdb.Transaction", ino: int) -> None:
        txn.delete(u64(ino), db=self.db)
        self._memo[ino] = None

    def forget(self) -> None:
        """After an aborted transaction: read again from LMDB."""
        self._memo.clear()

    def inos(self) -> list[int]:
        with self.cache.read() as txn:
            return [int.from_bytes(k, "big") for k, _ in txn.cursor(db=self.db)]


@dataclass(frozen=True)
class Reused:
    """A chunk of the prefix that still holds the file's bytes: named, not read."""
    fingerprint: str
    length: int
    offset: int


def walk(prefix: Prefix | None, open_at: Callable[[int, int], BinaryIO], end: int, *,
         final: bool) -> Iterator[Reused | Piece]:
    """The chunks of bytes [0, end) in order: the prefix's reusable chunks as `Reused`,
    the rest cut from the content (`open_at(start, end)` reads it from `start`). A
    stretch cut again stops as soon as a cut lands on a prefix boundary followed by a
    reusable chunk. Unless `final`, the last piece (cut by the end of the bytes, not
    by their content) is left out: the next walk cuts it again with what follows.

    Each piece is yielded as soon as it is cut (the last one is known by ending at
    `end`), never held while the next is cut: at 16 MiB averages a held piece was up to
    64 MiB more in memory, beside the one being cut and those in the uploader's budget."""
    chunks = prefix.chunks if prefix else []
    i = pos = 0
    while pos < end:
        if i < len(chunks) and chunks[i].offset == pos and prefix.reusable(chunks[i]) \
                and chunks[i].offset + chunks[i].length <= end:
            c = chunks[i]
            yield Reused(c.fingerprint, c.length, c.offset)
            pos, i = pos + c.length, i + 1
            continue
        pieces = iter_pieces(open_at(pos, end), end - pos, start=pos)
        try:
            for piece in pieces:
                cut = piece.offset + piece.length
                if cut >= end:  # the last piece, cut by the end of the bytes
                    if final:
                        yield piece
                    return
                yield piece  # passed on at once, not held until the next is cut: see below
                del piece
                j = prefix.index_at(cut) if prefix else None
                if j is not None and prefix.reusable(chunks[j]):
                    pos, i = cut, j  # a content-defined cut: the old chunks follow from here
                    break
            else:
                return
        finally:
            pieces.close()
