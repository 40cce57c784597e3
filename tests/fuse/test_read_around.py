"""A random read fills the kernel's page cache around it (fs/pagecache.py), so the next
reads near it need no FUSE request; and the pages it pushed never hide a later change:
a local write, a truncate, or another device's new version."""

from __future__ import annotations

import os
import random
import subprocess
import time
from pathlib import Path

from tests.harness import MountProcess, ServerProcess, cloudfs_mount, dropped_from_page_cache, wait_until

KiB = 1024
AROUND = 128 * KiB


def cached_bytes(path: Path) -> int:
    """How much of the file the page cache holds (fincore: mincore(2) over a mapping)."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def written_and_dropped(mount: MountProcess, name: str, data: bytes) -> Path:
    path = mount.path / name
    path.write_bytes(data)
    mount.sync(timeout=60)
    return dropped_from_page_cache(path)


def random_read(path: Path, off: int, size: int = 4 * KiB) -> bytes:
    """One read as fio's random jobs do it: the kernel reads no further than asked."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        return os.pread(fd, size, off)
    finally:
        os.close(fd)


def test_a_random_read_fills_the_page_cache_around_it(mount: MountProcess) -> None:
    data = os.urandom(1024 * KiB)
    path = written_and_dropped(mount, "f.bin", data)
    assert cached_bytes(path) == 0
    assert random_read(path, 200 * KiB) == data[200 * KiB:204 * KiB]
    # The window of the read (128-256 KiB) comes in after the answer, pushed by the mount.
    wait_until(lambda: cached_bytes(path) >= AROUND, timeout=10, what="the read's window in the page cache")
    assert cached_bytes(path) < 2 * AROUND, "only the read's window, not the file"
    assert path.read_bytes() == data, "the pushed pages hold the file's bytes"


def test_pushed_pages_never_hide_a_local_write_or_truncate(mount: MountProcess) -> None:
    rng = random.Random(7)
    expected = bytearray(os.urandom(512 * KiB))
    path = written_and_dropped(mount, "f.bin", bytes(expected))
    for step in range(60):
        off = rng.randrange(0, len(expected) - 4 * KiB) // 4096 * 4096
        assert random_read(path, off) == bytes(expected[off:off + 4 * KiB]), f"step {step}"
        if step % 3 == 2:  # at once, while its window may still be on its way
            size = max(8 * KiB, len(expected) - rng.randrange(0, 16 * KiB))
            os.truncate(path, size)
            del expected[size:]
        else:
            where = min(off + rng.choice([-8, 4, 12, 60]) * KiB, len(expected) - 4 * KiB)
            where = max(0, where)
            patch = os.urandom(4 * KiB)
            with open(path, "r+b") as f:
                f.seek(where)
                f.write(patch)
            expected[where:where + len(patch)] = patch
        assert os.stat(path).st_size == len(expected), f"step {step}: a pushed window grew the file"
    time.sleep(0.3)  # any push still in flight has landed
    assert os.stat(path).st_size == len(expected)
    assert path.read_bytes() == bytes(expected)


def test_another_devices_change_replaces_pushed_pages(fuse_server: ServerProcess, account: str,
                                                      tmp_path: Path) -> None:
    with cloudfs_mount(fuse_server, account, tmp_path / "a", tmp_path / "cache-a") as a, \
            cloudfs_mount(fuse_server, account, tmp_path / "b", tmp_path / "cache-b", device="dev-b") as b:
        old, new = os.urandom(512 * KiB), os.urandom(512 * KiB)
        path = written_and_dropped(a, "f.bin", old)
        b.sync(timeout=60)

        tries = [0]

        def read_every_window() -> bool:
            """A push is a hint, dropped while another is in flight: ask again, at a page
            not read before (one read before stays in the page cache, and reading it again
            asks the mount nothing: under load, a window whose push was dropped stayed out)."""
            tries[0] += 1
            page = 2 + tries[0] % 30
            for off in range(0, len(old), AROUND):
                at = off + page * 4 * KiB
                assert random_read(path, at) == old[at:at + 4 * KiB]
            return cached_bytes(path) == len(old)

        wait_until(read_every_window, timeout=30, what="the whole file pushed on a", interval=0.2)
        (b.path / "f.bin").write_bytes(new)
        b.sync(timeout=60)
        a.sync(timeout=60)
        wait_until(lambda: random_read(path, 300 * KiB) == new[300 * KiB:304 * KiB], timeout=30,
                   what="b's version read on a")
        assert path.read_bytes() == new
        assert "Traceback" not in a.log(), a.log()[-5000:]

