"""Files larger than the cache (issue 20), through real mounts with a small cache: a file
several times the cache written in one go arrives byte-identical elsewhere, with the
cache never over its limit; an out-of-order writer (preallocate, fill in a shuffled
order, rewrite the header and a streamed middle) gets exactly what the same writes
give on a local file; kill -9 after an fsync loses nothing the fsync acknowledged and
uploads nothing twice; with the server stopped and the cache full the writer gets
ENOSPC within seconds and exits, and the file keeps exactly the accepted bytes; a
writer told so may write again once the server is back."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from cloudfs.backend.daily import control
from tests.harness import MountProcess, RestartableServer, ServerProcess, cloudfs_mount, wait_until

MiB = 1 << 20
CACHE = ["--cache-size", "32M"]
LIMIT = 32 * MiB
SYNC_FILE_RANGE_WRITE = 2


def mib(seed: int, index: int) -> bytes:
    """The `index`-th MiB of a reproducible stream: random, so nothing dedups or compresses."""
    return random.Random(seed * 1_000_003 + index).randbytes(MiB)


def sha256_of(path: Path, size: int | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        left = size
        while left is None or left > 0:
            piece = f.read(MiB if left is None else min(MiB, left))
            if not piece:
                break
            digest.update(piece)
            if left is not None:
                left -= len(piece)
    return digest.hexdigest()


class CacheWatch:
    """Polls `cloudfs status` in a thread and keeps the peak cache use."""

    def __init__(self, m: MountProcess) -> None:
        self.m, self.peak, self.samples = m, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                reply = control.request(self.m.path.resolve(), {"command": "status"}, timeout=10)
                self.peak = max(self.peak, reply["cache_bytes"])
                self.samples += 1
            except Exception:  # noqa: BLE001 - a sample lost under load
                pass

    def __enter__(self) -> "CacheWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def test_file_six_times_the_cache_arrives_byte_identical(fuse_server: ServerProcess, account: str,
                                                         tmp_path: Path) -> None:
    size_mib = 192
    digest = hashlib.sha256()
    with cloudfs_mount(fuse_server, account, tmp_path / "a", tmp_path / "cache-a", extra_args=CACHE) as a:
        with CacheWatch(a) as watch, open(a.path / "big.bin", "wb") as f:
            for i in range(size_mib):
                piece = mib(1, i)
                f.write(piece)
                digest.update(piece)
        a.sync(timeout=300)
        status = a.status()
        assert status["streamed_bytes"] >= (size_mib - 2 * 32) * MiB, status  # most of it went while written
        assert watch.samples > 3 and watch.peak <= LIMIT, (watch.peak, watch.samples)
        assert status["cache_bytes"] <= LIMIT and status["pending_bytes"] == 0, status
        assert "Traceback" not in a.log() and "ENOSPC" not in a.log()
    with cloudfs_mount(fuse_server, account, tmp_path / "b", tmp_path / "cache-b", device="dev-b",
                       extra_args=CACHE) as b:
        assert os.stat(b.path / "big.bin").st_size == size_mib * MiB
        assert sha256_of(b.path / "big.bin") == digest.hexdigest()


def test_writes_inside_a_large_file_start_no_streaming_round(fuse_server: ServerProcess, account: str,
                                                              tmp_path: Path) -> None:
    """A file open for writing is streamed once a round's worth of bytes past what is
    already known (its base, its streamed prefix) is there; writes inside it wait for the
    commit. Counted from 0 instead, every write into a file larger than a round started
    one, and each walked all the file's dirty blocks: random 4 KiB writes into a 256 MiB
    file fell to 890 IOPS, 45% of the mount's samples in those rounds."""
    size = 24 * MiB  # three rounds' worth at this cache size (a round: a quarter of it)
    with cloudfs_mount(fuse_server, account, tmp_path / "a", tmp_path / "cache-a", extra_args=CACHE) as a:
        with open(a.path / "big.bin", "wb") as f:
            for i in range(size // MiB):
                f.write(mib(9, i))
        a.sync(timeout=120)
        before = a.status()["stream_rounds"]
        rng = random.Random(3)
        with open(a.path / "big.bin", "r+b", buffering=0) as f:
            for _ in range(40):  # 40 dirty blocks at most: far from pressing on the cache
                f.seek(rng.randrange(size // 4096) * 4096)
                f.write(b"w" * 4096)
        a.sync(timeout=120)
        assert a.status()["stream_rounds"] == before


def test_a_burst_is_uploaded_after_its_close_and_a_long_writer_while_it_writes(
        fuse_server: ServerProcess, account: str, tmp_path: Path) -> None:
    """Streaming while written pays off only for a writer that goes on: a burst of more
    than a round's worth (a round: a quarter of the cache) closed within STREAM_AFTER_S
    is uploaded after its close, not streamed (the rounds took CPU from the copy); a
    writer that goes on past it is streamed while it still holds the file open."""
    size = 12 * MiB  # past a round (8 MiB at this cache size), well inside the cache: no pressure
    with cloudfs_mount(fuse_server, account, tmp_path / "a", tmp_path / "cache-a", extra_args=CACHE) as a:
        started = time.monotonic()
        with open(a.path / "burst.bin", "wb") as f:
            for i in range(size // MiB):
                f.write(mib(11, i))
        burst = time.monotonic() - started
        a.sync(timeout=120)
        assert burst < 2.0, f"the burst took {burst:.1f} s: not a burst on this machine"
        assert a.status()["streamed_bytes"] == 0, a.status()

        libc = ctypes.CDLL(None, use_errno=True)
        with open(a.path / "long.bin", "wb", buffering=0) as f:
            for i in range(size // MiB):
                f.write(mib(12, i))
                # The kernel's writeback hands the mount the pages as it goes (it does so
                # by itself for a large file, here after 30 s).
                assert libc.sync_file_range(f.fileno(), ctypes.c_int64(0), ctypes.c_int64(0),
                                            SYNC_FILE_RANGE_WRITE) == 0, os.strerror(ctypes.get_errno())
                time.sleep(0.25)  # 3 s in all
            wait_until(lambda: a.status()["streamed_bytes"] > 0, timeout=10, what="streamed while open")
        a.sync(timeout=120)
        assert sha256_of(a.path / "long.bin") == hashlib.sha256(b"".join(mib(12, i) for i in range(size // MiB))).hexdigest()


def download_manager(path: Path, size: int, seed: int) -> None:
    """Preallocate, fill 1 MiB pieces in a shuffled order within a sliding window of 6
    (several connections), then rewrite the header and patch a stretch in the middle,
    unaligned: the writes behind the streaming window."""
    rng = random.Random(seed)
    order = list(range(size // MiB))
    for start in range(0, len(order), 6):
        window = order[start:start + 6]
        rng.shuffle(window)
        order[start:start + 6] = window
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        for index in order:
            os.pwrite(fd, mib(seed, index), index * MiB)
        os.pwrite(fd, b"HEADER" * 700, 0)
        os.pwrite(fd, rng.randbytes(300_001), 37 * MiB + 333)
        os.pwrite(fd, rng.randbytes(5), size - 3)  # past the end: grows by 2 bytes
    finally:
        os.close(fd)


def test_out_of_order_writer_gets_what_a_local_file_gets(fuse_server: ServerProcess, account: str,
                                                        tmp_path: Path) -> None:
    size = 128 * MiB
    download_manager(tmp_path / "local.bin", size, seed=5)
    expected = sha256_of(tmp_path / "local.bin")
    with cloudfs_mount(fuse_server, account, tmp_path / "a", tmp_path / "cache-a", extra_args=CACHE) as a:
        with CacheWatch(a) as watch:
            download_manager(a.path / "dl.bin", size, seed=5)
        assert sha256_of(a.path / "dl.bin") == expected
        a.sync(timeout=300)
        status = a.status()
        assert status["streamed_bytes"] > size // 2, status
        assert watch.peak <= LIMIT, watch.peak
        assert "Traceback" not in a.log()
    with cloudfs_mount(fuse_server, account, tmp_path / "b", tmp_path / "cache-b", device="dev-b",
                       extra_args=CACHE) as b:
        assert sha256_of(b.path / "dl.bin") == expected


WRITER = """
import os, random, sys, time
path, seed, synced_mib, total_mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def mib(i): return random.Random(seed * 1_000_003 + i).randbytes(1 << 20)
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
for i in range(synced_mib):
    os.write(fd, mib(i))
os.fsync(fd)
print("fsynced", flush=True)
for i in range(synced_mib, total_mib):
    os.write(fd, mib(i))
    time.sleep(0.05)
"""


def blob_puts(server: ServerProcess) -> int:
    return sum(1 for line in server.log().splitlines() if '"PUT /blobs/' in line and '" 201 ' in line)


def chunk_count(server: ServerProcess, token: str, name: str) -> int:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as api:
        node = api.get("/resolve", params={"path": f"/{name}"}).json()["node"]
        return len(api.get(f"/files/{node['id']}", params={"urls": "false"}).json()["chunks"])


def test_kill_after_fsync_loses_nothing_acknowledged(tmp_path: Path) -> None:
    box = RestartableServer(tmp_path / "srv")
    try:
        srv = box.server
        token = srv.add_user("owner")
        synced = 112  # MiB, 3.5 times the cache, acknowledged by fsync
        with cloudfs_mount(srv, token, tmp_path / "mnt", tmp_path / "cache", extra_args=CACHE) as m:
            writer = subprocess.Popen([sys.executable, "-c", WRITER, str(m.path / "big.bin"), "3", str(synced), "400"],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            try:
                assert writer.stdout.readline().strip() == "fsynced"
                time.sleep(3)  # streaming on past the fsync
                m.proc.send_signal(signal.SIGKILL)
                m.proc.wait(10)
            finally:
                writer.kill()
                writer.wait(30)
        with cloudfs_mount(srv, token, tmp_path / "mnt", tmp_path / "cache", extra_args=CACHE) as m:
            m.sync(timeout=300)
            size = os.stat(m.path / "big.bin").st_size
            assert size >= synced * MiB
            expected = hashlib.sha256(b"".join(mib(3, i) for i in range(synced))).hexdigest()
            assert sha256_of(m.path / "big.bin", synced * MiB) == expected
            assert "Traceback" not in m.log()
        # Nothing twice: every PUT is a chunk of the final version, but for the fsync'ed
        # version's last chunk (cut by its end) and the PUTs in flight at the kill.
        total = chunk_count(srv, token, "big.bin")
        assert blob_puts(srv) <= total + 1 + 8, (blob_puts(srv), total)
        with cloudfs_mount(srv, token, tmp_path / "mnt", tmp_path / "cache-fresh", device="dev-b") as m:
            assert sha256_of(m.path / "big.bin", synced * MiB) == expected
            assert os.stat(m.path / "big.bin").st_size == size
    finally:
        box.close()


def test_server_stopped_and_cache_full_write_fails_fast(tmp_path: Path) -> None:
    box = RestartableServer(tmp_path / "srv")
    try:
        token = box.server.add_user("owner")
        with cloudfs_mount(box.server, token, tmp_path / "mnt", tmp_path / "cache", extra_args=CACHE) as m:
            box.stop()
            started = time.monotonic()
            done = subprocess.run(["dd", "if=/dev/urandom", f"of={m.path / 'big.bin'}", "bs=1M", "count=96"],
                                  capture_output=True, text=True, timeout=120)
            took = time.monotonic() - started
            assert done.returncode != 0 and "No space left on device" in done.stderr, done.stderr
            assert took < 30, f"the writer took {took:.0f}s to fail"
            status = m.status()
            assert "full of changes not uploaded" in status["write_blocked"], status
            assert "unreachable" in status["write_blocked"], status
            cli = m.cli("status", str(m.path))
            assert "writing stopped" in cli.stdout, cli.stdout
            # The kernel forgets the refused bytes: the size is what the mount kept.
            kept = wait_until(lambda: _kept_size(m), timeout=10, what="the size the mount kept")
            assert 0 < kept <= LIMIT, kept
            with open(m.path / "big.bin", "rb") as f:
                head = f.read()
            assert len(head) == kept
            box.start()
            m.sync(timeout=120)
            assert m.status()["write_blocked"] == ""
            more = os.urandom(20 * MiB)
            (m.path / "after.bin").write_bytes(more)  # writing works again
            m.sync(timeout=120)
        with cloudfs_mount(box.server, token, tmp_path / "mnt", tmp_path / "cache-b", device="dev-b") as b:
            assert (b.path / "big.bin").read_bytes() == head
            assert (b.path / "after.bin").read_bytes() == more
    finally:
        box.close()


def _kept_size(m: MountProcess) -> int | None:
    size = os.stat(m.path / "big.bin").st_size
    return size if size < 96 * MiB else None


def test_a_writer_retrying_where_it_was_refused_goes_on_once_there_is_room(tmp_path: Path) -> None:
    """With the server stopped the writer learns at fsync, within seconds (the refusal
    sticks to the file, so the kernel's write-back drains at once: issue 20's writer sat
    in D state for minutes). A program may then write again from where it was refused:
    once the server is back that is accepted, and the file holds what it wrote, no hole."""
    box = RestartableServer(tmp_path / "srv")
    try:
        token = box.server.add_user("owner")
        with cloudfs_mount(box.server, token, tmp_path / "mnt", tmp_path / "cache", extra_args=CACHE) as m:
            box.stop()
            fd = os.open(m.path / "f.bin", os.O_RDWR | os.O_CREAT, 0o644)
            started = time.monotonic()
            try:
                for i in range(64):
                    os.pwrite(fd, mib(7, i), i * MiB)
                try:
                    os.fsync(fd)
                    raise AssertionError("fsync succeeded with the cache full and the server stopped")
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                assert time.monotonic() - started < 30
                kept = _accepted(m)
                box.start()
                # Refusals stay fast until uploads make progress again: retry after that.
                wait_until(lambda: m.status()["online"] and m.status()["pending_bytes"] < LIMIT // 2, timeout=60,
                           what="the mount uploading again")
                for i in range(kept // MiB, 64):  # again from the first MiB not kept
                    os.pwrite(fd, mib(7, i), i * MiB)
                os.fsync(fd)
                assert m.status()["write_blocked"] == ""
            finally:
                try:
                    os.close(fd)
                except OSError as exc:  # the kernel reports its write-back error at close once more
                    assert exc.errno == errno.ENOSPC
            m.sync(timeout=120)
            expected = hashlib.sha256(b"".join(mib(7, i) for i in range(64))).hexdigest()
            assert sha256_of(m.path / "f.bin") == expected
    finally:
        box.close()


def _accepted(m: MountProcess) -> int:
    """Bytes the mount kept of f.bin, asked without the kernel's cached size."""
    reply = control.request(m.path.resolve(), {"command": "status"}, timeout=10)
    refused = int(reply["write_blocked"].rsplit("offset ", 1)[1])
    return refused - refused % MiB
