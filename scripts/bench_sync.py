#!/usr/bin/env python
"""Benchmark live sync between two devices: how long after a small file is written and
closed on one mount it reads back with the new bytes on the other, without `cloudfs sync`.

One run starts a real `cloudfs server` (SQLite, local chunk store) and two real
`cloudfs mount` processes of one fresh user with separate caches (devices dev-a and
dev-b; tests.harness), all in a temp dir. Four cases, each `--iterations` times (50):

  - new file, A -> B: a new file of a few hundred unique bytes written and closed on A;
  - modify, A -> B: one existing file overwritten with new unique bytes on A;
  - the same two from B to A.

Then the same four between two accounts through a shared folder: A shares `shared`
with a second account, whose device C (dev-c) mounts it at `shared`; A and C write
into the folder (`A -> C (shared)`, `C -> A (shared)`). The propagation target is the
same (issue 16).

Each iteration is timed from just before the open on the writer to the first read on the
reader that returns the new bytes; the reader opens and reads the file every 10 ms
(bounded to 30 s; a miss counts as a failure). The next iteration starts once the
previous one was seen. The writer's mount log says when each commit happened
("committed inode ..."), which splits the delay into write -> commit on the writer and
commit -> visible on the reader.

    .venv/bin/python scripts/bench_sync.py [--quick] [--iterations N] [--json FILE]

Targets per case: median <= 1 s, p99 <= 3 s. Both mounts are unmounted and the server
stopped at the end, also on failure and on Ctrl-C / SIGTERM. Exit status: 0 when every
target is met, 1 when one is missed, 2 when the run broke.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.harness import CLOUDFS, MountProcess, cloudfs_mount, cloudfs_server  # noqa: E402

POLL_S = 0.010
TIMEOUT_S = 30.0
TARGET_MEDIAN_S = 1.0
TARGET_P99_S = 3.0
PREPARE_LINE = re.compile(r'^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) cloudfs\.access INFO \S+ "POST /(?:uploads/prepare|files)" '
                          r'\d+ \d+ ([\d.]+)s')
COMMIT_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) cloudfs\.uploader INFO committed inode (\d+) "
                         r"as node (\d+) rev (\d+)")


class BenchError(Exception):
    """The run itself went wrong (a mount died, a file never arrived in setup)."""


@dataclass
class Case:
    name: str
    delays: list[float] = field(default_factory=list)    # seconds, write start -> seen on the reader
    commits: list[float] = field(default_factory=list)   # seconds, write start -> commit logged by the writer
    uploads: list[float] = field(default_factory=list)   # seconds, write start -> the server got the upload's first request
    missed: int = 0

    def quantile(self, q: float) -> float | None:
        if not self.delays:
            return None
        ordered = sorted(self.delays)
        return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]

    def summary(self) -> dict:
        after_commit = [d - c for d, c in zip(self.delays, self.commits) if c == c]  # NaN: no commit line found
        waits = [u for u in self.uploads if u == u]
        upload = [c - u for c, u in zip(self.commits, self.uploads) if c == c and u == u]
        return {
            "case": self.name, "n": len(self.delays), "missed": self.missed,
            "median_s": self.quantile(0.5), "p90_s": self.quantile(0.9), "p99_s": self.quantile(0.99),
            "max_s": max(self.delays) if self.delays else None,
            "median_write_to_commit_s": statistics.median([c for c in self.commits if c == c]) if after_commit else None,
            "min_write_to_commit_s": min([c for c in self.commits if c == c]) if after_commit else None,
            "median_write_to_upload_start_s": statistics.median(waits) if waits else None,
            "min_write_to_upload_start_s": min(waits) if waits else None,
            "median_upload_to_commit_s": statistics.median(upload) if upload else None,
            "median_commit_to_visible_s": statistics.median(after_commit) if after_commit else None,
            "ok": self.ok,
        }

    @property
    def ok(self) -> bool:
        median, p99 = self.quantile(0.5), self.quantile(0.99)
        return (not self.missed and median is not None and p99 is not None
                and median <= TARGET_MEDIAN_S and p99 <= TARGET_P99_S)


def read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def wait_for(path: Path, data: bytes, timeout: float, proc: subprocess.Popen) -> float | None:
    """Poll `path` every POLL_S until it reads `data`; the monotonic time it did, or None."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / POLL_S) + 10):
        if read(path) == data:
            return time.monotonic()
        if time.monotonic() > deadline:
            return None
        if proc.poll() is not None:
            raise BenchError(f"the reading mount exited with {proc.returncode}")
        time.sleep(POLL_S)
    return None


def content(tag: str, i: int) -> bytes:
    """A few hundred bytes, unique per run, case and iteration."""
    head = f"{tag} #{i} {uuid.uuid4()}\n".encode()
    return head + os.urandom(150).hex().encode() + b"\n"


def _stamp(text: str) -> float:
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def upload_starts(server_log: str) -> list[float]:
    """When the server received the first request of each upload (`POST /uploads/prepare`,
    or `POST /files` for a small file, whose bytes travel inside its commit): the
    access line is written at the answer and gives the duration."""
    return [_stamp(m.group(1)) - float(m.group(2)) for m in map(PREPARE_LINE.match, server_log.splitlines()) if m]


def commit_times(log: str) -> list[tuple[float, int, int]]:
    """(wall-clock time, inode, rev) of every commit the mount logged (ms resolution)."""
    out = []
    for line in log.splitlines():
        m = COMMIT_LINE.match(line)
        if m:
            out.append((_stamp(m.group(1)), int(m.group(2)), int(m.group(4))))
    return out


def run_case(case: Case, writer: MountProcess, reader: MountProcess, iterations: int, *, modify: bool,
             folder: str = "") -> None:
    """`folder`: where in both drives the files go (a shared folder)."""
    tag = case.name.replace(" ", "-").replace(">", "").replace("(", "").replace(")", "")
    name = f"{tag}.txt"
    wdir, rdir = writer.path / folder, reader.path / folder
    if modify:  # the file exists on both sides before the first timed write
        write(wdir / name, content(tag, -1))
        if wait_for(rdir / name, read(wdir / name), 60, reader.proc) is None:
            raise BenchError(f"{name} never arrived on the reader during setup")
    starts: list[float] = []
    for i in range(iterations):
        path = wdir / (name if modify else f"{tag}-{i:03d}.txt")
        data = content(tag, i)
        wall, start = time.time(), time.monotonic()
        write(path, data)
        seen = wait_for(rdir / path.name, data, TIMEOUT_S, reader.proc)
        if seen is None:
            case.missed += 1
            print(f"  {case.name} #{i}: not seen on the reader after {TIMEOUT_S:.0f} s", flush=True)
            continue
        starts.append(wall)
        case.delays.append(seen - start)
    # The writer's log: the first commit logged after each write started (its own upload);
    # the server's log: the first upload request after it (only the writer uploads).
    commits = commit_times(writer.log())
    prepares = upload_starts(writer.server.log())
    for wall in starts:
        first = next((t for t, _, _ in commits if t >= wall - 0.001), float("nan"))
        case.commits.append(first - wall)
        first = next((t for t in prepares if t >= wall - 0.001), float("nan"))
        case.uploads.append(first - wall)


def share_folder(owner: MountProcess, member: MountProcess, member_name: str) -> None:
    """`shared` in the owner's drive, shared with the member and accepted at `shared`."""
    def cloudfs(*args: str, cwd: Path | None = None) -> str:
        done = subprocess.run([*CLOUDFS, *args], capture_output=True, text=True, timeout=120, cwd=cwd)
        if done.returncode != 0:
            raise BenchError(f"cloudfs {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout
    (owner.path / "shared").mkdir()
    owner.sync()
    cloudfs("share", str(owner.path / "shared"), member_name)
    ns = json.loads(cloudfs("shares", "--json", cwd=member.path))[0]["id"]
    cloudfs("shares", "accept", str(ns), "--at", str(member.path / "shared"))
    write(owner.path / "shared" / "warm-up.txt", b"shared warm-up\n")
    if wait_for(member.path / "shared" / "warm-up.txt", b"shared warm-up\n", 60, member.proc) is None:
        raise BenchError("the shared folder's warm-up file never arrived on C")


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:,.0f} ms"


def table(cases: list[Case]) -> str:
    header = ("Case", "n", "median", "p90", "p99", "max", "write->upload starts (median / min)",
              "upload+commit (median)", "commit->visible (median)", "Target", "Status")
    rows = []
    for c in cases:
        s = c.summary()
        rows.append((c.name, f"{s['n']}" + (f" ({c.missed} missed)" if c.missed else ""), fmt(s["median_s"]),
                     fmt(s["p90_s"]), fmt(s["p99_s"]), fmt(s["max_s"]),
                     f"{fmt(s['median_write_to_upload_start_s'])} / {fmt(s['min_write_to_upload_start_s'])}",
                     fmt(s["median_upload_to_commit_s"]), fmt(s["median_commit_to_visible_s"]),
                     f"median <= {TARGET_MEDIAN_S:.0f} s, p99 <= {TARGET_P99_S:.0f} s", "PASS" if c.ok else "FAIL"))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |" for r in rows]
    return "\n".join(lines)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine() -> str:
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
    return (f"{os.cpu_count()} cores, {mem_kib / 1024 / 1024:.0f} GiB, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def code_state() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30).stdout
    head = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    dirty = [line[3:] for line in git("status", "--porcelain", "--", "fs", "backend", "cloudfs").splitlines() if line]
    return head + (f" + uncommitted {', '.join(dirty)}" if dirty else "")


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through every finally: mounts come down


def _mounted_under(root: Path) -> list[str]:
    prefix = os.path.abspath(root) + os.sep
    with open("/proc/self/mounts") as mounts:
        return [p for p in (line.split()[1].replace("\\040", " ") for line in mounts) if p.startswith(prefix)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 iterations per case (a sanity run)")
    parser.add_argument("--iterations", type=int, default=None, help="per case (default 50, 10 with --quick)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures to FILE as JSON")
    parser.add_argument("--tmp", type=Path, default=None, help="where the temp dir goes (default: the system's)")
    args = parser.parse_args(argv)
    iterations = args.iterations or (10 if args.quick else 50)
    signal.signal(signal.SIGTERM, _sigterm)
    print(f"cloudfs sync latency benchmark; {machine()}; load {loadavg()}; code {code_state()}", flush=True)

    cases = [Case("new file, A -> B"), Case("modify, A -> B"), Case("new file, B -> A"), Case("modify, B -> A"),
             Case("new file, A -> C (shared)"), Case("modify, A -> C (shared)"), Case("new file, C -> A (shared)"),
             Case("modify, C -> A (shared)")]
    tmp = Path(tempfile.mkdtemp(prefix="cloudfs-bench-sync-", dir=args.tmp))
    status = 2
    load_start = loadavg()
    try:
        with cloudfs_server(tmp / "server") as server:
            token = server.add_user(f"bench-{uuid.uuid4().hex[:8]}")
            other = f"bench-{uuid.uuid4().hex[:8]}"
            token_c = server.add_user(other)
            with cloudfs_mount(server, token, tmp / "a", tmp / "cache-a", device="dev-a") as a, \
                    cloudfs_mount(server, token, tmp / "b", tmp / "cache-b", device="dev-b") as b, \
                    cloudfs_mount(server, token_c, tmp / "c", tmp / "cache-c", device="dev-c") as c:
                try:
                    write(a.path / "warm-up.txt", b"warm-up\n")  # first requests, imports, connections
                    if wait_for(b.path / "warm-up.txt", b"warm-up\n", 60, b.proc) is None:
                        raise BenchError("the warm-up file never arrived on B")
                    share_folder(a, c, other)
                    pairs = [(a, b), (a, b), (b, a), (b, a), (a, c), (a, c), (c, a), (c, a)]
                    for case, (writer, reader), modify in zip(cases, pairs, [False, True] * 4):
                        print(f"{case.name}: {iterations} iterations", flush=True)
                        run_case(case, writer, reader, iterations, modify=modify,
                                 folder="shared" if "shared" in case.name else "")
                        s = case.summary()
                        print(f"  median {fmt(s['median_s'])}, p90 {fmt(s['p90_s'])}, p99 {fmt(s['p99_s'])}, "
                              f"max {fmt(s['max_s'])}; write->upload starts "
                              f"{fmt(s['median_write_to_upload_start_s'])} (min "
                              f"{fmt(s['min_write_to_upload_start_s'])}), upload+commit "
                              f"{fmt(s['median_upload_to_commit_s'])}, commit->visible "
                              f"{fmt(s['median_commit_to_visible_s'])}", flush=True)
                    status = 0 if all(c.ok for c in cases) else 1
                except (BenchError, OSError) as exc:
                    print(f"benchmark failed: {exc!r}", file=sys.stderr)
                finally:
                    for m in (a, b, c):
                        if "Traceback" in m.log() or " ERROR " in m.log():
                            print(f"mount log of {m.device} has errors:\n" + m.log()[-3000:], file=sys.stderr)
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
    print(f"{'--quick; ' if args.quick else ''}{iterations} iterations per case; {machine()}; "
          f"load at the start {load_start}, at the end {loadavg()}; code {code_state()}")
    print(table(cases))
    if args.json:
        args.json.write_text(json.dumps({
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "code": code_state(), "load_start": load_start, "load_end": loadavg(),
            "iterations": iterations, "poll_s": POLL_S, "targets": {"median_s": TARGET_MEDIAN_S, "p99_s": TARGET_P99_S},
            "cases": [c.summary() for c in cases], "raw": {c.name: asdict(c) for c in cases},
        }, indent=2) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
