"""The POSIX columns of a node or journal row (migration 0002) and their wire form."""

from __future__ import annotations

import json

from .sql import Row


def posix_attrs(row: Row) -> dict:
    """Owner, device number, access time and xattrs of a row, as wire.Node fields."""
    return dict(uid=row["uid"], gid=row["gid"], rdev=row["rdev"], atime_ns=row["atime_ns"],
                xattrs=json.loads(row["xattrs"]) if row["xattrs"] else {})


def xattrs_column(xattrs: dict[str, str]) -> str | None:
    """Stored sorted, so equal sets compare equal as text; NULL when empty."""
    return json.dumps(xattrs, sort_keys=True, separators=(",", ":")) if xattrs else None
