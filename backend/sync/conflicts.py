"""Naming and counting conflicted copies, shared by the syncer (a commit the server
refused) and the follower (a remote change that lands on a name taken locally).

Nothing is ever dropped in a conflict: the side that reached the server first keeps
the name, the other side's bytes move to a sibling named after the device and the day (and the
account, in a shared folder).
"""

from __future__ import annotations

import datetime
import os

import lmdb

from ..local.cache import Cache
from . import shared


def conflicted_name(name: str, device: str, cache: Cache, parent: int) -> str:
    """`NAME (conflicted copy, DEVICE, YYYY-MM-DD).EXT`, numbered when that is taken; in
    a shared folder, where several accounts write, `USER on DEVICE`."""
    if shared.namespace_of(cache, parent)[0] is not None:
        user = cache.get_meta("user_name")
        device = f"{user} on {device}" if user else device
    stem, ext = os.path.splitext(name)
    if stem == "" or name.startswith(".") and ext == name:
        stem, ext = name, ""
    day = datetime.date.today().isoformat()
    for n in range(1, 1000):
        suffix = "" if n == 1 else f" {n}"
        candidate = f"{stem} (conflicted copy, {device}, {day}{suffix}){ext}"
        if len(candidate.encode("utf-8", "surrogateescape")) > 255:
            keep = max(1, len(stem) - (len(candidate.encode("utf-8", "surrogateescape")) - 255) - 1)
            candidate = f"{stem[:keep]} (conflicted copy, {device}, {day}{suffix}){ext}"
        if cache.lookup(parent, candidate) is None:
            return candidate
    raise OSError(f"too many conflicted copies of {name!r}")


def count_conflict(cache: Cache, txn: lmdb.Transaction) -> None:
    """Persisted so `cloudfs status` reports every conflict this cache has seen."""
    raw = txn.get(b"conflicts", db=cache.meta)
    cache.set_meta(txn, "conflicts", str(int(bytes(raw)) + 1 if raw else 1))


def conflicts_seen(cache: Cache) -> int:
    return int(cache.get_meta("conflicts", "0") or 0)
