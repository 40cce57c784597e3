#!/usr/bin/env python
"""How much an idle device writes into the server's access log (issue 14, must have 8).

A real `cloudfs server` runs with `--log-level debug`, so it logs every request: the
ones the default level (info) shows at INFO, the heartbeats and idle long-poll answers
it counts instead at DEBUG. `--devices` real mounts (default 3) of one account are left
idle for `--seconds` (default 120) after they come up; the script then counts the
access-log lines of that window by level. INFO is what `cloudfs server` prints by
default; INFO + DEBUG is what it printed before (one line per request). Lines per
device per minute, and what that makes for 1,000 devices, are printed.

    .venv/bin/python scripts/bench_idle_log.py [--devices 3] [--seconds 120]
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from scripts.bench_sync import code_state, loadavg, machine  # noqa: E402
from tests.harness import cloudfs_mount, cloudfs_server  # noqa: E402

LINE = re.compile(r"^\S+ \S+ cloudfs\.access (DEBUG|INFO) (.*)$")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=120.0)
    args = parser.parse_args()
    print(f"cloudfs idle access log; {machine()}; load {loadavg()}; code {code_state()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="cloudfs-bench-idle-") as tmp_name, \
            cloudfs_server(Path(tmp_name) / "server", extra_args=["--log-level", "debug"]) as srv:
        tmp = Path(tmp_name)
        token = srv.add_user(f"bench-{uuid.uuid4().hex[:8]}")
        with contextlib.ExitStack() as stack:
            for i in range(args.devices):
                stack.enter_context(cloudfs_mount(srv, token, tmp / f"m{i}", tmp / f"cache-{i}", device=f"dev-{i}"))
            time.sleep(5)  # the mounts' first requests (bootstrap) are not idle ones
            before = len(srv.log().splitlines())
            time.sleep(args.seconds)
            window = srv.log().splitlines()[before:]
    counts = {"INFO": 0, "DEBUG": 0}
    kinds: dict[str, int] = {}
    for line in window:
        match = LINE.match(line)
        if match:
            counts[match.group(1)] += 1
            request = re.search(r'"(\w+ \S+)"', match.group(2))
            if request:
                kinds[request.group(1)] = kinds.get(request.group(1), 0) + 1
    per_minute = 60 / args.seconds / args.devices
    print(f"{args.devices} idle devices, {args.seconds:.0f} s; load at the end {loadavg()}")
    print(f"requests: {', '.join(f'{k} x{n}' for k, n in sorted(kinds.items()))}")
    for name, n in (("one line per request (before)", counts["INFO"] + counts["DEBUG"]),
                    ("default now (--log-level info)", counts["INFO"])):
        print(f"{name}: {n} lines, {n * per_minute:.1f} per device per minute, "
              f"{n * per_minute * 1000 / 60:.1f} per second for 1,000 devices")
    return 0


if __name__ == "__main__":
    sys.exit(main())
