"""scripts/posix_suite.py: how it counts a test file's TAP output, bounds a hung file,
and compares the mount with the local directory. The suite itself is not in the repo;
these use small shell scripts in its place."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
_spec = importlib.util.spec_from_file_location("posix_suite", REPO / "scripts" / "posix_suite.py")
posix_suite = importlib.util.module_from_spec(_spec)
sys.modules["posix_suite"] = posix_suite
_spec.loader.exec_module(posix_suite)


def parsed(output: str) -> "posix_suite.FileResult":
    result = posix_suite.FileResult(path="chmod/00.t", category="chmod")
    posix_suite.parse_tap(result, output)
    return result


def test_tap_counts_ok_not_ok_todo_and_planned_subtests_that_never_printed():
    result = parsed("1..6\nok 1\nnot ok 2 - tried 'chown x 1 2', expected 0, got EPERM\n"
                    "ok 3 # TODO Linux quirk\nnot ok 4 # TODO known\nok 5\n")
    assert result.planned == 6
    assert result.passed == 2
    assert result.todo == 2
    assert result.failed == [2, 6]          # 6 was planned and never printed
    assert result.failure_lines == ["not ok 2 - tried 'chown x 1 2', expected 0, got EPERM"]
    assert not result.ok


def test_tap_quick_exit_passes_and_no_plan_does_not():
    assert parsed("1..1\nok 1\n").ok
    silent = parsed("sh: 1: syntax error\n")
    assert silent.planned == 0 and not silent.ok


def test_compare_counts_per_category_and_the_subtests_failing_on_the_mount_only():
    mount = [parsed("1..3\nok 1\nnot ok 2\nnot ok 3\n"), parsed("1..2\nok 1\nok 2\n")]
    local = [parsed("1..3\nok 1\nok 2\nnot ok 3\n"), parsed("1..2\nok 1\nok 2\n")]
    mount[1].path = local[1].path = "link/00.t"
    mount[1].category = local[1].category = "link"
    rows, total, mount_only = posix_suite.compare(mount, local)
    by_name = {row.category: row for row in rows}
    assert (by_name["chmod"].mount_passed, by_name["chmod"].mount_failed) == (1, 2)
    assert (by_name["chmod"].local_passed, by_name["chmod"].local_failed) == (2, 1)
    assert by_name["chmod"].mount_only == 1
    assert mount_only == {"chmod/00.t": [2]}
    assert (total.files, total.mount_passed, total.mount_failed, total.local_failed) == (2, 3, 2, 1)


def test_a_hung_file_is_killed_with_its_children_after_the_timeout(tmp_path: Path):
    """The stand-in `prove` prints a plan and one result, then waits on a grandchild that
    would outlive it; the run must come back at the timeout with the group killed."""
    pidfile = tmp_path / "child.pid"
    prove = tmp_path / "prove"
    prove.write_text(f"#!/bin/sh\necho 1..2\necho ok 1\nsleep 300 &\necho $! > {pidfile}\nwait\n")
    prove.chmod(0o755)
    test = tmp_path / "00.t"
    test.write_text("")
    started = time.monotonic()
    result = posix_suite.run_file(str(prove), test, "chmod", tmp_path, timeout=1.0)
    assert time.monotonic() - started < 20
    assert result.timed_out and not result.ok
    assert (result.passed, result.failed) == (1, [2])
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and os.path.exists(f"/proc/{child}"):
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{child}"), "the grandchild survived the timeout"


def test_a_failure_on_a_name_max_path_keeps_its_expected_and_got():
    name = "a" * 255
    result = parsed(f"1..1\nnot ok 1 - tried 'mkfifo {name} 0644', expected 0, got EPERM\n")
    assert result.failure_lines[0].endswith("expected 0, got EPERM")
    assert len(result.failure_lines[0]) < 120
