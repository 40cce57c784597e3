#!/usr/bin/env python3
"""The clean chunk cache by itself: what a mount's start pays to learn what is cached, and
what a small read of a cached chunk costs, without FUSE, the server or the store.

    .venv/bin/python scripts/bench_chunk_cache.py [--gib 2] [--reads 20000] [--dir DIR]

Fills a fresh cache with --gib of 4 MiB chunks through `ChunkCache.put`, then, with the
page cache dropped (root), times opening it again (`ChunkCache(...)`: what a mount does
at start) and random 4 KiB `read_range`s across every chunk, after one read of each (the
first read of a chunk in a process checks its sums). It uses only the public API, so the
same script measures an older checkout (run it from there) against this one.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cloudfs.backend.local.cache import Cache  # noqa: E402
from cloudfs.backend.local.chunkcache import ChunkCache  # noqa: E402

CHUNK = 4 << 20


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=2.0, help="bytes of chunks to cache, in GiB")
    parser.add_argument("--reads", type=int, default=20000, help="random 4 KiB reads to time")
    parser.add_argument("--dir", type=Path, default=None, help="where the cache goes (default: a temp dir)")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-chunks-", dir=args.dir))
    try:
        count = max(1, int(args.gib * (1 << 30)) // CHUNK)
        cache = Cache(root / "cache")
        chunks = ChunkCache(cache, limit_bytes=count * CHUNK * 2)
        fingerprints = []
        block = os.urandom(CHUNK)
        started = time.perf_counter()
        for n in range(count):
            data = n.to_bytes(8, "big") + block[8:]
            fingerprints.append(hashlib.sha256(data).hexdigest())
            chunks.put(fingerprints[-1], data)
        filled = time.perf_counter() - started
        cache.close()
        dropped = drop_caches()

        started, before = time.perf_counter(), cpu()
        cache = Cache(root / "cache")
        chunks = ChunkCache(cache, limit_bytes=count * CHUNK * 2)
        opened, opened_cpu = time.perf_counter() - started, cpu() - before
        assert len(chunks.keys()) == count, "not every chunk found again"

        for fp in fingerprints:  # the first read of each chunk checks it: not what is timed
            chunks.read_range(fp, 0, 4096)
        rng = random.Random(1)
        plan = [(rng.choice(fingerprints), rng.randrange(CHUNK // 4096) * 4096) for _ in range(args.reads)]
        started = time.perf_counter()
        for fp, off in plan:
            if chunks.read_range(fp, off, off + 4096) is None:
                raise SystemExit(f"chunk {fp} missing")
        per_read = (time.perf_counter() - started) / len(plan)
        cache.close()
        print(f"{count} chunks of 4 MiB ({count * CHUNK / (1 << 30):.2f} GiB) put in {filled:.1f} s")
        print(f"open with the page cache {'dropped' if dropped else 'WARM (not root)'}: "
              f"{opened:.3f} s, {opened_cpu:.3f} s CPU")
        print(f"random 4 KiB read_range: {per_read * 1e6:.1f} us each ({len(plan)} reads)")
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
