"""Clean chunks in pieces (chunkcache.PIECE, cache format 7): any range reads back as it
was put, a read of a few pages touches one piece, not the whole chunk, a damaged
piece drops its chunk, a restart finds every chunk from its length alone, and the step
from format 6 cuts each whole chunk into pieces, a batch per transaction, going on where
a cut-short run stopped, telling a service manager after each batch that the start is
moving."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from pathlib import Path

import pytest
import xxhash

from cloudfs.backend.local import cache_format, chunkcache
from cloudfs.backend.local.cache import ROOT_INO, Cache, Inode
from cloudfs.backend.local.chunkcache import PIECE, SUM, ChunkCache
from cloudfs.fs import mount

MIB = 1 << 20


def chunk(length: int) -> tuple[str, bytes]:
    data = os.urandom(length)
    return hashlib.sha256(data).hexdigest(), data


def stored_keys(cache: Cache) -> list[bytes]:
    """The keys of the chunks' lengths, then of their pieces."""
    with cache.read() as txn:
        return [bytes(k) for db in (cache.chunk_lengths, cache.chunks)
                for k in txn.cursor(db=db).iternext(keys=True, values=False)]


def test_any_range_reads_back_and_a_restart_finds_the_chunk_from_its_length(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c")
    chunks = ChunkCache(cache, limit_bytes=64 * MIB)
    fp, data = chunk(3 * PIECE + 1234)
    assert chunks.put(fp, data)
    key = bytes.fromhex(fp)
    assert stored_keys(cache) == [key] + [key + n.to_bytes(4, "big") for n in range(4)]
    for start, end in [(0, 10), (PIECE - 3, PIECE + 5), (PIECE, 2 * PIECE), (5, 3 * PIECE + 1234),
                       (3 * PIECE, 3 * PIECE + 1234), (2 * PIECE + 7, 2 * PIECE + 7)]:
        assert chunks.read_range(fp, start, end) == data[start:end], (start, end)
    assert chunks.get(fp) == data
    cache.close()
    cache = Cache(tmp_path / "c")
    again = ChunkCache(cache, limit_bytes=64 * MIB)
    assert (fp in again, again.clean_bytes) == (True, len(data))
    assert again.verify_entry(fp) and again.read_range(fp, PIECE - 1, PIECE + 1) == data[PIECE - 1:PIECE + 1]
    again.evict(64 * MIB)  # everything clean goes
    assert (fp in again, again.clean_bytes, stored_keys(cache)) == (False, 0, [])
    cache.close()


class Recording:
    """A read transaction that notes the length of every value it returns: py-lmdb touches
    each page of a value it returns, so that is what a read costs in pages."""

    def __init__(self, txn, lengths: list[int]) -> None:  # noqa: ANN001
        self.txn, self.lengths = txn, lengths

    def __enter__(self) -> Recording:
        self.txn.__enter__()
        return self

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        self.txn.__exit__(*exc)

    def get(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        value = self.txn.get(*args, **kwargs)
        if value is not None:
            self.lengths.append(len(value))
        return value


def test_a_read_of_a_page_touches_one_piece_not_the_whole_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = Cache(tmp_path / "c")
    chunks = ChunkCache(cache, limit_bytes=64 * MIB)
    fp, data = chunk(4 * MIB)
    assert chunks.put(fp, data)
    assert chunks.read_range(fp, 0, 4096) == data[:4096]  # the first read checks every piece once
    lengths: list[int] = []
    real_read = cache.read
    monkeypatch.setattr(cache, "read", lambda **kw: Recording(real_read(**kw), lengths))
    for off in range(MIB, MIB + 4 * 4096, 4096):
        assert chunks.read_range(fp, off, off + 4096) == data[off:off + 4096]
    # Kept whole, each read was handed (and py-lmdb touched) all 4 MiB of the value.
    assert lengths == [PIECE + SUM] * 4
    cache.close()


def test_a_damaged_piece_drops_its_chunk_on_the_next_process_first_read(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c")
    fp, data = chunk(2 * PIECE + 10)
    assert ChunkCache(cache, limit_bytes=64 * MIB).put(fp, data)
    key = bytes.fromhex(fp)
    with cache.write() as txn:  # the disk flips a byte of the last piece
        piece_key = key + (2).to_bytes(4, "big")
        damaged = bytearray(txn.get(piece_key, db=cache.chunks))
        damaged[SUM + 3] ^= 0xFF
        txn.put(piece_key, bytes(damaged), db=cache.chunks)
    fresh = ChunkCache(cache, limit_bytes=64 * MIB)  # a new process: nothing checked yet
    assert fresh.read_range(fp, 0, 10) is None, "a read of the intact first piece still checks the whole chunk"
    assert (fresh.corrupt_dropped, fp in fresh, stored_keys(cache)) == (1, False, [])
    cache.close()


def whole_chunks_cache(path: Path, entries: dict[bytes, bytes]) -> Cache:
    """A format-6 cache whose `chunks` database holds `entries` (key -> sealed value)."""
    cache = Cache(path)
    with cache.write() as txn:
        cache.put(txn, Inode(ino=ROOT_INO, parent=0, name="", kind="dir", mode=0o755), create=True)
        old = cache.env.open_db(b"chunks", txn=txn)
        for key, value in entries.items():
            txn.put(key, value, db=old)
        cache.set_meta(txn, "format", "6")
        cache.set_meta(txn, "chunk_format", chunkcache.WHOLE_FORMAT)
    return cache


def test_whole_chunks_are_cut_into_pieces_and_a_damaged_one_is_dropped(tmp_path: Path) -> None:
    good = dict(chunk(n) for n in (1, PIECE, 3 * PIECE + 17, 2 * MIB))
    bad_fp, bad = chunk(1000)
    entries = {bytes.fromhex(fp): xxhash.xxh3_64_digest(d) + d for fp, d in good.items()}
    entries[bytes.fromhex(bad_fp)] = xxhash.xxh3_64_digest(bad) + bad[:-1] + b"\0"
    cache = whole_chunks_cache(tmp_path / "c", entries)
    assert cache_format.upgrade(cache) == (6, cache_format.FORMAT)
    with cache.read() as txn:
        assert b"chunks" not in {bytes(k) for k, _ in txn.cursor()}  # the old database is gone
    chunks = ChunkCache(cache, limit_bytes=64 * MIB)
    assert sorted(chunks.keys()) == sorted(good) and chunks.clean_bytes == sum(map(len, good.values()))
    for fp, data in good.items():
        assert chunks.verify_entry(fp) and chunks.get(fp) == data
    cache.close()


def test_cutting_into_pieces_cut_short_goes_on_where_it_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = dict(chunk(MIB) for _ in range(12))
    cache = whole_chunks_cache(tmp_path / "c", {bytes.fromhex(fp): xxhash.xxh3_64_digest(d) + d
                                               for fp, d in good.items()})
    monkeypatch.setattr(cache_format, "MOVE_BYTES", 3 * MIB)
    written = []
    real_write = chunkcache.write_sealed

    def write_then_fail(txn, db, key, length, pieces):  # noqa: ANN001, ANN202
        written.append(key)
        if len(written) == 8:
            raise OSError("the mount was killed")
        return real_write(txn, db, key, length, pieces)
    monkeypatch.setattr(chunkcache, "write_sealed", write_then_fail)
    with pytest.raises(OSError):
        cache_format.upgrade(cache)
    assert cache.get_meta("format") == "6" and len(stored_keys(cache)) == 6 * (1 + MIB // PIECE)  # two batches
    monkeypatch.setattr(chunkcache, "write_sealed", real_write)
    assert cache_format.upgrade(cache) == (6, cache_format.FORMAT)
    chunks = ChunkCache(cache, limit_bytes=64 * MIB)
    assert sorted(chunks.keys()) == sorted(good)
    assert all(chunks.get(fp) == data for fp, data in good.items())
    cache.close()


def test_a_long_migration_tells_systemd_after_each_batch_that_the_start_is_moving(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A unit's TimeoutStartSec (90 s) would kill a mount migrating a large cache and
    restart it into the same migration, for ever: each batch buys time (sd_notify(3))."""
    good = dict(chunk(MIB) for _ in range(9))
    cache = whole_chunks_cache(tmp_path / "c", {bytes.fromhex(fp): xxhash.xxh3_64_digest(d) + d
                                               for fp, d in good.items()})
    monkeypatch.setattr(cache_format, "MOVE_BYTES", 3 * MIB)
    monkeypatch.setattr(mount._StillStarting, "PERIOD", 0.0)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(tmp_path / "notify.sock"))
        listener.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
        assert cache_format.upgrade(cache, mount._StillStarting()) == (6, cache_format.FORMAT)
        heard = []
        with contextlib.suppress(BlockingIOError):
            while True:
                heard.append(listener.recv(256).decode())
    assert heard == [f"EXTEND_TIMEOUT_USEC=60000000\nSTATUS=migrating the cache: {n} of 9 entries"
                     for n in (3, 6, 9)]
    cache.close()
