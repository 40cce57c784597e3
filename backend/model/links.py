"""Hard links in the device's mirror: one inode, several names.

The server keeps every extra name of a file as an *alias row* (server/tree.py). The
mirror does the same: each extra name is an *alias record*, an Inode of kind "link"
with its own ino, node id (the alias row's), parent, name and srv_parent/srv_name, so
the syncer pushes it like any node (created through POST /links, moved and deleted
like any node) and the follower applies alias rows to it. `extra["target"]` is the
ino of the inode it names, which lists its alias records in `extra["aliases"]`, oldest
first. An alias record has no content and no attributes of its own.

The kernel sees one inode under every name: the directory entry of an alias name maps
to the target's ino and carries the alias record's ino as a second number
(`Cache.record_at`), which is how a name-level operation finds the record. st_nlink is
1 + the aliases (`nlink`).

Invariant, as on the server: an inode with aliases has a name of its own. Whoever
removes that name promotes the oldest alias instead (`promote`): the inode takes its
place and the alias record goes. Every function here runs inside a write transaction
the caller holds, and reads through it (never across an await).
"""

from __future__ import annotations

import lmdb

from ..local.cache import ROOT_INO, Cache, Inode


def aliases(node: Inode) -> list[int]:
    """The alias records of an inode, oldest first."""
    return node.extra.get("aliases", [])


def nlink(node: Inode) -> int:
    """st_nlink: 0 for an orphan (unlinked, still open), else its names."""
    if node.parent == 0 and node.ino != ROOT_INO:
        return 0
    return 1 + len(aliases(node))


def kernel_ino(record: Inode) -> int:
    """The inode the kernel sees under a record's name."""
    return record.extra["target"] if record.kind == "link" else record.ino


def add_alias(cache: Cache, txn: lmdb.Transaction, target: Inode, parent: int, name: str, *,
              node_id: int = 0) -> Inode:
    """A new name for `target`; with `node_id`, one the server already has there."""
    alias = Inode(ino=cache.new_ino(txn), parent=parent, name=name, kind="link", mode=0,
                  extra={"target": target.ino})
    if node_id:
        cache.bind_node_id(txn, alias, node_id)
        alias.srv_parent, alias.srv_name = parent, name
    cache.put(txn, alias, create=True)
    cache.place(txn, alias)
    target.extra["aliases"] = aliases(target) + [alias.ino]
    cache.put(txn, target)
    return alias


def unplace(cache: Cache, txn: lmdb.Transaction, record: Inode) -> None:
    """Remove the directory entry of a record, if the entry is still the record's."""
    if cache.record_at(record.parent, record.name, txn) == record.ino:
        cache.unlink(txn, record.parent, record.name)


def drop_alias(cache: Cache, txn: lmdb.Transaction, alias: Inode) -> Inode | None:
    """An extra name goes: its entry, its record and its place in the target's list.
    Returns the target, if it is still there."""
    unplace(cache, txn, alias)
    target = _detach_from_target(cache, txn, alias)
    cache.drop(txn, alias)
    return target


def _detach_from_target(cache: Cache, txn: lmdb.Transaction, alias: Inode) -> Inode | None:
    target = cache.get(alias.extra.get("target", 0), txn)
    if target is not None and alias.ino in aliases(target):
        target.extra["aliases"] = [a for a in aliases(target) if a != alias.ino]
        cache.put(txn, target)
    return target


def promote(cache: Cache, txn: lmdb.Transaction, node: Inode, to: int = 0) -> Inode | None:
    """`node`'s own entry is gone (the caller removed it) and it has aliases: it takes the
    place of the oldest (or of alias record `to`), whose record goes. Returns that record
    (the caller tells the server if it had a node id), or None if none was left after all."""
    while aliases(node):
        first_ino = to if to in aliases(node) else aliases(node)[0]
        rest = [a for a in aliases(node) if a != first_ino]
        node.extra["aliases"] = rest
        first = cache.get(first_ino, txn)
        if first is None:
            continue
        node.parent, node.name = first.parent, first.name
        cache.drop(txn, first)
        cache.place(txn, node)  # over the alias's own entry
        cache.put(txn, node)
        return first
    node.extra.pop("aliases", None)
    cache.put(txn, node)
    return None


def repoint(cache: Cache, txn: lmdb.Transaction, alias: Inode, target: Inode) -> None:
    """The alias names another inode now (its inode got a new ino here)."""
    if alias.extra.get("target") == target.ino:
        return
    placed = cache.record_at(alias.parent, alias.name, txn) == alias.ino
    _detach_from_target(cache, txn, alias)
    alias.extra["target"] = target.ino
    target.extra["aliases"] = aliases(target) + [alias.ino]
    cache.put(txn, target)
    cache.put(txn, alias)
    if placed:
        cache.place(txn, alias)


def move_aliases(cache: Cache, txn: lmdb.Transaction, old: Inode, new: Inode) -> list[Inode]:
    """Every name of `old` but its own now names `new` (a remote change gave the file a
    new ino here). The caller stores `old` (or drops it). Returns the alias records,
    whose names the kernel must look up again."""
    moved = []
    for ino in aliases(old):
        alias = cache.get(ino, txn)
        if alias is None:
            continue
        placed = cache.record_at(alias.parent, alias.name, txn) == alias.ino
        alias.extra["target"] = new.ino
        cache.put(txn, alias)
        if placed:
            cache.place(txn, alias)
        moved.append(alias)
    new.extra["aliases"] = aliases(new) + [alias.ino for alias in moved]
    old.extra.pop("aliases", None)
    cache.put(txn, new)
    return moved
