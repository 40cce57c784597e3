"""The bookkeeping of settled files (Cache.settle): their blocks count as clean, every way
of dropping or dirtying them moves the bytes back, a failed transaction forgets a
settle, and the chunk cache evicts a settled file as one entry, never one being written
nor a pinned one."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudfs.backend.local.cache import BLOCK_SIZE, ROOT_INO, Cache, Inode
from cloudfs.backend.local.chunkcache import ChunkCache, settled_key


def cache_with_file(path: Path, ino: int = 7, blocks: int = 4) -> tuple[Cache, Inode]:
    cache = Cache(path)
    node = Inode(ino=ino, parent=ROOT_INO, name=f"f{ino}", kind="file", mode=0o644, size=blocks * BLOCK_SIZE)
    with cache.write() as txn:
        cache.put(txn, node, create=True)
        for block_no in range(blocks):
            cache.put_block(txn, ino, block_no, bytes([block_no]) * BLOCK_SIZE)
    return cache, node


def test_settled_blocks_are_clean_until_dropped_or_dirtied(tmp_path: Path) -> None:
    cache, node = cache_with_file(tmp_path / "c")
    assert cache.dirty_bytes() == 4 * BLOCK_SIZE
    with cache.write() as txn:
        assert cache.settle(txn, 7) == 4 * BLOCK_SIZE
        assert cache.settle(txn, 7) == 0, "settled again: nothing more became clean"
    assert (cache.dirty_bytes(), cache.settled_bytes, cache.file_dirty_bytes(7)) == (0, 4 * BLOCK_SIZE, 0)
    with cache.write() as txn:  # a truncation keeps one block: it counts as dirty from now on
        assert cache.drop_blocks(txn, 7, from_block=1) == 3 * BLOCK_SIZE - 4 * BLOCK_SIZE
    assert (cache.dirty_bytes(), cache.settled_bytes, cache.settled) == (BLOCK_SIZE, 0, {})
    cache.close()
    reopened = Cache(tmp_path / "c")
    assert (reopened.dirty_bytes(), reopened.settled) == (BLOCK_SIZE, {})
    reopened.close()


def test_a_failed_transaction_forgets_its_settle(tmp_path: Path) -> None:
    cache, _ = cache_with_file(tmp_path / "c")
    with pytest.raises(RuntimeError), cache.write() as txn:
        cache.settle(txn, 7)
        raise RuntimeError("the commit's record failed")
    assert (cache.settled, cache.settled_bytes, cache.dirty_bytes()) == ({}, 0, 4 * BLOCK_SIZE)
    with cache.write() as txn:
        cache.settle(txn, 7)
    with pytest.raises(RuntimeError), cache.write() as txn:
        cache.unsettle(txn, 7)
        raise RuntimeError("the write failed")
    assert cache.settled == {7: 4 * BLOCK_SIZE}
    cache.close()


def test_eviction_takes_a_settled_file_whole_but_not_one_being_written_nor_pinned(tmp_path: Path) -> None:
    cache, node = cache_with_file(tmp_path / "c", ino=7)
    with cache.write() as txn:
        other = Inode(ino=8, parent=ROOT_INO, name="g", kind="file", mode=0o644, size=4 * BLOCK_SIZE)
        cache.put(txn, other, create=True)
        for block_no in range(4):
            cache.put_block(txn, 8, block_no, b"g" * BLOCK_SIZE)
        cache.settle(txn, 7)
        cache.settle(txn, 8)
    chunks = ChunkCache(cache, limit_bytes=8 * BLOCK_SIZE)
    chunks.touch_settled(7)  # 8 is the least recently used now
    with chunks.hold(8):
        chunks.evict(BLOCK_SIZE)
    assert 8 in cache.settled and 7 not in cache.settled, "the one being written was passed over"
    with cache.read() as txn:
        assert cache.get_block(txn, 7, 0) is None and cache.get_block(txn, 8, 3) == b"g" * BLOCK_SIZE
    chunks.pinned = {settled_key(8)}
    chunks.evict(8 * BLOCK_SIZE)
    assert 8 in cache.settled, "pinned"
    chunks.pinned = set()
    chunks.evict(8 * BLOCK_SIZE)
    assert cache.settled == {} and chunks.used_bytes == 0 and chunks.dirty_bytes == 0
    cache.close()
