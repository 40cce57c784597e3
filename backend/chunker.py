"""Content-defined chunking (FastCDC) and fingerprints.

Cut points depend on the bytes, not on offsets, so inserting a few bytes near the
start of a file changes one or two chunks instead of all of them.

The average chunk is 4 MiB (Dropbox's block size) and grows with the offset where a
chunk starts (`average_at`): 4 MiB below 16 GiB, 8 MiB up to 32 GiB, 16 MiB beyond, so
a 50 GB file has about 5,700 chunks rather than ~10,000 at pyfastcdc's 4 MiB ceiling:
fewer prepare/commit rows, smaller chunk lists, fewer requests per byte. The average
depends on the position, never on the file's size, so the chunks of a prefix are the
same however long the file grows: a file can be uploaded while it is still being
written (streamer.py), and a file growing past 16 GiB keeps the chunks it had. Why not
1 MiB: against S3 every chunk is a request each way, and per-request cost bounded
throughput (64 MiB through moto: cold read 108 -> 140 MB/s, until durable 44 -> 70
MB/s at 4 MiB); a small edit re-sends about 4 MiB instead.

pyfastcdc refuses averages above 4 MiB, so larger averages are made of 4 MiB-average
pieces grouped by a second content-defined rule: a group ends after a piece whose cut
point's gear hash has a top byte divisible by the fan-out, avg / 4 MiB
(`_is_group_end`). That hash depends only on the 64 bytes before the cut, so group
boundaries survive edits as piece boundaries do. As in FastCDC, a group is at least avg / 4 and at most 4 * avg
long (64 MiB at most, the server's MAX_CHUNK_BYTES); the real mean is 1.2-1.5 * avg.

Every cut but the last one of a stream depends only on the bytes before it: FastCDC
refills its buffer to a largest chunk before it cuts, and cuts short only at the end of
the stream. So cutting may start again at any earlier cut and finds the same chunks
(`iter_pieces(start=...)`); and of the chunks of a file still being written, all but
the last are final.

Fingerprints are SHA-256 of the plain bytes (what S3 can verify on upload).

Files over 16 GiB uploaded before averages went by position (they were cut at one
average for the whole file) are cut differently at their next upload, once.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator

from pyfastcdc import FastCDC

from .protocol.wire import MAX_CHUNK_BYTES

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
    """The largest average a file of `file_size` bytes uses (that of its last chunks):
    a power of two between 4 and 16 MiB, doubling every TARGET_CHUNKS * 4 MiB."""
    return average_at(max(file_size - 1, 0))


def average_at(offset: int) -> int:
    """The average of a chunk starting at `offset`: 4 MiB for the first 16 GiB, then
    doubling at 16 and 32 GiB, at most MAX_AVG."""
    avg = MIN_AVG
    while avg < MAX_AVG and offset >= TARGET_CHUNKS * MIN_AVG * (avg // MIN_AVG):
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


def iter_pieces(stream: BinaryIO, file_size: int, *, avg: int | None = None, start: int = 0) -> Iterator[Piece]:
    """Cut `stream`, the bytes of a file from `start` (a cut point of that file: 0, or
    where an earlier cut ended) to `start + file_size`, into pieces with offsets in the
    file. Holds at most one chunk plus FastCDC's buffer (2 * the largest base piece: 32
    MiB at 4 MiB average and above) at a time. A stretch of at most one largest chunk is
    read whole and cut in memory: cut_stream allocates (and the kernel zeroes) its 32
    MiB buffer on every call, 20 ms for a 4 KiB file. `avg` (tests) or
    CLOUDFS_CHUNK_AVG_MIB (benchmarks) overrides `average_at` for every chunk."""
    fixed = avg or forced_average()
    last_avg = fixed or average_at(start + max(file_size - 1, 0))
    if last_avg <= CDC_MAX_AVG and file_size <= max_size(last_avg):
        head = _read_exactly(stream, file_size)
        tail = stream.read(1)
        if not tail:  # the usual case: cut in memory, no 32 MiB buffer for a small file
            for chunk in FastCDC(last_avg).cut_buf(head):
                data = bytes(chunk.data)
                yield Piece(offset=start + chunk.offset, data=data, fingerprint=fingerprint(data))
            return
        stream = _Prefixed(head + tail, stream)  # longer than said: stream it after all
    if not hasattr(stream, "readinto"):
        stream = _SmallReads(stream)
    if last_avg <= CDC_MAX_AVG:
        for chunk in FastCDC(last_avg).cut_stream(stream):
            data = bytes(chunk.data)
            yield Piece(offset=start + chunk.offset, data=data, fingerprint=fingerprint(data))
        return
    yield from _grouped(stream, (lambda offset: fixed) if fixed else average_at, start)


def _is_group_end(gear_hash: int, fanout: int) -> bool:
    return (gear_hash >> _GROUP_HASH_SHIFT) % fanout == 0


def _grouped(stream: BinaryIO, avg_at: Callable[[int], int], start: int) -> Iterator[Piece]:
    """Averages above CDC_MAX_AVG: group CDC_MAX_AVG pieces, `avg // CDC_MAX_AVG` of them
    on average, into chunks of avg / 4 ... 4 * avg, where avg is `avg_at(the group's
    offset)` (1 means: each piece is a chunk, as below 16 GiB).

    Each group is written into its own private anonymous map of 4 * avg bytes and
    handed out as a view: only the pages written become resident, nothing is copied
    twice, and the memory goes back to the system (munmap) as soon as the last view is
    dropped. A bytearray grown by `+=` stays in malloc's heap instead, which keeps
    freed blocks of tens of MiB for reuse (mount VmHWM at 16 MiB chunks: 295-313 MiB
    that way, 275-302 MiB this way)."""
    offset = start
    length = 0
    digest = hashlib.sha256()

    def shape() -> tuple[int, int, int]:
        avg = max(avg_at(offset), CDC_MAX_AVG)
        return avg // CDC_MAX_AVG, avg // 4, max_size(avg)

    fanout, min_len, max_len = shape()
    buf = mmap.mmap(-1, max_len, flags=mmap.MAP_PRIVATE)

    def emit() -> Piece:
        nonlocal buf, offset, length, digest, fanout, min_len, max_len
        piece = Piece(offset=offset, data=memoryview(buf).toreadonly()[:length], fingerprint=digest.hexdigest())
        offset, length, digest = offset + length, 0, hashlib.sha256()
        fanout, min_len, max_len = shape()
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
