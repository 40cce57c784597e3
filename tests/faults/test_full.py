"""A full cache and a full quota: the writer gets ENOSPC or EDQUOT, nothing already
written is lost or damaged, and writing works again once room is made."""

from __future__ import annotations

import errno
import os
import time

import pytest

from tests.harness import cloudfs_mount, cloudfs_server

MiB = 1 << 20


def test_full_cache_gives_enospc_and_recovers(tmp_path):
    """A file far larger than the cache streams out while written (tests/fuse/test_stream.py);
    what cannot leave is a window that cannot move: here the first MiB stays a hole, so
    nothing after it can be cut into chunks yet."""
    first = os.urandom(6 * MiB)
    with cloudfs_server(tmp_path / "srv") as srv:
        token = srv.add_user("owner")
        with cloudfs_mount(srv, token, tmp_path / "mnt", tmp_path / "cache",
                           extra_args=["--cache-size", "8M"]) as m:
            # 14 MiB into an 8 MiB cache after a hole: the kernel's write-back reaches
            # the drive at the fsync, and the error comes back there (or at close).
            fd = os.open(m.path / "big.bin", os.O_CREAT | os.O_WRONLY, 0o644)
            started = time.monotonic()
            with pytest.raises(OSError) as caught:
                try:
                    os.pwrite(fd, first, MiB)
                    for i in range(8):
                        os.pwrite(fd, os.urandom(MiB), 7 * MiB + i * MiB)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            assert caught.value.errno == errno.ENOSPC
            assert time.monotonic() - started < 30
            assert "is full of changes not uploaded yet" in m.log()
            m.sync()
            stored = (m.path / "big.bin").read_bytes()
            assert stored[:MiB] == bytes(MiB) and stored[MiB:MiB + len(first)] == first
            # Uploaded, so the room is back.
            more = os.urandom(5 * MiB)
            (m.path / "more.bin").write_bytes(more)
            m.sync()
            assert (m.path / "more.bin").read_bytes() == more
            assert m.status()["write_blocked"] == ""
        with cloudfs_mount(srv, token, tmp_path / "mnt", tmp_path / "cache-fresh") as m:
            # What was accepted before the error is there, intact; what was refused is not.
            assert (m.path / "big.bin").read_bytes() == stored
            assert MiB + len(first) <= len(stored) < 15 * MiB
            assert (m.path / "more.bin").read_bytes() == more


def test_quota_gives_edquot_and_recovers(tmp_path):
    import subprocess

    from cloudfs.backend.session import HEARTBEAT_S, QUOTA_EVERY
    from tests.harness import CLOUDFS

    QUOTA_REFRESH_S = HEARTBEAT_S * QUOTA_EVERY + 2  # the mount asks for quota and use this often

    with cloudfs_server(tmp_path / "srv") as srv:
        added = subprocess.run([*CLOUDFS, "user", "add", "small", "--data", str(srv.data_dir), "--quota", str(6 * MiB)],
                               capture_output=True, text=True, timeout=60, check=True)
        token = added.stdout.strip().splitlines()[-1]
        first = os.urandom(4 * MiB)
        with cloudfs_mount(srv, token, tmp_path / "mnt", tmp_path / "cache") as m:
            (m.path / "first.bin").write_bytes(first)
            m.sync()
            time.sleep(QUOTA_REFRESH_S)
            # The write-back cache reports write errors at close: that is where EDQUOT comes.
            with pytest.raises(OSError) as caught:
                (m.path / "second.bin").write_bytes(os.urandom(4 * MiB))
            assert caught.value.errno == errno.EDQUOT
            assert m.status()["pending_files"] == 1  # kept, not lost
            (m.path / "first.bin").unlink()
            m.sync()
            time.sleep(QUOTA_REFRESH_S)
            second = os.urandom(4 * MiB)
            (m.path / "second.bin").write_bytes(second)  # replaces the kept bytes, now within the quota
            m.sync()
        with cloudfs_mount(srv, token, tmp_path / "mnt", tmp_path / "cache-fresh") as m:
            assert (m.path / "second.bin").read_bytes() == second
