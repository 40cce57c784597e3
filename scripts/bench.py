#!/usr/bin/env python
"""cloudfs side by side with s3fs and rclone mount, on one machine, in one run.

Each system runs the same workloads (scripts/workloads.py) against its own fresh store,
one system after the other (scripts/peers.py starts and stops them):

  cloudfs   a `cloudfs server` (SQLite) whose chunk store is a moto S3 server, and a
            `cloudfs mount` of a fresh user (a second mount, device bench-b, for
            propagation);
  s3fs      s3fs-fuse on a bucket of its own moto server, with `use_cache`;
  rclone    `rclone mount --vfs-cache-mode full` on the same kind of bucket;
  bindfs    a FUSE passthrough over a local directory (what FUSE itself costs);
  nullfs    scripts/nullfs.py, a pyfuse3 mount that keeps nothing, on the random rows
            only (what any pyfuse3 mount pays per request before doing any work);
  local     a plain directory on the same disk.

The table has every figure, and per row the ratio of cloudfs to the best of s3fs and
rclone and to the local directory. cloudfs wins a row when it is at least as good as
the best peer; on the sequential write and warm read rows it must also reach half the
bindfs figure.

    .venv/bin/python scripts/bench.py [--quick] [--json FILE] [--systems cloudfs,s3fs,...]
                                      [--profile DIR [--profile-format raw]] [--tmp DIR] [--workloads sequential,...]
                                      [--file-mib N] [--small-files N] [--repeat N]

Needs root (drop_caches, allow_other); installs s3fs, rclone, bindfs and fio with
apt-get when they are missing. Every step is bounded in time; everything started is
stopped and unmounted at the end, also on failure and on Ctrl-C / SIGTERM. Exit
status: 0 when cloudfs wins every row, 1 when it loses one, 2 when the run broke.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import mmap
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import SYSTEMS, System, ensure_tools  # noqa: E402
from workloads import (MIB, WORKLOADS, Bench, BenchError, Deadline, Metric, Row, Sizes,  # noqa: E402
                       loadavg, make_source, make_tarball, metrics)

REPO = Path(__file__).resolve().parent.parent
ORDER = ("local", "bindfs", "nullfs", "s3fs", "rclone", "cloudfs")
RUN_ORDER = ("local", "bindfs", "nullfs", "cloudfs", "s3fs", "rclone")
NEEDS_HALF_BINDFS = ("write", "read-warm")


class Overrun(Exception):
    """A workload did not finish within its bound (its thread may still be stuck in a
    syscall on the mount: the system is torn down to free it)."""


def run_bounded(fn, timeout: float, dl: Deadline) -> None:  # noqa: ANN001
    """Run `fn` in a thread so that a hung FUSE call cannot hang the benchmark; the main
    thread keeps handling signals while it waits."""
    failure: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            failure.append(exc)

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    end = time.monotonic() + timeout
    try:
        while worker.is_alive():
            worker.join(0.5)
            if time.monotonic() > end and worker.is_alive():
                raise Overrun(f"not done after {timeout:.0f} s")
    except BaseException:  # Overrun, Ctrl-C, SIGTERM: let the worker stop at its next check
        dl.cancelled = True
        worker.join(10)
        raise
    if failure:
        raise failure[0]


def run_system(name: str, bench: Bench, work: Path, failures: dict[str, list[str]], chosen: list[str]) -> None:
    sizes = bench.sizes
    print(f"\n== {name} (load {' '.join(f'{x:.1f}' for x in loadavg())})", flush=True)
    with SYSTEMS[name](work) as fs:
        for label, workload in [(w, f) for w, f in WORKLOADS if w in chosen and w in (fs.workloads or (w,))]:
            dl = Deadline(sizes.workload_timeout)
            start = time.monotonic()
            try:
                run_bounded(lambda: workload(bench, fs, dl), sizes.workload_timeout, dl)
                print(f"  ({name}: {label} took {time.monotonic() - start:.0f} s in all)", flush=True)
            except Overrun as exc:
                failures.setdefault(name, []).append(f"{label}: {exc}; the rest of {name} skipped")
                print(f"  {name}: {label}: {exc}; tearing {name} down", file=sys.stderr, flush=True)
                break
            except Exception as exc:  # noqa: BLE001 - one workload failing is a result, not the end
                failures.setdefault(name, []).append(f"{label}: {exc!r}")
                print(f"  {name}: {label} failed: {exc!r}", file=sys.stderr, flush=True)
                tail = fs.log_tail()
                if tail:
                    print(f"  {name} log (tail):\n{tail}", file=sys.stderr, flush=True)
                with contextlib.suppress(Exception):
                    fs.settle(60)


# --- the table ----------------------------------------------------------------------------------


def fmt(value: float | None) -> str:
    if value is None:
        return "–"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def better(m: Metric, a: float, b: float) -> bool:
    """a at least as good as b."""
    return a >= b if m.better == "higher" else a <= b


def summarise(bench: Bench, table: dict[str, Metric], systems: list[str]) -> tuple[list[list[str]], list[str]]:
    """Table cells per row, and the rows cloudfs loses (with why). A row measured more
    than once (`--repeat`) shows the median of its figures."""
    by = {}
    for r in bench.rows:
        by.setdefault((r.key, r.system), []).append(r)
    by = {k: _median_row(rs) for k, rs in by.items()}
    lines, losses = [], []
    for key, m in table.items():
        cells = {s: by.get((key, s)) for s in systems}
        if not any(cells.values()):
            continue
        shown = [fmt(c.value) if c and c.value is not None else (c.note.split(" (")[0] if c else "") for c in
                 (cells[s] for s in systems)]
        cloud = cells.get("cloudfs")
        cv = cloud.value if cloud else None
        peers = [(s, cells[s]) for s in ("s3fs", "rclone") if s in cells]
        measured = [(s, c.value) for s, c in peers if c and c.value is not None]
        best = None
        if measured:
            best = measured[0]
            for s, v in measured[1:]:
                if better(m, v, best[1]) and v != best[1]:
                    best = (s, v)
        local = cells.get("local")
        vs_best = f"{cv / best[1]:.2f} ({best[0]})" if cv is not None and best and best[1] else "–"
        vs_local = f"{cv / local.value:.2f}" if cv is not None and local and local.value else "–"
        verdict = ""
        if not m.compare:
            verdict = "reference"
        elif cloud:
            why = []
            if cv is None:
                why.append("no figure")
            elif best and not better(m, cv, best[1]):
                why.append(f"behind {best[0]}")
            bind = cells.get("bindfs")
            if key in NEEDS_HALF_BINDFS and cv is not None and bind and bind.value and cv < 0.5 * bind.value:
                why.append(f"{cv / bind.value:.2f} of bindfs < 0.50")
            verdict = "LOSS: " + ", ".join(why) if why else "win"
            if why:
                losses.append(f"{m.label}: {', '.join(why)}")
        arrow = "↑" if m.better == "higher" else "↓"
        lines.append([m.label, f"{m.unit} {arrow}", *shown, vs_best, vs_local, verdict])
    return lines, losses


def _median_row(rows: list[Row]) -> Row:
    measured = sorted((r for r in rows if r.value is not None), key=lambda r: r.value)
    if not measured:
        return rows[-1]
    middle = measured[len(measured) // 2]
    if len(measured) % 2 == 0:
        low = measured[len(measured) // 2 - 1]
        return Row(middle.key, middle.system, (low.value + middle.value) / 2, middle.note, middle.load)
    return middle


def render(lines: list[list[str]], systems: list[str]) -> str:
    header = ["workload", "unit", *systems, "cloudfs / best peer", "cloudfs / local", "cloudfs"]
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(header, widths)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in lines]
    return "\n".join(out)


def machine() -> str:
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    return (f"{os.cpu_count()} cores ({cpu}), {mem_kib / 1024 / 1024:.0f} GiB, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}")


def versions() -> str:
    def first(args: list[str]) -> str:
        try:
            out = subprocess.run(args, capture_output=True, text=True, timeout=10)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"
    return "; ".join([first(["s3fs", "--version"]).split(" (")[0].replace("Amazon Simple Storage Service File System ",
                                                                             "s3fs "),
                      first(["rclone", "version"]), first(["bindfs", "--version"]), first(["fio", "--version"])])


def code_state() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30).stdout
    head = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    dirty = [line[3:] for line in git("status", "--porcelain", "--", "fs", "backend", "server", "cloudfs").splitlines()
             if line]
    return head + (f" + uncommitted {', '.join(dirty)}" if dirty else "")


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through every finally: mounts come down


def _mounted_under(root: Path) -> list[str]:
    prefix = os.path.abspath(root) + os.sep
    with open("/proc/self/mounts") as mounts:
        return [p for p in (line.split()[1].replace("\\040", " ") for line in mounts) if p.startswith(prefix)]


def warm_memory(spare: int = 2 << 30) -> tuple[float, int]:
    """Touch the machine's free memory once (all but `spare`), then give it back.

    On a VM whose host backs guest memory on first touch (Firecracker here), writing into
    a page never used before costs many times the copy: LMDB's commit of a 5 MiB chunk
    took 1.5 ms while the kernel recycled freed pages and 25 ms of CPU once it reached
    untouched ones (BENCHMARKS.md, issue 18). Every system writes its cache through the
    page cache, so whoever ran first on a fresh VM paid for it. A machine in use
    recycles its page cache all the time; this makes the run describe that one."""
    available = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemAvailable:"))
    size = max(0, available - spare)
    piece = 64 << 20
    start = time.monotonic()
    with mmap.mmap(-1, size or 1) as memory, open("/dev/zero", "rb") as zeros:
        view = memoryview(memory)
        for off in range(0, size, piece):
            zeros.readinto(view[off:off + piece])
        view.release()
    return time.monotonic() - start, size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced sizes (a few minutes; not the recorded figures)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every figure to FILE")
    parser.add_argument("--systems", default=",".join(RUN_ORDER),
                        help=f"comma-separated, run in this order (default {','.join(RUN_ORDER)})")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="record every cloudfs phase with py-spy (mount and server) into DIR/*.svg")
    parser.add_argument("--profile-format", choices=("flamegraph", "raw"), default="flamegraph",
                        help="py-spy's output: flame graphs, or collapsed stacks (DIR/*.txt) to add up and compare")
    parser.add_argument("--tmp", type=Path, default=None, help="where the temp dir goes (default: the system's)")
    parser.add_argument("--workloads", default=None,
                        help=f"comma-separated workloads to run (default all: {','.join(w for w, _ in WORKLOADS)})")
    parser.add_argument("--file-mib", type=int, default=None, help="size of the sequential file in MiB")
    parser.add_argument("--small-files", type=int, default=None, help="how many small files")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every system this many times, in turns; the table shows medians")
    parser.add_argument("--cold-memory", action="store_true",
                        help="skip touching the free memory once before the run (see warm_memory)")
    args = parser.parse_args(argv)
    run = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(run) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems: {', '.join(sorted(unknown))} (have {', '.join(SYSTEMS)})")
    if os.geteuid() != 0:
        parser.error("run as root (drop_caches, allow_other, apt-get)")
    sizes = Sizes.quick() if args.quick else Sizes()
    if args.file_mib:
        sizes = dataclasses.replace(sizes, file_mib=args.file_mib)
    if args.small_files:
        sizes = dataclasses.replace(sizes, small_files=args.small_files)
    names = [w for w, _ in WORKLOADS]
    chosen = names if args.workloads is None else [w.strip() for w in args.workloads.split(",") if w.strip()]
    if set(chosen) - set(names):
        parser.error(f"unknown workloads: {', '.join(sorted(set(chosen) - set(names)))} (have {', '.join(names)})")
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored (`cmd &`)
    ensure_tools()

    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    print(f"cloudfs side-by-side benchmark{' (--quick)' if args.quick else ''}; {started:%Y-%m-%d %H:%M} UTC", flush=True)
    print(f"machine: {machine()}; load {' '.join(f'{x:.2f}' for x in loadavg())}", flush=True)
    print(f"code: {code_state()}; {versions()}", flush=True)

    if not args.cold_memory:
        took, touched = warm_memory()
        print(f"memory: {touched / (1 << 30):.1f} GiB touched once in {took:.0f} s (--cold-memory skips it)", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="cloudfs-bench-peers-", dir=args.tmp))
    failures: dict[str, list[str]] = {}
    loads: dict[str, tuple[float, float]] = {}
    try:
        (tmp / "home").mkdir()
        source, tarball = tmp / "source.bin", tmp / "source.tar"
        make_source(source, sizes.file_mib * MIB)
        tar_files = make_tarball(tarball, sizes.tar_files)
        print(f"inputs: {sizes.file_label} of random bytes; tarball of {tar_files:,} files, "
              f"{tarball.stat().st_size / MIB:.0f} MiB", flush=True)
        bench = Bench(sizes, source, tarball, tar_files, tmp / "home", args.profile, args.profile_format)
        for name in [n for _ in range(max(1, args.repeat)) for n in run]:
            before = loadavg()[0]
            try:
                run_system(name, bench, tmp / name, failures, chosen)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - a system that does not start is a result too
                failures.setdefault(name, []).append(f"start/stop: {exc!r}")
                print(f"  {name}: {exc!r}", file=sys.stderr, flush=True)
            loads[name] = (before, loadavg()[0])
            if args.profile:  # the logs go with the flame graphs (commit times, request lines)
                for log in (tmp / name).rglob("*.log"):
                    keep = args.profile / f"{name}-logs" / log.relative_to(tmp / name)
                    keep.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(log, keep)
            shutil.rmtree(tmp / name, ignore_errors=True)
    except KeyboardInterrupt:
        print("interrupted; everything is unmounted and stopped", file=sys.stderr)
        return 130
    finally:
        left = _mounted_under(tmp)
        if left:
            print(f"still mounted, {tmp} left in place: {left}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.monotonic() - t0

    table = metrics(sizes, tar_files)
    systems = [s for s in ORDER if s in run]
    lines, losses = summarise(bench, table, systems)
    print()
    print(f"{'--quick; ' if args.quick else ''}{started:%Y-%m-%d %H:%M} UTC; {elapsed / 60:.1f} min; {machine()}")
    print("load (1-min) at start / end of each system: " +
          ", ".join(f"{s} {a:.1f}/{b:.1f}" for s, (a, b) in loads.items()))
    print(render(lines, systems))
    for name, items in failures.items():
        for item in items:
            print(f"- {name}: {item}")
    if "cloudfs" in run:
        print("cloudfs loses: " + ("; ".join(losses) if losses else "nothing"))

    if args.json:
        args.json.write_text(json.dumps({
            "meta": {"date": started.isoformat(timespec="seconds"), "quick": args.quick, "minutes": round(elapsed / 60, 1),
                     "machine": machine(), "code": code_state(), "tools": versions(),
                     "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
                     "load": {s: list(v) for s, v in loads.items()}, "failures": failures, "losses": losses},
            "rows": [_json_row(r, table) for r in bench.rows],
        }, indent=1))
        print(f"figures written to {args.json}")
    if failures.get("cloudfs"):
        return 2
    return 1 if losses else 0


def _json_row(r: Row, table: dict[str, Metric]) -> dict:
    m = table[r.key]
    row = {"workload": m.label, "system": r.system, "value": None if r.value is None else round(r.value, 4),
           "unit": m.unit, "better": m.better, "key": r.key, "load": r.load}
    if r.note:
        row["note"] = r.note
    if r.cpu:
        row["cpu_s"] = {k: round(v, 2) for k, v in r.cpu.items()}
    if r.io_mb:  # MB through read(2)/write(2) per process (wchar of a FUSE daemon: its replies)
        row["io_mb"] = {k: {"read": round(a, 1), "written": round(b, 1)} for k, (a, b) in r.io_mb.items()}
    return row


if __name__ == "__main__":
    sys.exit(main())
