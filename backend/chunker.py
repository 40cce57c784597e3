"""Content-defined chunking (FastCDC) and fingerprints.

Cut points depend on the bytes, not on offsets, so inserting a few bytes near the
start of a file changes one or two chunks instead of all of them.

The average chunk is 4 MiB (Dropbox's block size) and grows with the file
(`average_size`: doubling from 16 GiB on, until a file has at most about TARGET_CHUNKS
chunks, at most 16 MiB), so a 50 GB file has about 2,300 chunks rather than ~10,000
at pyfastcdc's 4 MiB ceiling: fewer prepare/commit rows, smaller chunk lists, fewer
requests per byte. Why not 1 MiB: against S3 every chunk is a request each way, and
per-request cost bounded throughput (64 MiB through moto: cold read 108 -> 140 MB/s,
until durable 44 -> 70 MB/s at 4 MiB); a small edit re-sends about 4 MiB instead.

pyfastcdc refuses averages above 4 MiB, so larger averages are made of 4 MiB-average
pieces grouped by a second content-defined rule: a group ends after a piece whose cut
point's gear hash has a top byte divisible by the fan-out, avg / 4 MiB
(`_is_group_end`). That hash depends only on the 64 bytes before the cut, so group
boundaries survive edits as piece boundaries do. As in FastCDC, a group is at least avg / 4 and at most 4 * avg
long (64 MiB at most, the server's MAX_CHUNK_BYTES); the real mean is 1.2-1.5 * avg.

Fingerprints are SHA-256 of the plain bytes (what S3 can verify on upload).

Known cost of size-dependent averages: when a file grows past a threshold (16 and 32
GiB) its next upload cuts every chunk differently and sends the whole file again.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from pyfastcdc import FastCDC

from .wire import MAX_CHUNK_BYTES

MiB = 1024 * 1024
MIN_AVG = 4 * MiB
SMALLEST_AVG = 1 * MiB
"""pyfastcdc's floor for averages; CLOUDFS_CHUNK_AVG_MIB may go down to it."""
MAX_AVG = 16 * MiB  # max chunk = 4 * avg = 64 MiB = MAX_CHUNK_BYTES
CDC_MAX_AVG = 4 * MiB
"""pyfastcdc's ceiling (its min/max ceilings are 1 and 16 MiB)."""
TARGET_CHUNKS = 4096
READ_BYTES = 1 * MiB
_GROUP_HASH_SHIFT = 56
"""Which bits of the cut's gear hash pick group ends: the top byte, clear of FastCDC's
cut masks (bits 12..47), so a group end is an ordinary cut that is rarer by chance."""

assert 4 * MAX_AVG <= MAX_CHUNK_BYTES


@dataclass(frozen=True)
class Piece:
    offset: int
    data: bytes | memoryview
    """A read-only view for grouped chunks (see `_grouped`)."""
    fingerprint: str

    @property
    def length(self) -> int:
        return len(self.data)


def average_size(file_size: int) -> int:
    """A power of two between 4 and 16 MiB aiming at TARGET_CHUNKS chunks per file."""
    avg = MIN_AVG
    while avg < MAX_AVG and file_size // avg > TARGET_CHUNKS:
        avg *= 2
    return avg


def forced_average() -> int | None:
    """CLOUDFS_CHUNK_AVG_MIB=N (a power of two, 1..16) forces the average for every
    file: benchmarks use it to see 16 MiB chunks without writing 32 GiB files."""
    raw = os.environ.get("CLOUDFS_CHUNK_AVG_MIB")
    if not raw:
        return None
    avg = int(raw) * MiB
    if not SMALLEST_AVG <= avg <= MAX_AVG or avg & (avg - 1):
        raise ValueError(f"CLOUDFS_CHUNK_AVG_MIB={raw}: a power of two from 1 to {MAX_AVG // MiB}")
    return avg


def max_size(avg: int) -> int:
    """The longest chunk cut at average `avg` (FastCDC's default max: 4 * avg)."""
    return 4 * avg


def fingerprint(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


class _SmallReads:
    """Feeds FastCDC in reads of at most READ_BYTES. Without it, FastCDC asks a stream
    that has only `read` for its whole free buffer (up to 32 MiB) at once, and a reader
    that builds that answer from parts holds it twice."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream

    def readinto(self, buf: memoryview) -> int:
        data = self.stream.read(min(len(buf), READ_BYTES))
        buf[:len(data)] = data
        return len(data)


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    parts, left = [], size
    for _ in range(size // READ_BYTES + 2):
        if left <= 0:
            break
        part = stream.read(min(left, READ_BYTES))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


class _Prefixed:
    """`prefix`, then the rest of `stream`."""

    def __init__(self, prefix: bytes, stream: BinaryIO) -> None:
        self.prefix, self.stream = memoryview(prefix), stream

    def read(self, n: int = -1) -> bytes:
        if self.prefix:
            n = len(self.prefix) if n < 0 else n
            out, self.prefix = bytes(self.prefix[:n]), self.prefix[n:]
            return out
        return self.stream.read(n)


def iter_pieces(stream: BinaryIO, file_size: int, *, avg: int | None = None) -> Iterator[Piece]:
    """Cut `stream` into pieces; holds at most one chunk plus FastCDC's buffer (2 * the
    largest base piece: 32 MiB at 4 MiB average and above) at a time. A file of at most
    one largest chunk is read whole and cut in memory: cut_stream allocates (and the
    kernel zeroes) its 32 MiB buffer on every call, 20 ms for a 4 KiB file.
    `avg` (tests) or CLOUDFS_CHUNK_AVG_MIB (benchmarks) overrides `average_size(file_size)`."""
    avg = avg or forced_average() or average_size(file_size)
    if avg <= CDC_MAX_AVG and file_size <= max_size(avg):
        head = _read_exactly(stream, file_size)
        tail = stream.read(1)
        if not tail:  # the usual case: cut in memory, no 32 MiB buffer for a small file
            for chunk in FastCDC(avg).cut_buf(head):
                data = bytes(chunk.data)
                yield Piece(offset=chunk.offset, data=data, fingerprint=fingerprint(data))
            return
        stream = _Prefixed(head + tail, stream)  # longer than said: stream it after all
    if not hasattr(stream, "readinto"):
        stream = _SmallReads(stream)
    if avg <= CDC_MAX_AVG:
        for chunk in FastCDC(avg).cut_stream(stream):
            data = bytes(chunk.data)
            yield Piece(offset=chunk.offset, data=data, fingerprint=fingerprint(data))
        return
    yield from _grouped(stream, avg)


def _is_group_end(gear_hash: int, fanout: int) -> bool:
    return (gear_hash >> _GROUP_HASH_SHIFT) % fanout == 0


def _grouped(stream: BinaryIO, avg: int) -> Iterator[Piece]:
    """Averages above CDC_MAX_AVG: group CDC_MAX_AVG pieces, `avg // CDC_MAX_AVG` of them
    on average, into chunks of avg / 4 ... 4 * avg.

    Each group is written into its own private anonymous map of 4 * avg bytes and
    handed out as a view: only the pages written become resident, nothing is copied
    twice, and the memory goes back to the system (munmap) as soon as the last view is
    dropped. A bytearray grown by `+=` stays in malloc's heap instead, which keeps
    freed blocks of tens of MiB for reuse (mount VmHWM at 16 MiB chunks: 295-313 MiB
    that way, 275-302 MiB this way)."""
    fanout = avg // CDC_MAX_AVG
    min_len, max_len = avg // 4, max_size(avg)
    buf = mmap.mmap(-1, max_len, flags=mmap.MAP_PRIVATE)
    offset = length = 0
    digest = hashlib.sha256()

    def emit() -> Piece:
        nonlocal buf, offset, length, digest
        piece = Piece(offset=offset, data=memoryview(buf).toreadonly()[:length], fingerprint=digest.hexdigest())
        offset, length, digest = offset + length, 0, hashlib.sha256()
        buf = mmap.mmap(-1, max_len, flags=mmap.MAP_PRIVATE)
        return piece

    for chunk in FastCDC(CDC_MAX_AVG).cut_stream(stream):
        if length and length + chunk.length > max_len:
            yield emit()
        buf[length:length + chunk.length] = chunk.data
        digest.update(chunk.data)
        length += chunk.length
        if length >= min_len and _is_group_end(chunk.gear_hash, fanout):
            yield emit()
    if length:
        yield emit()
