"""The embedded object store: a content-addressed local directory.

Every object is written to a temporary file, fsynced and renamed into place, so a crash
leaves either the whole object or nothing. Devices never touch the directory: the
server serves URLs signed here (HMAC over method, key, expected hash and expiry) and
streams uploads through `BlobWriter`, which refuses any body that does not hash to the
fingerprint it was signed for.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import stat
import time
import uuid
from pathlib import Path
from typing import Iterator
from urllib.parse import urlencode

import zstandard

from ..protocol.wire import SignedRequest
from .store import CorruptChunkError, NoSuchKeyError, ObjectInfo, StoreError

KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,254}$")
ZSTD_SLICE = 1024
"""Compressed bytes fed to the decompressor per call. A zstd block takes at least 4 bytes
and expands to at most 128 KiB, so one call yields at most ~32 MiB however the body was
crafted; a bomb is refused once it passes the signed plain length, never held whole."""


def check_key(key: str) -> str:
    # fullmatch: `$` alone would also accept a trailing newline
    if not KEY_RE.fullmatch(key) or ".." in key or "//" in key:
        raise NoSuchKeyError(f"invalid object key {key!r}")
    return key


class LocalStore:
    reads_back = False
    """Every upload is hashed as it arrives (BlobWriter): nothing to read back."""

    def __init__(self, root: Path, *, secret: bytes) -> None:
        self.root = root
        self.secret = secret
        (root / ".tmp").mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes) -> None:
        writer = BlobWriter(self, key, expected_sha256=None, expected_length=len(data))
        try:
            writer.write(data)
            writer.finish()
        finally:
            writer.abort()

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NoSuchKeyError(key) from None

    def stream(self, key: str) -> Iterator[bytes]:
        try:
            f = open(self._path(key), "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NoSuchKeyError(key) from None
        with f:
            while piece := f.read(1 << 20):
                yield piece

    def open_path(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise NoSuchKeyError(key)
        return path

    def head(self, key: str) -> ObjectInfo:
        try:
            st = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            raise NoSuchKeyError(key) from None
        if not stat.S_ISREG(st.st_mode):
            raise NoSuchKeyError(key)  # a directory of keys, not an object
        return ObjectInfo(size=st.st_size, verified_on_write=True)

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            pass  # no object under this key

    def delete_many(self, keys: list[str]) -> None:
        for key in keys:
            self.delete(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        for dirpath, dirnames, filenames in os.walk(self.root):
            # only the top-level .tmp holds uploads in progress; "a/.tmp/x" is a valid key
            dirnames[:] = sorted(d for d in dirnames if not (d == ".tmp" and dirpath == str(self.root)))
            for name in sorted(filenames):
                key = os.path.relpath(os.path.join(dirpath, name), self.root)
                if key.startswith(prefix):
                    yield key

    # Signed URLs: served by the cloudfs server's /blobs route.

    def sign(self, method: str, key: str, params: dict[str, str]) -> str:
        """HMAC over everything the URL grants: method, key and the upload's promises."""
        canonical = "\n".join([method, key] + [f"{k}={params[k]}" for k in sorted(params)])
        digest = hmac.new(self.secret, canonical.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def check_signature(self, method: str, key: str, params: dict[str, str], sig: str) -> bool:
        """True when `sig` was made here for exactly these params and has not expired."""
        try:
            if int(params.get("exp", "0")) < time.time():
                return False
        except ValueError:
            return False
        return hmac.compare_digest(sig.encode(), self.sign(method, key, params).encode())

    def _signed_url(self, method: str, key: str, params: dict[str, str], base_url: str) -> str:
        query = urlencode({**params, "sig": self.sign(method, key, params)})
        return f"{base_url.rstrip('/')}/blobs/{check_key(key)}?{query}"

    def presign_put(self, key: str, *, stored_length: int, stored_sha256: str, expires: int, base_url: str,
                    compression: str = "none", plain_length: int | None = None) -> SignedRequest:
        params = {"exp": str(int(time.time()) + expires), "sha": stored_sha256, "len": str(stored_length),
                  "c": compression, "plen": str(plain_length if plain_length is not None else stored_length)}
        return SignedRequest(method="PUT", url=self._signed_url("PUT", key, params, base_url))

    def presign_get(self, key: str, *, expires: int, base_url: str) -> SignedRequest:
        params = {"exp": str(int(time.time()) + expires)}
        return SignedRequest(method="GET", url=self._signed_url("GET", key, params, base_url))


class BlobWriter:
    """Streams one upload to a temp file, hashing as it goes; `finish` publishes it
    only if length and SHA-256 match. Always call `abort` (a no-op after `finish`)."""

    def __init__(self, store: LocalStore, key: str, *, expected_sha256: str | None, expected_length: int,
                 compression: str = "none", plain_sha256: str | None = None, plain_length: int | None = None) -> None:
        self.key = check_key(key)
        self.final = store._path(key)
        self.tmp = store.root / ".tmp" / f"{uuid.uuid4().hex}.part"
        self.expected_sha256 = expected_sha256
        self.expected_length = expected_length
        self.hash = hashlib.sha256()
        self.length = 0
        self.plain_sha256 = plain_sha256
        self.plain_length = plain_length
        self.plain_hash = hashlib.sha256()
        self.plain_seen = 0
        self.decompressor = zstandard.ZstdDecompressor().decompressobj() if compression == "zstd" else None
        self.file = open(self.tmp, "wb")
        self.done = False

    def write(self, data: bytes) -> None:
        self.length += len(data)
        if self.length > self.expected_length:
            raise CorruptChunkError(f"{self.key}: body longer than the signed {self.expected_length} bytes")
        self.hash.update(data)
        if self.decompressor is not None:
            self._decompress(data)
        self.file.write(data)

    def _decompress(self, data: bytes) -> None:
        """Hash the plain bytes; the body must be exactly one zstd frame."""
        view = memoryview(data)
        for start in range(0, len(view), ZSTD_SLICE):
            if self.decompressor.eof:
                raise CorruptChunkError(f"{self.key}: data after the end of the zstd frame")
            try:
                plain = self.decompressor.decompress(view[start:start + ZSTD_SLICE])
            except zstandard.ZstdError as exc:
                raise CorruptChunkError(f"{self.key}: not a valid zstd frame ({exc})") from None
            if self.decompressor.unused_data:
                raise CorruptChunkError(f"{self.key}: data after the end of the zstd frame")
            self.plain_seen += len(plain)
            if self.plain_length is not None and self.plain_seen > self.plain_length:
                raise CorruptChunkError(f"{self.key}: decompresses to more than {self.plain_length} bytes")
            self.plain_hash.update(plain)

    def finish(self) -> None:
        """Verify, fsync, rename into place, fsync the directory. Blocking."""
        if self.length != self.expected_length:
            raise CorruptChunkError(f"{self.key}: got {self.length} bytes, expected {self.expected_length}")
        digest = self.hash.hexdigest()
        if self.expected_sha256 is not None and digest != self.expected_sha256:
            raise CorruptChunkError(f"{self.key}: body hashes to {digest}, not {self.expected_sha256}")
        if self.decompressor is not None:
            if not self.decompressor.eof:
                raise CorruptChunkError(f"{self.key}: the zstd frame is incomplete")
            plain_digest = self.plain_hash.hexdigest()
            if self.plain_length is not None and self.plain_seen != self.plain_length:
                raise CorruptChunkError(f"{self.key}: decompresses to {self.plain_seen} bytes, not {self.plain_length}")
            if self.plain_sha256 is not None and plain_digest != self.plain_sha256:
                raise CorruptChunkError(f"{self.key}: plain bytes hash to {plain_digest}, not {self.plain_sha256}")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        self.final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.tmp, self.final)
        dir_fd = os.open(self.final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.done = True

    def abort(self) -> None:
        if self.done:
            return
        self.file.close()
        try:
            self.tmp.unlink()
        except FileNotFoundError:
            pass
        self.done = True


__all__ = ["LocalStore", "BlobWriter", "StoreError"]
