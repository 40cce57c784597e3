"""The one definition of a valid name, shared by the server, the client and the mount.

A name is 1 to 255 bytes of UTF-8 with no `/` or NUL and is not `.` or `..`
(ARCHITECTURE.md). The same rule everywhere means a name the mount accepts is never
refused later by the server, where the refusal would surface as a failed upload.
"""

from __future__ import annotations

import re

NAME_MAX_BYTES = 255
PATH_MAX_BYTES = 4095
DEVICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.@()+-]{0,63}$")
"""A device name (X-Cloudfs-Device, `cloudfs mount --device`): it appears in
conflicted copies' names, so it is short and needs no quoting."""
DEVICE_RULE = "1-64 letters, digits, spaces or _.@()+-, starting with a letter or digit"
USER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
"""An account name (`cloudfs user add`, share invitations). Checked on the wire too, so a
name no account can have (NUL, newlines) is refused before it reaches the database."""


def name_problem(name: str) -> str | None:
    """Why `name` is not a valid entry name, or None when it is."""
    if name in ("", ".", ".."):
        return f"{name!r} is not a usable name"
    if "/" in name:
        return "a name may not contain '/'"
    if "\0" in name:
        return "a name may not contain NUL"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "a name must be valid UTF-8 (lone surrogates are not)"
    if len(encoded) > NAME_MAX_BYTES:
        return f"a name is at most {NAME_MAX_BYTES} bytes of UTF-8, this one is {len(encoded)}"
    return None


def check_name(name: str) -> str:
    """Return `name` unchanged, or raise ValueError saying what is wrong with it."""
    problem = name_problem(name)
    if problem:
        raise ValueError(problem)
    return name


def check_text(value: str, *, max_bytes: int, what: str) -> str:
    """Free text fields (symlink targets, device names): UTF-8, no NUL, bounded."""
    if "\0" in value:
        raise ValueError(f"{what} may not contain NUL")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} must be valid UTF-8") from None
    if len(encoded) > max_bytes:
        raise ValueError(f"{what} is at most {max_bytes} bytes")
    return value


def split_path(path: str) -> list[str]:
    """Split an absolute drive path into checked names; '/' is the root (no names)."""
    if not path.startswith("/"):
        raise ValueError("a path must start with '/'")
    check_text(path, max_bytes=PATH_MAX_BYTES, what="a path")
    return [check_name(part) for part in path.split("/") if part]
