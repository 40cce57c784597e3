#!/usr/bin/env python
"""Large files through a real mount: throughput, peak memory, and what an edit re-uploads.

For each size (default 1, 4 and 8 GiB; `--quick`: 256 MiB and 1 GiB; `--sizes 2G,16G`),
on a fresh embedded server (SQLite, local chunk store; tests.harness) and a fresh
`cloudfs mount`, this script:

  1. writes one file of unique bytes (AES-CTR keystream, so nothing dedups or
     compresses) in 1 MiB writes and times open to close: "write";
  2. runs `cloudfs sync MOUNTPOINT` and times it: write + sync is "committed";
  3. unmounts, deletes the cache dir, mounts again with an empty cache and reads the
     file back in 1 MiB reads, comparing every byte: "cold read";
  4. samples /proc/PID/status of the mount and the server every 0.1 s throughout and
     reports, per process, the peak RSS (VmHWM, which counts the LMDB map's file pages
     too) and the peak of the anonymous part (RssAnon: heap, Python objects, buffers).

With `--cache-ratio N` (the issue-20 case: 8), every size runs a second time with the
mounts' cache at 1/N of the file, so the file streams out while it is written
(backend/sync/streamer.py): the table then compares both runs, and adds the peak cache use
(`cloudfs status` cache_bytes, polled every 0.25 s) against the limit and the bytes
streamed before the close. `--no-read` skips the cold read (a run whose store alone
fills most of the disk). `--series FILE` appends a line a second per process (RssAnon,
RssFile) and per polled mount (cache, streamed, uploaded, pending MiB): what grows when.

First, on another fresh server and mount (`--insert-mib`, default 256), the edit test:
write a file, sync, insert 16 bytes at offset 4096 by rewriting the file in place,
sync again, and report the bytes the second sync uploaded (`cloudfs status`'s
uploaded_bytes) against the file size. The same insert is then put through the
chunker alone (`--chunker-mib`, default 1024) at 1, 4 and 16 MiB averages, the last
being what a 50 GB file gets.

Disk: a size runs only if the temp dir's filesystem has room for the dirty blocks, the
server's store and the clean copies the uploader keeps in the cache (up to the cache
limit), plus 2 GiB; otherwise it is skipped and said so. The writing mount's cache is
deleted before the cold read. MB/s is 10^6 bytes/s.

    .venv/bin/python scripts/bench_large.py [--quick] [--sizes 1G,4G,8G] [--insert-mib 256] [--tmp DIR]
    .venv/bin/python scripts/bench_large.py --sizes 8G --cache-ratio 8 --insert-mib 0 --chunker-mib 0

Every mount is unmounted at the end, also on failure and on Ctrl-C / SIGTERM. Exit
status: 0 when every peak RSS is under --rss-target MiB (default 300), 1 when one is
over, 2 when the run broke.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from cloudfs.backend.daily import control  # noqa: E402
from tests.harness import MountProcess, ServerProcess, cloudfs_mount, cloudfs_server  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """The run itself went wrong (a short read, wrong bytes, a phase past its deadline)."""


# --- unique bytes, reproducible at any offset --------------------------------------------------


class UniqueBytes:
    """A keystream: byte i of the file is the same every time it is asked for, no two
    MiB are alike, and it costs ~0.2 ms of CPU per MiB (AES-NI), so the benchmark
    process does not compete with the mount for the two cores. Falls back to
    random.Random per MiB (~6 ms per MiB) without the `cryptography` package."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        try:
            from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

            self._aes = (Cipher, algorithms, modes)
        except ImportError:
            self._aes = None

    def mib(self, index: int) -> bytes:
        """The `index`-th MiB of the stream."""
        if self._aes is None:
            import random

            return random.Random(self.seed * 2**40 + index).randbytes(MiB)
        Cipher, algorithms, modes = self._aes
        key = self.seed.to_bytes(32, "big")
        counter = (index * (MiB // 16)).to_bytes(16, "big")
        return Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor().update(bytes(MiB))

    def read(self, offset: int, n: int) -> bytes:
        out = bytearray()
        while n > 0:
            index, start = divmod(offset, MiB)
            piece = self.mib(index)[start:start + n]
            out += piece
            offset += len(piece)
            n -= len(piece)
        return bytes(out)


# --- the processes, seen from outside ----------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(rest.split()[0])
    return out


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class Sampler:
    """Samples VmRSS/RssAnon/RssFile of named processes every `interval` seconds in a
    thread, keeping the peaks; VmHWM is read directly (the kernel keeps that peak)."""

    def __init__(self, interval: float = 0.1, series: Path | None = None) -> None:
        self.interval = interval
        self.series = series.open("a") if series is not None else None
        """`--series`: one line a second per process (RssAnon, RssFile in MiB) and per
        polled mount (status: cache, streamed, uploaded, pending MiB), to see what grows when."""
        self._started = time.monotonic()
        self._written = 0.0
        self._status: dict[str, dict] = {}
        self.pids: dict[str, int] = {}
        self.peaks: dict[str, dict[str, int]] = {}
        self.mounts: dict[str, Path] = {}
        """Mount points whose `cloudfs status` cache_bytes is polled (peak in peaks[name]["cache"])."""
        self._polled = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, name: str, pid: int) -> None:
        self.pids[name] = pid
        self.peaks[name] = {}

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def watch_cache(self, name: str, mountpoint: Path) -> None:
        self.mounts[name] = mountpoint.resolve()

    def sample(self) -> None:
        if time.monotonic() - self._polled >= 0.25:
            self._polled = time.monotonic()
            for name, mountpoint in list(self.mounts.items()):
                try:
                    status = control.request(mountpoint, {"command": "status"}, timeout=5)
                    used = status["cache_bytes"]
                except (OSError, KeyError, ValueError):
                    continue
                self._status[name] = status
                peaks = self.peaks.setdefault(name, {})
                peaks["cache"] = max(peaks.get("cache", 0), used)
        for name, pid in list(self.pids.items()):
            try:
                now = status_kib(pid)
            except (OSError, ValueError):
                continue
            peaks = self.peaks[name]
            for key, value in now.items():
                peaks[key] = max(peaks.get(key, 0), value)
            if self.series is not None and time.monotonic() - self._written >= 1.0:
                line = f"{time.monotonic() - self._started:8.1f} {name} anon {now.get('RssAnon', 0) / 1024:.0f} " \
                       f"file {now.get('RssFile', 0) / 1024:.0f}"
                status = self._status.get(name)
                if status is not None:
                    line += " " + " ".join(f"{key.split('_')[0]} {status.get(key, 0) / MiB:.0f}" for key in (
                        "cache_bytes", "streamed_bytes", "uploaded_bytes", "pending_bytes"))
                self.series.write(line + "\n")
        if self.series is not None and time.monotonic() - self._written >= 1.0:
            self.series.flush()
            self._written = time.monotonic()

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        if self.series is not None:
            self.series.close()

    def mib(self, name: str, key: str) -> float:
        return self.peaks.get(name, {}).get(key, 0) / 1024


# --- the measurements --------------------------------------------------------------------------


def _deadline(timeout: float):  # noqa: ANN202
    end = time.monotonic() + timeout

    def check(what: str) -> None:
        if time.monotonic() > end:
            raise BenchError(f"{what}: not done after {timeout:.0f}s")
    return check


def write_stream(path: Path, size: int, data: UniqueBytes, timeout: float, *, insert: tuple[int, bytes] | None = None,
                 mode: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> float:
    """Seconds for open + writing the first `size` bytes of the stream in 1 MiB writes
    + close; with `insert` = (offset, extra), `extra` is spliced in at offset."""
    check = _deadline(timeout)
    start = time.perf_counter()
    fd = os.open(path, mode, 0o644)
    try:
        def write_all(buf: bytes) -> None:
            view = memoryview(buf)
            while view:
                view = view[os.write(fd, view):]

        pos = 0
        if insert is not None:
            at, extra = insert
            write_all(data.read(0, at) + extra)
            pos = at
        while pos < size:
            n = min(MiB, size - pos)
            write_all(data.read(pos, n))
            pos += n
            check(f"writing {path}")
    finally:
        os.close(fd)
    return time.perf_counter() - start


def read_and_compare(path: Path, size: int, data: UniqueBytes, timeout: float) -> float:
    """Seconds for reading the whole file in 1 MiB reads; every MiB is compared with
    the stream (the comparison's own time is left out)."""
    check = _deadline(timeout)
    fd = os.open(path, os.O_RDONLY)
    spent = 0.0
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        start = time.perf_counter()
        offset = 0
        while True:
            block = os.read(fd, MiB)
            if not block:
                break
            t0 = time.perf_counter()
            if block != data.read(offset, len(block)):
                raise BenchError(f"{path}: wrong bytes at offset {offset}")
            spent += time.perf_counter() - t0
            offset += len(block)
            check(f"reading {path}")
        seconds = time.perf_counter() - start - spent
    finally:
        os.close(fd)
    if offset != size:
        raise BenchError(f"{path}: read {offset} bytes of {size}")
    return seconds


def chunk_count(server: ServerProcess, token: str, path: str) -> int:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as api:
        node = api.get("/resolve", params={"path": path}).json()["node"]
        return len(api.get(f"/files/{node['id']}", params={"urls": "false"}).json()["chunks"])


@dataclass
class SizeResult:
    size: int
    cache_size: int = 0
    write_s: float = 0.0
    sync_s: float = 0.0
    read_s: float = 0.0
    chunks: int = 0
    loads: list[str] = field(default_factory=list)
    mount_write: dict[str, float] = field(default_factory=dict)   # peaks of the writing mount
    mount_read: dict[str, float] = field(default_factory=dict)    # peaks of the cold-reading mount
    server: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    peak_cache: int = 0
    streamed_at_close: int = 0
    """Bytes uploaded while the file was open (streamed), read at its close."""


def peaks(sampler: Sampler, name: str) -> dict[str, float]:
    return {key: sampler.mib(name, key) for key in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem")}


def run_size(tmp: Path, size: int, cache_size: str, timeout: float, *, read: bool = True,
             series: Path | None = None) -> SizeResult:
    result = SizeResult(size, parse_size(cache_size))
    data = UniqueBytes(seed=size)
    with cloudfs_server(tmp / "server") as server, Sampler(series=series) as sampler:
        token = server.add_user(f"bench-{uuid.uuid4().hex[:8]}")
        sampler.watch("server", server.proc.pid)
        args = ["--cache-size", cache_size]
        with cloudfs_mount(server, token, tmp / "mnt", tmp / "cache-write", device="bench", extra_args=args) as m:
            sampler.watch("mount-write", m.proc.pid)
            sampler.watch_cache("mount-write", m.path)
            cpu0 = cpu_seconds(m.proc.pid), cpu_seconds(server.proc.pid)
            result.loads.append(loadavg())
            result.write_s = write_stream(m.path / "large.bin", size, data, timeout)
            result.streamed_at_close = m.status().get("streamed_bytes", 0)
            cpu1 = cpu_seconds(m.proc.pid), cpu_seconds(server.proc.pid)
            result.loads.append(loadavg())
            t0 = time.perf_counter()
            m.sync(timeout=timeout)
            result.sync_s = time.perf_counter() - t0
            cpu2 = cpu_seconds(m.proc.pid), cpu_seconds(server.proc.pid)
            result.loads.append(loadavg())
            sampler.sample()
            result.mount_write = peaks(sampler, "mount-write")
            result.peak_cache = sampler.peaks.get("mount-write", {}).get("cache", 0)
            sampler.mounts.pop("mount-write", None)
            result.cpu.update(write_mount=cpu1[0] - cpu0[0], sync_mount=cpu2[0] - cpu1[0],
                              sync_server=cpu2[1] - cpu1[1])
            _check_log(m)
        result.chunks = chunk_count(server, token, "/large.bin")
        shutil.rmtree(tmp / "cache-write", ignore_errors=True)
        if not read:
            result.read_s = float("nan")
            result.mount_read = {key: float("nan") for key in result.mount_write}
            result.cpu.update(read_mount=float("nan"), read_server=float("nan"))
            sampler.sample()
            result.server = peaks(sampler, "server")
            shutil.rmtree(tmp, ignore_errors=True)
            return result
        with cloudfs_mount(server, token, tmp / "mnt", tmp / "cache-read", device="bench-read", extra_args=args) as m:
            sampler.watch("mount-read", m.proc.pid)
            cpu0 = cpu_seconds(m.proc.pid), cpu_seconds(server.proc.pid)
            result.read_s = read_and_compare(m.path / "large.bin", size, data, timeout)
            cpu1 = cpu_seconds(m.proc.pid), cpu_seconds(server.proc.pid)
            result.loads.append(loadavg())
            sampler.sample()
            result.mount_read = peaks(sampler, "mount-read")
            result.cpu.update(read_mount=cpu1[0] - cpu0[0], read_server=cpu1[1] - cpu0[1])
            _check_log(m)
        sampler.sample()
        result.server = peaks(sampler, "server")
    shutil.rmtree(tmp, ignore_errors=True)
    return result


def _check_log(m: MountProcess) -> None:
    if "Traceback" in m.log():
        raise BenchError("mount log has a traceback:\n" + m.log()[-3000:])


@dataclass
class InsertResult:
    size: int
    first_upload: int
    after_insert: int
    chunks_before: int
    chunks_after: int
    resync_s: float


def run_insert(tmp: Path, size: int, timeout: float) -> InsertResult:
    """Write, sync, insert 16 bytes at 4096 by rewriting the file in place, sync: how
    much did the second sync send?"""
    data = UniqueBytes(seed=7)
    extra = b"sixteen bytes!!\n"
    with cloudfs_server(tmp / "server") as server:
        token = server.add_user(f"bench-{uuid.uuid4().hex[:8]}")
        with cloudfs_mount(server, token, tmp / "mnt", tmp / "cache", device="bench") as m:
            path = m.path / "edited.bin"
            write_stream(path, size, data, timeout)
            m.sync(timeout=timeout)
            first = m.status()["uploaded_bytes"]
            before = chunk_count(server, token, "/edited.bin")
            write_stream(path, size, data, timeout, insert=(4096, extra), mode=os.O_WRONLY)  # in place
            t0 = time.perf_counter()
            m.sync(timeout=timeout)
            resync = time.perf_counter() - t0
            second = m.status()["uploaded_bytes"] - first
            after = chunk_count(server, token, "/edited.bin")
            if os.stat(path).st_size != size + len(extra):
                raise BenchError(f"edited file has {os.stat(path).st_size} bytes, expected {size + len(extra)}")
            with open(path, "rb") as f:
                if f.read(8192) != data.read(0, 4096) + extra + data.read(4096, 8192 - 4096 - len(extra)):
                    raise BenchError("the edited file does not start with the insert")
            _check_log(m)
    shutil.rmtree(tmp, ignore_errors=True)
    return InsertResult(size, first, second, before, after, resync)


class _StreamReader:
    """The stream (with an optional insert) as a file-like object for the chunker."""

    def __init__(self, data: UniqueBytes, size: int, insert: tuple[int, bytes] | None) -> None:
        self.data, self.size, self.insert, self.pos = data, size, insert, 0

    def read(self, n: int) -> bytes:
        at, extra = self.insert if self.insert else (self.size, b"")
        total = self.size + len(extra)
        n = min(n, total - self.pos)
        out = bytearray()
        while n > 0:
            if self.pos < at:
                piece = self.data.read(self.pos, min(n, at - self.pos))
            elif self.pos < at + len(extra):
                piece = extra[self.pos - at:self.pos - at + n]
            else:
                piece = self.data.read(self.pos - len(extra), n)
            out += piece
            self.pos += len(piece)
            n -= len(piece)
        return bytes(out)


def chunker_edit(size: int, averages: list[int]) -> list[tuple[int, int, int, int]]:
    """In process, no mount: the same insert at each chunk average (the mount picks the
    average from the file size, so 8 and 16 MiB are only reached past 16 and 32 GiB).
    Returns (avg, chunks before, chunks not seen before, bytes in them) per average."""
    from cloudfs.backend.chunker import iter_pieces

    data = UniqueBytes(seed=9)
    out = []
    for avg in averages:
        before = {p.fingerprint for p in iter_pieces(_StreamReader(data, size, None), size, avg=avg)}
        new = [p.length for p in iter_pieces(_StreamReader(data, size, (4096, b"sixteen bytes!!\n")), size + 16, avg=avg)
               if p.fingerprint not in before]
        out.append((avg, len(before), len(new), sum(new)))
    return out


# --- the run -----------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)([KMG]?)i?B?", text.strip(), re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (say 256M, 1G)")
    return int(match.group(1)) * {"": 1, "K": 1 << 10, "M": MiB, "G": GiB}[match.group(2).upper()]


def human(size: int) -> str:
    return f"{size // GiB} GiB" if size % GiB == 0 else f"{size // MiB} MiB"


def machine() -> str:
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
    return (f"{os.cpu_count()} cores, {mem_kib / 1024 / 1024:.0f} GiB, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def code_state() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30).stdout
    head = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    dirty = [line[3:] for line in git("status", "--porcelain", "--", "fs", "backend", "server", "cloudfs").splitlines()
             if line]
    return head + (f" + uncommitted {', '.join(dirty)}" if dirty else "")


def table(results: list[SizeResult]) -> str:
    header = ["Measure"] + [f"{human(r.size)}, cache {human(r.cache_size)}" for r in results]
    rows = [
        ["peak cache use, `cloudfs status` (MiB)"] + [f"{r.peak_cache / MiB:,.0f} of {r.cache_size / MiB:,.0f}"
                                                      for r in results],
        ["uploaded while written, at close (MiB)"] + [f"{r.streamed_at_close / MiB:,.0f}" for r in results],
        ["write, 1 MiB writes, to close (MB/s)"] + [f"{r.size / r.write_s / 1e6:,.0f}" for r in results],
        ["`cloudfs sync` afterwards (s)"] + [f"{r.sync_s:,.1f}" for r in results],
        ["committed: write + sync (MB/s)"] + [f"{r.size / (r.write_s + r.sync_s) / 1e6:,.0f}" for r in results],
        ["cold read, empty cache, 1 MiB reads (MB/s)"] + [f"{r.size / r.read_s / 1e6:,.0f}" for r in results],
        ["chunks (mean chunk MiB)"] + [f"{r.chunks:,} ({r.size / max(r.chunks, 1) / MiB:.2f})" for r in results],
        ["mount, writing + sync: peak RSS, VmHWM (MiB)"] + [f"{r.mount_write['VmHWM']:,.0f}" for r in results],
        ["... of which anonymous, peak RssAnon (MiB)"] + [f"{r.mount_write['RssAnon']:,.0f}" for r in results],
        ["... file-backed, peak RssFile (MiB)"] + [f"{r.mount_write['RssFile']:,.0f}" for r in results],
        ["mount, cold read: peak RSS, VmHWM (MiB)"] + [f"{r.mount_read['VmHWM']:,.0f}" for r in results],
        ["... of which anonymous, peak RssAnon (MiB)"] + [f"{r.mount_read['RssAnon']:,.0f}" for r in results],
        ["... file-backed, peak RssFile (MiB)"] + [f"{r.mount_read['RssFile']:,.0f}" for r in results],
        ["server: peak RSS, VmHWM (MiB)"] + [f"{r.server['VmHWM']:,.0f}" for r in results],
        ["... of which anonymous, peak RssAnon (MiB)"] + [f"{r.server['RssAnon']:,.0f}" for r in results],
        ["mount CPU: write / sync / read (s)"] + [f"{r.cpu['write_mount']:.1f} / {r.cpu['sync_mount']:.1f} / "
                                                   f"{r.cpu['read_mount']:.1f}" for r in results],
        ["server CPU: sync / read (s)"] + [f"{r.cpu['sync_server']:.1f} / {r.cpu['read_server']:.1f}" for r in results],
        ["load (1 min): before write / sync / after sync / after read"] + [" / ".join(x.split()[0] for x in r.loads)
                                                                            for r in results],
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(header, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    return "\n".join(lines)


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through every finally: mounts come down


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="256 MiB and 1 GiB (a sanity run)")
    parser.add_argument("--sizes", type=lambda s: [parse_size(x) for x in s.split(",") if x], default=None,
                        help="comma-separated sizes, e.g. 1G,4G,8G (the default)")
    parser.add_argument("--insert-mib", type=int, default=256, help="file size for the edit test; 0 skips it")
    parser.add_argument("--chunker-mib", type=int, default=1024,
                        help="the same edit through the chunker alone at 1, 4 and 16 MiB averages; 0 skips it")
    parser.add_argument("--chunk-avg-mib", type=int, default=None,
                        help="force the mount's chunk average (CLOUDFS_CHUNK_AVG_MIB), e.g. 16 as for a 50 GB file")
    parser.add_argument("--cache-size", default="10G", help="the mounts' --cache-size (default 10G, as cloudfs mount)")
    parser.add_argument("--cache-ratio", type=int, default=0,
                        help="also run every size with the cache at 1/N of the file (issue 20: 8)")
    parser.add_argument("--no-read", action="store_true", help="skip the cold read (a store that fills the disk)")
    parser.add_argument("--rss-target", type=float, default=300.0, help="MiB; exit 1 if a peak RSS passes it")
    parser.add_argument("--tmp", type=Path, default=None, help="where the temp dirs go (default: the system's)")
    parser.add_argument("--series", type=Path, default=None,
                        help="append a time series (one line a second: RssAnon/RssFile, cache, streamed) to this file")
    args = parser.parse_args(argv)
    sizes = args.sizes or ([256 * MiB, 1 * GiB] if args.quick else [1 * GiB, 4 * GiB, 8 * GiB])
    signal.signal(signal.SIGTERM, _sigterm)
    if args.chunk_avg_mib:
        os.environ["CLOUDFS_CHUNK_AVG_MIB"] = str(args.chunk_avg_mib)  # the mounts inherit it
    forced = os.environ.get("CLOUDFS_CHUNK_AVG_MIB")
    print(f"cloudfs large-file benchmark; {machine()}; code {code_state()}"
          + (f"; chunk average forced to {forced} MiB" if forced else ""), flush=True)
    print(f"{time.strftime('%a %b %d %Y %H:%M UTC', time.gmtime())}; load {loadavg()}", flush=True)

    results: list[SizeResult] = []
    skipped: list[str] = []
    insert: InsertResult | None = None
    edits: list[tuple[int, int, int, int]] = []
    status = 2
    base = Path(tempfile.mkdtemp(prefix="cloudfs-bench-large-", dir=args.tmp))
    try:
        if args.insert_mib:
            print(f"edit test: {args.insert_mib} MiB file, 16 bytes inserted at offset 4096", flush=True)
            insert = run_insert(base / "insert", args.insert_mib * MiB, timeout=1800)
            print(f"  re-uploaded {insert.after_insert / MiB:.2f} MiB of {insert.size / MiB:.0f} MiB "
                  f"({100 * insert.after_insert / insert.size:.2f}%), chunks {insert.chunks_before} -> "
                  f"{insert.chunks_after}, sync {insert.resync_s:.1f} s", flush=True)
            edits = chunker_edit(args.chunker_mib * MiB, [1 * MiB, 4 * MiB, 16 * MiB]) if args.chunker_mib else []
            for avg, count, changed, changed_bytes in edits:
                print(f"  chunker alone, {args.chunker_mib} MiB at {avg // MiB} MiB average: {changed} of {count} "
                      f"chunks new after the insert, {changed_bytes / MiB:.1f} MiB", flush=True)
        for size in sizes:
            caches = [args.cache_size] + ([f"{max(size // args.cache_ratio // MiB, 8)}M"] if args.cache_ratio else [])
            for cache_size in caches:
                free = shutil.disk_usage(base).free
                # the server's store + dirty blocks and the uploader's clean copies (at most
                # the cache limit, a file larger than the cache streams out) + the cold-read cache
                held = min(size, parse_size(cache_size))
                need = size + held * (1 if args.no_read else 2) + 2 * GiB
                label = f"{human(size)} through a {human(parse_size(cache_size))} cache"
                if free < need:
                    skipped.append(f"{label}: skipped, {free / GiB:.1f} GiB free on {base}, about "
                                   f"{need / GiB:.1f} GiB needed")
                    print("  " + skipped[-1], flush=True)
                    continue
                print(f"{label}: df {free / GiB:.1f} GiB free; load {loadavg()}", flush=True)
                timeout = max(900.0, size / (5 * 10**6))
                r = run_size(base / f"{human(size)}-{cache_size}".replace(" ", ""), size, cache_size, timeout,
                             read=not args.no_read, series=args.series)
                results.append(r)
                print(f"  write {size / r.write_s / 1e6:,.0f} MB/s, sync {r.sync_s:.1f} s, committed "
                      f"{size / (r.write_s + r.sync_s) / 1e6:,.0f} MB/s, cold read {size / r.read_s / 1e6:,.0f} MB/s, "
                      f"{r.chunks} chunks; peak cache {r.peak_cache / MiB:,.0f} MiB of {r.cache_size / MiB:,.0f}, "
                      f"streamed {r.streamed_at_close / MiB:,.0f} MiB by the close; peak RSS mount "
                      f"{r.mount_write['VmHWM']:.0f} / {r.mount_read['VmHWM']:.0f} MiB (anon "
                      f"{r.mount_write['RssAnon']:.0f} / {r.mount_read['RssAnon']:.0f}), server "
                      f"{r.server['VmHWM']:.0f} MiB", flush=True)
        over = [r for r in results if max(r.mount_write["VmHWM"], r.mount_read["VmHWM"] if args.no_read is False else 0,
                                          r.server["VmHWM"]) > args.rss_target]
        status = 1 if over else 0
    except KeyboardInterrupt:
        print("interrupted; everything is unmounted", file=sys.stderr)
        return 130
    except (BenchError, AssertionError, OSError, TimeoutError, RuntimeError) as exc:
        print(f"benchmark failed: {exc!r}", file=sys.stderr)
    finally:
        with open("/proc/self/mounts") as mounts:
            left = [line.split()[1] for line in mounts if line.split()[1].startswith(str(base))]
        if left:
            print(f"still mounted, {base} left in place: {left}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)

    print()
    print(f"{machine()}; code {code_state()}; {time.strftime('%a %b %d %Y %H:%M UTC', time.gmtime())}; "
          f"load at the end {loadavg()}" + (f"; chunk average forced to {forced} MiB" if forced else ""))
    if results:
        print(table(results))
    for line in skipped:
        print(line)
    for avg, count, changed, changed_bytes in edits:
        print(f"chunker alone, {args.chunker_mib} MiB, {avg // MiB} MiB average: {changed} of {count} chunks new "
              f"after the insert ({changed_bytes / MiB:.1f} MiB, {100 * changed_bytes / (args.chunker_mib * MiB):.2f}%)")
    if insert:
        print(f"\nedit: {human(insert.size)} file, 16 bytes inserted at offset 4096: the second sync uploaded "
              f"{insert.after_insert:,} bytes ({insert.after_insert / MiB:.2f} MiB, "
              f"{100 * insert.after_insert / insert.size:.2f}% of the file; first upload {insert.first_upload:,}); "
              f"chunks {insert.chunks_before} -> {insert.chunks_after}; the re-sync took {insert.resync_s:.1f} s")
    if status == 1:
        print(f"a peak RSS passed {args.rss_target:.0f} MiB (VmHWM counts the LMDB map's file pages; see RssAnon)")
    return status


if __name__ == "__main__":
    sys.exit(main())
