"""The step to cache format 5: dirty blocks of 128 KiB become BLOCK_SIZE blocks that read
exactly the same, a batch per transaction, and a migration cut short goes on where it
stopped."""

from __future__ import annotations

import os
from pathlib import Path

from cloudfs.backend.local import cache_format
from cloudfs.backend.local.cache import _QQ, BLOCK_SIZE, ROOT_INO, Cache, Inode

OLD = cache_format.OLD_BLOCK_SIZE


def old_cache(path: Path, blocks: dict[int, bytes], size: int) -> tuple[Cache, dict[int, bytes]]:
    """A format-4 cache with one file of `size` whose dirty blocks (128 KiB) are `blocks`."""
    cache = Cache(path)
    with cache.write() as txn:
        cache.put(txn, Inode(ino=ROOT_INO, parent=0, name="", kind="dir", mode=0o755), create=True)
        cache.put(txn, Inode(ino=7, parent=ROOT_INO, name="f", kind="file", mode=0o644, size=size, dirty=True),
                  create=True)
        old = cache.env.open_db(b"blocks", txn=txn)
        for block_no, data in blocks.items():
            txn.put(_QQ.pack(7, block_no), data, db=old)
        cache.set_meta(txn, "format", "4")
    return cache, blocks


def dirty_view(cache: Cache, size: int, block_size: int, read_block) -> bytes:  # noqa: ANN001
    """The file's bytes as its dirty blocks say, `b"?"` where no block covers them."""
    out = bytearray(b"?" * size)
    for block_no in range(-(-size // block_size)):
        data = read_block(block_no)
        if data is None:
            continue
        start = block_no * block_size
        stop = min(start + block_size, size)
        out[start:stop] = (bytes(data) + bytes(block_size))[:stop - start]  # past a block's bytes: zeros
    return bytes(out)


def test_blocks_split_into_parts_that_read_the_same(tmp_path: Path) -> None:
    size = 5 * OLD + 1000
    blocks = {0: os.urandom(OLD), 2: os.urandom(40_000), 3: b"", 5: os.urandom(1000)}
    cache, _ = old_cache(tmp_path, blocks, size)
    before = dirty_view(cache, size, OLD, blocks.get)
    assert cache_format.upgrade(cache) == (4, cache_format.FORMAT)
    with cache.read() as txn:
        after = dirty_view(cache, size, BLOCK_SIZE, lambda n: cache.get_block(txn, 7, n))
        assert b"blocks" not in {bytes(k) for k, _ in txn.cursor()}  # the old database is gone
    assert after == before
    # Block 2 held 40,000 bytes: its parts past them, inside the file, are empty (zeros),
    # not missing (which would read the base's bytes there).
    ratio = OLD // BLOCK_SIZE
    with cache.read() as txn:
        parts = [cache.get_block(txn, 7, 2 * ratio + k) for k in range(ratio)]
        assert [None if p is None else len(p) for p in parts] == [BLOCK_SIZE, 40_000 - BLOCK_SIZE] + [0] * (ratio - 2)
        assert cache.get_block(txn, 7, 4 * ratio) is None  # no old block 4: nothing there
    cache.close()


def test_a_migration_cut_short_goes_on_where_it_stopped(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    size = 40 * OLD
    blocks = {n: os.urandom(OLD) for n in range(40)}
    cache, _ = old_cache(tmp_path, blocks, size)
    before = dirty_view(cache, size, OLD, blocks.get)
    monkeypatch.setattr(cache_format, "MOVE_BATCH", 7)
    calls = []
    real_put = cache.put_block

    def put_then_fail(txn, ino, block_no, data):  # noqa: ANN001, ANN202
        calls.append(block_no)
        if len(calls) == 3 * 7 * (OLD // BLOCK_SIZE) + 5:
            raise OSError("the mount was killed")
        return real_put(txn, ino, block_no, data)
    monkeypatch.setattr(cache, "put_block", put_then_fail)
    try:
        cache_format.upgrade(cache)
    except OSError:
        pass
    assert cache.get_meta("format") == "4"  # cut short: still the old format, three batches moved
    monkeypatch.setattr(cache, "put_block", real_put)
    assert cache_format.upgrade(cache) == (4, cache_format.FORMAT)
    with cache.read() as txn:
        assert dirty_view(cache, size, BLOCK_SIZE, lambda n: cache.get_block(txn, 7, n)) == before
    cache.close()


def test_any_block_finds_exactly_the_blocks_of_one_file_in_a_range(tmp_path: Path) -> None:
    """The read path skips its walk over blocks when `any_block` says none is there: a
    block it missed would be read as the bytes under it (a write lost to the reader)."""
    cache = Cache(tmp_path / "c")
    with cache.write() as txn:
        for ino, block_no in [(6, 9), (7, 3), (7, 10), (8, 0)]:
            cache.put_block(txn, ino, block_no, b"x")
    held = {(6, 9), (7, 3), (7, 10), (8, 0)}
    for buffers in (False, True):  # the read path's transactions hand out memoryviews
        with cache.read(buffers=buffers) as txn:
            found = {(ino, first, last): cache.any_block(txn, ino, first, last)
                     for ino in (5, 6, 7, 8, 9) for first in range(12) for last in range(first, 12)}
        assert found == {(ino, first, last): any((ino, b) in held for b in range(first, last + 1))
                         for ino, first, last in found}, buffers
