"""The object-store protocol every store implements, and the URL that picks one.

Modelled on JuiceFS's `object` interface: every call is idempotent and failures come
from a small vocabulary, so wrappers (retry, fault injection) can stack on any store.
Calls block; async callers run them with `trio.to_thread.run_sync`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol
from urllib.parse import parse_qs, urlsplit

from ..protocol.wire import SignedRequest


class StoreError(Exception):
    """Base of the store's error vocabulary."""


class NoSuchKeyError(StoreError):
    """The key does not exist (or is not readable as such)."""


class TransientError(StoreError):
    """A failure worth retrying: timeouts, 5xx, connection resets."""


class CorruptChunkError(StoreError):
    """Bytes do not match the fingerprint or length they were stored under."""


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    sha256_hex: str | None = None
    """SHA-256 of the stored bytes when the store keeps one (S3 checksums)."""
    verified_on_write: bool = False
    """True when the store itself refused any body that did not hash to its key."""


DELETE_BATCH = 1000
"""S3's DeleteObjects takes at most this many keys."""


class ObjectStore(Protocol):
    reads_back: bool
    """True while verifying an object means reading it back: the store keeps no checksum
    it checked on PUT (moto, some S3 clones). The server then has devices ask for
    chunks to be checked as their batches are PUT (api.check_chunks), not at commit."""

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def stream(self, key: str) -> Iterator[bytes]:
        """The object's bytes in pieces of about 1 MiB, never all of it in memory."""
        ...

    def head(self, key: str) -> ObjectInfo: ...

    def delete(self, key: str) -> None: ...

    def delete_many(self, keys: list[str]) -> None:
        """Delete up to DELETE_BATCH keys in one go (S3: one request); keys that are not
        there are fine, as for `delete`."""
        ...

    def list(self, prefix: str = "") -> Iterator[str]: ...

    def presign_put(self, key: str, *, stored_length: int, stored_sha256: str, expires: int, base_url: str,
                    compression: str = "none", plain_length: int | None = None) -> SignedRequest: ...

    def presign_get(self, key: str, *, expires: int, base_url: str) -> SignedRequest: ...


def chunk_key(owner_id: int, fingerprint: str) -> str:
    """Where a user's chunk lives. Per-user keys keep dedup per user: one user's upload
    can never overwrite or stand in for another user's bytes."""
    return f"u{owner_id}/{fingerprint[:2]}/{fingerprint}"


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def open_store(url: str, *, data_dir: Path, secret: bytes) -> ObjectStore:
    """Build the store a `--store` URL names.

    `file:///path` or a bare path: the embedded local directory (URLs signed by the
    server with `secret`). `s3://BUCKET?endpoint=URL&region=R`: S3 through boto3, with
    credentials from the standard AWS environment variables. `fault+URL?fault_rate=R`
    wraps either in a store that fails a share R of its calls (for tests).
    """
    if url.startswith("fault+"):
        from .faultstore import FaultyStore

        inner, _, query = url[len("fault+"):].partition("?")
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        try:
            rate, seed = float(params.pop("fault_rate", "0.2")), int(params.pop("fault_seed", "1"))
        except ValueError:
            raise ValueError(f"--store {url}: fault_rate must be a number, fault_seed an integer") from None
        rest = "&".join(f"{k}={v}" for k, v in params.items())
        return FaultyStore(open_store(inner + (f"?{rest}" if rest else ""), data_dir=data_dir, secret=secret),
                           rate=rate, seed=seed)
    parts = urlsplit(url)
    if parts.scheme in ("", "file"):
        from .localstore import LocalStore

        path = Path(parts.path if parts.scheme else url)
        if not path.is_absolute():
            path = data_dir / path
        return LocalStore(path, secret=secret)
    if parts.scheme == "s3":
        from .s3store import S3Store

        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"endpoint", "region"}
        if unknown:
            raise ValueError(f"--store {url}: unknown parameter(s) {', '.join(sorted(unknown))}")
        if not parts.netloc:
            raise ValueError(f"--store {url}: no bucket name (s3://BUCKET?...)")
        return S3Store(parts.netloc, endpoint=query.get("endpoint"), region=query.get("region"))
    raise ValueError(f"--store {url}: unknown scheme {parts.scheme!r} (use a path, file:// or s3://)")


