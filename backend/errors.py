"""Errors the device side raises, each carrying the errno the mount will answer with.

`fs/` turns these into `FUSEError(errno)` in one place; nothing in `backend/` knows
about FUSE.
"""

from __future__ import annotations

import contextlib
import errno as _errno
from typing import Any, AsyncIterator, Iterator

import trio


class UserError(Exception):
    """Something the user can fix stopped a command: a path, a URL, a token, a cache
    directory, a port. `str()` is one line that names the cause and the fix; the CLI
    prints it as it is, after the command's name, and exits with `exit_code` (1: it
    could not be done here and now; 2: the command line itself is wrong)."""

    exit_code = 1


class CloudFsError(Exception):
    errno = _errno.EIO


class NotFoundError(CloudFsError):
    errno = _errno.ENOENT


class ExistsError(CloudFsError):
    errno = _errno.EEXIST


class NotEmptyError(CloudFsError):
    errno = _errno.ENOTEMPTY


class NotADirectoryError_(CloudFsError):
    errno = _errno.ENOTDIR


class IsADirectoryError_(CloudFsError):
    errno = _errno.EISDIR


class InvalidError(CloudFsError):
    errno = _errno.EINVAL


class QuotaError(CloudFsError):
    errno = _errno.EDQUOT


class OfflineError(CloudFsError):
    """The server or store could not be reached in time."""

    errno = _errno.EIO


class CorruptChunkError(CloudFsError):
    """Downloaded bytes do not hash to their fingerprint."""

    errno = _errno.EIO


class ServerError(CloudFsError):
    """The server answered with an error body; `code` is its `error` field."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        self.code = str(body.get("error", "unknown"))
        super().__init__(f"server said {status} {self.code}: {body.get('detail', '')}")


class ConflictError(ServerError):
    """409: stale base revision, name taken, not empty ... `body` says which."""

    errno = _errno.EEXIST


class StaleRevisionError(ConflictError):
    @property
    def current_rev(self) -> int:
        return int(self.body.get("current_rev", 0))


class MissingChunksError(ServerError):
    @property
    def fingerprints(self) -> list[str]:
        return [c["fingerprint"] for c in self.body.get("chunks", [])]


class CursorExpiredError(ServerError):
    """410: the journal no longer reaches back to our cursor; resync from a snapshot."""


_BY_CODE: dict[str, tuple[type[ServerError], int]] = {
    "stale_revision": (StaleRevisionError, _errno.EEXIST),
    "name_exists": (ConflictError, _errno.EEXIST),
    "not_empty": (ConflictError, _errno.ENOTEMPTY),
    "not_a_directory": (ConflictError, _errno.ENOTDIR),
    "is_a_directory": (ConflictError, _errno.EISDIR),
    "invalid_move": (ConflictError, _errno.EINVAL),
    "shared_folder": (ConflictError, _errno.EXDEV),
    "missing_chunks": (MissingChunksError, _errno.EIO),
    "cursor_expired": (CursorExpiredError, _errno.EIO),
    "not_found": (ServerError, _errno.ENOENT),
    "quota_exceeded": (ServerError, _errno.EDQUOT),
    "invalid": (ServerError, _errno.EINVAL),
}


def from_response(status: int, body: dict[str, Any]) -> ServerError:
    cls, err = _BY_CODE.get(str(body.get("error")), (ServerError, _errno.EIO))
    exc = cls(status, body)
    exc.errno = err
    return exc


@contextlib.asynccontextmanager
async def one_error() -> AsyncIterator[None]:
    """Around a nursery: raise the first real error of its tasks as itself, not
    wrapped in an ExceptionGroup, so callers can catch OfflineError, ConflictError ...
    as if the work had been done by one task."""
    try:
        yield
    except BaseExceptionGroup as group:
        first = next((e for e in _leaves(group) if not isinstance(e, trio.Cancelled)), None)
        if first is None:
            raise
        raise first from None


def _leaves(group: BaseExceptionGroup) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
