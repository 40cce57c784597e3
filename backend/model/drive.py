"""The drive as one device sees it: local-first namespace and content operations.

Every operation changes the LMDB mirror and appends to the outbox in one write
transaction, then returns: no FUSE request waits for the network except a read of
bytes that are not cached yet. The syncer (syncer.py) pushes the outbox to the
server in order, in the background.

Open files are counted here so an unlinked file stays readable until its last
handle is released (it becomes an orphan: parent 0, no directory entry).

Hard links (links.py): every name-level operation works on the *record* of a name
(`Cache.record_at`): the inode for its own name, an alias record for an extra one.
Content and attributes are always the inode's.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import stat
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import lmdb

from ..errors import (
    CloudFsError,
    CorruptChunkError,
    ExistsError,
    InvalidError,
    IsADirectoryError_,
    NotADirectoryError_,
    NotEmptyError,
    NotFoundError,
)
from ..local.cache import BLOCK_SIZE, ROOT_INO, Cache, Inode
from ..local.chunkcache import ChunkCache
from ..local.room import FULL_WAIT_S, NoSpaceError, Room  # noqa: F401 - FULL_WAIT_S, NoSpaceError: part of the drive's surface
from ..protocol.names import NAME_MAX_BYTES, name_problem
from ..sync import shared
from ..sync.conflicts import conflicted_name
from . import links
from . import xattrs as xattr_rules
from .content import Content
from .stale_names import StaleNames

log = logging.getLogger("cloudfs.drive")

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


class NameTooLongError(CloudFsError):
    errno = errno.ENAMETOOLONG


class QuotaExceededError(CloudFsError):
    errno = errno.EDQUOT


class NoAttributeError(CloudFsError):
    errno = errno.ENODATA


class XattrTooBigError(CloudFsError):
    errno = errno.E2BIG


class NotPermittedError(CloudFsError):
    errno = errno.EPERM


class ReadOnlyError(CloudFsError):
    """Inside a shared folder where this account is a viewer (shared.py)."""

    errno = errno.EROFS


class CrossDeviceError(CloudFsError):
    """Across a shared folder's boundary where the server cannot follow: a hard link, an
    exchange, a shared folder put inside another."""

    errno = errno.EXDEV


@dataclass(frozen=True)
class Owner:
    """Who a new node belongs to, in the wire's convention: -1 is the drive's owner
    (the mounting user on every device); any other number is kept as it is, as tar does."""

    uid: int = -1
    gid: int = -1


DRIVE_OWNER = Owner()
SPECIAL_KINDS = ("fifo", "chr", "blk", "sock")
RELATIME_NS = 24 * 3600 * 10**9


def check_local_name(name: str) -> None:
    problem = name_problem(name)
    if problem is None:
        return
    if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX_BYTES:
        raise NameTooLongError(problem)
    raise InvalidError(problem)


class Drive:
    def __init__(self, cache: Cache, chunks: ChunkCache, content: Content, *, device: str = "") -> None:
        self.cache = cache
        self.device = device
        self.chunks = chunks
        self.content = content
        self.open_count: dict[int, int] = {}
        self.writers: dict[int, int] = {}
        """Open handles that may write, per inode: a remote change to such a file waits
        (follower.py), since the kernel may still hold writes it has not sent us."""
        self.lookups: dict[int, int] = {}
        """The kernel's references per inode (lookup/create/readdirplus minus forget): an
        inode removed from the tree lives on, as an orphan, until both this and
        open_count reach zero, so an open() racing a rename never sees ENOENT."""
        self.stale = StaleNames()
        """Names the follower gave to something else since the kernel last looked them
        up: a removal through one is meant for what the kernel showed."""
        self.on_outbox = lambda: None  # the syncer's wake-up, set when it starts
        self.room = Room(chunks)
        self.room.on_pressure = lambda: self.on_outbox()
        self.on_written: Callable[[Inode], None] = lambda node: None
        """After each write (the streamer's `written`: a large file open for writing is
        uploaded while it is written)."""
        self.forget_size: Callable[[int, str], None] = lambda parent, name: None
        """Make the kernel forget a file's inode (the follower's invalidate_entry): after a
        refused write, its write-back cache still believes the refused bytes are there."""
        self.over_quota: set[int] = set()
        self.server_refused: Callable[[int], bool] = lambda ino: False
        """The server refused this file's upload for a quota this device cannot see coming
        (a shared folder's owner's): its fsync and close say EDQUOT until it goes up."""
        self._grown: set[int] = set()  # inodes written under a quota, for _growth
        """Files written past the quota since their last close or fsync. The write itself
        cannot carry EDQUOT (the kernel's write-back turns any error but ENOSPC into EIO),
        so the bytes are kept and the error comes with the close or fsync (`check_quota`)."""
        self.quota: tuple[int, int] | None = None
        """(quota, bytes used on the server) when the account has a quota, refreshed by
        the session: a write that would go over it gets EDQUOT here and now, not an
        upload refused later."""

    @contextlib.contextmanager
    def transaction(self) -> Iterator[lmdb.Transaction]:
        """A write transaction that wakes the syncer once it committed."""
        with self.cache.write() as txn:
            yield txn
        self.on_outbox()

    # --- lookups ---

    def get(self, ino: int) -> Inode:
        node = self.cache.get(ino)
        if node is None:
            raise NotFoundError(f"inode {ino} is gone")
        return node

    def lookup(self, parent: int, name: str) -> Inode:
        if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX_BYTES:
            raise NameTooLongError(f"a name is at most {NAME_MAX_BYTES} bytes")
        self._dir(parent)
        ino = self.cache.lookup(parent, name)
        if ino is None:
            raise NotFoundError(f"{name!r} not in directory inode {parent}")
        return self.get(ino)

    def looked_up(self, parent: int, name: str) -> Inode:
        """The kernel's LOOKUP: it shows what is under the name from now on."""
        try:
            node = self.lookup(parent, name)
        except NotFoundError:
            self.stale.renewed(parent, name, 0)
            raise
        self.stale.renewed(parent, name, node.ino)
        return node

    def readdir(self, ino: int) -> list[tuple[str, Inode]]:
        self._dir(ino)
        out = []
        for name, child in self.cache.children(ino):
            node = self.cache.get(child)
            if node is not None:
                out.append((name, node))
        return out

    def _dir(self, ino: int) -> Inode:
        node = self.get(ino)
        if node.kind != "dir":
            raise NotADirectoryError_(f"inode {ino} ({node.name!r}) is not a directory")
        return node

    def _live_dir(self, ino: int) -> Inode:
        """A directory a new name goes into: ENOENT once it was removed, as on a local disk
        for a program whose working directory was deleted. The follower removes a directory
        another device deleted while the kernel may still hold it (an open descriptor, a
        lookup in flight); what was made in it then could never reach the server, whose
        directory is gone, and sat there for good (soak, seed 360060)."""
        node = self._dir(ino)
        if node.parent == 0 and node.ino != ROOT_INO:
            raise NotFoundError(f"directory inode {ino} ({node.name!r}) was removed")
        return node

    # --- creating ---

    def _new(self, parent: int, name: str, kind: str, mode: int, target: str = "", *, owner: Owner = DRIVE_OWNER,
             rdev: int = 0) -> Inode:
        check_local_name(name)
        self._live_dir(parent)
        self.check_writable(parent)
        if self.cache.lookup(parent, name) is not None:
            raise ExistsError(f"{name!r} exists in directory inode {parent}")
        with self.transaction() as txn:
            return self._insert(txn, parent, name, kind, mode, target, owner=owner, rdev=rdev)

    def _insert(self, txn: lmdb.Transaction, parent: int, name: str, kind: str, mode: int, target: str = "", *,
                owner: Owner = DRIVE_OWNER, rdev: int = 0) -> Inode:
        """A new local node, queued for the syncer. In a setgid directory it takes the
        directory's group, and a new directory stays setgid, as on a local disk."""
        now = time.time_ns()
        gid, mode = owner.gid, mode & 0o7777
        directory = self.cache.get(parent)
        if directory is not None and directory.mode & stat.S_ISGID:
            gid = directory.gid
            if kind == "dir":
                mode |= stat.S_ISGID
        node = Inode(ino=self.cache.new_ino(txn), parent=parent, name=name, kind=kind, mode=mode,
                     size=len(target.encode("utf-8", "surrogateescape")) if kind == "symlink" else 0,
                     mtime_ns=now, ctime_ns=now, target=target, dirty=kind == "file", uid=owner.uid, gid=gid,
                     rdev=rdev, atime_ns=now)
        self.cache.put(txn, node, create=True)
        self.cache.link(txn, parent, name, node.ino)
        self.cache.enqueue(txn, {"op": "upload" if kind == "file" else "push", "ino": node.ino})
        self._touch_dir(txn, parent, now)
        return node

    def mkdir(self, parent: int, name: str, mode: int, owner: Owner = DRIVE_OWNER) -> Inode:
        return self._new(parent, name, "dir", mode, owner=owner)

    def create(self, parent: int, name: str, mode: int, owner: Owner = DRIVE_OWNER) -> Inode:
        return self._new(parent, name, "file", mode, owner=owner)

    def symlink(self, parent: int, name: str, target: str, owner: Owner = DRIVE_OWNER) -> Inode:
        return self._new(parent, name, "symlink", 0o777, target, owner=owner)

    def mknod(self, parent: int, name: str, kind: str, mode: int, rdev: int, owner: Owner = DRIVE_OWNER) -> Inode:
        """A FIFO, socket or device node: synced as metadata, never opened through us
        (the kernel serves a special file's I/O itself)."""
        if kind not in SPECIAL_KINDS:
            raise InvalidError(f"{kind!r} is not a special file kind")
        return self._new(parent, name, kind, mode, owner=owner, rdev=rdev if kind in ("chr", "blk") else 0)

    def link(self, ino: int, new_parent: int, new_name: str) -> Inode:
        """link(2): one more name for `ino`, an alias record queued for the syncer (which
        creates it on the server once the inode has a node id there)."""
        check_local_name(new_name)
        node = self.get(ino)
        if node.kind == "dir":
            raise NotPermittedError(f"inode {ino} ({node.name!r}) is a directory: no hard links to directories")
        if node.parent == 0 and node.ino != ROOT_INO:
            raise NotFoundError(f"inode {ino} ({node.name!r}) has no name left to link to")
        self._live_dir(new_parent)
        self.check_writable(new_parent)
        if shared.namespace_of(self.cache, ino)[0] != shared.namespace_of(self.cache, new_parent)[0]:
            raise CrossDeviceError(f"{node.name!r} and directory inode {new_parent} are on two sides of a shared "
                                   "folder's boundary: a file's names stay on one side")
        if self.cache.lookup(new_parent, new_name) is not None:
            raise ExistsError(f"{new_name!r} exists in directory inode {new_parent}")
        now = time.time_ns()
        with self.transaction() as txn:
            alias = links.add_alias(self.cache, txn, node, new_parent, new_name)
            node.ctime_ns = now
            self.cache.put(txn, node)
            self.cache.enqueue(txn, {"op": "push", "ino": alias.ino})
            self._touch_dir(txn, new_parent, now)
        return node

    def _touch_dir(self, txn: lmdb.Transaction, ino: int, now: int) -> None:
        """Directory mtimes are local only: the server derives them from its own changes."""
        node = self.cache.get(ino)
        if node is not None:
            node.mtime_ns = node.ctime_ns = now
            self.cache.put(txn, node)

    # --- removing ---

    def unlink(self, parent: int, name: str) -> None:
        node = self.lookup(parent, name)
        self.check_writable(parent)
        if node.kind == "dir":
            raise IsADirectoryError_(f"{name!r} is a directory")
        now = time.time_ns()
        with self.transaction() as txn:
            self._remove_name(txn, parent, name, now)
            self._touch_dir(txn, parent, now)

    def _remove_name(self, txn: lmdb.Transaction, parent: int, name: str, now: int) -> None:
        """A name leaves the tree. An extra name of a file goes alone; a file's own name
        while it has others: the file moves to the oldest of them, as the server would do
        (links.promote), told to the server as that alias's delete and the file's move."""
        record = self.cache.get(self.cache.record_at(parent, name, txn) or 0, txn)
        self.cache.unlink(txn, parent, name)
        if record is None:
            return
        shown_rev = self.stale.shown_rev(parent, name, record)
        self.stale.removed(parent, name)
        if record.kind == "link":
            target = links.drop_alias(self.cache, txn, record)
            self._forget_alias(txn, record)
            if target is not None:
                target.ctime_ns = now
                self.cache.put(txn, target)
        elif links.aliases(record):
            gone = links.promote(self.cache, txn, record)
            if gone is not None:
                self._forget_alias(txn, gone)
            record.ctime_ns = now
            self.cache.put(txn, record)
            self.cache.enqueue(txn, {"op": "push", "ino": record.ino})
        else:
            self._forget(txn, record, rev=shown_rev)

    def _forget_alias(self, txn: lmdb.Transaction, alias: Inode) -> None:
        if alias.node_id:
            self.cache.enqueue(txn, {"op": "delete", "ino": alias.ino, "node_id": alias.node_id, "rev": None,
                                     **self._server_name(txn, alias)})
        else:
            self._unland(txn, alias)

    def rmdir(self, parent: int, name: str) -> None:
        node = self.lookup(parent, name)
        self.check_writable(parent)
        if node.kind != "dir":
            raise NotADirectoryError_(f"{name!r} is not a directory")
        if self.cache.has_children(node.ino):
            raise NotEmptyError(f"{name!r} is not empty")
        now = time.time_ns()
        with self.transaction() as txn:
            self._remove_name(txn, parent, name, now)
            self._touch_dir(txn, parent, now)

    def _forget(self, txn: lmdb.Transaction, node: Inode, rev: int | None = None) -> None:
        """The node left the tree: tell the server, and drop it unless still open. `rev`:
        the revision the removal was meant for, when the kernel still showed another
        (stale_names.py)."""
        if node.bound:
            # `rev`: the server refuses the delete if another device committed since,
            # so an edit made elsewhere survives this delete.
            guard = (node.rev if rev is None else rev) if node.kind == "file" else None
            self.cache.enqueue(txn, {"op": "delete", "ino": node.ino, "node_id": node.node_id, "rev": guard,
                                     "t": time.time(), **self._server_name(txn, node)})
        else:
            self._unland(txn, node)
        if self.open_count.get(node.ino) or self.lookups.get(node.ino):
            node.parent = 0
            self.cache.put(txn, node)
        else:
            self.chunks.dirty_bytes -= self._dirty_size(txn, node)
            self.cache.drop(txn, node)

    def _unland(self, txn: lmdb.Transaction, node: Inode) -> None:
        """A new node whose create may have landed with its answer lost: no retry of it
        will go now, so the syncer looks for what it made (syncer._unland)."""
        tried = node.extra.get("first_try")
        if tried:
            self.cache.enqueue(txn, {"op": "unland", "ino": node.ino, "since": tried["at"], "places": tried["places"],
                                     "shape": tried.get("shape"), "after": tried.get("after")})

    def _server_name(self, txn: lmdb.Transaction, node: Inode) -> dict:
        """Where the node is on the server once the entries before its delete have gone:
        a change queued after the delete that puts something at that name must wait for it
        (the syncer lets other changes pass a delete held by the mass-delete guard)."""
        parent = self.cache.get(node.parent, txn)
        return {"parent_node": parent.node_id if parent is not None else None, "name": node.name}

    def _dirty_size(self, txn: lmdb.Transaction, node: Inode) -> int:
        return self.cache.drop_blocks(txn, node.ino, from_block=0) if node.kind == "file" else 0

    # --- renaming ---

    def rename(self, old_parent: int, old_name: str, new_parent: int, new_name: str, flags: int) -> None:
        if flags & RENAME_EXCHANGE:
            self._exchange(old_parent, old_name, new_parent, new_name)
            return
        check_local_name(new_name)
        node = self.lookup(old_parent, old_name)
        record = self.cache.get(self.cache.record_at(old_parent, old_name) or 0) or node
        self._live_dir(new_parent)
        if node.kind == "dir" and self.cache.within(new_parent, node.ino):
            raise InvalidError(f"cannot move {old_name!r} into its own subtree")
        self._check_move(node, old_parent, new_parent)
        victim_ino = self.cache.lookup(new_parent, new_name)
        victim = self.cache.get(victim_ino) if victim_ino is not None else None
        if victim is not None and victim.ino == node.ino:
            return  # two names of one inode (or the same name): rename(2) does nothing
        if victim is not None:
            if flags & RENAME_NOREPLACE:
                raise ExistsError(f"{new_name!r} exists")
            if victim.kind == "dir" and node.kind != "dir":
                raise IsADirectoryError_(f"{new_name!r} is a directory")
            if victim.kind != "dir" and node.kind == "dir":
                raise NotADirectoryError_(f"{new_name!r} is not a directory")
            if victim.kind == "dir" and self.cache.has_children(victim.ino):
                raise NotEmptyError(f"{new_name!r} is not empty")
        now = time.time_ns()
        with self.transaction() as txn:
            if victim is not None:
                self._remove_name(txn, new_parent, new_name, now)
            self.cache.unlink(txn, old_parent, old_name)
            record.parent, record.name = new_parent, new_name
            self.cache.place(txn, record)
            node.ctime_ns = now
            self.cache.put(txn, node)
            self.cache.put(txn, record)
            self.cache.enqueue(txn, {"op": "push", "ino": record.ino})
            self._touch_dir(txn, old_parent, now)
            self._touch_dir(txn, new_parent, now)

    def _exchange(self, old_parent: int, old_name: str, new_parent: int, new_name: str) -> None:
        """RENAME_EXCHANGE: both names stay, their nodes swap places (the syncer sends it
        to the server as one exchange, syncer._move)."""
        a, b = self.lookup(old_parent, old_name), self.lookup(new_parent, new_name)
        if a.ino == b.ino:
            return
        self.check_writable(old_parent, new_parent)
        if a.extra.get("ns") or b.extra.get("ns") or \
                shared.namespace_of(self.cache, old_parent)[0] != shared.namespace_of(self.cache, new_parent)[0]:
            raise CrossDeviceError(f"{old_name!r} and {new_name!r} cannot be exchanged across a shared folder's boundary")
        if a.kind == "dir" and self.cache.within(new_parent, a.ino) or \
                b.kind == "dir" and self.cache.within(old_parent, b.ino):
            raise InvalidError(f"cannot exchange {old_name!r} and {new_name!r}: one contains the other")
        ra = self.cache.get(self.cache.record_at(old_parent, old_name) or 0) or a
        rb = self.cache.get(self.cache.record_at(new_parent, new_name) or 0) or b
        now = time.time_ns()
        with self.transaction() as txn:
            ra.parent, ra.name, rb.parent, rb.name = new_parent, new_name, old_parent, old_name
            for node in (a, b):
                node.ctime_ns = now
                self.cache.put(txn, node)
            for record in (ra, rb):
                self.cache.place(txn, record)
                self.cache.put(txn, record)
                self.cache.enqueue(txn, {"op": "push", "ino": record.ino})
            self._touch_dir(txn, old_parent, now)
            self._touch_dir(txn, new_parent, now)

    def check_writable(self, *inos: int) -> None:
        """EROFS inside a shared folder where this account is a viewer: the server would
        refuse the change, and nothing is kept here that cannot be uploaded."""
        for ino in inos:
            ns, role = shared.namespace_of(self.cache, ino)
            if ns is not None and role not in shared.WRITERS:
                raise ReadOnlyError(f"inode {ino} is in a shared folder where this account is a {role}")

    def _check_move(self, node: Inode, old_parent: int, new_parent: int) -> None:
        """A move between namespaces is fine (the server gives the chunks along), but no
        shared folder may end up inside another, and a file's names (hard links) stay
        on one side: the server refuses both (crossing.check_movable), and EXDEV lets
        mv(1) copy instead."""
        self.check_writable(old_parent, new_parent)
        into = shared.namespace_of(self.cache, new_parent)[0]
        if into == shared.namespace_of(self.cache, old_parent)[0]:
            return
        inside: set[int] = set()
        stack = [node]
        for _ in range(10_000_000):
            if not stack:
                break
            here = stack.pop()
            inside.add(here.ino)
            if into is not None and here.extra.get("ns"):
                raise CrossDeviceError(f"{here.name!r} is a shared folder: it cannot go inside another")
            if here.kind == "dir":
                stack.extend(c for c in map(self.cache.get, (i for _, i in self.cache.entries(here.ino))) if c)
        for ino in inside:
            here = self.cache.get(ino)
            names = links.aliases(here) if here is not None and here.kind == "file" else []
            if here is not None and here.kind == "link":
                names = [int(here.extra.get("target", 0))]
            if any(other not in inside for other in names):
                raise CrossDeviceError(f"{here.name!r} has another name outside {node.name!r}: a file's names stay "
                                       "on one side of a shared folder's boundary")

    # --- attributes and content ---

    def setattr(self, ino: int, *, size: int | None = None, mode: int | None = None, mtime_ns: int | None = None,
                atime_ns: int | None = None, uid: int | None = None, gid: int | None = None) -> Inode:
        """chmod, chown, utimensat and truncate. Who may do which was checked by the
        kernel (the mount runs with default_permissions), as was clearing setuid/setgid
        on a chown or a write by someone else: it sends the new mode with the change."""
        node = self.get(ino)
        self.check_writable(ino)
        if size is not None and node.kind == "dir":
            raise IsADirectoryError_(f"inode {ino} is a directory")
        if size is not None and size != node.size:
            self._revive_if_orphaned(node)
        with self.transaction() as txn:
            if size is not None and size != node.size:
                self.content.truncate(txn, node, size)
                node.mtime_ns = time.time_ns()
                self.cache.enqueue(txn, {"op": "upload", "ino": ino})
            if mode is not None:
                node.mode = mode & 0o7777
            if mtime_ns is not None:
                node.mtime_ns = mtime_ns
            if atime_ns is not None:
                node.atime_ns = atime_ns
                node.extra["atime_set"] = True
            if uid is not None:
                node.uid = uid
            if gid is not None:
                node.gid = gid
            node.ctime_ns = time.time_ns()
            self.cache.put(txn, node)
            if node.attrs_pending() and not node.dirty:
                self.cache.enqueue(txn, {"op": "push", "ino": ino})
        return node

    async def read(self, ino: int, off: int, size: int, *, readahead: int = 0) -> bytes:
        node = self.get(ino)
        if node.atime_ns <= max(node.mtime_ns, node.ctime_ns) or time.time_ns() - node.atime_ns > RELATIME_NS:
            self._accessed(node)
        try:
            return await self.content.read(node, off, size, readahead=readahead)
        except CorruptChunkError:
            log.error("read of %r (inode %d, node %d rev %d) at %d failed: a chunk of it is corrupt in the store",
                      node.name, ino, node.node_id, node.rev, off)
            raise

    async def peek(self, ino: int, off: int, size: int) -> bytes:
        """The bytes a read would return, not counted as an access (the mount's
        read-around, fs/pagecache.py)."""
        return await self.content.read(self.get(ino), off, size)

    async def write(self, ino: int, off: int, data: bytes) -> int:
        node = self.get(ino)
        # A block first written in part is filled with the bytes under it: the cache grows
        # by up to whole blocks, not by len(data).
        span = ((off + len(data) - 1) // BLOCK_SIZE - off // BLOCK_SIZE + 1) * BLOCK_SIZE if data else 0
        await self._make_room(node, off, span)

        def in_txn(txn: lmdb.Transaction) -> None:
            self._revive_if_orphaned(node, txn)  # here, after the awaits: a delete may arrive during them
            node.mtime_ns = node.ctime_ns = time.time_ns()
            if not node.dirty:  # clean -> dirty: queue an upload now, so it survives a crash
                self.cache.enqueue(txn, {"op": "upload", "ino": node.ino})

        try:
            await self.content.write(node, off, data, in_txn)
        finally:
            self.room.written(span)
        self.on_written(node)
        return len(data)

    def _accessed(self, node: Inode) -> None:
        """relatime, as Linux mounts by default: a read moves atime when it is older than
        the last change or a day old. Local only (Inode.atime_ns)."""
        with self.cache.write() as txn:
            if self.cache.get(node.ino) is not None:
                node.atime_ns = time.time_ns()
                self.cache.put(txn, node)

    # --- extended attributes ---

    def getxattr(self, ino: int, name: str) -> bytes:
        value = self.get(ino).xattrs.get(name)
        if value is None:
            if name.startswith(xattr_rules.NOT_KEPT):
                raise xattr_rules.XattrError(f"{name!r} is not kept on this drive", errno.EOPNOTSUPP)
            raise NoAttributeError(f"inode {ino} has no extended attribute {name!r}")
        return xattr_rules.decode(value)

    def listxattr(self, ino: int) -> list[str]:
        return list(self.get(ino).xattrs)

    def setxattr(self, ino: int, name: str, value: bytes) -> None:
        """XATTR_CREATE/XATTR_REPLACE were checked by pyfuse3 (through getxattr)."""
        node = self.get(ino)
        self.check_writable(ino)
        xattrs = {**node.xattrs, xattr_rules.check_name(name): xattr_rules.encode(value)}
        if len(value) > xattr_rules.VALUE_MAX:
            raise XattrTooBigError(f"a value of {len(value)} bytes for {name!r}; at most {xattr_rules.VALUE_MAX}")
        if xattr_rules.total_size(xattrs) > xattr_rules.TOTAL_MAX:
            raise NoSpaceError(f"extended attributes of inode {ino} would take more than {xattr_rules.TOTAL_MAX} bytes")
        self._set_xattrs(node, xattrs)

    def removexattr(self, ino: int, name: str) -> None:
        node = self.get(ino)
        self.check_writable(ino)
        if name not in node.xattrs and xattr_rules.check_name(name):
            raise NoAttributeError(f"inode {ino} has no extended attribute {name!r}")
        self._set_xattrs(node, {k: v for k, v in node.xattrs.items() if k != name})

    def _set_xattrs(self, node: Inode, xattrs: dict[str, str]) -> None:
        with self.transaction() as txn:
            node.xattrs = xattrs
            node.ctime_ns = time.time_ns()
            self.cache.put(txn, node)
            if not node.dirty:
                self.cache.enqueue(txn, {"op": "push", "ino": node.ino})

    def _growth(self, writing: Inode, end: int) -> int:
        """How much the files with local changes grow the account beyond what the server
        counts (`used`), with `writing` extended to `end`. Only computed under a quota."""
        grown = 0
        for node in [self.cache.get(ino) for ino in self._grown if ino != writing.ino] + [writing]:
            if node is None or not node.dirty and node is not writing:
                continue
            size = max(node.size, end) if node is writing else node.size
            grown += max(0, size - node.extra.get("srv_size", node.base_len))
        self._grown.add(writing.ino)
        return grown

    async def _make_room(self, node: Inode, off: int, incoming: int) -> None:
        """Dirty data is never evicted: when it would outgrow the cache, clean chunks go
        first; then the writer waits, a bounded time, for uploads and the streamer to
        make room, and gets ENOSPC if none comes (room.py)."""
        if self.quota is not None and node.ino not in self.over_quota and \
                shared.namespace_of(self.cache, node.ino)[0] is None:  # a shared folder's quota is its owner's
            quota, used = self.quota
            grown = self._growth(node, off + incoming)
            if used + grown > quota:
                log.warning("EDQUOT: %r would take the account to %d bytes, over its quota of %d; kept here, "
                            "uploaded once room is made", node.name, used + grown, quota)
                self.over_quota.add(node.ino)
        await self.room.make_room(node.ino, node.name, off, incoming, lambda: self.content.frontier(node))

    def check_quota(self, ino: int) -> None:
        """At close and fsync: the errors the kernel's write-back kept from write(2)."""
        node = self.cache.get(ino)
        self.room.check(ino, node.name if node else str(ino))
        if ino in self.over_quota or self.server_refused(ino):
            self.over_quota.discard(ino)
            node = self.cache.get(ino)
            raise QuotaExceededError(f"{node.name if node else ino!r} goes over the account's quota; its bytes are "
                                     f"kept on this device and uploaded once room is made")

    def referenced(self, ino: int, parent: int = 0, name: str = "") -> None:
        """The kernel took a reference to `ino`; under `parent`/`name` for a readdirplus."""
        self.lookups[ino] = self.lookups.get(ino, 0) + 1
        if parent:
            self.stale.renewed(parent, name, ino)

    def forgotten(self, ino: int, count: int) -> None:
        left = self.lookups.get(ino, 0) - count
        if left > 0:
            self.lookups[ino] = left
            return
        self.lookups.pop(ino, None)
        self.stale.forgotten(ino)
        self._drop_if_orphan(ino)

    def _drop_if_orphan(self, ino: int) -> None:
        node = self.cache.get(ino)
        if node is None or node.parent != 0 or ino == ROOT_INO or self.open_count.get(ino) or self.lookups.get(ino):
            return
        with self.transaction() as txn:
            self.chunks.dirty_bytes -= self._dirty_size(txn, node)
            self.cache.drop(txn, node)

    def _revive_if_orphaned(self, node: Inode, txn: lmdb.Transaction | None = None) -> None:
        """Another device deleted or replaced this file while the kernel still had it
        here (an open handle, or a name it remembers), and now it is written or
        truncated through that: edits survive, so it goes back where it was, with the
        directories that went with it (beside, under a conflicted name, if that name is
        taken now, as it is after a replace), and is created anew. Inside `txn` when
        given (the write's own)."""
        if node.parent != 0 or not node.extra.get("orphaned_from"):
            return
        if txn is None:
            with self.transaction() as own:
                self._revive(own, node)
        else:
            self._revive(txn, node)

    def _revive(self, txn: lmdb.Transaction, node: Inode) -> None:
        *folders, name = node.extra.pop("orphaned_from")
        parent = ROOT_INO
        for folder in folders:  # the directories that went with it come back too
            ino = self.cache.lookup(parent, folder)
            existing = self.cache.get(ino) if ino is not None else None
            if existing is not None and existing.kind != "dir":
                break  # a file has the name now: the edit goes beside it
            if existing is None:
                existing = self._insert(txn, parent, folder, "dir", 0o755)
            parent = existing.ino
        if self.cache.lookup(parent, name) is not None:
            name = conflicted_name(name, self.device or "this device", self.cache, parent)
        log.warning("%r was deleted or replaced on another device while written here: keeping the edit as %r",
                    node.name, "/".join(self.cache.names_to(parent) + [name]))
        self.cache.link(txn, parent, name, node.ino)
        node.parent, node.name = parent, name
        self.cache.detach(txn, node, queue=True)

    def recover(self) -> tuple[int, int]:
        """At mount time nothing is open and nothing references anything. Orphans a crash
        left behind are dropped. A file a crash left dirty while it was open gets the
        upload its release would have queued: while open, its queued upload was skipped
        (or committed while it changed), waiting for that release. Returns (orphans
        dropped, uploads queued)."""
        queued = {op.get("ino") for _, op in self.cache.outbox_items(limit=10_000_000) if op.get("op") == "upload"}
        orphans, left_dirty = [], []
        for n in self.cache.iter_inodes():
            if n.parent == 0 and n.ino != ROOT_INO:
                orphans.append(n.ino)
            elif n.kind == "file" and n.dirty and n.ino not in queued:
                left_dirty.append(n.ino)
        for ino in orphans:
            self._drop_if_orphan(ino)
        if left_dirty:
            with self.transaction() as txn:
                for ino in left_dirty:
                    self.cache.enqueue(txn, {"op": "upload", "ino": ino})
            log.info("%d file(s) left dirty while open by the last run: uploads queued", len(left_dirty))
        return len(orphans), len(left_dirty)

    def opened(self, ino: int, *, write: bool = True) -> None:
        self.open_count[ino] = self.open_count.get(ino, 0) + 1
        if write:
            self.writers[ino] = self.writers.get(ino, 0) + 1

    def released(self, ino: int, *, schedule_upload: bool, write: bool = True) -> None:
        for counts, counted in ((self.open_count, True), (self.writers, write)):
            left = counts.get(ino, 1) - 1 if counted else counts.get(ino, 0)
            if left:
                counts[ino] = left
            else:
                counts.pop(ino, None)
        node = self.cache.get(ino)
        if not self.writers.get(ino) and self.room.closed(ino) and node is not None and node.parent:
            self.forget_size(node.parent, node.name)  # the kernel's size counts the refused bytes
        if node is None:
            return
        if node.parent == 0 and node.ino != ROOT_INO:
            self._drop_if_orphan(ino)
        elif schedule_upload and node.dirty:
            with self.transaction() as txn:
                self.cache.enqueue(txn, {"op": "upload", "ino": ino})

    def fsync(self, ino: int | None = None) -> None:
        """Make every acknowledged change durable on this device, and upload `ino` soon
        even if it is still open."""
        self.cache.sync()
        node = self.cache.get(ino) if ino is not None else None
        if node is not None and node.dirty:
            with self.transaction() as txn:
                self.cache.enqueue(txn, {"op": "upload", "ino": ino, "force": True})

    def statfs_used(self) -> int:
        return self.chunks.used_bytes
