"""Domain errors of the API, each with its HTTP status and a stable error code.

Handlers raise these; one exception handler in `app.py` turns them into the JSON body
`{"error": code, "detail": ..., "field": ...}`. Anything else escaping a handler is a bug.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, detail: str, *, field: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "detail": self.detail, "field": self.field, **self.extra}


class BadRequest(ApiError):
    status, code = 400, "bad_request"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class Forbidden(ApiError):
    """The caller may see this but not change it: a viewer of a shared folder, or a
    member doing what only its owner may."""

    status, code = 403, "forbidden"


class ReadOnly(Forbidden):
    code = "read_only"


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    """Base revision is stale, or the name is taken: the client decides what to do."""

    status, code = 409, "conflict"


class StaleRevision(Conflict):
    code = "stale_revision"


class NameExists(Conflict):
    code = "name_exists"


class NotEmpty(Conflict):
    code = "not_empty"


class NotADirectory(Conflict):
    code = "not_a_directory"


class IsADirectory(Conflict):
    code = "is_a_directory"


class InvalidMove(Conflict):
    code = "invalid_move"


class SharedFolderConflict(Conflict):
    """Sharing inside a shared folder, a shared folder inside another, deleting a
    shared folder others still have ... (shares.py)."""

    code = "shared_folder"


class Gone(ApiError):
    """The cursor is older than the retained journal: resync from a snapshot."""

    status, code = 410, "cursor_expired"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class MissingChunks(ApiError):
    status, code = 422, "missing_chunks"


class Invalid(ApiError):
    status, code = 422, "invalid"


class QuotaExceeded(ApiError):
    status, code = 507, "quota_exceeded"


class StoreUnavailable(ApiError):
    status, code = 503, "store_unavailable"



class Collecting(ApiError):
    """A chunk is being deleted by the collector right now: ask again in a moment."""

    status, code = 503, "collecting"
