"""Crash consistency of the device: kill -9 of the mount at random moments of real work,
mounted again on the same cache, and what was promised must be there.

One server, one account, one mount whose cache lives through every kill. Each round
runs one workload on the mount, takes promises while it runs, kills the mount at a
random moment, stops the workload, mounts again and checks:

- `cloudfs fsck` finds nothing to repair (nor anything it cannot), before anything else
  touches the mount;
- every promise holds: a file fsynced (and renamed into place) before the kill has the
  bytes it had, or, if the kill came during its replacement, the bytes that replaced
  it; a file closed before a `cloudfs sync` that returned has the bytes it had;
- `cloudfs sync` then finishes.

Workloads (a table, WORKLOADS: name -> class):
- cp: `cp -a` of a source tree (text, binary files of several chunks, symlinks, nested
  directories). Promise at a sync: every file cp had closed (not open by cp per
  /proc/PID/fd) holds the source's bytes.
- git-clone: `git clone --no-local` of a repository with history. Promise at a sync:
  the work tree files and the object files (immutable in git) that git had closed hold
  the bytes read then; an object file may be gone since (a temporary pack is renamed).
- git-commit: a repository on the mount that lives through the rounds; commits in a
  loop (edit, add, remove files; `git add -A; git commit`). Promise at a sync: the last
  commit made before it is reachable from HEAD afterwards; `git fsck --full` passes.
- fsync-loop: write a temporary file, fsync, close, rename over one of a few targets,
  fsync the directory. Promise per rename: the target holds those bytes (or the bytes
  of a replacement begun since).
"""

from __future__ import annotations

import contextlib
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cloudfs.backend.daily import control
from tests.crash.workloads import WORKLOADS, make_sources
from tests.harness import MountProcess, ServerProcess, spawn_mount, unmount

KILL_AFTER = (0.05, 3.0)
"""Seconds the workload runs before the kill, drawn uniformly."""
SYNC_AFTER_S = 600.0
"""What the sync after a remount may take: it uploads whatever the workload left."""
MOUNT_TIMEOUT_S = 180.0
"""How long a mount may take to answer on a loaded machine (more than 60 s seen at load 25)."""


@dataclass
class DeviceCrash:
    """The rounds, on one mount whose cache survives every kill."""

    server: ServerProcess
    token: str
    base: Path
    rnd: random.Random
    say: Callable[[str], None] = print
    mount: MountProcess | None = None
    kills: int = 0
    log_seen: int = 0
    promises: int = 0
    syncs: int = 0
    confirmed_deletes: int = 0
    failures: list[str] = field(default_factory=list)
    by_workload: dict[str, int] = field(default_factory=dict)

    @property
    def mnt(self) -> Path:
        return self.base / "mnt"

    def start_mount(self) -> None:
        self.mount = spawn_mount(self.server, self.token, self.mnt, self.base / "cache", device="crash",
                                 timeout=MOUNT_TIMEOUT_S)

    def ask(self, command: str, timeout: float) -> dict:
        return control.request(self.mnt, {"command": command, "timeout": timeout}, timeout=timeout + 10)

    def sync(self, timeout: float = 60) -> bool:
        """`cloudfs sync`; deletes held by the mass-delete guard (a workload's cleanup,
        rm -r of a copied tree) are confirmed, as the user who meant them would: held,
        they would hold back every later change too."""
        self.syncs += 1
        with contextlib.suppress(OSError):
            for _ in range(3):
                reply = self.ask("sync", timeout)
                if not reply.get("held_deletes"):
                    return bool(reply.get("ok"))
                control.request(self.mnt, {"command": "deletes", "action": "confirm"}, timeout=30)
                self.confirmed_deletes += reply["held_deletes"]
        return False

    def round(self, round_no: int, workload: str) -> list[str]:
        """One kill: returns the problems found."""
        w = WORKLOADS[workload](self.mnt, self.base / "src", self.rnd, round_no)
        w.start()
        t0 = time.monotonic()
        deadline = t0 + self.rnd.uniform(*KILL_AFTER)
        moments = sorted(self.rnd.uniform(t0, deadline) for _ in range(self.rnd.choice([0, 1, 1, 2])))

        def promises() -> None:  # a sync may still run at the kill: it then promises nothing
            for moment in moments:
                time.sleep(max(0.0, moment - time.monotonic()))
                with contextlib.suppress(OSError):  # the kill came first
                    w.promise(self.sync)

        promiser = threading.Thread(target=promises, daemon=True)
        promiser.start()
        time.sleep(max(0.0, deadline - time.monotonic()))
        assert self.mount is not None
        self.mount.proc.send_signal(signal.SIGKILL)
        self.mount.proc.wait(10)
        self.kills += 1
        promiser.join(60)
        w.stop()
        self.start_mount()
        problems = []
        report = self.ask("fsck", 300)
        if not report.get("ok") or report.get("repaired") or report.get("problems"):
            problems.append(f"cloudfs fsck after the crash: repaired {report.get('repaired')}, "
                            f"problems {report.get('problems')}")
        verdict = w.verify()
        problems += verdict.problems
        self.promises += verdict.promises
        if not self.sync(SYNC_AFTER_S):
            problems.append(f"cloudfs sync did not finish within {SYNC_AFTER_S:.0f}s after the crash")
        log = self.mount.log_path.read_text(errors="replace") if self.mount else ""
        bad = [ln for ln in log[self.log_seen:].splitlines() if " ERROR " in ln or "Traceback" in ln]
        self.log_seen = len(log)
        if bad:
            problems.append("the mount logged errors: " + " | ".join(bad[:5]))
        self.by_workload[workload] = self.by_workload.get(workload, 0) + 1
        w.cleanup()
        # Sent now, not in the next round's kill window: the cleanup is a mass delete the
        # guard holds until confirmed, and a sync there would take two rounds.
        if not self.sync(SYNC_AFTER_S):
            problems.append(f"cloudfs sync after the cleanup did not finish within {SYNC_AFTER_S:.0f}s")
        return problems

    def run(self, kills: int, workloads: list[str], deadline: float) -> None:
        (self.base / "src").mkdir(parents=True, exist_ok=True)
        if not (self.base / "src" / "repo").exists():
            make_sources(self.base / "src", self.rnd)
        self.start_mount()
        try:
            for i in range(kills):
                if time.monotonic() >= deadline:
                    break
                workload = workloads[i % len(workloads)]
                t0 = time.monotonic()
                problems = self.round(i, workload)
                self.say(f"kill {i + 1} during {workload}: {'ok' if not problems else 'FAILED'} "
                         f"({time.monotonic() - t0:.1f} s)")
                for p in problems:
                    self.say(f"  {p}")
                self.failures += [f"kill {i + 1} ({workload}): {p}" for p in problems]
        finally:
            if self.mount is not None:
                unmount(self.mnt, self.mount.proc)
