#!/usr/bin/env python
"""Soak: random programs on K devices at once, with crashes and outages, until a count
or a time is reached; after each, every device must show the same tree and no written
byte may be lost (tests/soak, tests/model.py).

    scripts/soak.py [--programs N] [--minutes M] [--seed S] [--devices K]
                    [--program FILE] [--shrink-minutes X] [--tries T] [--out DIR]

One `cloudfs server` (SQLite, local store; a fresh one every --per-server programs, so
the disk does not fill), and per program a fresh account with K mounts, each behind its
own fault proxy. Program i has seed S+i: `--seed S+i --programs 1` replays it. Faults:
kill -9 of a mount mid-upload and at random moments (mounted again on its cache),
server kill -9 / stop and start, the server hanging or answering 503 for a while, one
device offline for a stretch. A failure prints its seed and problem, keeps its logs and
caches under --out, and is shrunk by replay (`--shrink-minutes`, 0 for none) to the
shortest program that still fails, written as JSON and replayable with `--program FILE`.

Every step is bounded in time; mounts, proxies and the server are stopped on failure,
Ctrl-C and SIGTERM. Exit 0 only when every program passed; the last line is exactly
`soak: N programs, F failures`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.soak.cluster import Cluster  # noqa: E402
from tests.soak.program import Program, generate  # noqa: E402
from tests.soak.run import Outcome, run_program  # noqa: E402
from tests.soak.shrink import shrink  # noqa: E402


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/soak.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--programs", type=int, help="stop after N programs (default 10 without --minutes)")
    p.add_argument("--minutes", type=float, help="start no program after M minutes")
    p.add_argument("--seed", type=int, help="program i has seed S+i (default: from the clock)")
    p.add_argument("--devices", type=int, default=3, help="mounts per program (default 3)")
    p.add_argument("--program", type=Path, help="run this program (JSON, as a failure writes it) and stop")
    p.add_argument("--max-ops", type=int, default=24, help="operations per program, at most")
    p.add_argument("--max-faults", type=int, default=3, help="faults per program, at most")
    p.add_argument("--shrink-minutes", type=float, default=5.0, help="time to shrink each failure (0: none)")
    p.add_argument("--tries", type=int, default=2, help="replays of a shrink candidate before it counts as passing")
    p.add_argument("--fsck-every", type=int, default=10, help="cloudfs fsck after every Nth program (0: never)")
    p.add_argument("--per-server", type=int, default=100, help="programs per server before a fresh one")
    p.add_argument("--out", type=Path, help="logs and failures (default: a new dir under /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the work dirs of programs that passed")
    args = p.parse_args(argv)
    if args.programs is None and args.minutes is None and args.program is None:
        args.programs = 10
    if not 1 <= args.devices <= 26:
        p.error("--devices must be 1..26")
    if args.seed is None:
        args.seed = int(time.time()) % 1_000_000 * 1000
    return args


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out: Path = args.out or Path(tempfile.mkdtemp(prefix="cloudfs-soak-"))
        self.out.mkdir(parents=True, exist_ok=True)
        self.results = open(self.out / "results.jsonl", "a")
        self.cluster: Cluster | None = None
        self.served = 0
        self.programs = 0
        self.failures: list[Outcome] = []
        self.totals: Counter[str] = Counter()
        self.succeeded: Counter[str] = Counter()

    def say(self, line: str) -> None:
        print(line, flush=True)

    def fresh_cluster(self) -> Cluster:
        if self.cluster is not None and self.served < self.args.per_server:
            return self.cluster
        self.close_cluster()
        self.cluster = Cluster(self.out / f"cluster-{self.programs}")
        self.served = 0
        return self.cluster

    def close_cluster(self) -> None:
        if self.cluster is not None:
            cluster, self.cluster = self.cluster, None
            cluster.close()
            cluster.remove()

    def run(self, program: Program) -> Outcome:
        cluster = self.fresh_cluster()
        self.served += 1
        work = self.out / "programs" / f"{program.seed}-{self.served}"
        fsck = bool(self.args.fsck_every) and (self.programs + 1) % self.args.fsck_every == 0
        outcome = run_program(cluster, program, work, fsck=fsck)
        if outcome.ok and not self.args.keep:
            shutil.rmtree(work, ignore_errors=True)
        return outcome

    def record(self, outcome: Outcome, *, shrinking: bool = False) -> None:
        errno_outcomes = sum(n for k, n in outcome.outcomes.items() if k != "ok")
        self.results.write(json.dumps({
            "seed": outcome.program.seed, "ok": outcome.ok, "what": outcome.what, "shrinking": shrinking,
            "steps": len(outcome.program.steps), "ops": outcome.ops, "errno": errno_outcomes,
            "kills": outcome.kills, "restarts": outcome.restarts, "outages": outcome.outages,
            "conflicts": outcome.conflicts, "seconds": round(outcome.seconds, 2), "phases": outcome.phases,
            "succeeded": dict(outcome.succeeded),
            "at": datetime.datetime.now().isoformat(timespec="seconds")}) + "\n")
        self.results.flush()
        if shrinking:
            return
        self.programs += 1
        for key in ("ops", "kills", "restarts", "outages", "conflicts"):
            self.totals[key] += getattr(outcome, key)
        self.totals["errno outcomes"] += errno_outcomes
        self.succeeded.update(outcome.succeeded)
        self.say(f"program {outcome.program.seed}: {'ok' if outcome.ok else 'FAILED: ' + outcome.what}, "
                 f"{outcome.ops} ops ({errno_outcomes} errno), {outcome.kills} kills, {outcome.restarts} restarts, "
                 f"{outcome.outages} outages, {outcome.conflicts} conflicted copies, {outcome.seconds:.1f} s")

    def report_failure(self, outcome: Outcome) -> None:
        self.failures.append(outcome)
        seed = outcome.program.seed
        story = self.out / f"failure-{seed}.txt"
        story.write_text("\n\n".join(f"{what}\n{detail}" for what, detail in outcome.problems) + "\n\n" + outcome.story)
        self.say(f"  replay: scripts/soak.py --seed {seed} --programs 1 --devices {outcome.program.devices}")
        for what, detail in outcome.problems[:3]:
            self.say(f"  {what}\n" + "\n".join("    " + ln for ln in detail.splitlines()[:15]))
        self.say(f"  story, logs and caches: {story}, {outcome.work}")
        if self.args.shrink_minutes <= 0 or not outcome.program.steps:
            return
        deadline = time.monotonic() + self.args.shrink_minutes * 60

        def fails(candidate: Program) -> bool:
            for _ in range(self.args.tries):
                again = self.run(candidate)
                self.record(again, shrinking=True)
                if again.what == outcome.what:
                    return True
                if not again.ok:  # another bug: say so, keep its logs
                    self.say(f"  shrink: a replay failed otherwise: {again.what} (logs in {again.work})")
            return False

        shortest = shrink(outcome.program, fails, deadline=deadline, say=self.say)
        path = self.out / f"shortest-{seed}.json"
        path.write_text(shortest.to_json() + "\n")
        self.say(f"  shortest program found ({len(shortest.steps)} of {len(outcome.program.steps)} steps), "
                 f"replay: scripts/soak.py --program {path}")
        for step in shortest.steps:
            self.say(f"    {step.describe()}")

    def main(self) -> int:
        a = self.args
        what = f"program {a.program}" if a.program else f"{a.programs or 'unlimited'} programs"
        limit = f", {a.minutes} minutes" if a.minutes else ""
        self.say(f"soak: seed {a.seed}, {a.devices} devices, {what}{limit}; logs in {self.out}")
        t0 = time.monotonic()
        try:
            if a.program:
                programs = [Program.from_json(a.program.read_text())]
            else:
                programs = (generate(a.seed + i, a.devices, max_ops=a.max_ops, max_faults=a.max_faults)
                            for i in range(a.programs if a.programs is not None else 10**9))
            for program in programs:
                if a.minutes is not None and time.monotonic() - t0 >= a.minutes * 60:
                    break
                outcome = self.run(program)
                self.record(outcome)
                if not outcome.ok:
                    self.report_failure(outcome)
        except KeyboardInterrupt:
            self.say("soak: interrupted")
            self.totals["interrupted"] = 1
        finally:
            try:
                self.close_cluster()
            finally:
                self.results.close()
        minutes = (time.monotonic() - t0) / 60
        self.say(f"soak: {self.totals['ops']} operations ({self.totals['errno outcomes']} with an errno), "
                 f"{self.totals['kills']} mount kills, {self.totals['restarts']} server restarts, "
                 f"{self.totals['outages']} outages, {self.totals['conflicts']} conflicted copies, {minutes:.1f} min")
        self.say("soak: operations that succeeded, by kind: "
                 + ", ".join(f"{kind} {n}" for kind, n in self.succeeded.most_common()))
        for outcome in self.failures:
            self.say(f"soak: failed: seed {outcome.program.seed}: {outcome.what}")
        self.say(f"soak: {self.programs} programs, {len(self.failures)} failures")
        return 0 if not self.failures and not self.totals["interrupted"] and self.programs else 1


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(Soak(parse(sys.argv[1:])).main())
