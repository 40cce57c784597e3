"""Bytes damaged at rest are caught, never served: a chunk rotting in the store gives
EIO (and a report the server checks), a damaged cache entry is fetched again, and
`cloudfs fsck` repairs both where this device can and says what it cannot."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from cloudfs.backend.local.cache import _QQ, Cache
from cloudfs.backend.local.chunkcache import SUM
from tests.harness import cloudfs_mount, cloudfs_server, wait_until


def stored_chunks(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "chunks").rglob("*") if p.is_file() and len(p.name) == 64)


def flip_byte(path: Path, offset: int = 100) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def fsck(m) -> tuple[int, dict]:  # noqa: ANN001
    done = m.cli("fsck", str(m.path), "--json", timeout=300)
    return done.returncode, json.loads(done.stdout)


def test_rotten_chunk_in_the_store(tmp_path):
    data = os.urandom(300_000)
    with cloudfs_server(tmp_path / "srv") as srv:
        token = srv.add_user("owner")
        with cloudfs_mount(srv, token, tmp_path / "a", tmp_path / "cache-a", device="dev-a") as a:
            (a.path / "photo.raw").write_bytes(data)
            a.sync()
            [chunk] = stored_chunks(tmp_path / "srv")
            flip_byte(chunk)
            with cloudfs_mount(srv, token, tmp_path / "b", tmp_path / "cache-b", device="dev-b") as b:
                with pytest.raises(OSError) as caught:
                    (b.path / "photo.raw").read_bytes()
                assert caught.value.errno == errno.EIO
                assert chunk.name in b.log() and "photo.raw" in b.log()
                wait_until(lambda: "found it bad" in b.log(), timeout=10, what="the server confirms the report")
                # b has no good copy: fsck says so, with the file, and fails.
                code, report = fsck(b)
                assert code == 1 and any("/photo.raw" in p for p in report["problems"]), report
            # a still has the bytes in its cache: fsck uploads them again.
            code, report = fsck(a)
            assert code == 0 and report["server"]["reuploaded"] == 1, report
            assert chunk.read_bytes() != b"" and fsck(a)[1]["server"]["bad_chunks"] == 0
        with cloudfs_mount(srv, token, tmp_path / "c", tmp_path / "cache-c", device="dev-c") as c:
            assert (c.path / "photo.raw").read_bytes() == data


def test_damaged_cache_entry_is_fetched_again(tmp_path):
    data = os.urandom(200_000)
    with cloudfs_server(tmp_path / "srv") as srv:
        token = srv.add_user("owner")
        with cloudfs_mount(srv, token, tmp_path / "b", tmp_path / "cache-b", device="dev-b") as b:
            (b.path / "doc.bin").write_bytes(data)
            b.sync()
        with cloudfs_mount(srv, token, tmp_path / "a", tmp_path / "cache-a") as a:
            assert (a.path / "doc.bin").read_bytes() == data  # into a's chunk cache
        damage_every_cached_chunk(tmp_path / "cache-a")
        with cloudfs_mount(srv, token, tmp_path / "a", tmp_path / "cache-a") as a:
            assert (a.path / "doc.bin").read_bytes() == data
            assert "damaged on disk" in a.log()
            assert a.status()["downloaded_bytes"] >= len(data)
        damage_every_cached_chunk(tmp_path / "cache-a")
        with cloudfs_mount(srv, token, tmp_path / "a", tmp_path / "cache-a") as a:
            code, report = fsck(a)
            assert code == 0 and report["device"]["damaged_chunks"] == 1, report
            assert (a.path / "doc.bin").read_bytes() == data


def test_damaged_blocks_of_a_settled_file_are_fetched_again(tmp_path):
    """A file's first upload keeps its blocks as its cached copy (Cache.settle): a block
    damaged on disk is caught by the chunk's fingerprint on the first read after a
    mount, or by fsck, and the chunk fetched instead."""
    with cloudfs_server(tmp_path / "srv") as srv:
        token = srv.add_user("owner")
        for how in ("read", "fsck"):
            data = os.urandom(3 * 1024 * 1024)
            with cloudfs_mount(srv, token, tmp_path / "a", tmp_path / "cache-a") as a:
                (a.path / "doc.bin").write_bytes(data)
                a.sync()
                assert ", settled)" in a.log()
            damage_every_settled_file(tmp_path / "cache-a")
            with cloudfs_mount(srv, token, tmp_path / "a", tmp_path / "cache-a") as a:
                if how == "fsck":
                    code, report = fsck(a)
                    assert code == 0 and report["device"]["damaged_settled_files"] == 1, report
                assert (a.path / "doc.bin").read_bytes() == data
                assert "damaged on disk" in a.log()
                assert a.status()["downloaded_bytes"] >= len(data) // 2


def damage_every_cached_chunk(cache_dir: Path) -> None:
    cache = Cache(cache_dir)
    try:
        with cache.write() as txn:
            entries = list(txn.cursor(db=cache.chunks))
            assert entries, "nothing cached to damage"
            for key, value in entries:
                raw = bytearray(value)
                raw[SUM + 10] ^= 0xFF
                txn.put(bytes(key), bytes(raw), db=cache.chunks)
    finally:
        cache.close()


def damage_every_settled_file(cache_dir: Path) -> None:
    """One byte of one block of each settled file, flipped in LMDB."""
    cache = Cache(cache_dir)
    try:
        assert cache.settled, "no settled file to damage"
        with cache.write() as txn:
            for ino in cache.settled:
                key = _QQ.pack(ino, 40)
                raw = bytearray(txn.get(key, db=cache.blocks))
                raw[10] ^= 0xFF
                txn.put(key, bytes(raw), db=cache.blocks)
    finally:
        cache.close()
