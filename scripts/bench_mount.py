#!/usr/bin/env python
"""Benchmark the cloudfs mount against a filesystem that stores nothing, in one run.

Both are pyfuse3 + trio processes with the same mount options (scripts/nullfs.py is
the null one), measured one after the other for each figure (creates and stats: call
by call), so they see the same machine and the same load; the ratio cloudfs / nullfs is what the targets are about.
The cloudfs side is a real `cloudfs server` (SQLite, local chunk store) and a real
`cloudfs mount` of a fresh user (tests.harness), all in a temp dir.

Measured on both, from this process with plain os calls:
  - sequential write of one file in 1 MiB writes, open to close (for cloudfs: into the
    local cache; the upload happens afterwards, untimed, and is reported on its own);
  - warm sequential read of that file in 1 MiB reads: read once, then time a second read;
  - the same read after dropping the file's kernel page cache (posix_fadvise
    DONTNEED), so every byte crosses FUSE (no target: the figure behind the warm one);
  - creates/s: empty files, os.open(O_CREAT | O_EXCL) + close, in a fresh directory;
  - stats/s: os.stat over those files, several passes.
Creates and stats are one request (or a few) each, so they measure the round trip
through the kernel, which on a loaded VM swings tenfold with where the scheduler puts
the woken process: a pass of 1,000 stats ran at 3,000/s or at 30,000/s on either
filesystem, whole passes at a time. So these two phases alternate call by call between
the two filesystems (one file on nullfs, one on cloudfs, who goes first alternating)
and time every call: both sides see the same moments.
MB/s is 10^6 bytes per second, as dd prints it.

Noise, and what the run does against it (the machine is shared, 2 cores):
  - Every phase runs in `rounds` rounds (5 unless `--rounds N`), nullfs first in odd
    rounds and cloudfs first in even ones; each row is the round with the lower-median
    ratio, and the notes give the ratio of every round. Round 1 writes into a fresh
    cache; later rounds write a new file after the previous one was deleted.
  - Between phases the cloudfs mount is synced (untimed), so its background upload
    does not run inside the next measurement, and before each measurement `sync(2)`
    writes back the dirty pages the previous one left (cloudfs's LMDB file, the
    server's chunk store), so one side's writeback does not land in the other's time.
  - Before the first round a scratch file of `warm_factor` times the file size is
    written and removed in the temp dir (untimed; `--cold` skips it). On a freshly
    booted VM whose memory the host backs lazily, the first touch of a guest page
    costs far more than the copy into it (this 2-core Firecracker VM: ~300 MB/s into
    never-used pages, 2-5 GB/s into recycled ones). cloudfs puts every written byte
    into the page cache of its LMDB file and nullfs stores nothing, so on a cold VM
    the write row measures the hypervisor. The note "page allocator warm-up" gives the
    scratch file's MB/s: far below the copy speed means the memory was cold.

    .venv/bin/python scripts/bench_mount.py [--quick] [--rounds N] [--cold] [--profile DIR]

`--profile DIR` records each cloudfs phase with py-spy (`DIR/<phase><round>.svg`, or raw
collapsed stacks with `--profile-format raw`); the figures of such a run are slower
than unprofiled ones. Every mount is unmounted at the end, also on failure and on
Ctrl-C / SIGTERM. Exit status: 0 when every target is met, 1 when one is missed, 2
when the run broke.
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
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, TypeVar

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.harness import (BIN, MountProcess, cloudfs_mount, cloudfs_server, is_mounted,  # noqa: E402
                           unmount, wait_until)

MIB = 1 << 20
T = TypeVar("T")
CLK_TCK = os.sysconf("SC_CLK_TCK")
NULLFS = REPO / "scripts" / "nullfs.py"


@dataclass(frozen=True)
class Sizes:
    """How much work each phase does; `--quick` shrinks it for a sanity run."""

    file_mib: int = 512
    files: int = 2000
    rounds: int = 5                # every phase this many times; each row is the median ratio
    warm_factor: int = 4           # page allocator warm-up: this many times the file size
    stat_passes: int = 5           # at least this many passes over the files ...
    stat_min_s: float = 1.0        # ... and until this much time went by (capped below)
    stat_max_passes: int = 200
    phase_timeout: float = 300.0   # no single measured phase runs longer than this
    sync_timeout: float = 900.0    # the untimed upload between phases

    @classmethod
    def quick(cls) -> "Sizes":
        return cls(file_mib=128, files=1000, stat_passes=3, stat_min_s=0.5, sync_timeout=300.0)


@dataclass
class Row:
    """One line of the result table. `target` is the minimum ratio cloudfs / nullfs;
    None for figures reported without a target."""

    name: str
    null: float | None
    cloud: float | None
    unit: str
    target: float | None = None

    @property
    def ratio(self) -> float | None:
        if self.null is None or self.cloud is None or self.null <= 0:
            return None
        return self.cloud / self.null

    @property
    def ok(self) -> bool | None:
        if self.target is None:
            return None
        return self.ratio is not None and self.ratio >= self.target


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        ratio = f"{row.ratio:.2f}" if row.ratio is not None else "-"
        verdict = "" if row.ok is None else f"  (target >= {row.target:.2f}: {'PASS' if row.ok else 'FAIL'})"
        print(f"  {row.name}: nullfs {_fmt(row.null)}, cloudfs {_fmt(row.cloud)} {row.unit}; ratio {ratio}{verdict}",
              flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  ({text})", flush=True)

    def table(self) -> str:
        header = ("Measure", "nullfs", "cloudfs", "cloudfs / nullfs", "Target", "Status")
        body = [(f"{r.name} ({r.unit})", _fmt(r.null), _fmt(r.cloud),
                 f"{r.ratio:.2f}" if r.ratio is not None else "-",
                 f">= {r.target:.2f}" if r.target is not None else "-",
                 "-" if r.ok is None else ("PASS" if r.ok else "FAIL")) for r in self.rows]
        widths = [max(len(x[i]) for x in [header, *body]) for i in range(len(header))]
        lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(header, widths)) + " |",
                 "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in body]
        return "\n".join(lines)

    @property
    def passed(self) -> bool:
        return all(r.ok is not False for r in self.rows)


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


class BenchError(Exception):
    """The run itself went wrong (a short read, a phase past its deadline)."""


# --- the processes, seen from outside ------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a whole process, all threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def vm_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise BenchError(f"no {key} for pid {pid}")


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@contextlib.contextmanager
def nullfs_mount(path: Path, log_path: Path) -> Iterator[subprocess.Popen]:
    """scripts/nullfs.py in the foreground; waits until it answers, always unmounts."""
    path.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, str(NULLFS), str(path)], stdout=log_file, stderr=log_file)
        try:
            wait_until(lambda: is_mounted(path) and os.stat(path), timeout=30, what=f"nullfs at {path}", proc=proc)
            yield proc
        finally:
            unmount(path, proc)


@contextlib.contextmanager
def profiled(pid: int, out: Path | None, fmt: str, *, native: bool = False) -> Iterator[None]:
    """py-spy record of `pid` while the block runs (nothing when `out` is None)."""
    if out is None:
        yield
        return
    spy = BIN / "py-spy" if (BIN / "py-spy").exists() else Path(shutil.which("py-spy") or "py-spy")
    proc = subprocess.Popen([str(spy), "record", "--pid", str(pid), "--output", str(out), "--format", fmt,
                             "--rate", "250", *(["--native"] if native else ["--nonblocking"])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)  # let it attach
        if proc.poll() is not None:
            raise BenchError(f"py-spy exited with {proc.returncode} (pip install py-spy into the venv?)")
        yield
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


# --- the measurements: plain os calls, every loop bounded ----------------------------------


def _deadline(timeout: float) -> Callable[[str], None]:
    end = time.monotonic() + timeout

    def check(what: str) -> None:
        if time.monotonic() > end:
            raise BenchError(f"{what}: not done after {timeout:.0f}s")
    return check


def write_file(path: str, size: int, timeout: float) -> float:
    """Seconds for open + `size` bytes in 1 MiB writes + close."""
    check = _deadline(timeout)
    block = memoryview(os.urandom(MIB))
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(size // MIB):
            done = 0
            for _ in range(1024):  # short writes are legal; a FUSE mount hardly makes them
                done += os.write(fd, block[done:])
                if done == MIB:
                    break
            else:
                raise BenchError(f"write to {path} keeps coming back short")
            check(f"writing {path}")
    finally:
        os.close(fd)
    seconds = time.perf_counter() - start
    if os.stat(path).st_size != size:
        raise BenchError(f"{path}: size {os.stat(path).st_size} after writing {size}")
    return seconds


def warm_page_allocator(directory: Path, mib: int) -> float:
    """Write and remove a scratch file of `mib` MiB (no fsync: its pages are dropped,
    not written back), so the measured phases get pages the host already backs.
    Returns MB/s."""
    path = directory / "warm-up.scratch"
    block = bytes(MIB)
    start = time.perf_counter()
    with open(path, "wb", buffering=0) as out:
        for _ in range(mib):
            out.write(block)
    seconds = time.perf_counter() - start
    path.unlink()
    return mib * MIB / seconds / 1e6


def read_file(path: str, size: int, timeout: float, *, drop_page_cache: bool = False) -> float:
    """Seconds for open + reading the whole file in 1 MiB reads + close."""
    check = _deadline(timeout)
    buf = bytearray(MIB)
    fd = os.open(path, os.O_RDONLY)
    try:
        if drop_page_cache:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        start = time.perf_counter()
        total = 0
        for _ in range(size // MIB + 2):
            n = os.readv(fd, [buf])
            if n == 0:
                break
            total += n
            check(f"reading {path}")
        seconds = time.perf_counter() - start
    finally:
        os.close(fd)
    if total != size:
        raise BenchError(f"{path}: read {total} bytes of {size}")
    return seconds


def _turns(i: int) -> tuple[int, int]:
    """Which side goes first for item `i` of a paired loop: it alternates."""
    return (0, 1) if i % 2 == 0 else (1, 0)


def create_files_paired(dirs: tuple[str, str], count: int, timeout: float) -> tuple[list[float], list[list[str]]]:
    """Create `count` empty files (open O_CREAT | O_EXCL, close) in a new directory on each
    of two filesystems, one file on one, then one on the other, timing every call: on a
    shared machine both sides then meet the same moments of load. Seconds per side."""
    check = _deadline(timeout)
    for directory in dirs:
        os.mkdir(directory)
    paths = [[os.path.join(directory, f"f{i:05d}") for i in range(count)] for directory in dirs]
    spent = [0.0, 0.0]
    clock = time.perf_counter
    for i in range(count):
        for side in _turns(i):
            t0 = clock()
            os.close(os.open(paths[side][i], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            spent[side] += clock() - t0
        if i % 100 == 0:
            check(f"creating files in {dirs}")
    return spent, paths


@dataclass
class StatRun:
    first_s: float   # the first pass: the kernel has no attributes yet, each stat is a getattr
    seconds: float   # every pass, the first included
    done: int


def stat_files_paired(paths: list[list[str]], sizes: Sizes) -> list[StatRun]:
    """Passes of os.stat over two lists of files, one call on each side in turn (see
    `create_files_paired`): at least `stat_passes` passes and `2 * stat_min_s` seconds."""
    check = _deadline(sizes.phase_timeout)
    clock = time.perf_counter
    spent, first = [0.0, 0.0], [0.0, 0.0]
    done = 0
    start = clock()
    for n in range(sizes.stat_max_passes):
        for i in range(len(paths[0])):
            for side in _turns(i):
                t0 = clock()
                os.stat(paths[side][i])
                spent[side] += clock() - t0
        done += len(paths[0])
        if n == 0:
            first = list(spent)
        check("stat passes")
        if n + 1 >= sizes.stat_passes and clock() - start >= 2 * sizes.stat_min_s:
            break
    return [StatRun(first[side], spent[side], done) for side in (0, 1)]


# --- the run --------------------------------------------------------------------------------


@dataclass
class Side:
    """One filesystem under test: where it is mounted and which process serves it."""

    name: str
    root: Path
    pid: int


def lower_median(values: list[float]) -> int:
    """Index of the lower median: with an even count the smaller middle value."""
    return sorted(range(len(values)), key=values.__getitem__)[(len(values) - 1) // 2]


def run_all(null: Side, cloud: Side, mount: MountProcess, sizes: Sizes, report: Report,
            profile_dir: Path | None, profile_fmt: str, profile_native: bool, *, scratch: Path,
            warm: bool = True) -> None:
    size = sizes.file_mib * MIB
    ext = "svg" if profile_fmt == "flamegraph" else "txt"
    samples: dict[tuple[str, str, float | None], list[tuple[float, float]]] = {}

    def record(name: str, unit: str, target: float | None, null_value: float, cloud_value: float) -> None:
        samples.setdefault((name, unit, target), []).append((null_value, cloud_value))

    def both(phase: str, measure: Callable[[Side], float], *, cloud_first: bool) -> tuple[float, float]:
        """Run `measure` on nullfs and on cloudfs (profiled if asked) in the given order;
        note each filesystem process's CPU."""
        def one(side: Side) -> tuple[float, float, float]:
            os.sync()  # the previous measurement's dirty pages are written back now, not during this one
            cpu = cpu_seconds(side.pid)
            out = profile_dir / f"{phase}.{ext}" if profile_dir and side is cloud else None
            with profiled(side.pid, out, profile_fmt, native=profile_native):
                t0 = time.perf_counter()
                result = measure(side)
                wall = time.perf_counter() - t0
            return result, wall, cpu_seconds(side.pid) - cpu

        if cloud_first:
            b, cloud_wall, cloud_cpu = one(cloud)
            a, null_wall, null_cpu = one(null)
        else:
            a, null_wall, null_cpu = one(null)
            b, cloud_wall, cloud_cpu = one(cloud)
        report.note(f"{phase}: CPU of the filesystem process: nullfs {null_cpu:.2f} s in {null_wall:.2f} s, "
                    f"cloudfs {cloud_cpu:.2f} s in {cloud_wall:.2f} s")
        return a, b

    def paired(phase: str, measure: Callable[[], T]) -> T:
        """Run a measurement that alternates between the two sides call by call (creates,
        stats); note both processes' CPU over it, profile cloudfs if asked."""
        os.sync()
        cpu = cpu_seconds(null.pid), cpu_seconds(cloud.pid)
        with profiled(cloud.pid, profile_dir / f"{phase}.{ext}" if profile_dir else None, profile_fmt,
                      native=profile_native):
            t0 = time.perf_counter()
            result = measure()
            wall = time.perf_counter() - t0
        report.note(f"{phase}: CPU of the filesystem processes, one call on each in turn: nullfs "
                    f"{cpu_seconds(null.pid) - cpu[0]:.2f} s, cloudfs {cpu_seconds(cloud.pid) - cpu[1]:.2f} s, "
                    f"in {wall:.2f} s")
        return result

    def sync() -> float:
        t0 = time.perf_counter()
        mount.sync(timeout=sizes.sync_timeout)
        return time.perf_counter() - t0

    if warm:
        mib = sizes.warm_factor * sizes.file_mib
        report.note(f"page allocator warm-up: {mib} MiB scratch file at {warm_page_allocator(scratch, mib):,.0f} MB/s")
    seq: dict[str, str] = {}
    for rnd in range(sizes.rounds):
        first = rnd % 2 == 1  # cloudfs first in every other round
        report.note(f"round {rnd + 1}/{sizes.rounds}, {'cloudfs' if first else 'nullfs'} first, load {loadavg()}")
        if seq:  # the previous round's file: gone, so the page cache does not pile up
            for s in (null, cloud):
                os.unlink(seq[s.name])
            sync()
        paths = seq = {s.name: str(s.root / f"seq{rnd}.bin") for s in (null, cloud)}
        w_null, w_cloud = both(f"write{rnd}", lambda s: write_file(paths[s.name], size, sizes.phase_timeout),
                               cloud_first=first)
        record(f"sequential write, {sizes.file_mib} MiB in 1 MiB writes, to close", "MB/s", 0.5,
               size / w_null / 1e6, size / w_cloud / 1e6)
        upload_s = sync()
        report.note(f"upload of the {sizes.file_mib} MiB file{' (written into a fresh cache)' if rnd == 0 else ''} "
                    f"to the local server (cloudfs sync, untimed): {upload_s:.1f} s, {size / upload_s / 1e6:.0f} MB/s")

        for s in (null, cloud):  # the first read makes it warm
            read_file(paths[s.name], size, sizes.phase_timeout)
        r_null, r_cloud = both(f"read-warm{rnd}", lambda s: read_file(paths[s.name], size, sizes.phase_timeout),
                               cloud_first=first)
        record("warm sequential read, 1 MiB reads (second read)", "MB/s", 0.5, size / r_null / 1e6, size / r_cloud / 1e6)
        d_null, d_cloud = both(f"read-fuse{rnd}", lambda s: read_file(paths[s.name], size, sizes.phase_timeout,
                                                                       drop_page_cache=True), cloud_first=first)
        record("sequential read, page cache dropped (every byte through FUSE)", "MB/s", None,
               size / d_null / 1e6, size / d_cloud / 1e6)

        spent, made = paired(f"create{rnd}", lambda: create_files_paired(
            (str(null.root / f"many{rnd}"), str(cloud.root / f"many{rnd}")), sizes.files, sizes.phase_timeout))
        record(f"creates, {sizes.files} empty files in a new directory", "files/s", 0.3,
               sizes.files / spent[0], sizes.files / spent[1])
        push_s = sync()
        report.note(f"pushing the {sizes.files} new files to the server (cloudfs sync, untimed): {push_s:.1f} s")

        a, b = paired(f"stat{rnd}", lambda: stat_files_paired(made, sizes))
        report.note(f"stat passes over the {sizes.files} files: {a.done // sizes.files}")
        record(f"stats, os.stat over the {sizes.files} files, all passes", "stats/s", 0.5,
               a.done / a.seconds, b.done / b.seconds)
        record("stats, first pass only (each one a FUSE getattr)", "stats/s", 0.5,
               sizes.files / a.first_s, sizes.files / b.first_s)
        record("stats, later passes only (kernel attribute cache)", "stats/s", None,
               (a.done - sizes.files) / (a.seconds - a.first_s), (b.done - sizes.files) / (b.seconds - b.first_s))

    for (name, unit, target), values in samples.items():
        ratios = [c / n for n, c in values]
        mid = lower_median(ratios)
        suffix = f" (median of {len(values)} rounds)" if len(values) > 1 else ""
        report.add(Row(name + suffix, values[mid][0], values[mid][1], unit, target))
        if len(values) > 1:
            report.note(f"{name}: ratio per round {', '.join(f'{r:.2f}' for r in ratios)}")

    report.add(Row("peak RSS of the mount process (VmHWM)", vm_kib(null.pid, "VmHWM") / 1024,
                   vm_kib(cloud.pid, "VmHWM") / 1024, "MiB"))
    report.add(Row("RSS at the end: anonymous (heap)", vm_kib(null.pid, "RssAnon") / 1024,
                   vm_kib(cloud.pid, "RssAnon") / 1024, "MiB"))
    report.add(Row("RSS at the end: file-backed (LMDB map, libraries)", vm_kib(null.pid, "RssFile") / 1024,
                   vm_kib(cloud.pid, "RssFile") / 1024, "MiB"))


def code_state() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30).stdout
    head = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    dirty = [line[3:] for line in git("status", "--porcelain", "--", "fs", "backend", "cloudfs").splitlines() if line]
    return head + (f" + uncommitted {', '.join(dirty)}" if dirty else "")


def machine() -> str:
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
    return (f"{os.cpu_count()} cores, {mem_kib / 1024 / 1024:.0f} GiB, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through every finally: mounts come down


def _mounted_under(root: Path) -> list[str]:
    prefix = os.path.abspath(root) + os.sep
    with open("/proc/self/mounts") as mounts:
        return [p for p in (line.split()[1].replace("\\040", " ") for line in mounts) if p.startswith(prefix)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a sanity run, not the recorded figures)")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="record each cloudfs phase with py-spy into DIR")
    parser.add_argument("--profile-format", choices=("flamegraph", "raw", "speedscope"), default="flamegraph")
    parser.add_argument("--profile-native", action="store_true",
                        help="py-spy --native: C frames too (LMDB, pyfuse3); pauses the process per sample")
    parser.add_argument("--cold", action="store_true",
                        help="skip the page allocator warm-up (see the module docstring)")
    parser.add_argument("--rounds", type=int, default=None, metavar="N",
                        help="repeat every phase N times (default 5); each row is the median ratio")
    parser.add_argument("--tmp", type=Path, default=None, help="where the temp dir goes (default: the system's)")
    args = parser.parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes()
    if args.rounds is not None:
        sizes = replace(sizes, rounds=max(1, args.rounds))
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _sigterm)
    report = Report()
    print(f"cloudfs mount benchmark; {machine()}; load {loadavg()}", flush=True)
    print(f"code: {code_state()}", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="cloudfs-bench-mount-", dir=args.tmp))
    status = 2
    try:
        with cloudfs_server(tmp / "server") as server:
            token = server.add_user(f"bench-{uuid.uuid4().hex[:8]}")
            with cloudfs_mount(server, token, tmp / "mnt-cloudfs", tmp / "cache", device="bench") as mount, \
                    nullfs_mount(tmp / "mnt-null", tmp / "nullfs.log") as null_proc:
                null = Side("nullfs", tmp / "mnt-null", null_proc.pid)
                cloud = Side("cloudfs", mount.path, mount.proc.pid)
                try:
                    run_all(null, cloud, mount, sizes, report, args.profile, args.profile_format, args.profile_native,
                            scratch=tmp, warm=not args.cold)
                    status = 0 if report.passed else 1
                except (BenchError, AssertionError, OSError) as exc:
                    print(f"benchmark failed: {exc!r}", file=sys.stderr)
                    print("mount log (tail):\n" + mount.log()[-3000:], file=sys.stderr)
                finally:
                    if "Traceback" in mount.log():
                        print("mount log has a traceback:\n" + mount.log()[-3000:], file=sys.stderr)
        counts = re.search(r"nullfs requests: (.*)", (tmp / "nullfs.log").read_text(errors="replace"))
        if counts:
            report.note(f"nullfs answered {counts.group(1)}")
    except KeyboardInterrupt:
        print("interrupted; everything is unmounted", file=sys.stderr)
        return 130
    finally:
        left = _mounted_under(tmp)
        if left:
            print(f"still mounted, {tmp} left in place: {left}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(f"{'--quick; ' if args.quick else ''}{'--cold; ' if args.cold else ''}{sizes.file_mib} MiB file, {sizes.files} files; "
          f"{machine()}; load at the end {loadavg()}; code {code_state()}")
    if args.profile:
        print(f"profiled with py-spy into {args.profile}: figures are slower than unprofiled ones")
    print(report.table())
    for text in report.notes:
        print(f"- {text}")
    return status


if __name__ == "__main__":
    sys.exit(main())
