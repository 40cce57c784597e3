"""A new file's first upload keeps its blocks as the cached copy of the version it made
(`Cache.settle`): each byte goes into the cache once, not a second time as the chunks
sent. What a user must not notice is anything but the speed: the file reads back from
the blocks without a download, across a restart too; written, truncated or replaced
elsewhere afterwards, it shows the newest bytes; and its blocks give way like any
cached chunk when room is needed."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.harness import MountProcess, ServerProcess, cloudfs_mount, dropped_from_page_cache, wait_until

MiB = 1024 * 1024


def settled_lines(m: MountProcess) -> int:
    return m.log().count(", settled)")


def settled_file(m: MountProcess, size: int) -> tuple[Path, bytearray]:
    """A new file of `size` random bytes, uploaded and settled; its path and bytes."""
    data = bytearray(os.urandom(size))
    path = m.path / "f.bin"
    path.write_bytes(data)
    m.sync()
    assert settled_lines(m) == 1, m.log()[-3000:]
    return path, data


def write_at(path: Path, data: bytearray, at: int, length: int, *, truncate: int | None = None) -> None:
    """`length` random bytes written over the file at `at`, and over `data`, its model;
    then, before the close, the file cut to `truncate` bytes."""
    patch = os.urandom(length)
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(patch)
        if truncate is not None:
            f.truncate(truncate)
    data[at:at + length] = patch
    if truncate is not None:
        del data[truncate:]


def test_a_new_file_reads_back_from_its_blocks_across_a_restart(fuse_server: ServerProcess, account: str,
                                                                  tmp_path: Path) -> None:
    data = os.urandom(12 * MiB)
    with cloudfs_mount(fuse_server, account, tmp_path / "mnt", tmp_path / "cache") as m:
        (m.path / "f.bin").write_bytes(data)
        m.sync()
        status = m.status()
        assert settled_lines(m) == 1, m.log()[-3000:]
        assert status["pending_bytes"] == 0, "settled blocks are not changes waiting for upload"
        assert 12 * MiB <= status["cache_bytes"] < 13 * MiB, "the blocks alone: no second copy as chunks"
        assert dropped_from_page_cache(m.path / "f.bin").read_bytes() == data
        assert m.status()["downloaded_bytes"] == 0
    with cloudfs_mount(fuse_server, account, tmp_path / "mnt", tmp_path / "cache") as m:
        status = m.status()
        assert status["pending_bytes"] == 0 and 12 * MiB <= status["cache_bytes"] < 13 * MiB, status
        assert (m.path / "f.bin").read_bytes() == data
        assert m.status()["downloaded_bytes"] == 0
        assert "Traceback" not in m.log()


def test_a_settled_file_written_and_truncated_syncs_its_new_bytes(fuse_server: ServerProcess, account: str,
                                                                   tmp_path: Path) -> None:
    with cloudfs_mount(fuse_server, account, tmp_path / "a", tmp_path / "cache-a") as a:
        path, data = settled_file(a, 12 * MiB)
        write_at(path, data, 5 * MiB + 123, 100_000, truncate=10 * MiB)
        a.sync()
        status = a.status()
        assert status["pending_bytes"] == 0
        assert settled_lines(a) == 2, "its blocks still hold all of it: settled again"
        assert dropped_from_page_cache(path).read_bytes() == data
        assert a.status()["downloaded_bytes"] == 0
        with cloudfs_mount(fuse_server, account, tmp_path / "b", tmp_path / "cache-b", device="dev-b") as b:
            assert (b.path / "f.bin").read_bytes() == data
        assert "Traceback" not in a.log()


def test_a_small_write_to_a_settled_file_reads_and_cuts_only_around_it(fuse_server: ServerProcess, account: str,
                                                                       tmp_path: Path) -> None:
    """The blocks of a settled file hold its base version's bytes: written to, the file
    keeps the base's chunks as its prefix, so the next upload names them unread but for
    those the write touched and the last one (its cut was the file's end). Without that,
    every save of a small edit read and cut the whole file again. Across a restart too,
    and another device reads the edited bytes."""
    with cloudfs_mount(fuse_server, account, tmp_path / "a", tmp_path / "cache-a") as a:
        path, data = settled_file(a, 48 * MiB)
        for at in (20 * MiB + 5, 33 * MiB):
            before = a.status()["cut_bytes"]
            write_at(path, data, at, 4096)
            a.sync()
            cut = a.status()["cut_bytes"] - before
            assert cut < 24 * MiB, f"an upload of a 4 KiB edit read and cut {cut / MiB:.1f} MiB of 48"
            assert settled_lines(a) == 2 + (at == 33 * MiB)
        write_at(path, data, 7 * MiB, 4096)
        a.proc.kill()  # before its upload: the prefix is in the cache with the blocks
        a.proc.wait(10)
    with cloudfs_mount(fuse_server, account, tmp_path / "a", tmp_path / "cache-a") as a:
        before = a.status()["cut_bytes"]
        a.sync()
        assert a.status()["cut_bytes"] - before < 24 * MiB
        assert dropped_from_page_cache(a.path / "f.bin").read_bytes() == data
        with cloudfs_mount(fuse_server, account, tmp_path / "b", tmp_path / "cache-b", device="dev-b") as b:
            assert (b.path / "f.bin").read_bytes() == data
        assert "Traceback" not in a.log()


def test_a_settled_file_written_and_cut_reads_from_its_blocks_alone(fuse_server: ServerProcess, account: str,
                                                                    tmp_path: Path) -> None:
    """Written to (or truncated), a settled file keeps every block: its bytes are all
    here. A read fetched the base chunks under the range all the same before it looked at
    the blocks, which the chunk cache does not hold for a settled file: the whole file
    downloaded again on the first read after an edit, and a read while the server was
    away failed with EIO (soak, seed 1190039: a truncate, then a read whose chunk request
    lost its answer). The read-ahead of a sequential reader fetched them too, in the
    background (a cache large enough for it to run)."""
    with cloudfs_mount(fuse_server, account, tmp_path / "a", tmp_path / "cache-a",
                       extra_args=["--cache-size", "1G"]) as a:
        path, data = settled_file(a, 12 * MiB)
        before = a.status()["downloaded_bytes"]
        write_at(path, data, 5 * MiB + 3, 4096, truncate=10 * MiB + 7)
        with open(dropped_from_page_cache(path), "rb", buffering=0) as f:
            assert b"".join(iter(lambda: f.read(MiB), b"")) == data
        time.sleep(2)  # what the read-ahead started has landed by now
        assert a.status()["downloaded_bytes"] == before, "a read of bytes all in blocks downloaded chunks"


def test_a_settled_file_replaced_on_another_device_shows_the_new_bytes(fuse_server: ServerProcess, account: str,
                                                                        tmp_path: Path) -> None:
    first, second = os.urandom(12 * MiB), os.urandom(9 * MiB)
    with cloudfs_mount(fuse_server, account, tmp_path / "a", tmp_path / "cache-a") as a, \
            cloudfs_mount(fuse_server, account, tmp_path / "b", tmp_path / "cache-b", device="dev-b") as b:
        (a.path / "f.bin").write_bytes(first)
        a.sync()
        assert settled_lines(a) == 1
        wait_until(lambda: (b.path / "f.bin").exists() and (b.path / "f.bin").stat().st_size == len(first),
                   timeout=30, what="f.bin on b")
        (b.path / "f.bin").write_bytes(second)
        b.sync()
        wait_until(lambda: (a.path / "f.bin").stat().st_size == len(second), timeout=30, what="b's version on a")
        assert (a.path / "f.bin").read_bytes() == second
        assert a.status()["cache_bytes"] < 2 * len(first), "the old version's blocks went with their inode"
        assert "Traceback" not in a.log()


def test_settled_files_give_way_to_new_writes(fuse_server: ServerProcess, account: str, tmp_path: Path) -> None:
    first, second = os.urandom(20 * MiB), os.urandom(20 * MiB)
    with cloudfs_mount(fuse_server, account, tmp_path / "mnt", tmp_path / "cache",
                       extra_args=["--cache-size", "32M"]) as m:
        (m.path / "first.bin").write_bytes(first)
        m.sync()
        assert settled_lines(m) == 1
        (m.path / "second.bin").write_bytes(second)  # room: the first file's blocks are evicted
        m.sync()
        assert m.status()["cache_bytes"] <= 32 * MiB
        assert dropped_from_page_cache(m.path / "first.bin").read_bytes() == first
        assert m.status()["downloaded_bytes"] >= len(first) // 2, "fetched again once evicted"
        assert "Traceback" not in m.log()


def test_pinning_a_settled_file_downloads_nothing(fuse_server: ServerProcess, account: str, tmp_path: Path) -> None:
    data = os.urandom(12 * MiB)
    with cloudfs_mount(fuse_server, account, tmp_path / "mnt", tmp_path / "cache") as m:
        (m.path / "f.bin").write_bytes(data)
        m.sync()
        assert settled_lines(m) == 1
        out = m.cli("pin", str(m.path / "f.bin"), "--wait")
        assert out.returncode == 0, out.stderr
        assert m.status()["downloaded_bytes"] == 0
        assert dropped_from_page_cache(m.path / "f.bin").read_bytes() == data
        assert m.status()["downloaded_bytes"] == 0
