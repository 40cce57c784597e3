"""Room in the cache for writes: wait a bounded time for it, then refuse, fast.

Changes not uploaded yet are never evicted. When a write would take them past the
cache's limit, clean chunks go first; then the writer waits while uploads and the
streamer (streamer.py) make room, for as long as they make progress, and at most
FULL_WAIT_S without any. Then it gets ENOSPC.

Why the second half matters: the mount runs with the kernel's write-back cache, so
write(2) only copies into the page cache and returns; the kernel sends the pages to
us later, several WRITE requests at a time, and throttles the writer in
balance_dirty_pages (uninterruptible sleep) until they are answered. An error there
reaches the program only at fsync or close (as ENOSPC; any other errno as EIO). If
every WRITE waited the full FULL_WAIT_S before its ENOSPC, a writer of 768 MiB into a
full 256 MiB cache advanced about 1.3 MB/s and stayed in D state for many minutes
(issue 20). So a refusal sticks: once a file was refused at offset `o`, every later
write to it past `o` is refused at once until an fsync or close has told the writer
(a program may then write again, from `o`, once there is room); and
while the cache stays stuck (no progress since the last refusal) other writes are
refused without waiting too. The writer then finishes in seconds and its close or
fsync reports ENOSPC (`check`); the file keeps exactly the bytes that were accepted.

The last RESERVE_BYTES of the cache are for writes at or behind their file's frontier
(the end of what is known from offset 0 on, streamer.py): the kernel's write-back runs
ahead while the page at the frontier waits, and with the cache full of pages past a
hole the streamer could never move on (it cuts only known bytes, in order). With the
reserve, the write that fills the hole always fits.
"""

from __future__ import annotations

import errno
import logging
from typing import Callable

import trio

from ..errors import CloudFsError
from .chunkcache import ChunkCache

log = logging.getLogger("cloudfs.drive")

FULL_WAIT_S = 10.0
"""How long a writer waits for room while nothing makes progress."""
POLL_S = 0.05
RESERVE_MAX = 16 << 20
FRONTIER_TTL_S = 0.2


class NoSpaceError(CloudFsError):
    errno = errno.ENOSPC


class Room:
    def __init__(self, chunks: ChunkCache) -> None:
        self.chunks = chunks
        self.on_pressure: Callable[[], None] = lambda: None
        """Asks for uploads that make room (the syncer's wake-up and the streamer's rounds)."""
        self.why: Callable[[], str] = lambda: ""
        """Why uploads do not move, if known (the last upload error)."""
        self.refused: dict[int, int] = {}
        """The lowest offset refused per file, until its last writer closes it."""
        self.reported: set[int] = set()
        """Files whose refusal an fsync or close has reported: writes that fit go through again."""
        self.blocked = ""
        """Why writing stopped ("" while writes go through); see `stopped`."""
        self._blocked_at = -FULL_WAIT_S
        self._blocked_dirty = 0
        self.reserve = min(chunks.limit // 4, RESERVE_MAX)
        self._frontiers: dict[int, tuple[float, int]] = {}
        self.admitted = 0
        """Bytes of writes let in that are not in the cache yet (a write fetches the bytes
        under its blocks first): counted as if they were, or writers let in side by side
        took the cache past its limit together, by a block or three each."""

    async def make_room(self, ino: int, name: str, off: int, incoming: int, frontier: Callable[[], int]) -> None:
        """Return once `incoming` bytes of dirty data for file `ino` at `off` fit;
        `frontier()` is that file's frontier (asked only when the cache is nearly full).
        They count as `admitted` until the caller says `written`."""
        chunks = self.chunks
        refused = self.refused.get(ino)
        if refused is not None and off > refused and ino not in self.reported:
            raise self._refuse(ino, name, off, incoming, waited=False)

        def fits() -> bool:
            dirty = chunks.dirty_bytes + self.admitted
            if dirty + incoming <= chunks.limit - self.reserve:
                return True
            if dirty + incoming > chunks.limit:
                return False
            now = trio.current_time()
            at, value = self._frontiers.get(ino, (-1.0, 0))
            if now - at > FRONTIER_TTL_S or off > value:
                value = frontier()
                self._frontiers[ino] = (now, value)
            return off <= value

        if fits():
            if chunks.used_bytes + incoming > chunks.limit:
                chunks.evict(incoming)
            if refused is not None and ino in self.reported:
                del self.refused[ino]  # the writer knows, and writes again: it fits now
                self.reported.discard(ino)
            self.admitted += incoming
            return
        chunks.evict(incoming)
        self.on_pressure()
        now = trio.current_time()
        if self.blocked and chunks.dirty_bytes >= self._blocked_dirty and now - self._blocked_at < FULL_WAIT_S:
            raise self._refuse(ino, name, off, incoming, waited=False)  # stuck: no progress since the last refusal
        deadline, low = now + FULL_WAIT_S, chunks.dirty_bytes
        while not fits():
            now = trio.current_time()
            if chunks.dirty_bytes < low:  # progress: the window moves, keep waiting
                deadline, low = now + FULL_WAIT_S, chunks.dirty_bytes
            if now >= deadline:
                raise self._refuse(ino, name, off, incoming, waited=True)
            self.on_pressure()
            await trio.sleep(POLL_S)
        chunks.evict(incoming)
        self.blocked = ""
        self.admitted += incoming

    def written(self, incoming: int) -> None:
        """A write let in by `make_room` is in the cache now (or failed)."""
        self.admitted -= incoming

    def _refuse(self, ino: int, name: str, off: int, incoming: int, *, waited: bool) -> NoSpaceError:
        self.refused[ino] = min(self.refused.get(ino, off), off)
        self.reported.discard(ino)
        why = self.why()
        reason = (f"the cache ({self.chunks.limit} bytes) is full of changes not uploaded yet"
                  + (f" ({why})" if why else ""))
        if waited or not self.blocked:
            log.warning("ENOSPC: %s; writing %d more bytes to %r at %d would evict them", reason, incoming, name, off)
        self.blocked = f"{reason}; {name!r} was refused from offset {self.refused[ino]}"
        self._blocked_at, self._blocked_dirty = trio.current_time(), self.chunks.dirty_bytes
        return NoSpaceError(f"{reason}: writing {incoming} more bytes to {name!r} would evict them")

    def stopped(self) -> str:
        """Why writing stopped, for `cloudfs status`: "" once room came back."""
        if self.blocked and not self.refused and self.chunks.dirty_bytes < self._blocked_dirty:
            self.blocked = ""
        return self.blocked

    def check(self, ino: int, name: str) -> None:
        """At fsync and close: the writer learns that writes were refused (the kernel's
        write-back cache could not tell it at write(2))."""
        refused = self.refused.get(ino)
        if refused is not None:
            self.reported.add(ino)
            raise NoSpaceError(f"{name!r}: writes from offset {refused} on were refused, the cache being full "
                               f"of changes not uploaded yet; the file keeps what came before")

    def closed(self, ino: int) -> bool:
        """The last writer closed the file: forget its refusal. True if there was one."""
        self.reported.discard(ino)
        return self.refused.pop(ino, None) is not None
