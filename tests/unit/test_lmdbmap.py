"""Releasing the LMDB map's pages: RSS goes down, and the bytes read afterwards, also
through memoryviews taken before the release, are unchanged."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from cloudfs.backend.local.cache import Cache
from cloudfs.backend.local.lmdbmap import map_range, release_map_pages

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
MiB = 1024 * 1024


def rss_file_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no RssFile")


def test_release_gives_back_what_reads_mapped(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    blocks = [os.urandom(128 * 1024) for _ in range(8)]
    with cache.write() as txn:
        for i in range(1024):  # 128 MiB of blocks
            cache.put_block(txn, 7, i, blocks[i % 8] + i.to_bytes(8, "big"))
    assert map_range(cache.env) is not None
    assert release_map_pages(cache.env)
    base = rss_file_mib()
    with cache.read(buffers=True) as txn:
        total = sum(len(bytes(cache.get_block(txn, 7, i))) for i in range(1024))
        held = cache.get_block(txn, 7, 5)
        assert rss_file_mib() > base + 100  # reading mapped ~128 MiB
        assert release_map_pages(cache.env)
        assert rss_file_mib() < base + 16
        # a view taken before the release still reads the right bytes
        assert bytes(held) == blocks[5] + (5).to_bytes(8, "big")
    assert total == 1024 * (128 * 1024 + 8)
    with cache.read() as txn:
        assert all(cache.get_block(txn, 7, i) == blocks[i % 8] + i.to_bytes(8, "big") for i in range(0, 1024, 37))
    cache.close()


def test_dropping_a_files_blocks_releases_pages_as_it_goes(tmp_path: Path) -> None:
    """A committed file's blocks, more than RELEASE_BYTES of them, are dropped in one
    `drop_blocks` that gives back the map's pages as it goes; every block goes (also a
    stray past the size), and no other file's."""
    from cloudfs.backend.local.cache import BLOCK_SIZE, RELEASE_BYTES, Inode

    cache = Cache(tmp_path / "cache")
    blocks = 2 * RELEASE_BYTES // BLOCK_SIZE + 7
    node = Inode(ino=5, parent=1, name="f", kind="file", mode=0o644, size=blocks * BLOCK_SIZE - 100)
    with cache.write() as txn:
        for i in range(blocks + 1):  # one stray block past the end
            cache.put_block(txn, 5, i, b"x" * (BLOCK_SIZE if i < blocks - 1 else 1000))
        for i in range(3):
            cache.put_block(txn, 6, i, b"y" * 10)
            cache.put_block(txn, 4, i, b"z" * 10)
    with cache.write(buffers=True) as txn:
        freed = cache.drop_blocks(txn, node.ino, from_block=0)
    assert freed == (blocks - 1) * BLOCK_SIZE + 2 * 1000
    with cache.read() as txn:
        assert all(cache.get_block(txn, 5, i) is None for i in range(blocks + 1))
        assert all(cache.get_block(txn, 6, i) == b"y" * 10 and cache.get_block(txn, 4, i) == b"z" * 10
                   for i in range(3))
    cache.close()
