"""Content-defined chunking (FastCDC) and fingerprints.

Cut points depend on the bytes, not on offsets, so inserting a few bytes near the
start of a file changes one or two chunks instead of all of them. The average chunk
grows with the file, but pyfastcdc caps it at 4 MiB (a real mean of ~5 MiB): up to 16 GiB
a file has at most about TARGET_CHUNKS chunks, a 50 GB file about 10,000.
Fingerprints are SHA-256 of the plain bytes (what S3 can verify on upload).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from pyfastcdc import FastCDC

MiB = 1024 * 1024
MIN_AVG = 1 * MiB
MAX_AVG = 4 * MiB  # pyfastcdc's ceiling; max chunk = 4 * avg = 16 MiB
TARGET_CHUNKS = 4096


@dataclass(frozen=True)
class Piece:
    offset: int
    data: bytes
    fingerprint: str

    @property
    def length(self) -> int:
        return len(self.data)


def average_size(file_size: int) -> int:
    """A power of two between 1 and 4 MiB aiming at TARGET_CHUNKS chunks per file."""
    avg = MIN_AVG
    while avg < MAX_AVG and file_size // avg > TARGET_CHUNKS:
        avg *= 2
    return avg


def fingerprint(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def iter_pieces(stream: BinaryIO, file_size: int) -> Iterator[Piece]:
    """Cut `stream` into pieces; holds at most one chunk (plus FastCDC's buffer) at a time."""
    cdc = FastCDC(average_size(file_size))
    for chunk in cdc.cut_stream(stream):
        data = bytes(chunk.data)
        yield Piece(offset=chunk.offset, data=data, fingerprint=fingerprint(data))
