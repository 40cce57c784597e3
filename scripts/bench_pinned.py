#!/usr/bin/env python
"""Files kept offline: how fast `cloudfs pin` brings a tree to a device, and whether a
pinned file then reads at local speed with the server stopped (issue 14, must have 1).

The tree: `--big` files of `--big-mib` MiB (default 4 x 64 MiB) and `--small` files of
4 KiB (default 1,000) in 10 directories, unique bytes (nothing dedups or compresses).
On a fresh embedded server (tests.harness: SQLite, local chunk store, loopback HTTP):

  1. device A writes the tree and syncs it;
  2. device B, with an empty cache, runs `cloudfs pin --wait TREE`: "pin" (time, MB/s);
  3. device C, with an empty cache and nothing pinned, reads every file once, each
     chunk fetched as it is read: "first read, not pinned" (what pinning saves);
  4. B is unmounted and mounted again (a cold kernel page cache) and reads every file:
     "pinned, server up";
  5. the server is stopped, B unmounted and mounted again (it comes up offline) and
     reads every file, every byte compared: "pinned, server stopped";
  6. the same tree in a directory of the temp dir's own filesystem (ext4 here), each
     file fsynced and its pages dropped (posix_fadvise DONTNEED) before it is read:
     "local directory, cold".

Steps 3 to 6 run `--rounds` times, one after the other in each round (default 3; a fresh
cache for C and a new mount of B each time, the server started again), and the table
gives the median and the range, since other processes share the machine. Reads are 1 MiB read() calls in one thread; the big files give MB/s (10^6 bytes/s), the
small ones files/s (open, read, close). Every mount is unmounted and the server stopped
at the end, also on failure or Ctrl-C.

    .venv/bin/python scripts/bench_pinned.py [--big 4] [--big-mib 64] [--small 1000] [--rounds 3] [--tmp DIR]

Exit status 0 when every read of step 5 returned the right bytes, 1 otherwise, 2 when
the run broke.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from scripts.bench_sync import code_state, loadavg, machine  # noqa: E402
from tests.harness import CLOUDFS, RestartableServer, cloudfs_mount  # noqa: E402

SMALL = 4096
READ = 1 << 20


def tree(args: argparse.Namespace) -> dict[str, int]:
    """Relative path -> size."""
    out = {f"big/{i}.bin": args.big_mib << 20 for i in range(args.big)}
    out.update({f"small/{i % 10}/{i}.txt": SMALL for i in range(args.small)})
    return out


def content(rel: str, size: int) -> bytes:
    return random.Random(rel).randbytes(size)


def write_tree(root: Path, files: dict[str, int], *, cold: bool = False) -> None:
    for rel, size in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.write(content(rel, size))
            if cold:
                f.flush()
                os.fsync(f.fileno())
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def read_tree(root: Path, files: dict[str, int], digests: dict[str, str]) -> dict[str, float]:
    """Read every file once; the big ones' MB/s, the small ones' files/s, and how many
    came back wrong (or failed)."""
    wrong = 0
    timings = {"big": 0.0, "small": 0.0}
    for rel in files:
        started = time.perf_counter()
        digest = hashlib.sha256()
        try:
            with open(root / rel, "rb", buffering=0) as f:
                while block := f.read(READ):
                    digest.update(block)
        except OSError:
            wrong += 1
            continue
        timings[rel.split("/")[0]] += time.perf_counter() - started
        wrong += digest.hexdigest() != digests[rel]
    big_bytes = sum(size for rel, size in files.items() if rel.startswith("big/"))
    small = sum(1 for rel in files if rel.startswith("small/"))
    return {"big_mbs": big_bytes / 1e6 / timings["big"] if timings["big"] else 0.0,
            "small_fps": small / timings["small"] if timings["small"] else 0.0,
            "seconds": timings["big"] + timings["small"], "wrong": wrong}


def cli(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    done = subprocess.run([*CLOUDFS, *args], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"cloudfs {' '.join(args)}: {done.stderr.strip()}")
    return done


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through every finally: mounts come down


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", type=int, default=4)
    parser.add_argument("--big-mib", type=int, default=64)
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="reads of the whole tree per case (median shown)")
    parser.add_argument("--tmp", type=Path, default=None)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _sigterm)
    files = tree(args)
    digests = {rel: hashlib.sha256(content(rel, size)).hexdigest() for rel, size in files.items()}
    total = sum(files.values())
    print(f"cloudfs pinned-files benchmark; {machine()}; load {loadavg()}; code {code_state()}", flush=True)
    print(f"tree: {args.big} x {args.big_mib} MiB + {args.small} x 4 KiB = {total / 2**20:.0f} MiB", flush=True)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in (
        "first read, not pinned (fetched over loopback)", "pinned, server up", "pinned, server stopped",
        "local directory, cold (ext4)")}
    with tempfile.TemporaryDirectory(prefix="cloudfs-bench-pinned-", dir=args.tmp) as tmp_name:
        tmp = Path(tmp_name)
        server = RestartableServer(tmp / "server")
        try:
            token = server.server.add_user(f"bench-{uuid.uuid4().hex[:8]}")
            cache_size = ["--cache-size", f"{2 * total // 2**20 + 256}M"]
            with cloudfs_mount(server.server, token, tmp / "a", tmp / "cache-a", device="dev-a") as a:
                write_tree(a.path / "tree", files)
                a.sync(timeout=1800)
            print("written and synced by A", flush=True)
            with cloudfs_mount(server.server, token, tmp / "b", tmp / "cache-b", device="dev-b",
                               extra_args=cache_size) as b:
                started = time.perf_counter()
                cli("pin", str(b.path / "tree"), "--wait")
                pin_s = time.perf_counter() - started
            print(f"pin: {pin_s:.1f} s, {total / 1e6 / pin_s:.0f} MB/s", flush=True)
            for i in range(args.rounds):  # interleaved, so a change in the machine's load hits every case
                if i:
                    server.start()
                with cloudfs_mount(server.server, token, tmp / "c", tmp / f"cache-c{i}", device="dev-c",
                                   extra_args=cache_size) as c:
                    runs["first read, not pinned (fetched over loopback)"].append(
                        read_tree(c.path / "tree", files, digests))
                with cloudfs_mount(server.server, token, tmp / "b", tmp / "cache-b", device="dev-b",
                                   extra_args=cache_size) as b:
                    runs["pinned, server up"].append(read_tree(b.path / "tree", files, digests))
                server.stop()
                with cloudfs_mount(server.server, token, tmp / "b", tmp / "cache-b", device="dev-b",
                                   extra_args=cache_size) as b:
                    offline = cli("status", str(b.path), "--json").stdout
                    runs["pinned, server stopped"].append(read_tree(b.path / "tree", files, digests))
                    assert '"online": false' in offline, offline
                write_tree(tmp / "local", files, cold=True)
                runs["local directory, cold (ext4)"].append(read_tree(tmp / "local", files, digests))
                shutil.rmtree(tmp / f"cache-c{i}")
        except (RuntimeError, AssertionError, OSError) as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 2
        finally:
            server.close()
    print(f"\nload at the end {loadavg()}\n")
    print(f"| read of every file once (median of {args.rounds}, range) | big files MB/s | small files/s | wrong |")
    print("|---|---|---|---|")
    for name, rounds in runs.items():
        big, small = sorted(r["big_mbs"] for r in rounds), sorted(r["small_fps"] for r in rounds)
        print(f"| {name} | {statistics.median(big):.0f} ({big[0]:.0f}-{big[-1]:.0f}) | "
              f"{statistics.median(small):.0f} ({small[0]:.0f}-{small[-1]:.0f}) | {sum(r['wrong'] for r in rounds):.0f} |")
    return 0 if sum(r["wrong"] for r in runs["pinned, server stopped"]) == 0 else 1

if __name__ == "__main__":
    sys.exit(main())
