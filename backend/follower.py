"""Follows the server's change journal and applies other devices' changes locally.

The cursor is persisted in LMDB with every applied batch, so a remount resumes where it
stopped. Our own changes are skipped (the mirror made them first). A change to a file
that has local edits not yet uploaded is left alone: the upload then meets a stale base
revision and becomes a conflicted copy, so nothing is lost either way.

The kernel's caches are told through `invalidate` callbacks given by the mount (this
module knows nothing of FUSE).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import trio

from . import wire
from .api_client import ApiClient
from .cache import ROOT_INO, Cache, Inode
from .chunkcache import ChunkCache
from .errors import CursorExpiredError, OfflineError, ServerError

log = logging.getLogger("cloudfs.follower")


@dataclass
class Invalidator:
    inode: Callable[[int], None] = lambda ino: None
    entry: Callable[[int, str], None] = lambda parent, name: None


class Follower:
    def __init__(self, client: ApiClient, cache: Cache, chunks: ChunkCache, *, device: str,
                 open_count: dict[int, int], invalidate: Invalidator | None = None) -> None:
        self.client = client
        self.cache = cache
        self.chunks = chunks
        self.device = device
        self.open_count = open_count
        self.invalidate = invalidate or Invalidator()
        self.cursor = int(cache.get_meta("cursor", "0") or 0)
        self.online = True
        self._advanced = trio.Event()

    async def bootstrap(self) -> None:
        """First mount with an empty cache: mirror the whole tree from a snapshot."""
        if self.cache.get(ROOT_INO) is not None:
            return
        me = await self.client.me()
        nodes: list[wire.Node] = []
        cursor, after = None, 0
        for _ in range(1_000_000):
            snap = await self.client.snapshot(after)
            cursor = snap.cursor if cursor is None else cursor
            nodes.extend(snap.nodes)
            if snap.next_after_id is None:
                break
            after = snap.next_after_id
        with self.cache.write() as txn:
            inos = {me.root_id: ROOT_INO}
            for node in nodes:
                if node.id != me.root_id:
                    inos[node.id] = self.cache.new_ino(txn)
            for node in nodes:
                ino = inos[node.id]
                parent = inos.get(node.parent_id or 0, 0) if node.id != me.root_id else 0
                local = self._inode_from(node, ino, parent)
                self.cache.put(txn, local, create=True)
                self.cache.bind_node_id(txn, local, node.id)
                if parent:
                    self.cache.link(txn, parent, node.name, ino)
            self.cache.set_meta(txn, "cursor", str(cursor or 0))
            self.cache.set_meta(txn, "user_id", str(me.user_id))
        self.cursor = cursor or 0
        log.info("mirrored %d nodes from the server at cursor %d", len(nodes), self.cursor)

    def _inode_from(self, node: wire.Node, ino: int, parent: int) -> Inode:
        return Inode(ino=ino, parent=parent, name=node.name, kind=node.kind, mode=node.mode, size=node.size,
                     mtime_ns=node.mtime_ns, ctime_ns=node.mtime_ns, target=node.target or "", node_id=node.id,
                     rev=node.rev, base_len=node.size if node.kind == "file" else 0,
                     srv_parent=parent, srv_name=node.name, srv_mode=node.mode, srv_mtime_ns=node.mtime_ns)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        backoff = 0.2
        while True:
            try:
                answer = await self.client.changes(self.cursor, wait=25)
            except CursorExpiredError:
                log.warning("journal no longer reaches cursor %d; continuing from the server's current position",
                            self.cursor)
                me = await self.client.me()
                self._save_cursor(me.cursor)
                continue
            except (OfflineError, ServerError) as exc:
                if self.online:
                    log.warning("change feed unavailable: %s", exc)
                self.online = False
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 10)
                continue
            self.online, backoff = True, 0.2
            for change in answer.changes:
                if change.device != self.device:
                    self.apply(change)
            self._save_cursor(answer.cursor)

    def _save_cursor(self, cursor: int) -> None:
        with self.cache.write() as txn:
            self.cache.set_meta(txn, "cursor", str(cursor))
        self.cursor = cursor
        self._advanced.set()
        self._advanced = trio.Event()

    async def wait_for(self, cursor: int) -> None:
        while self.cursor < cursor:
            await self._advanced.wait()

    # --- applying one change ---

    def apply(self, change: wire.Change) -> None:
        remote = change.node
        ino = self.cache.ino_for_node(remote.id)
        local = self.cache.get(ino) if ino else None
        parent_ino = self.cache.ino_for_node(remote.parent_id) if remote.parent_id else None
        if change.op == "delete":
            if local is not None and not local.dirty:
                self._remove(local)
            return
        if local is None:
            if parent_ino is None or self.cache.lookup(parent_ino, remote.name) is not None:
                log.info("not applying %s of %r: parent unknown or name taken locally", change.op, remote.name)
                return
            with self.cache.write() as txn:
                node = self._inode_from(remote, self.cache.new_ino(txn), parent_ino)
                self.cache.put(txn, node, create=True)
                self.cache.bind_node_id(txn, node, remote.id)
                self.cache.link(txn, parent_ino, remote.name, node.ino)
            self.invalidate.entry(parent_ino, remote.name)
            return
        if local.dirty:
            return  # our upload will meet a stale revision and keep both versions
        moved = parent_ino is not None and (local.parent, local.name) != (parent_ino, remote.name)
        old_parent, old_name = local.parent, local.name
        with self.cache.write() as txn:
            if moved and self.cache.lookup(parent_ino, remote.name) is None:
                self.cache.unlink(txn, local.parent, local.name)
                self.cache.link(txn, parent_ino, remote.name, local.ino)
                local.parent, local.name = parent_ino, remote.name
                local.srv_parent, local.srv_name = parent_ino, remote.name
            local.mode = local.srv_mode = remote.mode
            local.mtime_ns = local.srv_mtime_ns = remote.mtime_ns
            local.ctime_ns = time.time_ns()
            if local.kind == "file" and remote.rev != local.rev:
                local.rev, local.size, local.base_len = remote.rev, remote.size, remote.size
            self.cache.put(txn, local)
        if moved:
            self.invalidate.entry(old_parent, old_name)
            self.invalidate.entry(local.parent, local.name)
        self.invalidate.inode(local.ino)

    def _remove(self, local: Inode) -> None:
        """Drop a node and its subtree (the server tombstoned them as one entry)."""
        parent, name = local.parent, local.name
        with self.cache.write() as txn:
            self.cache.unlink(txn, parent, name)
            stack = [local]
            for _ in range(10_000_000):
                if not stack:
                    break
                node = stack.pop()
                if node.kind == "dir":
                    for child_name, child_ino in self.cache.children(node.ino):
                        child = self.cache.get(child_ino)
                        self.cache.unlink(txn, node.ino, child_name)
                        if child is not None:
                            stack.append(child)
                if self.open_count.get(node.ino):
                    node.parent = 0
                    self.cache.put(txn, node)
                else:
                    self.chunks.dirty_bytes -= self.cache.drop_blocks(txn, node.ino, from_block=0)
                    self.cache.drop(txn, node)
        self.invalidate.entry(parent, name)
