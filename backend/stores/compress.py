"""Whether a chunk is worth compressing, and reading a chunk back in either encoding.

Compression pays for text, source code, logs and databases. For media and archives,
which are compressed already, and for random bytes (encrypted files) it costs CPU and
saves nothing. So the device decides twice, cheaply:

1. once per file (`skip_reason`): a name with a known compressed extension, or first
   bytes with the magic number of a compressed format (JPEG, PNG, MP4, ZIP, gzip,
   zstd ...), is never tried;
2. once per chunk (`worth_compressing`): a few slices of the chunk are compressed at
   zstd level 1; only if that sample shrinks by at least MIN_SAVING is the whole chunk
   compressed (at LEVEL), and the result is kept only if it shrank by MIN_SAVING too.

The fingerprint is always the SHA-256 of the plain bytes, so dedup and verification do
not depend on how a chunk was stored. A reader therefore accepts a body in either
encoding as long as it yields bytes that hash to the fingerprint (`decode`): two
devices that stored the same chunk differently (one plain, one compressed, racing
each other's PUT) cannot make it unreadable. Every decompression is capped, so a
crafted frame (a "zstd bomb") is refused once it passes the plain length it may have,
without ever being inflated whole in memory.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Iterable, Iterator

import zstandard

from ..protocol.wire import MAX_CHUNK_BYTES

LEVEL = 3
"""zstd's default: on this project's machine, Python source compresses to 19% at
~230 MB/s (level 1: 20% at ~270 MB/s); see scripts/bench_compress.py."""
PROBE_LEVEL = 1
MIN_SAVING = 0.10
"""Compress only when it saves at least this fraction of the bytes."""
PROBE_SLICES = 4
PROBE_SLICE_BYTES = 16 * 1024
"""The probe compresses at most PROBE_SLICES x PROBE_SLICE_BYTES, spread over the chunk,
so its cost is the same for a 1 MiB and a 64 MiB chunk (~0.3 ms)."""
MIN_COMPRESS_BYTES = 512
"""Below this, zstd's frame overhead eats most of any saving."""
INFLATE_SLICE = 1024
"""Compressed bytes fed to the decompressor per call: one call then yields at most
~32 MiB (a zstd block needs >= 4 bytes and inflates to <= 128 KiB)."""

COMPRESSED_EXTENSIONS = frozenset("""
    jpg jpeg jpe jfif png gif webp heic heif avif jxl jp2
    mp4 m4v m4a m4b mov mkv webm avi wmv flv 3gp mpg mpeg ts m2ts ogv
    mp3 aac ogg oga opus flac wma
    zip gz tgz bz2 tbz2 xz txz zst tzst lz4 lzma lz 7z rar cab br
    jar war apk aab ipa whl nupkg deb rpm snap appimage dmg msi
    docx xlsx pptx odt ods odp epub
    woff woff2 pdf
""".split())
"""Formats whose content is compressed already (or, like PDF and Office files, a
container of compressed streams)."""

_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"GIF8", "GIF"),
    (0, b"PK\x03\x04", "ZIP"),
    (0, b"\x1f\x8b", "gzip"),
    (0, b"\x28\xb5\x2f\xfd", "zstd"),
    (0, b"BZh", "bzip2"),
    (0, b"\xfd7zXZ\x00", "xz"),
    (0, b"\x04\x22\x4d\x18", "lz4"),
    (0, b"7z\xbc\xaf\x27\x1c", "7z"),
    (0, b"Rar!\x1a\x07", "RAR"),
    (0, b"OggS", "Ogg"),
    (0, b"fLaC", "FLAC"),
    (0, b"ID3", "MP3"),
    (0, b"\x1a\x45\xdf\xa3", "Matroska/WebM"),
    (0, b"wOFF", "WOFF"),
    (0, b"wOF2", "WOFF2"),
    (4, b"ftyp", "MP4/MOV/HEIF"),
    (8, b"WEBP", "WebP"),
)


def skip_reason(name: str, head: bytes) -> str | None:
    """Why a file is never compressed, or None when its chunks may be probed.

    `head` is the file's first bytes (16 are enough). A wrong answer costs little
    either way: a missed media file is caught by the per-chunk probe, a text file with
    a media extension is merely stored plain.
    """
    ext = os.path.splitext(name)[1].lower().lstrip(".")
    if ext in COMPRESSED_EXTENSIONS:
        return f"extension .{ext}"
    for offset, magic, what in _MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return f"{what} data"
    return None


def _sample(data: bytes | memoryview) -> bytes | memoryview:
    if len(data) <= PROBE_SLICES * PROBE_SLICE_BYTES:
        return data
    view = memoryview(data)
    step = (len(data) - PROBE_SLICE_BYTES) // (PROBE_SLICES - 1)
    return b"".join(view[i * step:i * step + PROBE_SLICE_BYTES] for i in range(PROBE_SLICES))


def worth_compressing(data: bytes | memoryview) -> bool:
    """The probe: does a small sample of `data` shrink by MIN_SAVING at level 1?"""
    if len(data) < MIN_COMPRESS_BYTES:
        return False
    sample = _sample(data)
    packed = zstandard.ZstdCompressor(level=PROBE_LEVEL, write_content_size=False).compress(sample)
    return len(packed) <= (1 - MIN_SAVING) * len(sample)


@dataclass(frozen=True)
class Packed:
    """A chunk as it is uploaded: `body` is what goes on the wire and into the store."""

    compression: str  # "none" | "zstd", as in wire.Compression
    body: bytes
    sha256: str
    """SHA-256 of `body`: what the signed URL and S3's checksum check."""


def compress(data: bytes | memoryview, *, probe: bool = True) -> Packed | None:
    """`data` as a zstd frame (with its content size, which readers rely on), or None
    when compressing does not pay: the probe says no, or the frame is not at least
    MIN_SAVING smaller than the plain bytes."""
    if len(data) < MIN_COMPRESS_BYTES or (probe and not worth_compressing(data)):
        return None
    body = zstandard.ZstdCompressor(level=LEVEL).compress(data)
    if len(body) > (1 - MIN_SAVING) * len(data):
        return None
    return Packed("zstd", body, hashlib.sha256(body).hexdigest())


class CompressionError(ValueError):
    """A body that is not exactly one well-formed zstd frame within its size cap."""


def inflate(pieces: Iterable[bytes], compression: str, *, max_length: int = MAX_CHUNK_BYTES) -> Iterator[bytes]:
    """The plain bytes of a stored body, streamed: at most ~32 MiB at a time are held,
    whatever the body. Raises CompressionError past `max_length` plain bytes, on a
    malformed or truncated frame, or on bytes after the frame."""
    if compression == "none":
        yield from pieces
        return
    if compression != "zstd":
        raise CompressionError(f"unknown compression {compression!r}")
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    produced = 0
    for piece in pieces:
        view = memoryview(piece)
        for start in range(0, len(view), INFLATE_SLICE):
            if decompressor.eof:
                raise CompressionError("data after the end of the zstd frame")
            try:
                plain = decompressor.decompress(view[start:start + INFLATE_SLICE])
            except zstandard.ZstdError as exc:
                raise CompressionError(f"not a valid zstd frame ({exc})") from None
            if decompressor.unused_data:
                raise CompressionError("data after the end of the zstd frame")
            produced += len(plain)
            if produced > max_length:
                raise CompressionError(f"decompresses to more than {max_length} bytes")
            if plain:
                yield plain
    if not decompressor.eof:
        raise CompressionError("the zstd frame is incomplete")


def plain_digest(pieces: Iterable[bytes], compression: str, *, max_length: int = MAX_CHUNK_BYTES) -> tuple[str, int]:
    """SHA-256 and length of the plain bytes of a stored body, streamed (the server's
    check that a compressed object really holds the chunk it claims to)."""
    digest = hashlib.sha256()
    length = 0
    for plain in inflate(pieces, compression, max_length=max_length):
        digest.update(plain)
        length += len(plain)
    return digest.hexdigest(), length


def decode(body: bytes, compression: str, fingerprint: str, *, max_length: int = MAX_CHUNK_BYTES) -> bytes | None:
    """The plain bytes of a downloaded body, or None if no reading of it hashes to
    `fingerprint`. Tries the encoding the server named first, then the other one (see
    the module docstring: a race can leave a chunk stored in the other encoding)."""
    for encoding in (compression, "zstd" if compression == "none" else "none"):
        try:
            plain = b"".join(inflate((body,), encoding, max_length=max_length))
        except CompressionError:
            continue
        if hashlib.sha256(plain).hexdigest() == fingerprint:
            return plain
    return None
