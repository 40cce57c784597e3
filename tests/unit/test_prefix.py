"""The streamed prefix (backend/sync/prefix.py): stale ranges merge, prefixes survive LMDB,
and `walk` names every chunk that still holds the file's bytes, reads only around the
changes, and finds the same chunks as cutting the whole file would."""

from __future__ import annotations

import gc
import io
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from cloudfs.backend.local.cache import ChunkEntry
from cloudfs.backend.chunker import MiB, Piece, iter_pieces
from cloudfs.backend.sync.prefix import NO_CLIP, Prefix, Ranges, Reused, walk


@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 40)), max_size=30))
def test_ranges_merge_like_a_set_of_bytes(adds: list[tuple[int, int]]) -> None:
    ranges, covered = Ranges(), set()
    for start, length in adds:
        ranges.add(start, start + length)
        covered.update(range(start, start + length))
    pairs = ranges.pairs()
    assert all(a < b for a, b in pairs) and all(b1 < a2 for (_, b1), (a2, _) in zip(pairs, pairs[1:]))
    assert {i for a, b in pairs for i in range(a, b)} == covered
    for start in range(0, 240, 7):
        assert ranges.intersects(start, start + 5) == bool(covered & set(range(start, start + 5)))
    ranges.remove(50, 120)
    assert {i for a, b in ranges.pairs() for i in range(a, b)} == {i for i in covered if not 50 <= i < 120}


def test_prefix_encodes_and_decodes() -> None:
    chunks = [ChunkEntry("ab" * 32, 10, 0), ChunkEntry("cd" * 32, 5, 10)]
    prefix = Prefix(chunks, 12, Ranges([(3, 4), (11, 13)]))
    again = Prefix.decode(prefix.encode())
    assert again.chunks == chunks and again.clip == 12 and again.stale.pairs() == [(3, 4), (11, 13)]
    assert again.end == 15 and again.limit == 12
    assert again.reusable(chunks[0]) is False and Prefix(chunks).reusable(chunks[1]) is True
    assert Prefix(chunks, NO_CLIP, Ranges()).index_at(10) == 1 and Prefix(chunks).index_at(11) is None


class Reads:
    """`open_at` over bytes, counting what the walk read."""

    def __init__(self, data: bytes) -> None:
        self.data, self.read = data, 0

    def __call__(self, start: int, end: int) -> io.BytesIO:
        outer = self

        class Counting(io.BytesIO):
            def read(self, n: int = -1) -> bytes:
                out = super().read(n)
                outer.read += len(out)
                return out

        return Counting(self.data[start:end])


def chunks_of(data: bytes) -> list[tuple[str, int]]:
    return [(p.fingerprint, p.length) for p in iter_pieces(io.BytesIO(data), len(data))]


def streamed(data: bytes) -> Prefix:
    """What rounds record for `data` written so far: every chunk but the last."""
    out, offset = [], 0
    for fp, length in chunks_of(data)[:-1]:
        out.append(ChunkEntry(fp, length, offset))
        offset += length
    return Prefix(out)


def refs(items: list) -> list[tuple[str, int]]:
    return [(i.fingerprint, i.length) for i in items]


def test_walk_without_prefix_is_the_chunker() -> None:
    data = random.Random(1).randbytes(20 * MiB)
    items = list(walk(None, Reads(data), len(data), final=True))
    assert refs(items) == chunks_of(data) and not any(isinstance(i, Reused) for i in items)
    held = list(walk(None, Reads(data), len(data), final=False))
    assert refs(held) == chunks_of(data)[:-1]  # the last piece is cut by the end, not the content


def test_walk_reuses_the_prefix_and_reads_only_what_follows() -> None:
    rng = random.Random(2)
    data = rng.randbytes(40 * MiB)
    prefix = streamed(data[:30 * MiB])
    reads = Reads(data)
    items = list(walk(prefix, reads, len(data), final=True))
    assert refs(items) == chunks_of(data)
    assert [isinstance(i, Reused) for i in items[:len(prefix.chunks)]] == [True] * len(prefix.chunks)
    assert reads.read == len(data) - prefix.end


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**32), at=st.integers(0, 30 * MiB), length=st.integers(1, 300_000))
def test_a_rewrite_behind_the_window_recuts_only_around_it(seed: int, at: int, length: int) -> None:
    """A header or a stretch in the middle rewritten after it was streamed: the chunks
    around it are read and cut again, the walk meets the old cuts again after it, and the
    result is exactly the chunking of the edited file."""
    rng = random.Random(seed)
    data = rng.randbytes(36 * MiB)
    prefix = streamed(data[:32 * MiB])
    edited = data[:at] + rng.randbytes(length) + data[at + length:]
    prefix.stale.add(at, at + length)
    reads = Reads(edited)
    items = list(walk(prefix, reads, len(edited), final=True))
    assert refs(items) == chunks_of(edited)
    # Read again: the stale chunks, a chunk or two until the cuts meet, and what follows
    # the prefix (pyfastcdc reads up to 32 MiB ahead, so the bound is loose but far below
    # the file).
    assert reads.read <= len(edited) - prefix.end + length + 3 * 16 * MiB
    assert sum(isinstance(i, Reused) for i in items) >= len(prefix.chunks) - 4 - length // (4 * MiB)


def test_a_truncated_prefix_is_cut_again_from_the_clip() -> None:
    data = random.Random(3).randbytes(30 * MiB)
    prefix = streamed(data)
    cut = prefix.chunks[2].offset + 1000
    prefix.clip = cut
    shorter = data[:cut] + b"\0" * 5000
    items = list(walk(prefix, Reads(shorter), len(shorter), final=True))
    assert refs(items) == chunks_of(shorter)
    assert sum(isinstance(i, Reused) for i in items) == 2


def test_walk_passes_each_piece_on_before_cutting_the_next() -> None:
    """When the walk hands out a piece, no other piece is alive: it used to hold each
    piece back until the next was cut (to leave out the last one), which at 16 MiB
    averages kept up to 64 MiB more in the mount while the uploader's budget was full."""
    data = random.Random(4).randbytes(24 * MiB)
    for final in (True, False):
        most, count = 0, 0
        for item in walk(None, Reads(data), len(data), final=final):
            del item
            gc.collect()
            most = max(most, sum(isinstance(o, Piece) for o in gc.get_objects()))
            count += 1
        assert count >= 3 and most == 1, (final, count, most)
