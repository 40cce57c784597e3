#!/usr/bin/env python
"""Crash consistency runs: kill -9 at random moments, then check what was promised.

    scripts/crash.py device [--kills N] [--minutes M] [--seed S] [--workloads cp,git-clone,...]
    scripts/crash.py server [--kills N] [--minutes M] [--seed S] [--db URL]

`device` (tests/crash/device.py): one mount whose cache lives through every kill; kills
it during `cp -a` of a source tree, `git clone`, a `git commit` loop and a
write-fsync-rename loop, mounts it again, and checks that every file fsynced, or closed
before a `cloudfs sync` that returned, is intact, and that `cloudfs fsck` finds nothing
to repair. `server` (tests/crash/server.py): kills the server during a commit burst from
two devices (and two mounts writing), then checks that every acknowledged commit is
there exactly once, nothing half-written is visible and the journal has no gap a cursor
could skip.

Everything started is stopped at the end, on failure, Ctrl-C and SIGTERM. Exit 0 only
when nothing failed; the last line is `crash: MODE: N kills, F failures`.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.crash.device import DeviceCrash  # noqa: E402
from tests.crash.workloads import WORKLOADS  # noqa: E402
from tests.crash.server import ServerCrash  # noqa: E402
from tests.harness import cloudfs_server  # noqa: E402


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/crash.py", description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["device", "server"])
    p.add_argument("--kills", type=int, help="kills to make (default: 100 device, 50 server)")
    p.add_argument("--minutes", type=float, default=120.0, help="stop after M minutes at most")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="device mode: which, in turn")
    p.add_argument("--db", help="server mode: PostgreSQL (an admin URL; a fresh database is made on it) "
                                "instead of SQLite")
    p.add_argument("--out", type=Path, help="logs (default: a new dir under /tmp, removed when all passed)")
    args = p.parse_args(argv)
    args.kills = args.kills or (100 if args.mode == "device" else 50)
    args.seed = args.seed if args.seed is not None else int(time.time()) % 1_000_000
    unknown = set(args.workloads.split(",")) - set(WORKLOADS)
    if unknown:
        p.error(f"unknown workloads {sorted(unknown)}; known: {sorted(WORKLOADS)}")
    return args


def main(args: argparse.Namespace) -> int:
    out = args.out or Path(tempfile.mkdtemp(prefix=f"cloudfs-crash-{args.mode}-"))
    out.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(args.seed)
    deadline = time.monotonic() + args.minutes * 60
    print(f"crash: {args.mode}, seed {args.seed}, {args.kills} kills; logs in {out}", flush=True)

    def say(line: str) -> None:
        print(line, flush=True)

    t0 = time.monotonic()
    kills, failures, interrupted = 0, [], False
    try:
        if args.mode == "device":
            with cloudfs_server(out / "server") as srv:
                run = DeviceCrash(srv, srv.add_user("crash"), out, rnd, say)
                try:
                    run.run(args.kills, args.workloads.split(","), deadline)
                finally:
                    kills, failures = run.kills, run.failures
                    say(f"crash: device: {run.promises} promises checked, {run.syncs} syncs, "
                        f"{run.confirmed_deletes} held deletes confirmed, kills by workload {run.by_workload}")
        else:
            run = ServerCrash(out, rnd, say, db_url=args.db)
            try:
                run.run(args.kills, deadline)
            finally:
                kills, failures = run.kills, run.failures
                say(f"crash: server: {run.figures}")
    except KeyboardInterrupt:
        interrupted = True
        say("crash: interrupted")
    except Exception as exc:  # noqa: BLE001 - the run broke: a failure
        failures = [*failures, f"the run broke: {exc!r}"]
        import traceback
        traceback.print_exc()
    for f in failures:
        say(f"crash: failed: {f}")
    say(f"crash: {(time.monotonic() - t0) / 60:.1f} min")
    say(f"crash: {args.mode}: {kills} kills, {len(failures)} failures")
    if not failures and not interrupted and not args.out:
        shutil.rmtree(out, ignore_errors=True)
    return 0 if not failures and not interrupted and kills >= args.kills else 1


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(main(parse(sys.argv[1:])))
