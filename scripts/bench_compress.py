#!/usr/bin/env python
"""What the device's compression decision costs and saves, per kind of data.

For each kind, the data is cut by the real chunker (1 MiB average, as for any file up
to 4 GiB) and put through exactly what the uploader does: `skip_reason(name, first
bytes)` once per file, then `compress(chunk)` (probe at level 1, zstd level 3, keep only
if it saves >= 10%) for every chunk when the file is not skipped. Reported per kind:

  - decision: skipped (and why), or how many chunks were compressed;
  - stored / plain: bytes that go to the store over plain bytes;
  - MB/s of the decision + compression CPU (process time; 10^6 bytes per second of
    plain data), i.e. what the uploader spends on top of chunking and hashing;
  - for comparison, zstd level 3 forced on every chunk: its ratio and speed.

The kinds:
  text     real English: /usr/share/doc/*/copyright and the venv's README/METADATA files
  logs     generated access-log lines (timestamps, addresses, paths, statuses)
  code     real Python source from the venv's site-packages
  jpeg     a JFIF header and random bytes (the entropy of a real JPEG), named photo.jpg
  jpeg?    the same bytes with no extension: skipped by the magic number alone
  mp4      an ISO-BMFF `ftyp` box and random bytes, named clip.mp4
  random   random bytes, no name hint (an encrypted file): only the probe can tell
  mixed    runs of 0.5-3 MiB of source code and of random bytes (a disk image, say)

    .venv/bin/python scripts/bench_compress.py [--mib 32]

Prints a markdown table with the machine, the date and the load.
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import zstandard  # noqa: E402

from cloudfs.backend.chunker import iter_pieces  # noqa: E402
from cloudfs.backend.stores.compress import LEVEL, compress, skip_reason  # noqa: E402

MiB = 1 << 20
JPEG_HEAD = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
MP4_HEAD = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41"


def _files(patterns: list[str], size: int) -> bytes:
    out = bytearray()
    for pattern in patterns:
        for path in sorted(glob.glob(pattern, recursive=True)):
            try:
                out += Path(path).read_bytes()
            except OSError:
                continue
            if len(out) >= size:
                return bytes(out[:size])
    if not out:
        raise SystemExit(f"no files for {patterns}")
    return bytes((out * (size // len(out) + 1))[:size])  # repeated: say so in the table


def text(size: int) -> bytes:
    site = str(REPO / ".venv" / "lib")
    return _files(["/usr/share/doc/*/copyright", f"{site}/**/README*", f"{site}/**/METADATA",
                   f"{site}/**/*.rst", f"{site}/**/*.md"], size)


def code(size: int) -> bytes:
    return _files([str(REPO / ".venv" / "lib" / "**" / "*.py")], size)


def logs(size: int) -> bytes:
    rng = random.Random(11)
    paths = [f"/api/v1/{w}/{i}" for w in ("files", "nodes", "changes", "uploads", "me") for i in range(200)]
    agents = ["curl/8.5.0", "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0", "cloudfs/0.1 httpx", "python-requests/2.32"]
    t = 1_764_000_000.0
    out = bytearray()
    while len(out) < size:
        t += rng.expovariate(50)
        ip = ".".join(str(rng.randint(1, 254)) for _ in range(4))
        stamp = time.strftime("%d/%b/%Y:%H:%M:%S", time.gmtime(t))
        out += (f'{ip} - - [{stamp} +0000] "{rng.choice(("GET", "POST", "PUT"))} {rng.choice(paths)} HTTP/1.1" '
                f'{rng.choice((200, 200, 200, 201, 304, 404, 409, 422))} {rng.randint(80, 90000)} "-" '
                f'"{rng.choice(agents)}" {rng.random():.3f}\n').encode()
    return bytes(out[:size])


def random_bytes(size: int) -> bytes:
    return os.urandom(size)


def mixed(size: int) -> bytes:
    """Runs of source code and of random bytes, 0.5-3 MiB each: chunks of either, and
    chunks that straddle both."""
    rng = random.Random(5)
    source = code(size)
    out = bytearray()
    while len(out) < size:
        n = rng.randint(MiB // 2, 3 * MiB)
        out += source[len(out):len(out) + n] if rng.random() < 0.5 else os.urandom(n)
    return bytes(out[:size])


@dataclass
class Kind:
    label: str
    name: str
    make: object
    head: bytes = b""


KINDS = [
    Kind("text (licences, READMEs)", "notes.txt", text),
    Kind("logs (generated access log)", "access.log", logs),
    Kind("source code (Python, venv)", "module.py", code),
    Kind("JPEG-like, photo.jpg", "photo.jpg", random_bytes, JPEG_HEAD),
    Kind("JPEG-like, no extension", "photo", random_bytes, JPEG_HEAD),
    Kind("MP4-like, clip.mp4", "clip.mp4", random_bytes, MP4_HEAD),
    Kind("random bytes, no hint", "blob", random_bytes),
    Kind("mixed: runs of code and random", "image.qcow2", mixed),
]


@dataclass
class Result:
    kind: Kind
    plain: int
    chunks: int
    compressed: int
    stored: int
    cpu: float
    skipped: str | None
    forced_stored: int
    forced_cpu: float
    inflate_cpu: float
    inflated: int
    """Plain bytes of the chunks that were compressed."""


def measure(kind: Kind, size: int) -> Result:
    data = kind.head + kind.make(size - len(kind.head))  # type: ignore[operator]
    pieces = [p.data for p in iter_pieces(io.BytesIO(data), len(data))]
    t0 = time.process_time()
    reason = skip_reason(kind.name, pieces[0][:16])
    stored = compressed = 0
    bodies = []
    inflated = 0
    for piece in pieces:
        packed = None if reason else compress(piece)
        stored += len(packed.body) if packed else len(piece)
        compressed += packed is not None
        if packed:
            bodies.append(packed.body)
            inflated += len(piece)
    cpu = time.process_time() - t0
    t0 = time.process_time()
    for body in bodies:
        zstandard.ZstdDecompressor().decompress(body)
    inflate_cpu = time.process_time() - t0
    t0 = time.process_time()
    forced = sum(len(zstandard.ZstdCompressor(level=LEVEL).compress(p)) for p in pieces)
    forced_cpu = time.process_time() - t0
    return Result(kind, len(data), len(pieces), compressed, stored, cpu, reason, forced, forced_cpu, inflate_cpu,
                  inflated)


def rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / max(seconds, 1e-6) / 1e6:,.0f}"


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine() -> str:
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
    return (f"{os.cpu_count()} cores, {mem_kib / 1024 / 1024:.0f} GiB, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, zstandard {zstandard.__version__}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=32, help="MiB of each kind of data (default 32)")
    args = parser.parse_args(argv)
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    print(f"compression benchmark, {args.mib} MiB per kind; {machine()}", flush=True)
    print(f"{time.strftime('%a %b %d %Y %H:%M UTC', time.gmtime())}; code {head}; load before {loadavg()}", flush=True)
    rows = []
    for kind in KINDS:
        r = measure(kind, args.mib * MiB)
        chosen = (f"no: {r.skipped}" if r.skipped else
                  f"yes, {r.compressed} of {r.chunks} chunks" if r.compressed else f"no: probe, {r.chunks} chunks")
        rows.append((kind.label, chosen, f"{r.stored / r.plain:.3f}", "~0 (one look at name and magic)" if r.skipped else rate(r.plain, r.cpu),
                     rate(r.inflated, r.inflate_cpu) if r.compressed else "-",
                     f"{r.forced_stored / r.plain:.3f}", rate(r.plain, r.forced_cpu)))
        print(f"  {kind.label}: {chosen}", flush=True)
    header = ("data", "compressed?", "stored / plain", "decision + compression, MB/s of CPU",
              "reading back: inflate, MB/s of CPU", f"zstd {LEVEL} forced on every chunk: stored / plain",
              "forced: MB/s of CPU")
    widths = [max(len(str(x[i])) for x in [header, *rows]) for i in range(len(header))]
    print()
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |")
    print(f"\nload after: {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
