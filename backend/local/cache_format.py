"""The device cache's format version, and the migrations that bring an older cache up
to it in place: pending uploads, dirty blocks and the cursor are never thrown away.

Format 1 is the first release's (no version recorded). Format 2 adds POSIX attributes
to every inode (owner, device number, access time, extended attributes, each also as
the server last acknowledged it); an inode of format 1 had none of them, which is
exactly "the drive's owner, no xattrs", so it is rewritten with those values. Format 3
adds hard links (links.py): alias records of kind "link", and directory entries that
carry an alias record's ino after the inode's. A cache of format 2 has neither, so it
is only marked; the number tells an older release to keep its hands off. Format 4
adds shared folders (shared.py): a cursor per namespace (meta `cursors`), into which
the one cursor of format 3 moves under the account's own namespace (its id), and
shared folders' roots marked in their inode's `extra`. A cache whose account is not
recorded yet keeps its cursor where it was; the follower moves it once it knows the
account (`Follower.__init__`).

Format 5 keeps dirty blocks of 32 KiB instead of 128 KiB (cache.BLOCK_SIZE: what a random
writer pays per write) in a database of their own, `blocks32`; each block of the old
`blocks` is split into its parts there, a batch per transaction (a full cache's dirty
blocks in one transaction would pass LMDB's limit of dirty pages), each deleted from
the old database in the transaction that writes its parts, so a migration cut short
goes on where it stopped. A part past the old block's bytes but inside the file is
written empty, as the old block said: zeros there, not the base's bytes.

Format 6 adds settled files (`Cache.settle`, database `settled`): blocks kept after their
file's commit as the cached copy of that version, clean. A cache of format 5 has none, so
it is only marked; an older release must not open one that has some, as it would count
their blocks as changes not uploaded, for ever.

Format 7 keeps each clean chunk in pieces (chunkcache.PIECE bytes, each its own value) in a
database of its own, `chunk_pieces`, and its length in another, `chunk_lengths`: a read of
a few pages touches one piece, not the whole chunk, and a mount's start reads the lengths
alone (chunkcache.py). Each whole chunk of the
old `chunks` is checked against its sum and cut into pieces there, a batch per
transaction, deleted from the old database in the transaction that writes its pieces (a
damaged one is only deleted: it is fetched again when read). Chunks of a cache from
before sums (no `chunk_format` recorded) are dropped, as they always were.

A cache written by a newer cloudfs is refused with an error naming it, never
guessed at.

The batched steps call `working(done, total)` after each batch: a large cache's migration
takes about 2 s per GiB at a mount's start, longer than a service manager waits for a
start by default, and the mount says it is still working (fs/mount.py) and how far it got.
"""

from __future__ import annotations

import json
import logging
from typing import Callable

import lmdb

from ..errors import CloudFsError
from . import chunkcache
from .cache import _QQ, BLOCK_SIZE, Cache, Inode

log = logging.getLogger("cloudfs.cache")

FORMAT = 7
OLD_BLOCK_SIZE = 128 * 1024
MOVE_BATCH = 256
"""Old blocks moved per transaction in the step to format 5 (at most 32 MiB)."""
MOVE_BYTES = 32 << 20
"""Bytes of whole chunks cut into pieces per transaction in the step to format 7."""
_KEY = "format"


class CacheFormatError(CloudFsError):
    """The cache was written by a newer release than this one."""


Working = Callable[[int, int], None]
"""Told (done, total) after each batch of a batched step, in the step's own unit."""


def _quiet(done: int, total: int) -> None:
    pass


def _to_2(cache: Cache, txn: lmdb.Transaction) -> int:
    rewritten = 0
    for key, raw in list(txn.cursor(db=cache.inodes)):
        txn.put(key, Inode.decode(raw).encode(), db=cache.inodes)  # the new fields, at their defaults
        rewritten += 1
    return rewritten


def _marked_only(cache: Cache, txn: lmdb.Transaction) -> int:
    """Formats 3 and 6: nothing of the format before changes meaning (module docstring)."""
    return 0


def _to_4(cache: Cache, txn: lmdb.Transaction) -> int:
    cursor, user_id = txn.get(b"cursor", db=cache.meta), txn.get(b"user_id", db=cache.meta)
    if cursor is not None and user_id is not None:
        cache.set_meta(txn, "cursors", json.dumps({bytes(user_id).decode(): int(bytes(cursor))}))
        txn.delete(b"cursor", db=cache.meta)
    return 0


def _to_5(cache: Cache, working: Working) -> int:
    """Split every 128 KiB dirty block into BLOCK_SIZE parts (module docstring); returns
    the old blocks moved. Runs its own transactions, a batch each."""
    old = cache.env.open_db(b"blocks")
    ratio = OLD_BLOCK_SIZE // BLOCK_SIZE
    moved = 0
    with cache.read() as txn:
        total = txn.stat(old)["entries"]
    while True:
        with cache.write() as txn:
            batch = []
            for key, value in txn.cursor(db=old):
                batch.append((bytes(key), bytes(value)))
                if len(batch) >= MOVE_BATCH:
                    break
            if not batch:
                txn.drop(old, delete=True)
                return moved
            for key, value in batch:
                ino, block_no = _QQ.unpack(key)
                node = cache.get(ino, txn)
                start = block_no * OLD_BLOCK_SIZE
                end = max(start + len(value), node.size if node is not None else 0)
                for k in range(ratio):
                    if k and start + k * BLOCK_SIZE >= end:
                        break
                    cache.put_block(txn, ino, block_no * ratio + k, value[k * BLOCK_SIZE:(k + 1) * BLOCK_SIZE])
                txn.delete(key, db=old)
            moved += len(batch)
        working(moved, total)


def _to_7(cache: Cache, working: Working) -> int:
    """Cut every whole chunk into pieces (module docstring); returns the chunks moved.
    Runs its own transactions, a batch each."""
    old = cache.env.open_db(b"chunks")
    if cache.get_meta("chunk_format") != chunkcache.WHOLE_FORMAT:
        with cache.write() as txn:
            txn.drop(old, delete=True)
        return 0
    moved = done = 0
    with cache.read() as txn:
        total = txn.stat(old)["entries"]
    while True:
        with cache.write() as txn:
            batch, size = [], 0
            for key, value in txn.cursor(db=old):
                batch.append((bytes(key), value))
                size += len(value)
                if size >= MOVE_BYTES:
                    break
            if not batch:
                txn.drop(old, delete=True)
                cache.set_meta(txn, "chunk_format", chunkcache.FORMAT)
                return moved
            for key, value in batch:
                if chunkcache.piece_intact(value):
                    plain = memoryview(value)[chunkcache.SUM:]
                    chunkcache.write_sealed(txn, cache, key, len(plain), chunkcache.seal(plain))
                    moved += 1
                else:
                    log.warning("cached chunk %s is damaged on disk: dropped, it will be fetched again", key.hex())
                txn.delete(key, db=old)
            done += len(batch)
        working(done, total)


_MIGRATIONS: dict[int, Callable[[Cache, lmdb.Transaction], int]] = {2: _to_2, 3: _marked_only, 4: _to_4,
                                                                  6: _marked_only}
_BATCHED: dict[int, Callable[[Cache, Working], int]] = {5: _to_5, 7: _to_7}
"""Steps too big for one transaction: each runs its own, and may be cut short and run again."""


def upgrade(cache: Cache, working: Working | None = None) -> tuple[int, int]:
    """Bring `cache` to FORMAT, each step in its own transaction; returns (before, after).
    `working` hears of each batch of a batched step (module docstring)."""
    working = working or _quiet
    with cache.read() as txn:
        raw = txn.get(_KEY.encode(), db=cache.meta)
        empty = txn.stat(cache.inodes)["entries"] == 0
    version = int(raw) if raw is not None else (FORMAT if empty else 1)
    if version > FORMAT:
        raise CacheFormatError(f"the cache in {cache.path} has format {version}, written by a newer cloudfs "
                               f"(this one reads up to {FORMAT}); upgrade cloudfs or use another --cache")
    before = version
    while version < FORMAT:
        batched = _BATCHED.get(version + 1)
        count = batched(cache, working) if batched is not None else 0
        with cache.write() as txn:
            if batched is None:
                count = _MIGRATIONS[version + 1](cache, txn)
            version += 1
            cache.set_meta(txn, _KEY, str(version))
        log.info("cache %s migrated to format %d (%d %s rewritten)", cache.path, version, count,
                 {5: "dirty blocks", 7: "cached chunks"}.get(version, "inodes"))
    if raw is None and before == FORMAT:
        with cache.write() as txn:
            cache.set_meta(txn, _KEY, str(FORMAT))
    cache.sync()
    return before, version
