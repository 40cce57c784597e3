#!/usr/bin/env python
"""Run a pjdfstest-style POSIX conformance suite on a cloudfs mount and on a local
directory, and compare them category by category.

The suite (pjdfstest: tests/<syscall>/NN.t shell scripts driving the small C program
`pjdfstest`, run with `prove`) is public code that is not part of this repository: point
the script at a built copy (default /tmp/pjdfstest, which must hold the `pjdfstest`
binary and `tests/`). The script starts a real `cloudfs server` (SQLite, local chunk
store) and a real `cloudfs mount` of a fresh user (tests.harness; as root the mount has
`allow_other`, so the suite's `-u 65534` calls reach it as another user), runs every
test file with `prove -v` as root in a fresh directory on the mount, then the same in a
fresh directory on the local filesystem of `--local-base` (default /tmp), and prints,
per category (the syscall directory: chmod, chown, link, ...), the subtests passed and
failed on each side, the subtests that fail on the mount only, and a totals line.

A subtest is counted from the TAP lines themselves: `ok N` passes, `not ok N` fails
(`# TODO` ones are counted apart, as prove does), and planned subtests that never
printed (the file died or timed out) count as failed. A file whose subtests all passed
but whose shell exited non-zero (a helper function missing from the suite's misc.sh)
is reported as passed, with its exit status in the JSON.

Every step is bounded in time: the server and the mount have the harness's start-up
limits, each test file `--file-timeout` seconds (its whole process group is killed
after that), and when a file times out on the mount the mount is probed; a mount that
no longer answers ends the mount side (the remaining files are reported as not run).
The mount is always unmounted and the server stopped, also on failure, Ctrl-C and
SIGTERM.

    sudo .venv/bin/python scripts/posix_suite.py [SUITE] [--json FILE] [--only chmod,link]
                                                 [--file-timeout S] [--mount-only]

Exit status: 0 when the run completed (whatever the figures), 2 when it broke.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.harness import cloudfs_mount, cloudfs_server  # noqa: E402

TAP_RESULT = re.compile(r"^(not )?ok (\d+)\b(.*)$")
TAP_PLAN = re.compile(r"^1\.\.(\d+)")
LONG_WORD = re.compile(r"\S{80,}")     # the NAME_MAX/PATH_MAX tests' names: shortened in the JSON
MAX_FAILURE_LINES = 400     # per file in the JSON: enough to read every mount-only failure of all but the largest files


class SuiteError(Exception):
    """The suite or the machine cannot run the comparison (not a test failure)."""


@dataclass
class FileResult:
    """What one .t file did on one side."""

    path: str
    category: str
    planned: int = 0
    passed: int = 0
    todo: int = 0
    failed: list[int] = field(default_factory=list)      # `not ok N` and planned subtests never printed
    failure_lines: list[str] = field(default_factory=list)
    exit_status: int | None = None
    seconds: float = 0.0
    timed_out: bool = False
    not_run: bool = False
    stderr_tail: str = ""

    @property
    def ok(self) -> bool:
        return not self.failed and not self.timed_out and not self.not_run and self.planned > 0


def parse_tap(result: FileResult, output: str) -> None:
    """Fill `result` from prove -v's output: the test's own TAP lines."""
    seen: dict[int, bool] = {}
    for raw in output.splitlines():
        line = raw.strip()
        plan = TAP_PLAN.match(line)
        if plan and not result.planned:
            result.planned = int(plan.group(1))
            continue
        match = TAP_RESULT.match(line)
        if not match:
            continue
        number, rest = int(match.group(2)), match.group(3)
        if "# TODO" in rest or "# SKIP" in rest:
            result.todo += 1
            seen[number] = True
            continue
        good = match.group(1) is None
        seen[number] = good
        if not good and len(result.failure_lines) < MAX_FAILURE_LINES:
            result.failure_lines.append(_shorten(line))
    result.passed = sum(1 for good in seen.values() if good) - result.todo
    result.failed = sorted(n for n, good in seen.items() if not good)
    result.failed += [n for n in range(1, result.planned + 1) if n not in seen]
    result.failed.sort()


def _shorten(line: str) -> str:
    """A failure line with its 255-byte names cut in the middle, so the "expected X, got Y"
    at its end survives the length cap."""
    return LONG_WORD.sub(lambda m: f"{m.group(0)[:24]}...{m.group(0)[-8:]}", line)[:500]


def run_file(prove: str, test: Path, category: str, workdir: Path, timeout: float) -> FileResult:
    """`prove -v TEST` in `workdir`, killed with its whole process group after `timeout`."""
    result = FileResult(path=f"{category}/{test.name}", category=category)
    started = time.monotonic()
    proc = subprocess.Popen([prove, "-v", str(test)], cwd=workdir, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)
    try:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            result.timed_out = True
            _kill_group(proc)
            out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            _kill_group(proc)
            proc.wait(30)
    result.seconds = round(time.monotonic() - started, 2)
    parse_tap(result, out)
    exit_match = re.search(r"Non-zero exit status: (\d+)", out)
    result.exit_status = int(exit_match.group(1)) if exit_match else 0
    if not result.planned and not result.timed_out:
        result.failure_lines.append("no TAP plan in the output")
    result.stderr_tail = err[-2000:]
    return result


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def answers(path: Path, timeout: float = 10) -> bool:
    """Whether `stat PATH` comes back within `timeout` (a hung FUSE mount does not)."""
    try:
        return subprocess.run(["stat", str(path)], capture_output=True, timeout=timeout).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def fs_type(path: Path) -> str:
    """The type the suite's conf will see (`df -PT`), e.g. EXT4 or FUSE.CLOUDFS."""
    out = subprocess.run(["df", "-PT", str(path)], capture_output=True, text=True, timeout=30).stdout
    lines = out.strip().splitlines()
    return lines[-1].split()[1].upper() if len(lines) > 1 else "?"


def test_files(suite: Path, only: set[str] | None) -> list[tuple[str, Path]]:
    tests = suite / "tests"
    files = sorted(tests.glob("*/*.t"))
    chosen = [(f.parent.name, f) for f in files if only is None or f.parent.name in only]
    if not chosen:
        raise SuiteError(f"no test files under {tests}" + (f" for {sorted(only)}" if only else ""))
    return chosen


def run_side(name: str, files: list[tuple[str, Path]], workdir: Path, prove: str, timeout: float,
             check_mount: Path | None) -> list[FileResult]:
    """Every file in order in `workdir`; progress on stdout. With `check_mount`, a timeout
    triggers a probe of that mount, and a dead mount ends the side."""
    print(f"== {name}: {workdir} ({fs_type(workdir)}), {len(files)} files", flush=True)
    results: list[FileResult] = []
    dead = False
    for category, test in files:
        if dead:
            results.append(FileResult(path=f"{category}/{test.name}", category=category, not_run=True))
            continue
        result = run_file(prove, test, category, workdir, timeout)
        results.append(result)
        mark = "ok" if result.ok else ("TIMEOUT" if result.timed_out else f"{len(result.failed)} failed")
        print(f"   {result.path:<24} {result.passed:>5}/{result.planned:<5} {mark:<12} {result.seconds:6.1f}s",
              flush=True)
        if result.timed_out and check_mount is not None and not answers(check_mount):
            print(f"   {check_mount} no longer answers: the remaining files are not run", flush=True)
            dead = True
    return results


@dataclass
class Row:
    category: str
    files: int = 0
    mount_passed: int = 0
    mount_failed: int = 0
    mount_files_failed: int = 0
    local_passed: int = 0
    local_failed: int = 0
    local_files_failed: int = 0
    mount_only: int = 0


def compare(mount: list[FileResult], local: list[FileResult]) -> tuple[list[Row], Row, dict[str, list[int]]]:
    """Rows per category, the totals row, and per file the subtests failing on the mount only."""
    local_by_path = {r.path: r for r in local}
    rows: dict[str, Row] = {}
    mount_only: dict[str, list[int]] = {}
    for m in mount:
        row = rows.setdefault(m.category, Row(m.category))
        row.files += 1
        row.mount_passed += m.passed
        row.mount_failed += len(m.failed)
        row.mount_files_failed += not m.ok
        lo = local_by_path.get(m.path)
        if lo is not None:
            row.local_passed += lo.passed
            row.local_failed += len(lo.failed)
            row.local_files_failed += not lo.ok
            only = sorted(set(m.failed) - set(lo.failed))
        else:
            only = list(m.failed)
        row.mount_only += len(only)
        if only:
            mount_only[m.path] = only
    total = Row("TOTAL")
    for row in rows.values():
        for name in ("files", "mount_passed", "mount_failed", "mount_files_failed", "local_passed",
                     "local_failed", "local_files_failed", "mount_only"):
            setattr(total, name, getattr(total, name) + getattr(row, name))
    return sorted(rows.values(), key=lambda r: r.category), total, mount_only


def print_table(rows: list[Row], total: Row, local_ran: bool) -> None:
    header = (f"{'category':<16}{'files':>6}  {'mount pass':>10}{'fail':>6}{'files!':>7}"
              f"  {'local pass':>10}{'fail':>6}{'files!':>7}  {'mount-only':>10}")
    print("\nsubtests passed/failed per category (files! = files with a failure)")
    print(header)
    print("-" * len(header))
    for row in [*rows, total]:
        if row is total:
            print("-" * len(header))
        local = (f"{row.local_passed:>10}{row.local_failed:>6}{row.local_files_failed:>7}" if local_ran
                 else f"{'-':>10}{'-':>6}{'-':>7}")
        print(f"{row.category:<16}{row.files:>6}  {row.mount_passed:>10}{row.mount_failed:>6}"
              f"{row.mount_files_failed:>7}  {local}  {row.mount_only:>10}")


@contextlib.contextmanager
def cloudfs_workdir(tmp: Path) -> Iterator[Path]:
    """A fresh directory on a fresh cloudfs mount; unmounted and stopped on the way out."""
    with cloudfs_server(tmp / "server") as server:
        token = server.add_user(f"posix-{uuid.uuid4().hex[:8]}")
        with cloudfs_mount(server, token, tmp / "mnt", tmp / "cache", device="posix") as mount:
            workdir = mount.path / f"posix-{uuid.uuid4().hex[:8]}"
            workdir.mkdir(mode=0o755)
            os.chmod(workdir, 0o755)
            try:
                yield workdir
            finally:
                if "Traceback" in mount.log():
                    print("mount log has a traceback (tail):\n" + mount.log()[-3000:], file=sys.stderr)


def check_suite(suite: Path) -> str:
    """The path of `prove`, once the suite looks runnable."""
    if os.geteuid() != 0:
        raise SuiteError("run as root: the suite changes owners and calls as uid 65534 (allow_other)")
    binary = suite / "pjdfstest"
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise SuiteError(f"{binary} is missing or not executable: build the suite first "
                         f"(autoreconf -ifs && ./configure && make, or gcc -o pjdfstest pjdfstest.c)")
    for needed in ("tests/misc.sh", "tests/conf"):
        if not (suite / needed).is_file():
            raise SuiteError(f"{suite / needed} is missing: not a pjdfstest tree")
    prove = shutil.which("prove")
    if prove is None:
        raise SuiteError("`prove` (perl's TAP harness) is not installed: apt-get install perl")
    return prove


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", nargs="?", type=Path, default=Path("/tmp/pjdfstest"),
                        help="a built pjdfstest tree (default /tmp/pjdfstest)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the details here")
    parser.add_argument("--only", default=None, metavar="CATS", help="comma-separated categories (default: all)")
    parser.add_argument("--file-timeout", type=float, default=600.0, metavar="S",
                        help="seconds one test file may take on either side (default 600)")
    parser.add_argument("--mount-only", action="store_true", help="skip the local directory")
    parser.add_argument("--tmp", type=Path, default=None, help="where the mount's temp dir goes")
    parser.add_argument("--local-base", type=Path, default=Path("/tmp"),
                        help="the local directory's parent (default /tmp)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    only = set(args.only.split(",")) if args.only else None
    try:
        prove = check_suite(args.suite.resolve())
        files = test_files(args.suite.resolve(), only)
    except SuiteError as exc:
        print(f"posix_suite: {exc}", file=sys.stderr)
        return 2
    started = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="cloudfs-posix-", dir=args.tmp))
    os.chmod(tmp, 0o755)      # uid 65534 must reach the mount point below it
    local_dir = Path(tempfile.mkdtemp(prefix="cloudfs-posix-local-", dir=args.local_base))
    os.chmod(local_dir, 0o755)
    mount_results: list[FileResult] = []
    local_results: list[FileResult] = []
    try:
        with cloudfs_workdir(tmp) as workdir:
            mount_results = run_side("cloudfs mount", files, workdir, prove, args.file_timeout,
                                     check_mount=workdir)
        if not args.mount_only:
            local_results = run_side("local directory", files, local_dir, prove, args.file_timeout,
                                     check_mount=None)
    except KeyboardInterrupt:
        print("\ninterrupted: the mount is unmounted and the server stopped", file=sys.stderr)
        return 2
    except (OSError, RuntimeError, TimeoutError, AssertionError, subprocess.SubprocessError) as exc:
        print(f"posix_suite: the run broke: {exc!r}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(local_dir, ignore_errors=True)
    rows, total, mount_only = compare(mount_results, local_results)
    print_table(rows, total, local_ran=bool(local_results))
    print(f"\nsuite {args.suite}, {len(files)} files, {time.time() - started:.0f}s; "
          f"mount-only failures in {len(mount_only)} files")
    if args.json:
        args.json.write_text(json.dumps({
            "suite": str(args.suite), "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
            "seconds": round(time.time() - started), "file_timeout": args.file_timeout,
            "categories": [asdict(r) for r in rows], "total": asdict(total),
            "mount_only_failures": mount_only,
            "mount": [asdict(r) for r in mount_results], "local": [asdict(r) for r in local_results],
        }, indent=1))
        print(f"details in {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
