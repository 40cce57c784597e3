"""The pyfuse3 operations: each handler is a few lines that call the drive.

Errors become errno in one place, `@errno_of`: domain errors carry their errno,
anything unexpected is logged with its traceback and answered with EIO (pyfuse3 would
otherwise end the whole mount).

Owners: the mount runs with `default_permissions`, so the kernel checks every access
against the modes and owners reported here. Nodes carry owners in the wire's convention
(-1 is the drive's owner, whoever mounts it); `_owner` and `attrs` translate at this
boundary and nowhere else. A hard link's names all show one inode (backend/model/links.py):
st_nlink counts them.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, TypeVar

import pyfuse3

from cloudfs.backend.local.cache import ROOT_INO, Inode
from cloudfs.backend.model.drive import Drive, Owner
from cloudfs.backend.errors import CloudFsError
from cloudfs.backend.model.links import nlink

from .pagecache import ReadAround

log = logging.getLogger("cloudfs.fs")
T = TypeVar("T")

TIMEOUT_S = 300.0  # metadata is local; remote changes invalidate explicitly
READAHEAD = 64 * 1024 * 1024
"""Bytes a sequential read downloads ahead at most (content.py's WINDOW of chunks, and a
quarter of the cache, bound it further): the memory chunks in flight may hold."""
KIND_BITS = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK, "fifo": stat.S_IFIFO,
             "chr": stat.S_IFCHR, "blk": stat.S_IFBLK, "sock": stat.S_IFSOCK}
SPECIAL_KIND = {stat.S_IFIFO: "fifo", stat.S_IFCHR: "chr", stat.S_IFBLK: "blk", stat.S_IFSOCK: "sock"}


def errno_of(handler: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except CloudFsError as exc:
            if exc.errno == errno.EIO:
                log.error("%s failed: %s", handler.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno) from None
        except OSError as exc:
            log.error("%s failed: %s", handler.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("unexpected error in %s", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
    return wrapper


def _name(raw: bytes) -> str:
    return os.fsdecode(raw)


@dataclass
class Handle:
    ino: int
    next_off: int = 0
    wrote: bool = False
    writable: bool = True


class Operations(pyfuse3.Operations):
    enable_writeback_cache = True

    def __init__(self, drive: Drive, *, around: ReadAround | None = None,
                 on_init: Callable[[], None] = lambda: None) -> None:
        super().__init__()
        self.drive = drive
        self.around = around or ReadAround()
        self.on_init = on_init
        self.uid, self.gid = os.getuid(), os.getgid()
        self.handles: dict[int, Handle] = {}
        self.dir_handles: dict[int, tuple[int, list[tuple[str, Inode]]]] = {}
        """A directory handle: the directory and its entries as they were at opendir."""
        self._next_fh = 1

    def init(self) -> None:
        """The kernel's INIT arrived (pyfuse3 calls this from its handler)."""
        self.on_init()

    def _fh(self) -> int:
        self._next_fh += 1
        return self._next_fh

    def entry(self, node: Inode) -> pyfuse3.EntryAttributes:
        """Attributes for a reply that hands the kernel a new reference (lookup, create ...)."""
        self.drive.referenced(node.ino)
        return self.attrs(node)

    def attrs(self, node: Inode) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = node.ino
        entry.generation = 0
        entry.entry_timeout = entry.attr_timeout = TIMEOUT_S
        entry.st_mode = KIND_BITS[node.kind] | (node.mode & 0o7777)
        if node.kind == "dir" and (node.parent or node.ino == ROOT_INO):
            entry.st_nlink = 2 + self.drive.cache.subdir_count(node.ino)
        else:
            entry.st_nlink = nlink(node)  # a file's names; 0 once unlinked and still open
        entry.st_uid = self.uid if node.uid == -1 else node.uid
        entry.st_gid = self.gid if node.gid == -1 else node.gid
        entry.st_rdev = node.rdev
        entry.st_size = node.size
        entry.st_blksize = 128 * 1024
        entry.st_blocks = (node.size + 511) // 512
        entry.st_mtime_ns = node.mtime_ns
        entry.st_atime_ns = node.atime_ns or node.mtime_ns
        entry.st_ctime_ns = node.ctime_ns or node.mtime_ns
        return entry

    def _owner(self, ctx: Any) -> Owner:
        """The caller of a create, in the wire's convention (the mounting user is -1)."""
        return Owner(uid=-1 if ctx.uid == self.uid else ctx.uid, gid=-1 if ctx.gid == self.gid else ctx.gid)

    def _stored(self, number: int, mine: int) -> int:
        return -1 if number == mine else number

    # --- metadata ---

    @errno_of
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self.entry(self.drive.looked_up(parent_inode, _name(name)))

    @errno_of
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self.attrs(self.drive.get(inode))

    @errno_of
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: Any) -> pyfuse3.EntryAttributes:
        if fields.update_size:
            await self.around.quiesce(inode)
        node = self.drive.setattr(
            inode,
            size=attr.st_size if fields.update_size else None,
            mode=attr.st_mode if fields.update_mode else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            uid=self._stored(attr.st_uid, self.uid) if fields.update_uid else None,
            gid=self._stored(attr.st_gid, self.gid) if fields.update_gid else None,
        )
        return self.attrs(node)

    @errno_of
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        node = self.drive.get(inode)
        if node.kind != "symlink":
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(node.target)

    @errno_of
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        return self.entry(self.drive.mkdir(parent_inode, _name(name), mode & ~ctx.umask, self._owner(ctx)))

    @errno_of
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        return self.entry(self.drive.symlink(parent_inode, _name(name), os.fsdecode(target), self._owner(ctx)))

    @errno_of
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> pyfuse3.EntryAttributes:
        if stat.S_ISREG(mode):
            return self.entry(self.drive.create(parent_inode, _name(name), mode & ~ctx.umask, self._owner(ctx)))
        kind = SPECIAL_KIND.get(stat.S_IFMT(mode))
        if kind is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return self.entry(self.drive.mknod(parent_inode, _name(name), kind, mode & ~ctx.umask, rdev, self._owner(ctx)))

    @errno_of
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        return self.entry(self.drive.link(inode, new_parent_inode, _name(new_name)))

    @errno_of
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self.drive.unlink(parent_inode, _name(name))

    @errno_of
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self.drive.rmdir(parent_inode, _name(name))

    @errno_of
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
                     flags: int, ctx: Any) -> None:
        self.drive.rename(parent_inode_old, _name(name_old), parent_inode_new, _name(name_new), flags)

    # --- directories ---

    @errno_of
    async def opendir(self, inode: int, ctx: Any) -> int:
        entries = self.drive.readdir(inode)
        fh = self._fh()
        self.dir_handles[fh] = (inode, entries)
        return fh

    @errno_of
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        parent, entries = self.dir_handles.get(fh, (0, []))
        for index in range(start_id, len(entries)):
            name, node = entries[index]
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self.attrs(node), index + 1):
                return
            self.drive.referenced(node.ino, parent, name)  # readdirplus: the kernel keeps a reference

    @errno_of
    async def releasedir(self, fh: int) -> None:
        self.dir_handles.pop(fh, None)

    # --- files ---

    @errno_of
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        writable = flags & os.O_ACCMODE != os.O_RDONLY
        if writable or flags & os.O_TRUNC:
            await self.around.quiesce(inode)  # its page cache is the writer's from here on
        node = self.drive.get(inode)
        if node.kind == "dir":
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & os.O_ACCMODE != os.O_RDONLY:
            self.drive.check_writable(inode)  # EROFS in a viewer's shared folder
        truncate = bool(flags & os.O_TRUNC) and node.size > 0
        if truncate:  # libfuse negotiates atomic O_TRUNC: no separate setattr comes
            self.drive.setattr(inode, size=0)
        fh = self._fh()
        self.handles[fh] = Handle(inode, wrote=truncate, writable=writable)
        self.drive.opened(inode, write=writable)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @errno_of
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Any) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        node = self.drive.create(parent_inode, _name(name), mode & ~ctx.umask, self._owner(ctx))
        fh = self._fh()
        self.handles[fh] = Handle(node.ino, wrote=True)
        self.drive.opened(node.ino)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True), self.entry(node)

    @errno_of
    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self.handles[fh]
        # Where the previous READ ended, as asked, not as answered: the kernel sends its
        # read-ahead window's READs at once, and each one starts before the one before
        # it has its bytes.
        sequential = off == handle.next_off and off > 0
        handle.next_off = off + size
        data = await self.drive.read(handle.ino, off, size, readahead=READAHEAD if sequential else 0)
        if not sequential:
            self.around.after_read(handle.ino, off, len(data), self.drive.get(handle.ino).size,
                                   self.drive.writers.get(handle.ino, 0))
        return data

    @errno_of
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self.handles[fh]
        handle.wrote = True
        return await self.drive.write(handle.ino, off, buf)

    @errno_of
    async def flush(self, fh: int) -> None:
        self.drive.check_quota(self.handles[fh].ino)

    @errno_of
    async def fsync(self, fh: int, datasync: bool) -> None:
        self.drive.fsync(self.handles[fh].ino)
        self.drive.check_quota(self.handles[fh].ino)

    @errno_of
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        self.drive.fsync()

    @errno_of
    async def release(self, fh: int) -> None:
        handle = self.handles.pop(fh)
        self.drive.released(handle.ino, schedule_upload=handle.wrote, write=handle.writable)

    # --- the rest ---

    @errno_of
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        total = 1 << 40
        used = min(self.drive.statfs_used(), total)
        data.f_blocks = total // 4096
        data.f_bfree = data.f_bavail = (total - used) // 4096
        data.f_files = 1 << 32
        data.f_ffree = data.f_favail = (1 << 32) - 1
        data.f_namemax = 255
        return data

    @errno_of
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        # `ls -l` asks for two per entry (SELinux label, ACL): answered from the inode
        # the lookup already decoded, no LMDB read (see BENCHMARKS, ls -lR).
        return self.drive.getxattr(inode, os.fsdecode(name))

    @errno_of
    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        # trusted.* is only listed to root (CAP_SYS_ADMIN), as local filesystems do; the
        # kernel already refuses to get or set them for anyone else.
        return [os.fsencode(name) for name in self.drive.listxattr(inode)
                if ctx.uid == 0 or not name.startswith("trusted.")]

    @errno_of
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        self.drive.setxattr(inode, os.fsdecode(name), value)

    @errno_of
    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        self.drive.removexattr(inode, os.fsdecode(name))

    @errno_of
    async def forget(self, inode_list: Any) -> None:
        for ino, count in inode_list:
            self.drive.forgotten(ino, count)


__all__ = ["Operations", "ROOT_INO"]
