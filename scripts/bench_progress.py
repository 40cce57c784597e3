#!/usr/bin/env python
"""How `cloudfs status` follows a large upload: write one file (1 GiB by default) on a
real mount, then ask the mount's control socket for `progress` every `--interval`
seconds until nothing is pending, and print the trajectory of pending bytes and of the
transfer's reported speed and time left.

What the issue asks (14, must have 3): pending bytes fall chunk by chunk as the upload
proceeds, not all at once at the commit. The figures: how many distinct values the
pending bytes took, the largest single drop (a chunk, or a batch of chunks finishing
together), how far off the first time-left estimate was, and the upload's throughput.

One run starts a real `cloudfs server` (SQLite, local chunk store) and one real mount
(tests.harness), all in a temp dir, optionally behind a paced proxy (`--rate MB/s`).

    .venv/bin/python scripts/bench_progress.py [--size-mib 1024] [--rate 0] [--interval 0.25]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cloudfs.backend.daily import control  # noqa: E402
from tests.harness import cloudfs_mount, cloudfs_server  # noqa: E402
from tests.proxy import Faults, Proxy  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rate", type=float, default=0.0, help="MB/s through a pacing proxy (0: no proxy)")
    parser.add_argument("--interval", type=float, default=0.25)
    args = parser.parse_args()
    size = args.size_mib << 20
    with tempfile.TemporaryDirectory(prefix="bench-progress-") as tmp, cloudfs_server(Path(tmp) / "server") as srv:
        token = srv.add_user(f"bench-{uuid.uuid4().hex[:8]}")
        proxy = Proxy(int(srv.url.rsplit(":", 1)[1]), Faults(rate=args.rate * 1e6)) if args.rate else None
        target = type(srv)(**{**srv.__dict__, "url": proxy.url}) if proxy else srv
        try:
            with cloudfs_mount(target, token, Path(tmp) / "mnt", Path(tmp) / "cache", device="bench",
                               extra_args=["--cache-size", f"{2 * args.size_mib + 256}M"]) as m:
                block = os.urandom(1 << 20)
                started = time.monotonic()
                with open(m.path / "big.bin", "wb") as f:
                    for i in range(args.size_mib):
                        f.write(block[:-8] + i.to_bytes(8, "big"))
                written = time.monotonic()
                samples = []
                for _ in range(1_000_000):
                    reply = control.request(m.path, {"command": "progress"}, timeout=30)
                    up = [t for t in reply["transfers"] if t["direction"] == "up"]
                    samples.append((time.monotonic() - written, reply["pending_bytes"],
                                    up[0]["speed_bps"] if up else 0, up[0]["eta_s"] if up else None))
                    if reply["pending_bytes"] == 0 and not up:
                        break
                    time.sleep(args.interval)
                done = time.monotonic()
        finally:
            if proxy:
                proxy.close()
    values = [p for _, p, _, _ in samples]
    drops = [a - b for a, b in zip(values, values[1:]) if a > b]
    first_eta = next(((t, eta) for t, _, _, eta in samples if eta), None)
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cpus; {time.strftime('%Y-%m-%d')}")
    print(f"{args.size_mib} MiB written in {written - started:.1f}s; uploaded {done - written:.1f}s after the close "
          f"({size / (done - written) / 1e6:.0f} MB/s){f', proxy {args.rate} MB/s' if args.rate else ''}")
    print(f"pending bytes took {len(set(values))} distinct values in {len(values)} samples; largest drop "
          f"{max(drops or [0]) / 2**20:.1f} MiB; only falling: {values == sorted(values, reverse=True)}")
    if first_eta:
        print(f"first time-left estimate at {first_eta[0]:.1f}s: {first_eta[1]:.1f}s "
              f"(it took {done - written - first_eta[0]:.1f}s more)")
    for t, pending, speed, eta in samples[:: max(1, len(samples) // 12)]:
        print(f"  t={t:6.1f}s pending={pending / 2**20:8.1f} MiB speed={speed / 1e6:6.1f} MB/s "
              f"eta={'-' if eta is None else f'{eta:.0f}s'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
