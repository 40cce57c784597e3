"""The uploader's pipeline (backend/sync/uploader.py): pieces from the chunker thread
reach the batches in order, and the pieces waiting to be sent never hold more than
the byte budget, counted whole, however large they are (64 MiB at 16 MiB averages);
what the uploader keeps in the cache lets go of each piece's bytes as it goes."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import trio

from cloudfs.backend.local.cache import Cache
from cloudfs.backend.local.chunkcache import ChunkCache
from cloudfs.backend.sync.prefix import Reused
from cloudfs.backend.sync.uploader import BUDGET_BYTES, KEEP_MAX_BYTES, Uploader, _Outgoing, pipeline

MiB = 1 << 20
ROOM = 24 * MiB


def test_pipeline_holds_at_most_the_budget_of_whole_pieces() -> None:
    sizes = [40, 40, 10, 60, 64, 5, 5, 5, 64, 33, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2]
    made: list[_Outgoing] = []
    batches: list[list[int]] = []
    peak = 0

    at_cut: list[int] = []

    def items() -> Iterator[_Outgoing | Reused]:
        yield Reused("aa" * 32, 7, 0)
        for i, n in enumerate(sizes):
            at_cut.append(sum(o.length for o in made if o.held and o.data))  # let through, not sent yet
            made.append(_Outgoing(f"{i:064x}", n * MiB, b"x", False, 0))
            yield made[-1]

    async def send_batch(batch: list[_Outgoing]) -> tuple[int, int]:
        nonlocal peak
        for _ in range(5):
            await trio.sleep(0.01)  # the chunker thread runs meanwhile, as while PUTs are under way
            held = sum(o.length for o in made if o.held and o.data)  # let through, not sent yet
            peak = max(peak, held)
        batches.append([o.length // MiB for o in batch])
        return len(batch), sum(o.length for o in batch)

    async def main() -> tuple[list[tuple[str, int]], int, int]:
        with trio.fail_after(20):  # a piece that never fits would wait forever
            return await pipeline(items, send_batch, room=ROOM)

    refs, chunks, sent = trio.run(main)
    assert refs == [("aa" * 32, 7)] + [(f"{i:064x}", n * MiB) for i, n in enumerate(sizes)]
    assert chunks == len(sizes) and sent == sum(sizes) * MiB
    assert [n for batch in batches for n in batch] == sizes
    # Counted at most 32 MiB each, two 40 MiB pieces were let through at once (80 MiB).
    assert 0 < peak <= BUDGET_BYTES, (peak // MiB, batches)
    # A piece is cut only while `room` is free: it counts with what waits to be sent.
    assert max(at_cut) <= BUDGET_BYTES - ROOM, [n // MiB for n in at_cut]
    assert all(not o.data for o in made)


def test_keeping_what_was_sent_lets_go_of_each_piece_before_lmdb_copies_it(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    chunks = ChunkCache(cache, 1 << 30)
    uploader = Uploader(client=None, cache=cache, chunks=chunks, content=None)  # type: ignore[arg-type]
    pieces = [_Outgoing(f"{i:064x}", MiB, bytes([i]) * MiB, False, 0) for i in range(4)]
    seen: list[list[bool]] = []
    write = cache.write

    @contextlib.contextmanager
    def watched(*args: object, **kwargs: object) -> Iterator[object]:
        seen.append([bool(o.data) for o in pieces])
        with write(*args, **kwargs) as txn:
            yield txn

    cache.write = watched  # type: ignore[method-assign]
    uploader._keep(pieces)
    cache.write = write  # type: ignore[method-assign]
    # Each write transaction starts with the piece it stores, and those before it, let go.
    assert seen == [[False] * (i + 1) + [True] * (3 - i) for i in range(4)]
    for i in range(4):
        assert chunks.get(f"{i:064x}") == bytes([i]) * MiB
    cache.close()


def test_chunks_longer_than_keep_max_are_not_kept(tmp_path: Path) -> None:
    """A chunk past KEEP_MAX_BYTES (16 MiB averages reach 64 MiB) is sent but not kept:
    keeping it would hold it twice more (sealed, and in LMDB's pages) beside the batch."""
    cache = Cache(tmp_path / "cache")
    chunks = ChunkCache(cache, 1 << 30)
    uploader = Uploader(client=None, cache=cache, chunks=chunks, content=None)  # type: ignore[arg-type]
    short = _Outgoing("01" * 32, KEEP_MAX_BYTES, b"s" * KEEP_MAX_BYTES, False, 0)
    long = _Outgoing("02" * 32, KEEP_MAX_BYTES + 1, b"l" * (KEEP_MAX_BYTES + 1), False, 0)
    uploader._keep([short, long])
    assert chunks.get("01" * 32) == b"s" * KEEP_MAX_BYTES
    assert chunks.get("02" * 32) is None and "02" * 32 not in chunks
    assert not short.data and not long.data  # both let go
    cache.close()
