"""The workloads of scripts/bench.py: the same plain os calls and tools on every system.

Each workload is a function `(bench, fs, deadline)` that records its figures with
`bench.record` and brackets every timed part in `bench.phase` (CPU of the serving
processes, optional py-spy). Everything untimed that keeps one workload from leaking
into the next (background uploads, dirty pages) happens between the timed parts:
`fs.settle`, `drop_caches`. Every loop checks the deadline; every tool runs with a
timeout. MB/s is 10^6 bytes per second, as dd prints it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tarfile
import time
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from peers import System, cpu_seconds, drop_caches, io_bytes, profiled

MIB = 1 << 20
BARE_PARALLEL = 8
"""GETs in flight for the bare HTTP client the cold read is measured against (as many
as the mount's read-ahead keeps in flight)."""


@dataclass(frozen=True)
class Sizes:
    """How much each workload does; `--quick` shrinks everything for a sanity run."""

    file_mib: int = 1024
    fio_s: int = 20
    small_files: int = 5000
    small_bytes: int = 4096
    tree: tuple[int, int, int] = (10, 10, 99)   # top dirs, subdirs in each, files in each subdir
    tar_files: int = 3000
    prop_files: int = 50
    prop_bound_s: float = 30.0
    workload_timeout: float = 1800.0
    settle_timeout: float = 900.0

    @classmethod
    def quick(cls) -> "Sizes":
        return cls(file_mib=64, fio_s=3, small_files=200, tree=(3, 3, 30), tar_files=150, prop_files=10,
                   workload_timeout=180.0, settle_timeout=150.0)

    @property
    def tree_entries(self) -> int:
        a, b, c = self.tree
        return a + a * b + a * b * c

    @property
    def file_label(self) -> str:
        return f"{self.file_mib // 1024} GiB" if self.file_mib % 1024 == 0 else f"{self.file_mib} MiB"


@dataclass(frozen=True)
class Metric:
    label: str
    unit: str
    better: str  # "higher" | "lower"
    compare: bool = True
    """False: a reference figure (the bare HTTP client), not a row cloudfs must win."""


def metrics(s: Sizes, tar_files: int) -> dict[str, Metric]:
    """Every row of the table, in order."""
    n = f"{s.small_files:,} files of {s.small_bytes // 1024} KiB"
    return {
        "write": Metric(f"sequential write, {s.file_label}, until close returns", "MB/s", "higher"),
        "write-durable": Metric(f"sequential write, {s.file_label}, until durable in the store", "MB/s", "higher"),
        "read-cold": Metric("sequential read, cold (new mount, empty cache, page cache dropped)", "MB/s", "higher"),
        "read-cold-bare": Metric(f"  the same chunks from the same store, bare parallel HTTP client (httpx, "
                                 f"{BARE_PARALLEL} GETs in flight)", "MB/s", "higher", compare=False),
        "read-cold-vs-bare": Metric("  cold read / bare client, same run", "ratio", "higher", compare=False),
        "read-warm": Metric("sequential read, warm (read again)", "MB/s", "higher"),
        "randread": Metric(f"random 4 KiB reads in the file (fio, QD1, {s.fio_s} s)", "IOPS", "higher"),
        "randwrite": Metric(f"random 4 KiB writes in the file (fio, QD1, {s.fio_s} s + fsync)", "IOPS", "higher"),
        "small-create": Metric(f"{n}: create, until close returns", "files/s", "higher"),
        "small-durable": Metric(f"{n}: create, until durable in the store", "files/s", "higher"),
        "small-stat": Metric(f"{n}: stat all (page cache dropped)", "files/s", "higher"),
        "small-read": Metric(f"{n}: read all (page cache dropped)", "files/s", "higher"),
        "small-delete": Metric(f"{n}: delete all", "files/s", "higher"),
        "fresh-delete": Metric(f"{n}: delete files just created (rm -rf of a fresh build dir)", "files/s", "higher"),
        "ls-lR": Metric(f"{s.tree_entries:,}-entry tree: ls -lR (page cache dropped)", "s", "lower"),
        "find": Metric(f"{s.tree_entries:,}-entry tree: find (page cache dropped)", "s", "lower"),
        "tar": Metric(f"extract a source tarball ({tar_files:,} files)", "s", "lower"),
        "git": Metric("git init && git add -A && git commit, in it", "s", "lower"),
        "prop-median": Metric(f"propagation to a second mount, median of {s.prop_files} small files", "s", "lower"),
        "prop-p99": Metric(f"propagation to a second mount, p99 of {s.prop_files} small files", "s", "lower"),
    }


class BenchError(Exception):
    """A workload went wrong on a system (short read, wrong bytes, past its deadline)."""


class Deadline:
    """The time a workload has left; the runner cancels it when the workload overruns."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.cancelled = False

    def remaining(self, floor: float = 1.0) -> float:
        return max(floor, self.end - time.monotonic())

    def check(self, what: str) -> None:
        if self.cancelled or time.monotonic() > self.end:
            raise BenchError(f"{what}: out of time")


@dataclass
class Row:
    key: str
    system: str
    value: float | None
    note: str = ""
    load: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    io_mb: dict[str, tuple[float, float]] = field(default_factory=dict)


def loadavg() -> tuple[float, float, float]:
    one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    return float(one), float(five), float(fifteen)


@dataclass
class Bench:
    sizes: Sizes
    source: Path          # file_mib of random bytes on local disk, copied by the write workload
    tarball: Path
    tar_files: int
    home: Path            # HOME for git, so no user config leaks in
    profile_dir: Path | None = None
    profile_format: str = "flamegraph"
    rows: list[Row] = field(default_factory=list)
    _phase: dict = field(default_factory=dict)

    def record(self, key: str, fs: System, value: float | None, note: str = "") -> None:
        row = Row(key, fs.name, value, note, self._phase.get("load", loadavg()[0]), self._phase.get("cpu", {}),
                  self._phase.get("io", {}))
        self.rows.append(row)
        shown = note if value is None else f"{value:,.2f}" + (f" ({note})" if note else "")
        cpu = ", ".join(f"{k} {v:.1f} s" for k, v in row.cpu.items())
        io = ", ".join(f"{k} {r:,.0f}/{w:,.0f}" for k, (r, w) in row.io_mb.items())
        print(f"  {fs.name:8} {key:14} {shown}" + (f"   [CPU {cpu}; MB read/written {io}; load {row.load:.1f}]"
                                                   if cpu else f"   [load {row.load:.1f}]"), flush=True)

    @contextlib.contextmanager
    def phase(self, fs: System, name: str) -> Iterator[None]:
        """A timed part: note the load, the serving processes' CPU, and py-spy them if asked."""
        pids = fs.pids()
        before = {k: cpu_seconds(p) for k, p in pids.items()}
        io_before = {k: io_bytes(p) for k, p in pids.items()}
        prefix = self.profile_dir / f"{fs.name}-{name}" if self.profile_dir and fs.role == "cloudfs" else None
        self._phase = {"load": loadavg()[0]}
        with profiled(pids, prefix, self.profile_format):
            yield
        self._phase["cpu"] = {k: cpu_seconds(p) - before[k] for k, p in pids.items()}
        self._phase["io"] = {k: tuple((b - a) / 1e6 for a, b in zip(io_before[k], io_bytes(p))) for k, p in pids.items()}


# --- inputs, made once per run ------------------------------------------------------------------


def make_source(path: Path, size: int) -> None:
    """`size` bytes of AES-CTR keystream: unique, incompressible, fast to make."""
    with open(path, "wb") as out:
        gen = subprocess.Popen(["openssl", "enc", "-aes-128-ctr", "-nosalt", "-pbkdf2", "-pass", "pass:cloudfs-bench",
                                "-in", "/dev/zero"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            left = size
            while left:
                piece = gen.stdout.read(min(MIB, left))
                if not piece:
                    raise BenchError("openssl stopped early")
                out.write(piece)
                left -= len(piece)
        finally:
            gen.kill()
            gen.wait(10)


def make_tarball(path: Path, want: int) -> int:
    """A tarball of the Python standard library's sources (then the venv's .py files)
    as a stand-in for a source tree; returns its file count."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "__pycache__", "lib-dynload"}
    picked: list[tuple[Path, str]] = []
    for top, arc in ((stdlib, "python-src"), (Path(sysconfig.get_paths()["purelib"]), "python-src/site-packages")):
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if d not in skip and not d.startswith("config-"))
            for name in sorted(filenames):
                full = Path(dirpath) / name
                if arc.endswith("site-packages") and not name.endswith(".py"):
                    continue
                if full.is_file() and not full.is_symlink():
                    picked.append((full, f"{arc}/{full.relative_to(top)}"))
            if len(picked) >= want:
                break
        if len(picked) >= want:
            break
    with tarfile.open(path, "w") as tar:
        for full, arcname in picked[:want]:
            info = tar.gettarinfo(str(full), arcname)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with open(full, "rb") as f:
                tar.addfile(info, f)
    return min(want, len(picked))


def read_through(path: Path) -> None:
    """Bring a local file into the page cache (untimed), so copying it costs little."""
    with open(path, "rb", buffering=0) as f:
        while f.read(8 * MIB):
            pass


# --- the workloads --------------------------------------------------------------------------


def copy_in(source: Path, target: Path, size: int, dl: Deadline) -> None:
    buf = bytearray(MIB)
    view = memoryview(buf)
    src = os.open(source, os.O_RDONLY)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(size // MIB):
            n = os.readv(src, [buf])
            done = 0
            while done < n:
                done += os.write(fd, view[done:n])
            dl.check(f"writing {target}")
    finally:
        os.close(src)
        os.close(fd)


def read_all(path: Path, size: int, dl: Deadline) -> None:
    buf = bytearray(MIB)
    fd = os.open(path, os.O_RDONLY)
    total = 0
    try:
        while n := os.readv(fd, [buf]):
            total += n
            dl.check(f"reading {path}")
    finally:
        os.close(fd)
    if total != size:
        raise BenchError(f"{path}: read {total} bytes of {size}")


def same_blocks(a: Path, b: Path, size: int, count: int = 8) -> bool:
    """Compare a few random 1 MiB blocks of two files (untimed check of the bytes)."""
    rng = random.Random(size)
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for _ in range(count):
            off = rng.randrange(0, max(1, size // MIB)) * MIB
            fa.seek(off)
            fb.seek(off)
            if fa.read(MIB) != fb.read(MIB):
                return False
    return True


def sequential(b: Bench, fs: System, dl: Deadline) -> None:
    size = b.sizes.file_mib * MIB
    target = fs.root / "seq.bin"
    read_through(b.source)
    with b.phase(fs, "write"):
        start = time.perf_counter()
        copy_in(b.source, target, size, dl)
        closed = time.perf_counter() - start
        try:
            fs.wait_durable("seq.bin", size, dl.remaining())
            durable: float | None = time.perf_counter() - start
        except Exception as exc:  # noqa: BLE001 - the write figure still stands
            durable, why = None, f"not durable: {exc}"
    b.record("write", fs, size / closed / 1e6)
    b.record("write-durable", fs, size / durable / 1e6 if durable else None, "" if durable else why)

    fs.settle(b.sizes.settle_timeout)
    fs.remount_cold()
    for key in ("read-cold", "read-warm"):
        with b.phase(fs, key):
            start = time.perf_counter()
            read_all(target, size, dl)
            seconds = time.perf_counter() - start
        b.record(key, fs, size / seconds / 1e6)
        if key == "read-cold" and hasattr(fs, "bare_read"):
            cold = size / seconds / 1e6
            with b.phase(fs, "read-cold-bare"):
                nbytes, bare_s = fs.bare_read("seq.bin", BARE_PARALLEL, dl.remaining())
            b.record("read-cold-bare", fs, nbytes / bare_s / 1e6)
            b.record("read-cold-vs-bare", fs, cold / (nbytes / bare_s / 1e6))
    if not same_blocks(b.source, target, size):
        raise BenchError(f"{fs.name}: seq.bin does not read back as written")


def fio(path: Path, rw: str, size: int, seconds: int, dl: Deadline) -> tuple[float, str]:
    args = ["fio", f"--name={rw}", f"--filename={path}", f"--rw={rw}", "--bs=4k", f"--size={size}",
            f"--runtime={seconds}", "--time_based", "--ioengine=psync", "--output-format=json"]
    if rw == "randwrite":
        args.append("--end_fsync=1")
    done = subprocess.run(args, capture_output=True, text=True, timeout=dl.remaining())
    if done.returncode != 0:
        raise BenchError(f"fio {rw}: {done.stderr.strip()[-500:]}")
    job = json.loads(done.stdout[done.stdout.index("{"):])["jobs"][0]
    ios = job["read" if rw == "randread" else "write"]["total_ios"]
    runtime_s = job["job_runtime"] / 1000  # includes the end fsync
    return ios / runtime_s, f"{ios:,} I/Os in {runtime_s:.1f} s"


def random_io(b: Bench, fs: System, dl: Deadline) -> None:
    size = b.sizes.file_mib * MIB
    for rw in ("randread", "randwrite"):
        drop_caches()
        with b.phase(fs, rw):
            iops, how = fio(fs.root / "seq.bin", rw, size, b.sizes.fio_s, dl)
        b.record(rw, fs, iops)
        print(f"           ({how})", flush=True)
    fs.settle(b.sizes.settle_timeout)


def small_files(b: Bench, fs: System, dl: Deadline) -> None:
    n, nbytes = b.sizes.small_files, b.sizes.small_bytes
    with open(b.source, "rb") as f:
        blob = f.read(n * nbytes)  # unique bytes for every file
    if len(blob) < n * nbytes:
        blob = (blob * (n * nbytes // max(1, len(blob)) + 1))[: n * nbytes]
    view = memoryview(blob)
    directory = fs.root / "small"
    directory.mkdir()
    paths = [directory / f"f{i:05d}.dat" for i in range(n)]

    with b.phase(fs, "small-create"):
        start = time.perf_counter()
        for i, path in enumerate(paths):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, view[i * nbytes:(i + 1) * nbytes])
            finally:
                os.close(fd)
            if i % 50 == 0:
                dl.check("creating small files")
        closed = time.perf_counter() - start
        fs.wait_files_durable("small", n, dl.remaining())
        durable = time.perf_counter() - start
    b.record("small-create", fs, n / closed)
    b.record("small-durable", fs, n / durable)
    fs.settle(b.sizes.settle_timeout)

    drop_caches()
    with b.phase(fs, "small-stat"):
        start = time.perf_counter()
        for i, path in enumerate(paths):
            if os.stat(path).st_size != nbytes:
                raise BenchError(f"{path}: wrong size")
            if i % 100 == 0:
                dl.check("stat")
        seconds = time.perf_counter() - start
    b.record("small-stat", fs, n / seconds)

    drop_caches()
    with b.phase(fs, "small-read"):
        start = time.perf_counter()
        for i, path in enumerate(paths):
            with open(path, "rb", buffering=0) as f:
                if f.read(nbytes + 1) != view[i * nbytes:(i + 1) * nbytes]:
                    raise BenchError(f"{path}: wrong bytes")
            if i % 100 == 0:
                dl.check("read")
        seconds = time.perf_counter() - start
    b.record("small-read", fs, n / seconds)

    with b.phase(fs, "small-delete"):
        start = time.perf_counter()
        for i, path in enumerate(paths):
            os.unlink(path)
            if i % 100 == 0:
                dl.check("delete")
        seconds = time.perf_counter() - start
    b.record("small-delete", fs, n / seconds)
    fs.settle(b.sizes.settle_timeout)


def fresh_delete(b: Bench, fs: System, dl: Deadline) -> None:
    """Files created and deleted at once, as a build's temporary files are (`rm -rf` of
    a fresh build directory): a system that has not sent them yet need not send them at
    all. Timed: the unlinks and the rmdir; the settling after is not."""
    n, nbytes = b.sizes.small_files, b.sizes.small_bytes
    blob = os.urandom(nbytes)
    directory = fs.root / "fresh"
    directory.mkdir()
    paths = [directory / f"f{i:05d}.o" for i in range(n)]
    for i, path in enumerate(paths):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, blob)
        finally:
            os.close(fd)
        if i % 50 == 0:
            dl.check("creating fresh files")
    with b.phase(fs, "fresh-delete"):
        start = time.perf_counter()
        for i, path in enumerate(paths):
            os.unlink(path)
            if i % 100 == 0:
                dl.check("deleting fresh files")
        directory.rmdir()
        seconds = time.perf_counter() - start
    b.record("fresh-delete", fs, n / seconds)
    fs.settle(b.sizes.settle_timeout)


def _run(args: list[str], cwd: Path, dl: Deadline, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=dl.remaining(), env=env)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(args)}: exit {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout


def metadata_tree(b: Bench, fs: System, dl: Deadline) -> None:
    """Made untimed with 8 threads (s3fs and rclone answer in parallel), then listed."""
    tops, subs, files = b.sizes.tree
    root = fs.root / "tree"
    root.mkdir()
    subdirs = [root / f"d{i:02d}" / f"s{j:02d}" for i in range(tops) for j in range(subs)]
    for i in range(tops):
        (root / f"d{i:02d}").mkdir()

    def fill(sub: Path) -> None:
        sub.mkdir()
        for k in range(files):
            (sub / f"f{k:03d}").touch()
            dl.check("making the tree")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(fill, subdirs))
    fs.settle(b.sizes.settle_timeout)

    for key, args in (("ls-lR", ["ls", "-lR", "tree"]), ("find", ["find", "tree"])):
        drop_caches()
        with b.phase(fs, key):
            start = time.perf_counter()
            out = _run(args, fs.root, dl)
            seconds = time.perf_counter() - start
        if key == "find" and len(out.splitlines()) != b.sizes.tree_entries + 1:
            raise BenchError(f"find listed {len(out.splitlines())} paths, expected {b.sizes.tree_entries + 1}")
        b.record(key, fs, seconds)


def source_tree(b: Bench, fs: System, dl: Deadline) -> None:
    dest = fs.root / "src"
    dest.mkdir()
    with b.phase(fs, "tar"):
        start = time.perf_counter()
        _run(["tar", "-xf", str(b.tarball), "-C", str(dest)], fs.root, dl)
        seconds = time.perf_counter() - start
    b.record("tar", fs, seconds)

    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(b.home), "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid", "LC_ALL": "C"}
    git = ["git", "-c", "safe.directory=*", "-c", "init.defaultBranch=main"]
    with b.phase(fs, "git"):
        start = time.perf_counter()
        _run([*git, "init", "-q"], dest, dl, env)
        _run([*git, "add", "-A"], dest, dl, env)
        _run([*git, "commit", "-q", "-m", "import"], dest, dl, env)
        seconds = time.perf_counter() - start
    b.record("git", fs, seconds)
    fs.settle(b.sizes.settle_timeout)


def _seen(path: Path, data: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read() == data
    except OSError:
        return False


def propagation(b: Bench, fs: System, dl: Deadline) -> None:
    """Write a small file on one mount; time until the other one reads its bytes
    (opened and read every 10 ms). One untimed file first: a system that does not show
    it within the bound is 'never' (rclone: S3 has no change notification, and its
    directory cache keeps a listing 5 minutes)."""
    bound = b.sizes.prop_bound_s

    def one(name: str) -> float | None:
        data = os.urandom(100) + name.encode()
        start = time.perf_counter()
        (fs.root / name).write_bytes(data)
        while time.perf_counter() - start < bound:
            if _seen(other / name, data):
                return time.perf_counter() - start
            time.sleep(0.01)
            dl.check("propagation")
        return None

    with fs.second_mount() as other:
        if other is None:
            return
        with b.phase(fs, "propagation"):
            if one("prop-warmup.txt") is None:
                for key in ("prop-median", "prop-p99"):
                    b.record(key, fs, None, f"never (not within {bound:.0f} s)")
                return
            delays = [one(f"prop-{i:03d}.txt") for i in range(b.sizes.prop_files)]
        seen = sorted(d for d in delays if d is not None)
        missed = len(delays) - len(seen)
        if missed * 2 > len(delays):
            for key in ("prop-median", "prop-p99"):
                b.record(key, fs, None, f"never ({missed} of {len(delays)} not within {bound:.0f} s)")
            return
        ranked = sorted(d if d is not None else bound for d in delays)
        note = f"{missed} not within {bound:.0f} s" if missed else ""
        b.record("prop-median", fs, statistics.median(ranked), note)
        b.record("prop-p99", fs, ranked[max(0, -(-99 * len(ranked) // 100) - 1)], note)


WORKLOADS: list[tuple[str, Callable[[Bench, System, Deadline], None]]] = [
    ("sequential", sequential),
    ("random", random_io),
    ("small files", small_files),
    ("fresh delete", fresh_delete),
    ("metadata", metadata_tree),
    ("source tree", source_tree),
    ("propagation", propagation),
]
