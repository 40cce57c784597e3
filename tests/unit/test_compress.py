"""When the device compresses a chunk (file type, then a probe of the chunk), and how
stored bodies are read back: either encoding accepted when it hashes to the
fingerprint, every inflation capped."""

from __future__ import annotations

import glob
import hashlib
import os
import random
import tracemalloc
from pathlib import Path

import pytest
import trio
import zstandard

from cloudfs.backend.stores import compress as cz
from cloudfs.backend.stores.compress import (CompressionError, compress, decode, inflate, plain_digest, skip_reason,
                                      worth_compressing)
from cloudfs.backend.sync.uploader import ByteBudget

MiB = 1024 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def python_source(size: int) -> bytes:
    """Real source code: the standard library's own modules."""
    out = bytearray()
    for path in sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py"))):
        out += Path(path).read_bytes()
        if len(out) >= size:
            break
    return bytes(out[:size])


def text(size: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    words = [bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(2000)]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choices(words, k=12)) + b".\n"
    return bytes(out[:size])


JPEG_HEAD = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
MP4_HEAD = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41"


# --- per file: name and magic -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["photo.jpg", "IMG_0001.JPEG", "clip.mp4", "a.tar.gz", "b.zst", "pkg.whl",
                                  "song.mp3", "report.docx", "x.png", "movie.MKV", "backup.7z"])
def test_compressed_extensions_are_skipped(name: str) -> None:
    assert skip_reason(name, b"plain text, whatever it claims") is not None


@pytest.mark.parametrize("head, what", [
    (JPEG_HEAD, "JPEG"), (b"\x89PNG\r\n\x1a\n\x00\x00", "PNG"), (MP4_HEAD, "MP4"), (b"PK\x03\x04\x14\x00", "ZIP"),
    (b"\x1f\x8b\x08\x00", "gzip"), (zstandard.ZstdCompressor().compress(b"x" * 100)[:8], "zstd"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "WebP"), (b"\x1a\x45\xdf\xa3\x01", "Matroska"),
])
def test_compressed_magic_is_skipped_whatever_the_name(head: bytes, what: str) -> None:
    reason = skip_reason("no-extension", head + os.urandom(32))
    assert reason is not None and what in reason


@pytest.mark.parametrize("name, head", [("notes.txt", b"Dear diary,\n"), ("main.py", b"import os\n"),
                                        ("Makefile", b"all:\n\tcc"), ("db.sqlite", b"SQLite format 3\x00"),
                                        ("empty", b""), ("archive.tar", b"./\x00\x00\x00\x00")])
def test_other_files_are_probed(name: str, head: bytes) -> None:
    assert skip_reason(name, head) is None


# --- per chunk: the probe ---------------------------------------------------------------------


def test_probe_says_yes_for_text_and_code() -> None:
    assert worth_compressing(text(4 * MiB))
    assert worth_compressing(python_source(1 * MiB))


def test_probe_says_no_for_random_and_media_like_bytes() -> None:
    assert not worth_compressing(os.urandom(4 * MiB))
    assert not worth_compressing(JPEG_HEAD + os.urandom(2 * MiB))
    assert not worth_compressing(MP4_HEAD + os.urandom(2 * MiB))


def test_probe_skips_tiny_chunks() -> None:
    assert not worth_compressing(b"a" * (cz.MIN_COMPRESS_BYTES - 1))
    assert worth_compressing(b"a" * cz.MIN_COMPRESS_BYTES)


def test_probe_cost_does_not_grow_with_the_chunk() -> None:
    for size in (100_000, 4 * MiB, 64 * MiB):
        sample = cz._sample(b"\x00" * size)
        assert len(sample) == min(size, cz.PROBE_SLICES * cz.PROBE_SLICE_BYTES)


def test_probe_looks_past_the_start_of_the_chunk() -> None:
    """A chunk that starts with a little text and is random after: the sample is mostly
    random, so compressing it would not pay."""
    assert not worth_compressing(text(20_000) + os.urandom(4 * MiB))
    assert worth_compressing(os.urandom(20_000) + text(4 * MiB))


def test_compress_keeps_only_what_pays() -> None:
    data = python_source(2 * MiB)
    packed = compress(data)
    assert packed is not None and packed.compression == "zstd"
    assert len(packed.body) <= 0.5 * len(data)
    assert packed.sha256 == sha(packed.body)
    assert zstandard.ZstdDecompressor().decompress(packed.body) == data  # content size is in the frame
    assert compress(os.urandom(1 * MiB)) is None
    assert compress(os.urandom(1 * MiB), probe=False) is None  # the final check catches what the probe misses
    assert compress(b"tiny") is None


def test_probe_and_final_check_agree_at_the_margin() -> None:
    """About 10% compressible: whatever the probe says, a kept body saved >= MIN_SAVING."""
    rng = random.Random(5)
    for fraction in (0.05, 0.10, 0.15, 0.20, 0.30):
        data = bytearray(rng.randbytes(1 * MiB))
        for i in range(0, len(data), 1000):  # zero a run in each 1000 bytes
            data[i:i + int(1000 * fraction)] = bytes(int(1000 * fraction))
        packed = compress(bytes(data))
        if packed is not None:
            assert len(packed.body) <= (1 - cz.MIN_SAVING) * len(data)


# --- reading back -----------------------------------------------------------------------------


PLAIN = b"compressible " * 50_000
FRAME = zstandard.ZstdCompressor().compress(PLAIN)


def test_decode_either_encoding() -> None:
    fp = sha(PLAIN)
    assert decode(FRAME, "zstd", fp) == PLAIN
    assert decode(PLAIN, "none", fp) == PLAIN
    # stored the other way than the server's row says (two devices raced): still readable
    assert decode(PLAIN, "zstd", fp) == PLAIN
    assert decode(FRAME, "none", fp) == PLAIN
    # a plain chunk that happens to be a zstd frame (a .zst file) is returned as is
    assert decode(FRAME, "none", sha(FRAME)) == FRAME
    assert decode(FRAME, "zstd", sha(FRAME)) == FRAME


def test_decode_refuses_what_does_not_hash() -> None:
    assert decode(PLAIN + b"x", "none", sha(PLAIN)) is None
    assert decode(FRAME[:-1], "zstd", sha(PLAIN)) is None
    assert decode(os.urandom(1000), "zstd", sha(PLAIN)) is None


def test_decode_caps_a_bomb() -> None:
    """A frame of 512 MiB of zeros is refused past the cap, never inflated whole."""
    cobj = zstandard.ZstdCompressor(level=19).compressobj()
    zeros = bytes(32 * MiB)
    bomb = b"".join(cobj.compress(zeros) for _ in range(16)) + cobj.flush()
    fp = hashlib.sha256(zeros * 16).hexdigest()
    del zeros
    tracemalloc.start()
    try:
        assert decode(bomb, "zstd", fp, max_length=8 * MiB) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * MiB, f"decoding held {peak >> 20} MiB"


@pytest.mark.parametrize("body, problem", [
    (FRAME[:-3], "incomplete"),
    (FRAME + b"junk", "after the end"),
    (FRAME + FRAME, "after the end"),
    (b"\x00" * 100, "not a valid"),
])
def test_inflate_refuses_malformed_bodies(body: bytes, problem: str) -> None:
    with pytest.raises(CompressionError, match=problem):
        b"".join(inflate([body], "zstd"))


def test_plain_digest_streams_and_caps() -> None:
    pieces = [FRAME[i:i + 777] for i in range(0, len(FRAME), 777)]
    assert plain_digest(pieces, "zstd") == (sha(PLAIN), len(PLAIN))
    assert plain_digest([PLAIN[:10], PLAIN[10:]], "none") == (sha(PLAIN), len(PLAIN))
    with pytest.raises(CompressionError, match="more than"):
        plain_digest(pieces, "zstd", max_length=len(PLAIN) - 1)
    with pytest.raises(CompressionError, match="unknown"):
        plain_digest(pieces, "gzip")


# --- the uploader's byte budget ---------------------------------------------------------------


def test_byte_budget_waits_for_release() -> None:
    async def main() -> None:
        budget = ByteBudget(100)
        assert await budget.acquire(80) == 80
        got: list[int] = []

        async def taker() -> None:
            got.append(await budget.acquire(30))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(taker)
            await trio.sleep(0.05)
            assert got == [] and budget.used == 80  # 80 + 30 > 100: waits
            budget.release(20)
            await trio.sleep(0.05)
            assert got == [30] and budget.used == 90
        budget.release(90)
        assert await budget.acquire(10**9) == 100  # clamped to the whole budget, never stuck
        assert budget.used == 100

    trio.run(main)
