#!/usr/bin/env python
"""A pyfuse3 + trio filesystem that stores nothing: the yardstick for the mount
benchmark (scripts/bench_mount.py).

Directories and files exist only as names and sizes in a dict, so create, lookup and
stat work; written bytes are discarded (only the size grows); reads return zeros up
to the size. Everything else a FUSE filesystem pays for (the kernel round trip,
pyfuse3's request loop, trio, building the attribute reply) is paid exactly as the
cloudfs mount pays it: same mount options (fs/mount.py), writeback cache on, the same
entry/attribute timeouts, `keep_cache` on open. What cloudfs costs beyond this is its
own work.

    .venv/bin/python scripts/nullfs.py MOUNTPOINT     # foreground; Ctrl-C or
                                                       # fusermount3 -u to stop

On exit it prints how many requests of each kind it answered (and the bytes of reads
and writes) on stderr, so a benchmark can tell how large the kernel's requests were.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import stat
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import pyfuse3
import trio

TIMEOUT_S = 300.0  # as fs/operations.py
ROOT_INO = pyfuse3.ROOT_INODE


@dataclass
class Node:
    ino: int
    mode: int
    size: int = 0
    mtime_ns: int = field(default_factory=time.time_ns)
    children: dict[bytes, int] | None = None  # a directory's entries; None for a file


class NullOperations(pyfuse3.Operations):
    enable_writeback_cache = True

    def __init__(self) -> None:
        super().__init__()
        self.nodes: dict[int, Node] = {ROOT_INO: Node(ROOT_INO, stat.S_IFDIR | 0o755, children={})}
        self.next_ino = ROOT_INO + 1
        self.next_fh = 1
        self.uid, self.gid = os.getuid(), os.getgid()
        self.counts: Counter[str] = Counter()

    def _node(self, ino: int) -> Node:
        node = self.nodes.get(ino)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _dir(self, ino: int) -> Node:
        node = self._node(ino)
        if node.children is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return node

    def attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = node.ino
        entry.generation = 0
        entry.entry_timeout = entry.attr_timeout = TIMEOUT_S
        entry.st_mode = node.mode
        entry.st_nlink = 1
        entry.st_uid, entry.st_gid = self.uid, self.gid
        entry.st_size = node.size
        entry.st_blksize = 128 * 1024
        entry.st_blocks = (node.size + 511) // 512
        entry.st_atime_ns = entry.st_mtime_ns = entry.st_ctime_ns = node.mtime_ns
        return entry

    def _add(self, parent_inode: int, name: bytes, mode: int, *, directory: bool) -> Node:
        parent = self._dir(parent_inode)
        if name in parent.children:
            raise pyfuse3.FUSEError(errno.EEXIST)
        node = Node(self.next_ino, mode, children={} if directory else None)
        self.next_ino += 1
        self.nodes[node.ino] = node
        parent.children[name] = node.ino
        return node

    def _remove(self, parent_inode: int, name: bytes) -> None:
        parent = self._dir(parent_inode)
        ino = parent.children.pop(name, None)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        self.nodes.pop(ino, None)

    # --- metadata ---

    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext = None) -> pyfuse3.EntryAttributes:
        self.counts["lookup"] += 1
        ino = self._dir(parent_inode).children.get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.attrs(self._node(ino))

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext = None) -> pyfuse3.EntryAttributes:
        self.counts["getattr"] += 1
        return self.attrs(self._node(inode))

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self.counts["setattr"] += 1
        node = self._node(inode)
        if fields.update_size:
            node.size = attr.st_size
        if fields.update_mode:
            node.mode = stat.S_IFMT(node.mode) | (attr.st_mode & 0o7777)
        if fields.update_mtime:
            node.mtime_ns = attr.st_mtime_ns
        return self.attrs(node)

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self.counts["mkdir"] += 1
        return self.attrs(self._add(parent_inode, name, stat.S_IFDIR | (mode & ~ctx.umask & 0o7777), directory=True))

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.counts["unlink"] += 1
        self._remove(parent_inode, name)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.counts["rmdir"] += 1
        self._remove(parent_inode, name)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_blocks = data.f_bfree = data.f_bavail = (1 << 40) // 4096
        data.f_files = 1 << 32
        data.f_ffree = data.f_favail = (1 << 32) - 1
        data.f_namemax = 255
        return data

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        return None

    # --- directories ---

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        self._dir(inode)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = list(self._dir(fh).children.items())
        for index in range(start_id, len(entries)):
            name, ino = entries[index]
            if not pyfuse3.readdir_reply(token, name, self.attrs(self._node(ino)), index + 1):
                return

    # --- files ---

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self.counts["create"] += 1
        node = self._add(parent_inode, name, stat.S_IFREG | (mode & ~ctx.umask & 0o7777), directory=False)
        return pyfuse3.FileInfo(fh=node.ino, keep_cache=True), self.attrs(node)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        self.counts["open"] += 1
        node = self._node(inode)
        if node.children is not None:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & os.O_TRUNC:
            node.size = 0
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        self.counts["read"] += 1
        node = self._node(fh)
        data = bytes(max(0, min(size, node.size - off)))
        self.counts["read_bytes"] += len(data)
        return data

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        self.counts["write"] += 1
        self.counts["write_bytes"] += len(buf)
        node = self._node(fh)
        node.size = max(node.size, off + len(buf))
        return len(buf)

    async def flush(self, fh: int) -> None:
        return None

    async def fsync(self, fh: int, datasync: bool) -> None:
        return None

    async def release(self, fh: int) -> None:
        return None


async def serve(mountpoint: str) -> None:
    ops = NullOperations()
    fuse_options = set(pyfuse3.default_options) | {"fsname=nullfs", "subtype=nullfs", "default_permissions"}
    if os.getuid() == 0:
        fuse_options.add("allow_other")
    pyfuse3.init(ops, mountpoint, fuse_options)
    unmounted = False
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_on_signal)
            print(f"nullfs mounted on {mountpoint}", flush=True)
            await pyfuse3.main()
            unmounted = True
            nursery.cancel_scope.cancel()
    finally:
        pyfuse3.close(unmount=not unmounted)
        print("nullfs requests: " + " ".join(f"{k}={v}" for k, v in sorted(ops.counts.items())),
              file=sys.stderr, flush=True)


async def _on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            pyfuse3.terminate()
            return


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mountpoint")
    args = parser.parse_args()
    if not os.path.isdir(args.mountpoint):
        print(f"nullfs: {args.mountpoint} is not a directory", file=sys.stderr)
        return 2
    trio.run(serve, args.mountpoint)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
