"""Read-around into the kernel's page cache.

A random read asks the mount for one page at a time (programs that read at random say
so with fadvise(RANDOM), and the kernel then reads no further than asked), and every
page is a FUSE request: about 50 us of pyfuse3 and trio before cloudfs does any work,
more than a C filesystem's whole answer (BENCHMARKS.md, "the floor of a pyfuse3
mount"). After such a read the mount stores the rest of the read's AROUND-aligned
window into the kernel's page cache itself (FUSE_NOTIFY_STORE), so the next reads near
it are answered by the kernel with no request at all.

Pushed bytes must never be older than what the page cache holds or is about to hold:

- a local write goes into the page cache (writeback cache) without telling the mount,
  so nothing is pushed for a file while anyone has it open for writing, and an open
  for writing, or a truncate, waits until the push in flight for that file is done;
- another device's change invalidates the file's pages (the follower, via the mount's
  invalidator, `invalidated`): a push that read its bytes before such an invalidation
  invalidates the file again once it has landed.

The store is a blocking write to /dev/fuse that waits for pages the kernel has locked
for reads the mount itself must answer, so it runs in a worker thread, one at a time.
Pushes are a hint: when one is in flight, further ones are dropped, not queued.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

import pyfuse3
import trio

log = logging.getLogger("cloudfs.pagecache")

AROUND = 128 * 1024
"""The window a random read fills: 32 pages, a quarter of a dirty block's worth of LMDB
reads per miss, so that a 1 GiB file read at random is in the page cache after about
8,000 misses rather than 260,000."""


class ReadAround:
    def __init__(self, *, store: Callable[[int, int, bytes], None] | None = None,
                 invalidate: Callable[[int], None] | None = None) -> None:
        """`store` and `invalidate` (blocking; run in a worker thread) default to the
        kernel's (pyfuse3.notify_store, pyfuse3.invalidate_inode)."""
        self._store = store or _store
        self._invalidate = invalidate or _invalidate
        self._send, self._receive = trio.open_memory_channel[tuple[int, int, int]](1)
        self._pushing: int | None = None
        """The inode whose window is being read or stored (one at a time)."""
        self._stale = False
        """It was invalidated since its bytes were read."""
        self._landing: trio.Event | None = None
        """Set once the store in flight has landed."""

    def after_read(self, ino: int, off: int, size: int, file_size: int, writers: int) -> None:
        """A read of [off, off + size) was answered without read-ahead (not sequential);
        `writers`: the handles open for writing on the file."""
        start = off - off % AROUND
        end = min(start + AROUND, file_size)
        if size <= 0 or end - start <= size or writers:
            return
        try:
            self._send.send_nowait((ino, start, end))
        except trio.WouldBlock:
            pass  # one in flight already: a hint, not a queue

    def invalidated(self, ino: int) -> None:
        """The file's cached pages were just invalidated (another device changed it): a
        push that read before this does not land, or is undone once it has."""
        if ino == self._pushing:
            self._stale = True

    async def quiesce(self, ino: int) -> None:
        """Before an open for writing or a truncate: a push that read `ino` before this
        does not land, and one landing now is waited for."""
        self.invalidated(ino)
        landing = self._landing
        if ino == self._pushing and landing is not None:
            await landing.wait()

    async def run(self, read: Callable[[int, int, int], Awaitable[bytes]], writers: Callable[[int], int], *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """`read(ino, off, size)`: the file's bytes as the mount answers a read (not
        counted as an access); `writers(ino)`: the handles open for writing on it."""
        task_status.started()
        async for ino, start, end in self._receive:
            self._pushing, self._stale = ino, False
            try:
                await self._push(ino, start, end, read, writers)
            finally:
                self._pushing = None

    async def _push(self, ino: int, start: int, end: int, read: Callable[[int, int, int], Awaitable[bytes]],
                    writers: Callable[[int], int]) -> None:
        try:
            data = await read(ino, start, end - start)
        except Exception as exc:  # noqa: BLE001 - a hint: the kernel asks if it needs the bytes
            log.debug("no read-around for inode %d at %d: %r", ino, start, exc)
            return
        if not data or writers(ino) or self._stale:
            return
        landing = self._landing = trio.Event()
        try:
            await trio.to_thread.run_sync(self._store, ino, start, data)
        finally:
            self._landing = None
            landing.set()
        if self._stale:
            await trio.to_thread.run_sync(self._invalidate, ino)

def _store(ino: int, off: int, data: bytes) -> None:
    try:
        pyfuse3.notify_store(ino, off, data)
    except OSError as exc:  # ENOENT: the kernel forgot the inode meanwhile
        log.debug("read-around of inode %d not stored: %r", ino, exc)


def _invalidate(ino: int) -> None:
    try:
        pyfuse3.invalidate_inode(ino)
    except OSError:
        pass
