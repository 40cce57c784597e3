"""Running one soak program on a Cluster and judging it.

A fresh account and K fresh mounts per program, so a seed alone replays it. The start
is made on device a and settled (and checked, without faults); then one thread per
device and one for the chaos run their steps at once; then every fault is undone, and
the settle: `cloudfs sync` on every device, twice round (a, b, c, a, b, c). After it:

- every device shows the same tree, through the kernel's page cache and straight from
  the mount process;
- the books of tests/model.py hold (nothing lost, invented or resurrected; exact where
  only one device acted);
- no mount logged an ERROR (but a read that failed during an outage) or a traceback,
  and the server no traceback;
- with `fsck`, `cloudfs fsck` on device a finds nothing to repair.

Every wait is bounded: a step that does not return within STEP_BUDGET_S (a hung
operation on a mount) fails the program, and the mounts are killed so it returns.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tests.model import Ledger, base_path, diff, snapshot, view
from tests.model_ops import NAMES, OPERATIONS, Actor, Unexpected, now_stamp
from tests.soak.cluster import Cluster, Device, SyncFailed
from tests.soak.program import CHAOS, Program, Step

STEP_BUDGET_S = 240.0
READ_FAILED = re.compile(r" cloudfs\.fs ERROR read failed: ")
"""An EIO answered to a read of bytes not fetched yet while the server was away: what
the README promises, logged as an ERROR (the operation itself is judged by Actor)."""
SYNC_TIMEOUT_S = 90.0


@dataclass
class Outcome:
    program: Program
    problems: list[tuple[str, str]] = field(default_factory=list)
    story: str = ""
    ops: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    succeeded: Counter[str] = field(default_factory=Counter)
    """operation kind -> how many ended "ok" """
    kills: int = 0
    restarts: int = 0
    outages: int = 0
    conflicts: int = 0
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds spent mounting, settling the start, in the steps, settling the end..."""
    work: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def what(self) -> str:
        """The first problem's title: what a shrink must keep failing with."""
        return self.problems[0][0] if self.problems else ""


class _Run:
    def __init__(self, cluster: Cluster, program: Program, work: Path, *, fsck: bool) -> None:
        self.cluster = cluster
        self.with_fsck = fsck
        self.program = program
        self.work = work
        self.history: list[str] = []
        self.lock = threading.Lock()
        self.ledger = Ledger()
        self.devices: dict[str, Device] = {}
        self.actor: Actor | None = None
        self.out = Outcome(program, work=work)
        self.stop = threading.Event()
        self.current: dict[str, str] = {}
        self.turns: dict[str, threading.Lock] = {}
        """One per device: held while something runs on it (its thread, or the chaos
        thread acting on it), so a device's operations never overlap a kill of it."""

    def note(self, at: str, text: str) -> None:
        with self.lock:
            self.history.append(f"{now_stamp()} {at}: {text}")

    def problem(self, what: str, detail: str) -> None:
        with self.lock:
            self.out.problems.append((what, detail))
        self.stop.set()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.out.phases[name] = round(time.monotonic() - t0, 2)

    # --- the parts of a program ---

    def run(self) -> Outcome:
        t0 = time.monotonic()
        before = self.cluster.counts.__dict__.copy()
        server_log_at = len(self.cluster.server_log())
        try:
            with self.phase("mount"):
                self.devices = self.cluster.open_account(self.program.devices, self.work)
            self.turns = {n: threading.Lock() for n in self.devices}
            self.actor = Actor(self.ledger, {n: d.path for n, d in self.devices.items()}, self.note,
                               excused=self.cluster.excused)
            with self.phase("start"):
                self.start()
                started = self.settle("start")
            if started:
                with self.phase("steps"):
                    self.steps()
                with self.phase("settle"):
                    settled = not self.out.problems and self.settle("end")
                if settled and self.with_fsck:
                    with self.phase("fsck"):
                        self.fsck()
            self.check_logs(server_log_at)
        except Exception:  # noqa: BLE001 - the harness itself broke: a failed program, with its traceback
            self.problem("the soak harness broke", traceback.format_exc())
        finally:
            self.out.story = self.story()
            try:
                with self.phase("unmount"):
                    self.cluster.close_account()
            except Exception as exc:  # noqa: BLE001
                self.out.problems.append(("devices did not unmount", repr(exc)))
        counts = self.cluster.counts.__dict__
        self.out.kills, self.out.restarts, self.out.outages = (counts[k] - before[k] for k in ("kills", "restarts", "outages"))
        self.out.outcomes = self.actor.outcomes if self.actor else Counter()
        self.out.succeeded = self.actor.succeeded if self.actor else Counter()
        self.out.seconds = time.monotonic() - t0
        return self.out

    def start(self) -> None:
        root = self.devices["a"].path
        for d in self.program.start_dirs:
            os.makedirs(root / d, exist_ok=True)
            self.ledger.touched("a", d)
        for i, (path, size) in enumerate(self.program.start_files):
            data = self.ledger.new_content("a", size, self.program.seed + i)
            os.makedirs((root / path).parent, exist_ok=True)
            (root / path).write_bytes(data)
            self.ledger.produce("a", b"", data, path)
            self.ledger.touched("a", path)
        self.note("a", f"start: directories {self.program.start_dirs}, files {self.program.start_files}")

    def steps(self) -> None:
        by_thread: dict[str, list[tuple[int, Step]]] = {}
        for i, step in enumerate(self.program.steps):
            by_thread.setdefault(step.at, []).append((i, step))
        threads = [threading.Thread(target=self.thread, args=(at, steps), daemon=True, name=f"soak-{at}")
                   for at, steps in by_thread.items()]
        for t in threads:
            t.start()
        deadline = time.monotonic() + STEP_BUDGET_S
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        stuck = {t.name: self.current.get(t.name[5:], "?") for t in threads if t.is_alive()}
        if stuck:
            self.problem("a step did not return", f"  still running after {STEP_BUDGET_S:.0f}s: {stuck}")
            self.cluster.kill_all_mounts()  # what is stuck on a mount point returns (ENOTCONN)
            for t in threads:
                t.join(30)
        self.note("--", "steps done; undoing faults")
        self.cluster.heal()

    def thread(self, at: str, steps: list[tuple[int, Step]]) -> None:
        for i, step in steps:
            if self.stop.wait(step.delay):
                return
            self.current[at] = f"step {i}: {step.describe()}"
            try:
                self.step(step)
            except Unexpected as exc:
                self.problem("an operation failed in a way live sync does not explain", f"  {exc}")
                return
            except Exception:  # noqa: BLE001
                self.problem(f"step {i} ({step.describe()}) broke", traceback.format_exc())
                return
            self.current.pop(at, None)

    def step(self, step: Step) -> None:
        a = step.args
        if step.kind in OPERATIONS:
            self.operation(step.at, step.kind, a)
        elif step.kind == "kill":
            self.kill(step.at, a[0])
        elif step.at != CHAOS:
            raise ValueError(f"unknown step kind {step.kind!r} for a device")
        elif step.kind == "restart":
            self.note(CHAOS, f"server {'kill -9' if a[1] else 'stop'}, down {a[0]:.1f}s")
            self.cluster.restart_server(a[0], hard=bool(a[1]))
            self.note(CHAOS, "server up again")
        elif step.kind == "hang":
            self.note(CHAOS, f"server hangs for {a[0]:.1f}s")
            self.cluster.hang(a[0])
            self.note(CHAOS, "server answers again")
        elif step.kind == "errors":
            self.note(CHAOS, f"server answers 503 / resets {a[1]:.0%} for {a[0]:.1f}s")
            self.cluster.errors(a[0], a[1], a[2])
            self.note(CHAOS, "server healthy again")
        elif step.kind == "kill-apply":
            victim, maker, where, n, seed, wait, pause = a
            self.operation(maker, "burst", [where, n, seed])
            time.sleep(wait)
            self.kill(victim, pause)
        elif step.kind == "lose":
            self.note(CHAOS, f"the answers to dev-{a[0]}'s next {a[1]} changes will be lost")
            self.cluster.lose_answers(a[0], a[1])
        elif step.kind == "offline":
            self.note(CHAOS, f"dev-{a[0]} offline for {a[1]:.1f}s")
            self.cluster.hang(a[1], device=a[0])
            self.note(CHAOS, f"dev-{a[0]} online again")
        else:
            raise ValueError(f"unknown chaos step {step.kind!r}")

    def operation(self, dev: str, kind: str, args: list) -> None:
        assert self.actor is not None
        with self.turns[dev]:
            self.out.ops += 1
            self.actor.run(kind, dev, *args)

    def kill(self, dev: str, pause: float) -> None:
        with self.turns[dev]:
            self.note(dev, "kill -9 of the mount")
            self.cluster.kill_device(dev, pause)
            self.note(dev, "mounted again on its cache")

    # --- the settle and the checks ---

    def sync_all(self, rounds: int) -> bool:
        for _ in range(rounds):
            for name, d in self.devices.items():
                confirmed = d.confirmed_deletes
                try:
                    d.sync(timeout=SYNC_TIMEOUT_S)
                    if d.confirmed_deletes > confirmed:
                        self.note(name, f"{d.confirmed_deletes - confirmed} deletes held by the mass-delete guard: "
                                        f"confirmed")
                except SyncFailed as exc:
                    why, _, log_tail = str(exc).partition("\n")  # the reply first, then the log's tail
                    self.problem(f"cloudfs sync on dev-{name} failed", f"{why[:1000]}\n{log_tail[-3000:]}")
                    return False
        return True

    def settle(self, when: str) -> bool:
        self.note("--", f"settle ({when})")
        before = {n: view(d.path) for n, d in self.devices.items()}
        if not self.sync_all(2):
            return False
        finals = {n: view(d.path) for n, d in self.devices.items()}
        for n, d in self.devices.items():
            served = snapshot(d.path, uncached=True)
            if served != finals[n].tree:
                self.problem(f"dev-{n}: the kernel's page cache and the mount process disagree",
                             diff(finals[n].tree, served, "page cache", "mount process"))
        final = finals["a"]
        differ = {n: final.differences(f, "a", n) for n, f in finals.items()}
        differ = {n: lines for n, lines in differ.items() if lines}
        if differ:
            later = "never"
            for attempt in range(3):
                self.sync_all(1)
                views = [view(d.path) for d in self.devices.values()]
                if not any(views[0].differences(v, "", "") for v in views[1:]):
                    later = f"after {attempt + 1} more rounds of syncs"
                    break
            self.problem(f"the devices differ after two rounds of syncs (converged: {later})",
                         "\n".join(line for lines in differ.values() for line in lines))
            return False
        for what, detail in self.ledger.problems(final, before, NAMES):
            self.problem(what, detail)
        self.out.conflicts += sum(1 for p in final.tree if base_path(p) != p and p not in self.ledger.settled)
        if self.out.problems:
            return False
        self.ledger.roll(final)
        return True

    def check_logs(self, server_log_at: int) -> None:
        outages = any(s.at == CHAOS and s.kind != "lose" for s in self.program.steps)
        for n, d in self.devices.items():
            bad = [ln for ln in d.log().splitlines() if (" ERROR " in ln or "Traceback" in ln)
                   and not (outages and READ_FAILED.search(ln))]
            if bad:
                self.problem(f"dev-{n} logged errors", "\n".join(bad[:20]))
        server = self.cluster.server_log()[server_log_at:]
        if "Traceback" in server:
            at = server.index("Traceback")
            self.problem("the server logged a traceback", server[max(0, at - 500):at + 3000])

    def fsck(self) -> None:
        try:
            report = self.devices["a"].ask("fsck", 300)
        except OSError as exc:
            self.problem("cloudfs fsck failed", repr(exc))
            return
        if not report.get("ok") or report.get("problems") or report.get("repaired"):
            self.problem("cloudfs fsck found something to repair", json.dumps(report, indent=1)[:3000])

    def story(self) -> str:
        parts = [f"program {self.program.seed}: {len(self.program.steps)} steps",
                 "history:\n  " + "\n  ".join(self.history)]
        for n, d in self.devices.items():
            lines = [ln for ln in d.log().splitlines() if " WARNING " in ln or " ERROR " in ln]
            parts.append(f"dev-{n} log ({d.log_path}), warnings and errors:\n  " + "\n  ".join(lines[-40:]))
        return "\n".join(parts)


def run_program(cluster: Cluster, program: Program, work: Path, *, fsck: bool = False) -> Outcome:
    """Run `program` on a fresh account of `cluster`, in `work`; judge it."""
    return _Run(cluster, program, work, fsck=fsck).run()
