"""Shared folders on the device: which namespace an inode is in, the role there, and the
cursor of every namespace the device follows.

The mirror is one tree of node ids. A shared folder's root is an ordinary directory
inode at the place this account mounted it, marked with its namespace and this
account's role (`extra["ns"]`, `extra["role"]`, from the server's `ns` and `role` on
that node). Everything below it is in that namespace; everything else is in the
account's own tree. So an inode's namespace is found by walking up to the first marked
directory (`namespace_of`): a few LMDB reads, as deep as the path.

Cursors: one per namespace, in meta `cursors` (JSON, namespace id -> seq), saved with
every applied batch. Cache format 4 (cache_format.py) moved the one cursor of earlier
formats there, under the account's own namespace.
"""

from __future__ import annotations

import json
from typing import Any

import lmdb

from ..local.cache import ROOT_INO, Cache, Inode

MAX_DEPTH = 4096
WRITERS = ("owner", "editor")


def mark(local: Inode, remote: Any) -> bool:
    """Record (or clear) the shared-folder marks the server sent with `remote`; True when
    they changed. Only for a node placed in this account's tree (a shared folder's own
    entries speak of its root without them: see follower.apply)."""
    ns, role = getattr(remote, "ns", None), getattr(remote, "role", None)
    if (local.extra.get("ns"), local.extra.get("role")) == (ns, role):
        return False
    if ns is None:
        local.extra.pop("ns", None)
        local.extra.pop("role", None)
    else:
        local.extra["ns"], local.extra["role"] = ns, role
    return True


def root_of(cache: Cache, ino: int, txn: lmdb.Transaction | None = None) -> Inode | None:
    """The root of the shared folder `ino` is in (itself, for a root), or None in the
    account's own tree (an orphan too: its namespace no longer matters)."""
    for _ in range(MAX_DEPTH):
        node = cache.get(ino, txn)
        if node is None or node.ino == ROOT_INO:
            return None
        if node.extra.get("ns"):
            return node
        if not node.parent:
            return None
        ino = node.parent
    return None


def namespace_of(cache: Cache, ino: int, txn: lmdb.Transaction | None = None) -> tuple[int | None, str]:
    """The shared namespace `ino` is in and this account's role there, or (None, "owner")
    in the account's own tree."""
    root = root_of(cache, ino, txn)
    if root is None:
        return None, "owner"
    return root.extra["ns"], root.extra.get("role") or "viewer"


def read_only(cache: Cache, ino: int) -> bool:
    """Inside a shared folder where this account is a viewer: nothing may change."""
    return namespace_of(cache, ino)[1] not in WRITERS


def load_cursors(cache: Cache) -> dict[int, int]:
    raw = cache.get_meta("cursors")
    return {int(ns): int(cursor) for ns, cursor in json.loads(raw).items()} if raw else {}


def save_cursors(cache: Cache, txn: lmdb.Transaction, cursors: dict[int, int]) -> None:
    cache.set_meta(txn, "cursors", json.dumps({str(ns): cursor for ns, cursor in sorted(cursors.items())}))
