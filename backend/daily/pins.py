"""Files kept offline ("pinned"): fetched in the background, kept current, never evicted.

A pin names an inode (a file, or a directory and everything that is or comes to be
below it, from any device); it lives in its own LMDB database, `pins` (inode -> b""),
so pins survive remounts without touching the inode format. A node is pinned when it
or one of its directories is. The follower gives a file whose content changed
elsewhere a new inode (follower.py), and tells us (`replaced`), so its pin follows it;
pins of inodes that are gone are dropped when the keeper next runs.

The keeper (`run`) wakes on every batch of remote changes the follower applied, on a
pin, and every KEEP_EVERY_S: it walks the pinned trees, learns each file's chunk list
(asking the server once per revision), tells the chunk cache which chunks must never
be evicted (ChunkCache.pinned), and downloads the missing ones, counted as a transfer
("down") for `cloudfs status` and the progress bar of `cloudfs pin`.

A pin that would not fit is refused whole: the sizes of all pinned files, with the
changes waiting for upload, must stay within the cache's limit.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

import lmdb
import trio

from ..errors import OfflineError, ServerError, UserError
from ..local.cache import ROOT_INO, Cache, Inode, from_u64, u64
from ..local.chunkcache import ChunkCache, settled_key
from ..model import links
from ..model.content import Content
from ..model.fetcher import Fetcher
from .transfers import Transfers

log = logging.getLogger("cloudfs.pins")

KEEP_EVERY_S = 30.0
SETTLE_S = 0.2
"""A burst of remote changes is walked once, not once per batch."""
FETCH_BATCH = 64
"""Chunks asked for (signed URLs) at once; the fetcher downloads 8 at a time."""


class Pins:
    def __init__(self, cache: Cache, chunks: ChunkCache, content: Content, fetcher: Fetcher,
                 transfers: Transfers) -> None:
        self.cache = cache
        self.chunks = chunks
        self.content = content
        self.fetcher = fetcher
        self.transfers = transfers
        self.db = cache.env.open_db(b"pins")
        with cache.read() as txn:
            self.inos: set[int] = {from_u64(key) for key, _ in txn.cursor(db=self.db)}
        self.pinned_bytes = 0
        self.missing_bytes = 0
        """Bytes of pinned files not in the cache yet, as of the keeper's last walk."""
        self.last_error = ""
        self._wake = trio.Event()
        self._kept = trio.Event()

    # --- which nodes ---

    def is_pinned(self, ino: int) -> bool:
        """Pinned itself, or below a pinned directory through any of its names (a hard
        link into a pinned directory pins the file: `files` walks it there too)."""
        node = self.cache.get(ino) if self.inos else None
        if node is None:
            return False
        if ino in self.inos:
            return True
        names = [node] + [record for i in links.aliases(node) if (record := self.cache.get(i)) is not None]
        return any(self._below_pin(record.parent) for record in names)

    def _below_pin(self, ino: int) -> bool:
        for _ in range(4096):
            if ino in self.inos:
                return True
            node = self.cache.get(ino)
            if node is None or node.ino == ROOT_INO or not node.parent:
                return False
            ino = node.parent
        return False

    def files(self, tops: set[int] | None = None) -> Iterator[Inode]:
        """Every file pinned (below `tops`, default: every pin), each once."""
        seen: set[int] = set()
        stack = list(tops if tops is not None else self.inos)
        for _ in range(100_000_000):
            if not stack:
                return
            node = self.cache.get(stack.pop())
            if node is None or node.ino in seen or (not node.parent and node.ino != ROOT_INO):
                continue
            seen.add(node.ino)
            if node.kind == "dir":
                stack.extend(ino for _, ino in self.cache.children(node.ino))
            elif node.kind == "file":
                yield node

    def paths(self) -> list[str]:
        out = []
        for ino in sorted(self.inos):
            node = self.cache.get(ino)
            if node is not None and (node.parent or node.ino == ROOT_INO):
                out.append("/" + "/".join(self.cache.names_to(ino)))
        return sorted(out)

    # --- changing pins ---

    def pin(self, inos: list[int]) -> dict[str, Any]:
        """Pin these inodes, all or none: refused (UserError) when the pinned files would
        not fit in the cache beside the changes waiting for upload."""
        wanted = self.inos | set(inos)
        total = sum(node.size for node in self.files(wanted))
        room = self.chunks.limit - self.chunks.dirty_bytes
        if total > room:
            raise UserError(f"the pinned files would take {total} bytes and the cache has room for {room} "
                            f"({self.chunks.limit} bytes, {self.chunks.dirty_bytes} of them waiting for upload): "
                            f"pin less, or mount with a larger --cache-size")
        new = set(inos) - self.inos
        with self.cache.write() as txn:
            for ino in new:
                txn.put(u64(ino), b"", db=self.db)
        self.inos |= new
        self.pinned_bytes = total
        self.wake()
        return {"pinned": len(new), "pinned_bytes": total}

    def unpin(self, inos: list[int]) -> int:
        gone = set(inos) & self.inos
        with self.cache.write() as txn:
            for ino in gone:
                txn.delete(u64(ino), db=self.db)
        self.inos -= gone
        self.wake()
        return len(gone)

    def replaced(self, old_ino: int, new_ino: int) -> None:
        """The follower gave a file a new inode (its content changed elsewhere)."""
        if old_ino in self.inos:
            with self.cache.write() as txn:
                txn.delete(u64(old_ino), db=self.db)
                txn.put(u64(new_ino), b"", db=self.db)
            self.inos.discard(old_ino)
            self.inos.add(new_ino)

    def wake(self) -> None:
        self._wake.set()

    async def kept(self) -> None:
        """Wait for the end of the keeper's next complete walk."""
        event = self._kept
        self.wake()
        await event.wait()

    # --- the keeper ---

    async def run(self, follower: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._on_changes, follower)
            task_status.started()
            while True:
                with trio.move_on_after(KEEP_EVERY_S):
                    await self._wake.wait()
                await trio.sleep(SETTLE_S)
                self._wake = trio.Event()
                done, self._kept = self._kept, trio.Event()
                try:
                    await self._keep()
                    self.last_error = ""
                except (OfflineError, ServerError, OSError) as exc:
                    self.last_error = str(exc)
                    log.info("pinned files wait for the server: %s", exc)
                done.set()

    async def _on_changes(self, follower: Any) -> None:
        while True:
            await follower.advanced()
            if self.inos:
                self.wake()

    async def _keep(self) -> None:
        self._drop_gone()
        if not self.inos:
            self.chunks.pinned = set()
            self.pinned_bytes = self.missing_bytes = 0
            return
        needed: dict[str, int] = {}
        settled: set[bytes] = set()
        total = 0
        failure: BaseException | None = None
        for node in list(self.files()):
            total += node.size
            if node.rev == 0 or node.base_len == 0:
                continue  # nothing committed yet: its bytes are all local
            if node.ino in self.cache.settled:
                settled.add(settled_key(node.ino))  # its blocks are its bytes: they stay
                continue
            try:
                chunk_list = await self.content.base_chunks(node)
            except (OfflineError, ServerError) as exc:
                failure = failure or exc
                continue
            for entry in chunk_list:
                if entry.offset < node.base_len:
                    needed[entry.fingerprint] = entry.length
        self.chunks.pinned = {bytes.fromhex(fp) for fp in needed} | settled | self._cached_pins_of_failures(failure)
        self.pinned_bytes = total
        missing = [fp for fp in needed if fp not in self.chunks]
        self.missing_bytes = sum(needed[fp] for fp in missing)
        if missing:
            await self._fetch(missing, needed)
        if failure is not None:
            raise failure

    def _cached_pins_of_failures(self, failure: BaseException | None) -> set[bytes]:
        """While some chunk lists cannot be learnt (offline), what was pinned stays pinned."""
        return set(self.chunks.pinned) if failure is not None else set()

    async def _fetch(self, missing: list[str], lengths: dict[str, int]) -> None:
        transfer = self.transfers.start("down", "pinned files", self.missing_bytes)
        counted: set[str] = set()

        def landed(fp: str) -> None:  # chunk by chunk, so `status` and the bar move as bytes arrive
            if fp not in counted:
                counted.add(fp)
                transfer.advance(lengths[fp])
                self.missing_bytes = max(0, self.missing_bytes - lengths[fp])

        try:
            for i in range(0, len(missing), FETCH_BATCH):
                batch = missing[i:i + FETCH_BATCH]
                await self.fetcher.ensure(batch, on_fetched=landed)
                for fp in batch:
                    landed(fp)  # fetched meanwhile by a reader of the same chunk
        finally:
            self.transfers.finish(transfer)
        log.info("pinned files: fetched %d chunks (%d bytes)", len(missing), transfer.done)

    def _drop_gone(self) -> None:
        gone = [ino for ino in self.inos if (node := self.cache.get(ino)) is None
                or (not node.parent and node.ino != ROOT_INO)]
        if gone:
            with self.cache.write() as txn:
                for ino in gone:
                    try:
                        txn.delete(u64(ino), db=self.db)
                    except lmdb.Error:
                        pass
            self.inos -= set(gone)

    def status(self) -> dict[str, Any]:
        return {"pins": self.paths(), "pinned_bytes": self.pinned_bytes, "pinned_missing_bytes": self.missing_bytes,
                "pin_error": self.last_error}
