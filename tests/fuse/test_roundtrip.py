"""The drive end to end on one device: write through the mount, sync, wipe the cache,
mount again, and get every byte back from the server."""

from __future__ import annotations

import filecmp
import os
import shutil
import signal
import subprocess
from pathlib import Path

from tests.harness import cloudfs_mount, spawn_mount, unmount


def tree_equal(a: Path, b: Path) -> None:
    cmp = filecmp.dircmp(a, b)
    assert not cmp.left_only and not cmp.right_only and not cmp.funny_files, (cmp.left_only, cmp.right_only)
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    assert not mismatch and not errors, (mismatch, errors)
    for sub in cmp.common_dirs:
        tree_equal(a / sub, b / sub)


def make_tree(root: Path, files: int) -> None:
    for i in range(files):
        d = root / f"d{i % 37}" / f"e{i % 5}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.txt").write_bytes(os.urandom(i % 3000) + f"file {i}\n".encode())
    (root / "link").symlink_to("d1/e1")


def test_tree_and_big_file_survive_a_cache_wipe(fuse_server, account, tmp_path):
    src = tmp_path / "src"
    make_tree(src, 600)
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        for _ in range(40):
            f.write(os.urandom(1 << 20))
    with cloudfs_mount(fuse_server, account, tmp_path / "mnt", tmp_path / "cache1") as m:
        subprocess.run(["cp", "-a", str(src), str(m.path / "tree")], check=True, timeout=300)
        shutil.copyfile(big, m.path / "big.bin")
        tree_equal(src, m.path / "tree")
        m.sync()
        assert m.status()["pending_files"] == 0
    with cloudfs_mount(fuse_server, account, tmp_path / "mnt", tmp_path / "cache2") as m:
        tree_equal(src, m.path / "tree")
        assert filecmp.cmp(big, m.path / "big.bin", shallow=False)
        assert os.readlink(m.path / "tree" / "link") == "d1/e1"


def test_fsynced_data_survives_kill_9(fuse_server, account, tmp_path):
    data = os.urandom(3 << 20)
    with cloudfs_mount(fuse_server, account, tmp_path / "mnt", tmp_path / "cache") as m:
        # Keep the file open so nothing is uploaded before the crash: only LMDB has it.
        fd = os.open(m.path / "precious.bin", os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, data)
        os.fsync(fd)
        m.proc.send_signal(signal.SIGKILL)
        m.proc.wait(10)
        try:
            os.close(fd)
        except OSError:
            pass
    with cloudfs_mount(fuse_server, account, tmp_path / "mnt", tmp_path / "cache") as m:
        assert (m.path / "precious.bin").read_bytes() == data
        m.sync()
    with cloudfs_mount(fuse_server, account, tmp_path / "mnt", tmp_path / "fresh-cache") as m:
        assert (m.path / "precious.bin").read_bytes() == data


def test_mounting_again_after_kill_9_clears_the_dead_mount(fuse_server, account, tmp_path):
    """The kernel may still answer stat() of a dead mount's root from its attribute cache
    (found by the soak: `cloudfs mount` said "already a mount point" and gave up);
    statfs always asks the filesystem, so it tells a dead mount."""
    m = spawn_mount(fuse_server, account, tmp_path / "mnt", tmp_path / "cache")
    try:
        (m.path / "kept.txt").write_text("kept\n")
        os.stat(m.path)  # the root's attributes now sit in the kernel's cache
        m.proc.send_signal(signal.SIGKILL)
        m.proc.wait(10)
        os.stat(m.path)  # still answered, from the cache
    except BaseException:
        unmount(m.path, m.proc)
        raise
    with cloudfs_mount(fuse_server, account, tmp_path / "mnt", tmp_path / "cache") as m:
        assert (m.path / "kept.txt").read_text() == "kept\n"


def test_reads_through_a_cache_smaller_than_the_file(fuse_server, account, tmp_path):
    """Lazy reads with LRU eviction: a 24 MiB file read through a 6 MiB chunk cache."""
    data = os.urandom(24 << 20)
    with cloudfs_mount(fuse_server, account, tmp_path / "mnt", tmp_path / "cache1") as m:
        (m.path / "big.bin").write_bytes(data)
        m.sync()
    with cloudfs_mount(fuse_server, account, tmp_path / "mnt", tmp_path / "small",
                       extra_args=["--cache-size", "6M"]) as m:
        assert os.stat(m.path / "big.bin").st_size == len(data)  # metadata needs no download
        assert m.status()["cache_bytes"] == 0
        with open(m.path / "big.bin", "rb") as f:
            f.seek(20 << 20)
            assert f.read(1 << 20) == data[20 << 20:21 << 20]  # a random read fetches one chunk
            f.seek(0)
            assert f.read() == data
        status = m.status()
        assert status["cache_bytes"] <= (6 << 20) + (4 << 20), status  # the limit, give or take a chunk
