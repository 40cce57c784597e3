"""Checks of what the user typed: argparse `type=` functions for option values (a bad
one is a usage error, exit 2, naming the option) and the checks of a mountpoint that
`cloudfs mount` runs both in the foreground and in the mount process it starts."""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from cloudfs.backend.daily import control
from cloudfs.backend.errors import UserError
from cloudfs.backend.protocol.names import DEVICE_RE, DEVICE_RULE

from .errors import UsageError

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str, *, allow_zero: bool = False) -> int:
    """'10G', '512M', '1.5GiB', '4096' -> bytes."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = value[-1:] if value[-1:] in "KMGT" else ""
    try:
        number = float(value[: len(value) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (try 10G, 512M or a number of bytes)") from None
    if number != number or number in (float("inf"), float("-inf")) or number < 0 or (number == 0 and not allow_zero):
        raise argparse.ArgumentTypeError(f"{text!r}: the size must be {'zero or ' if allow_zero else ''}positive")
    return int(number * _UNITS[unit])


def size(text: str) -> int:
    return parse_size(text)


def quota(text: str) -> int:
    return parse_size(text, allow_zero=True)


def _number(text: str, kind: type, what: str, ok, rule: str):  # noqa: ANN001 - kind is int or float
    """Parse `text` as `kind` and check it with `ok`; argparse prints the message."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"{text!r}: {rule}")
    return value


def seconds(text: str) -> float:
    """A timeout: a positive number of seconds."""
    return _number(text, float, "a number of seconds", lambda v: 0 < v < float("inf"),
                   "a timeout must be a positive number of seconds")


def days(text: str) -> float:
    """A retention period: 0 to 100 years, in days."""
    return _number(text, float, "a number of days", lambda v: 0 <= v <= 36_500, "give a number of days from 0 to 36500")


def fraction(text: str) -> float:
    return _number(text, float, "a number", lambda v: 0 < v <= 1,
                   "give a fraction above 0, at most 1 (0.25 is a quarter)")


def count(text: str) -> int:
    """A number of things, 0 included."""
    return _number(text, int, "a whole number", lambda v: v >= 0, "it cannot be negative")


def positive_int(text: str) -> int:
    return _number(text, int, "a whole number", lambda v: v >= 1, "it must be at least 1")


def port(text: str) -> int:
    return _number(text, int, "a port number", lambda v: 0 <= v <= 65535, "a port is 0-65535 (0 picks a free one)")


def server_url(text: str) -> str:
    """http(s)://HOST[:PORT][/PATH]: the URL `cloudfs server` printed."""
    url = text.strip()
    if "://" not in url:
        hint = f"; did you mean http://{url}?" if url and " " not in url else ""
        raise argparse.ArgumentTypeError(f"{text!r} is not a server URL (expected http://HOST:PORT{hint})")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise argparse.ArgumentTypeError(f"{text!r}: a server URL starts with http:// or https://, "
                                          f"not {parts.scheme}://")
    if not parts.hostname:
        raise argparse.ArgumentTypeError(f"{text!r}: the URL has no host (expected http://HOST:PORT)")
    try:
        parts.port
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the port is not a number from 1 to 65535") from None
    if parts.query or parts.fragment:
        raise argparse.ArgumentTypeError(f"{text!r}: a server URL has no ?query or #fragment")
    return url


def device(text: str) -> str:
    if not DEVICE_RE.match(text):
        raise argparse.ArgumentTypeError(f"{text!r}: a device name is {DEVICE_RULE}")
    return text


def user_name(text: str) -> str:
    from cloudfs.server.users import name_problem

    problem = name_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def token(given: str | None, *, hint: str = "`cloudfs user add NAME` prints one", where: str | None = None) -> str:
    """The bearer token from --token or CLOUDFS_TOKEN; surrounding whitespace (a pasted
    newline) is dropped, anything else that cannot go in a header is refused here."""
    value = (given if given is not None else os.environ.get("CLOUDFS_TOKEN", "")).strip()
    if not value:
        raise UsageError(f"no token: pass --token TOKEN or set CLOUDFS_TOKEN ({hint})")
    if not value.isascii() or not value.isprintable() or " " in value:
        where = where or f"the token in {'--token' if given is not None else 'CLOUDFS_TOKEN'}"
        raise UsageError(f"{where} has spaces or characters a token never has: paste it again")
    return value


def mountpoint(path: Path, *, allow_non_empty: bool) -> Path:
    """The directory to mount on, absolute: it exists, is a directory, is not mounted
    on already and is empty (files there would be hidden under the drive). A cloudfs
    mount whose process died is cleared first: its data is in the cache."""
    path = Path(os.path.abspath(path))
    if control.is_dead_mount(path):
        if control.mount_type(path) != control.FS_TYPE:
            raise UserError(f"{path} cannot be reached: a mount it is in no longer answers "
                            f"(transport endpoint is not connected); unmount that first")
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True, timeout=30)
    if not path.exists():
        raise UserError(f"{path} does not exist: create it first (mkdir -p {path})")
    path = path.resolve()
    if not path.is_dir():
        raise UserError(f"{path} is not a directory: mount on an empty directory")
    kind = control.mount_type(path)
    if kind == control.FS_TYPE:
        raise UserError(f"{path} is already a cloudfs mount (`cloudfs status {path}` shows it, "
                        f"`cloudfs umount {path}` ends it)")
    if kind is not None or os.path.ismount(path):
        raise UserError(f"{path} is already a mount point ({kind or 'mounted'}): mount on an empty directory")
    if not allow_non_empty:
        try:
            entries = len(os.listdir(path))
        except OSError as exc:
            raise UserError(f"{path} cannot be listed ({exc.strerror}): mount on a directory you can read") from None
        if entries:
            raise UserError(f"{path} is not empty ({entries} entr{'y' if entries == 1 else 'ies'} would be hidden "
                            f"under the drive): "
                            f"mount on an empty directory, or pass --allow-non-empty")
    return path
