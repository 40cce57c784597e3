"""Follows the server's change journal and applies other devices' changes locally.

The cursor is persisted in LMDB with every applied batch, so a remount resumes where it
stopped. Our own changes are skipped (the mirror made them first), unless another
device's older change was applied over one of them since (`_own`).

A remote change never overwrites local work that is not on the server yet. A change to
a node with pending local changes (dirty content, a move or attribute change not pushed,
a file open for writing) is *deferred*: its node id is kept (in LMDB too) and the node is
pulled from the server again once the local work has settled; if the local work meets
the remote change on the server first, the syncer turns it into a conflicted copy. A
remote create that lands on a name taken by a local node the server has never seen
renames the local node to a conflicted copy (two new directories are merged instead).
A remote delete keeps whatever inside it still has local changes; those are created on
the server again.

The kernel caches file sizes and mtimes itself (writeback cache), and ignores those the
filesystem reports for a regular file it already knows. A file whose content changed
remotely therefore gets a new inode number: the kernel looks the name up again and sees
the new size, while a handle still open on the old inode keeps reading the old version,
as after a local atomic replace. The kernel is told through `invalidate` callbacks given
by the mount (this module knows nothing of FUSE); they run in a worker thread, because
an invalidation may wait for the kernel to write back pages, which this loop serves.

`reconcile` compares the whole mirror with a server snapshot: after a 410 from
`/changes` (the journal no longer reaches our cursor), on `cloudfs sync --full`, and
every RECONCILE_EVERY_S.

Hard links (links.py): an alias row becomes an alias record whose entry names the local
inode of the node it links to (deferred while that node is not here). A file that gets
a new inode for new content takes its aliases along. A deleted directory never takes
a file with names outside it: the server moved such a file out first (its promotion
entries come before the delete). A deleted file (or one in a deleted directory) that
was given a name here which the server has not seen yet moves to that name, as the
server would have done had the name arrived first, and is created there again.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import trio

from . import links, wire
from .api_client import ApiClient
from .cache import ROOT_INO, Cache, Inode
from .chunkcache import ChunkCache
from .conflicts import conflicted_name, count_conflict
from .errors import CursorExpiredError, OfflineError, ServerError

log = logging.getLogger("cloudfs.follower")

RECONCILE_EVERY_S = 3600.0
SETTLE_EVERY_S = 0.25
MAX_PULL_DEPTH = 4096


@dataclass
class Invalidator:
    inode: Callable[[int], None] = lambda ino: None
    entry: Callable[[int, str], None] = lambda parent, name: None


class Follower:
    def __init__(self, client: ApiClient, cache: Cache, chunks: ChunkCache, *, device: str,
                 open_count: dict[int, int], lookups: dict[int, int] | None = None,
                 writers: dict[int, int] | None = None, invalidate: Invalidator | None = None) -> None:
        self.client = client
        self.cache = cache
        self.chunks = chunks
        self.device = device
        self.open_count = open_count
        self.lookups = lookups if lookups is not None else {}
        self.writers = writers if writers is not None else {}
        self.invalidate = invalidate or Invalidator()
        self.cursor = int(cache.get_meta("cursor", "0") or 0)
        self.deferred: set[int] = set(json.loads(cache.get_meta("deferred", "[]") or "[]"))
        self._pulling = 0
        """Deferred pulls under way (_pull_deferred)."""
        self.online = True
        self._advanced = trio.Event()
        self._inval: list[tuple[Any, ...]] = []
        self._reconcile_now = trio.Event()
        self._reconciled = trio.Event()
        self._reconciling = trio.Lock()
        self.reconciles = 0
        self.on_replaced: Callable[[int, int], None] = lambda old_ino, new_ino: None
        """Told when a file gets a new inode for new content (pins.py moves its pin)."""

    # --- the first mount ---

    async def bootstrap(self) -> None:
        """First mount with an empty cache: mirror the whole tree from a snapshot."""
        if self.cache.get(ROOT_INO) is not None:
            return
        me = await self.client.me()
        nodes, cursor = await self._snapshot()
        with self.cache.write() as txn:
            inos = {me.root_id: ROOT_INO}
            for node in nodes:
                if node.id != me.root_id and node.kind != "link":
                    inos[node.id] = self.cache.new_ino(txn)
            for node in nodes:
                if node.kind == "link":
                    continue
                ino = inos[node.id]
                parent = inos.get(node.parent_id or 0, 0) if node.id != me.root_id else 0
                local = self._inode_from(node, ino, parent)
                self.cache.put(txn, local, create=True)
                self.cache.bind_node_id(txn, local, node.id)
                if parent:
                    self.cache.link(txn, parent, node.name, ino)
            for node in nodes:  # extra names of files, oldest first (the snapshot is in id order)
                parent, target = inos.get(node.parent_id or 0, 0), self.cache.get(inos.get(node.link_to or 0, 0), txn)
                if node.kind == "link" and parent and target is not None:
                    links.add_alias(self.cache, txn, target, parent, node.name, node_id=node.id)
            self.cache.set_meta(txn, "cursor", str(cursor))
            self.cache.set_meta(txn, "user_id", str(me.user_id))
        self.cursor = cursor
        log.info("mirrored %d nodes from the server at cursor %d", len(nodes), self.cursor)

    async def _snapshot(self) -> tuple[list[wire.Node], int]:
        nodes: list[wire.Node] = []
        cursor, after = None, 0
        for _ in range(1_000_000):
            snap = await self.client.snapshot(after)
            cursor = snap.cursor if cursor is None else cursor
            nodes.extend(snap.nodes)
            if snap.next_after_id is None:
                break
            after = snap.next_after_id
        return nodes, cursor or 0

    def _inode_from(self, node: wire.Node, ino: int, parent: int) -> Inode:
        local = Inode(ino=ino, parent=parent, name=node.name, kind=node.kind, mode=node.mode, size=node.size,
                      mtime_ns=node.mtime_ns, ctime_ns=node.mtime_ns, target=node.target or "", node_id=node.id,
                      rev=node.rev, base_len=node.size if node.kind == "file" else 0,
                      srv_parent=parent, srv_name=node.name, extra={"srv_size": node.size} if node.kind == "file" else {})
        local.adopt_attrs(node)
        return local

    # --- the loops ---

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow)
            nursery.start_soon(self._settle)
            nursery.start_soon(self._reconcile_loop)
            task_status.started()

    async def _follow(self) -> None:
        backoff = 0.2
        while True:
            try:
                answer = await self.client.changes(self.cursor, wait=25)
            except CursorExpiredError:
                log.warning("the journal no longer reaches cursor %d: comparing the whole tree", self.cursor)
                await self._run_reconcile()
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
                else:
                    self._own(change)
            await self._flush_invalidations()
            self._save_cursor(answer.cursor)

    def _own(self, change: wire.Change) -> None:
        """Our own change, back through the journal: the mirror made it first, so it is
        skipped, unless an older change of another device was applied over it after it
        reached the server (that entry came to us later than our answer did): then the
        mirror no longer shows what the server has, and ours is applied again. An entry
        older than our last acknowledged change of the node (`srv_seq`, recorded by the
        syncer) is skipped always: applying it would only undo ours for a moment."""
        ino = self.cache.ino_for_node(change.node.id)
        local = self.cache.get(ino) if ino else None
        if local is None or change.node.parent_id is None or self._pending(local):
            return
        if change.seq < local.extra.get("srv_seq", 0):
            return
        remote = change.node
        if change.op == "delete" or remote.deleted or self._differs(local, remote) \
                or (local.kind != "dir" and local.mtime_ns != remote.mtime_ns):  # a directory's mtime is local
            self.apply(change)

    async def _settle(self) -> None:
        """Pull deferred nodes again once their local work is done."""
        while True:
            await trio.sleep(SETTLE_EVERY_S)
            if not self.deferred:
                continue
            try:
                await self._pull_deferred()
            except (OfflineError, ServerError) as exc:
                log.debug("deferred changes wait: %s", exc)

    async def _pull_deferred(self) -> None:
        """Counted in `_pulling` until the kernel was told: `settled` (cloudfs sync) waits
        for a pull under way, not only for what is still deferred. A pull that fails
        leaves its node deferred, to be tried again."""
        self._pulling += 1
        try:
            for node_id in sorted(self.deferred):
                if self._blocked(node_id):
                    continue
                self._undefer(node_id)
                try:
                    await self.pull(node_id)
                except BaseException:
                    self._defer(node_id)
                    raise
            await self._flush_invalidations()
        finally:
            self._pulling -= 1

    async def pull(self, node_id: int, depth: int = 0) -> None:
        """Make the mirror agree with the server about one node (and, for a directory
        the mirror did not know, everything in it)."""
        remote = await self.client.node(node_id)
        if remote is None:
            ino = self.cache.ino_for_node(node_id)
            local = self.cache.get(ino) if ino else None
            if local is not None:
                self._apply_delete(local)
            return
        known = self.cache.ino_for_node(node_id) is not None
        self.apply(wire.Change(seq=0, op="modify", node=remote, device="pull"))
        if remote.kind == "dir" and not known and depth < MAX_PULL_DEPTH:
            for child in await self.client.list_dir(node_id):
                await self.pull(child.id, depth + 1)

    def refresh(self, node_id: int) -> None:
        """The syncer learnt that the server's version of `node_id` differs from ours
        (a conflict): pull it once nothing local is pending on it."""
        self._defer(node_id)

    async def _reconcile_loop(self) -> None:
        while True:
            with trio.move_on_after(RECONCILE_EVERY_S):
                await self._reconcile_now.wait()
            self._reconcile_now = trio.Event()  # here, not after each run: this loop waits on it
            try:
                await self._run_reconcile()
            except (OfflineError, ServerError) as exc:
                log.warning("reconciliation postponed: %s", exc)

    async def reconcile(self) -> None:
        """On demand (`cloudfs sync --full`): compare now and wait for it."""
        done = self._reconciled
        self._reconcile_now.set()
        await done.wait()

    def _save_cursor(self, cursor: int) -> None:
        with self.cache.write() as txn:
            self.cache.set_meta(txn, "cursor", str(cursor))
        self.cursor = cursor
        self._advanced.set()
        self._advanced = trio.Event()

    async def wait_for(self, cursor: int) -> None:
        while self.cursor < cursor:
            await self._advanced.wait()

    async def settled(self) -> None:
        """Return once every deferred node that can be pulled has been."""
        for _ in range(100_000):
            waiting = [i for i in self.deferred if not self._blocked(i)]
            if not waiting and not self._pulling:
                return
            await trio.sleep(SETTLE_EVERY_S / 5)

    def _blocked(self, node_id: int) -> bool:
        ino = self.cache.ino_for_node(node_id)
        local = self.cache.get(ino) if ino else None
        return local is not None and (self._pending(local) or self._move_queued(local))

    # --- what counts as local work ---

    def _pending(self, local: Inode) -> bool:
        """True while `local` has changes the server has not acknowledged, or is open for
        writing (replacing it would pull the bytes from under a writer)."""
        return bool(self.writers.get(local.ino)) or self._changed(local)

    def _changed(self, local: Inode) -> bool:
        """True while `local` has changes the server has not acknowledged."""
        if local.ino == ROOT_INO:
            return False
        if not local.node_id or local.extra.get("detached"):
            return True
        if (local.parent, local.name) != (local.srv_parent, local.srv_name):
            return True
        pending = local.attrs_pending()
        if pending.keys() - {"mtime_ns"}:
            return True
        return local.kind != "dir" and (local.dirty or "mtime_ns" in pending)  # a directory's mtime is local

    def _move_queued(self, local: Inode) -> bool:
        """True while a directory at or above `local` has a move (or its creation) that
        the server has not seen: where `local` lives on the server is then about to
        change, and a remote delete of it waits for that (`_delete_unless_moving`)."""
        node = local if local.kind == "dir" else self.cache.get(local.parent)
        for _ in range(MAX_PULL_DEPTH):
            if node is None or node.ino == ROOT_INO or node.parent == 0:
                return False
            if not node.node_id or (node.parent, node.name) != (node.srv_parent, node.srv_name):
                return True
            node = self.cache.get(node.parent)
        return False

    def _delete_unless_moving(self, local: Inode) -> None:
        """Apply the server's delete of `local`, unless a queued move of a directory at or
        above it is still on its way: that move decides. Applied now, the delete would
        take files the move needs (another device's rm -r of the directory `local` was
        moved out of here: its per-file deletes arrive before our move reaches the
        server, which then finds the tree gone and creates it again, with whatever is
        still in it here). Deferred, the node is pulled again once the move is pushed,
        and goes only if the server still says it is gone."""
        if self._move_queued(local):
            self._defer(local.node_id)
        else:
            self._apply_delete(local)

    def _deleting(self, node_id: int) -> bool:
        """A delete of `node_id` is queued in the outbox (usually empty, so cheap)."""
        return any(op.get("op") == "delete" and op.get("node_id") == node_id
                   for _, op in self.cache.outbox_items(limit=100_000))

    def _in_use(self, ino: int) -> bool:
        return bool(self.open_count.get(ino) or self.lookups.get(ino))

    def _defer(self, node_id: int) -> None:
        if node_id not in self.deferred:
            self.deferred.add(node_id)
            with self.cache.write() as txn:
                self.cache.set_meta(txn, "deferred", json.dumps(sorted(self.deferred)))

    def _undefer(self, node_id: int) -> None:
        self.deferred.discard(node_id)
        with self.cache.write() as txn:
            self.cache.set_meta(txn, "deferred", json.dumps(sorted(self.deferred)))

    # --- applying one change ---

    def apply(self, change: wire.Change) -> None:
        remote = change.node
        ino = self.cache.ino_for_node(remote.id)
        local = self.cache.get(ino) if ino else None
        if change.op == "delete" or remote.deleted:
            if local is not None:
                self._delete_unless_moving(local)
            return
        if remote.parent_id is None:
            return  # the root: nothing of it is mirrored but its children
        if local is not None and self._pending(local):
            self._defer(remote.id)
            return
        target = self._link_target(remote) if remote.kind == "link" else None
        if remote.kind == "link" and target is None:
            self._defer(remote.id)  # the file it names is not here (yet): pulled once it is
            return
        if change.op == "exchange" and local is not None and self._exchange(local, remote):
            return
        parent_ino = self.cache.ino_for_node(remote.parent_id)
        parent = self.cache.get(parent_ino) if parent_ino else None
        if parent is None or parent.parent == 0 and parent.ino != ROOT_INO:
            self._defer(remote.id)  # its directory is not here (yet): pulled once it is
            return
        room = self._make_room(parent.ino, remote, local)
        if room == "wait":
            self._defer(remote.id)
            return
        if room == "merged":
            return
        if target is not None:
            self._apply_link(local, remote, parent.ino, target)
        elif local is None:
            if self._deleting(remote.id):
                return  # deleted here, the delete is on its way: it must not come back
            self._create(remote, parent.ino)
        elif local.kind == "file" and (remote.rev, remote.size, remote.mtime_ns) != (local.rev, local.size, local.mtime_ns):
            self._replace(local, remote, parent.ino)
        else:
            self._update(local, remote, parent.ino)

    def _exchange(self, local: Inode, remote: wire.Node) -> bool:
        """RENAME_EXCHANGE elsewhere: `local` takes the place of the node there, which takes
        `local`'s (its own `move` entry follows and finds it done). False when the node
        there has local work, or is not where the server had it: the usual way then."""
        parent = self.cache.ino_for_node(remote.parent_id or 0)
        other_ino = self.cache.record_at(parent, remote.name) if parent else None
        other = self.cache.get(other_ino) if other_ino else None
        if other is None or other.ino == local.ino or self._pending(other) or self._changed(local):
            return False
        with self.cache.write() as txn:
            (local.parent, local.name), (other.parent, other.name) = (other.parent, other.name), (local.parent, local.name)
            for node in (local, other):
                node.srv_parent, node.srv_name = node.parent, node.name
                node.ctime_ns = time.time_ns()
                self.cache.place(txn, node)
                self.cache.put(txn, node)
        for node in (local, other):
            self._inval.append(("entry", node.parent, node.name))
            self._inval.append(("inode", links.kernel_ino(node)))
        return True

    def _make_room(self, parent: int, remote: wire.Node, local: Inode | None) -> str:
        """Free the name `remote` takes in `parent` ("free"), or say why not ("wait":
        a clean node is there, which a later change moves away; "merged": a new local
        directory of that name became `remote`). The server got there first, so a
        local node there that the server has not seen becomes a conflicted copy."""
        occupant_ino = self.cache.record_at(parent, remote.name)
        if occupant_ino is None or (local is not None and occupant_ino == local.ino):
            return "free"
        occupant = self.cache.get(occupant_ino)
        if occupant is None:
            return "free"
        if not self._pending(occupant):
            return "wait"  # a clean node: the journal moves or deletes it too
        if occupant.kind == "dir" and remote.kind == "dir" and not occupant.node_id and local is None:
            with self.cache.write() as txn:  # two new directories of one name: merge them
                self.cache.bind_node_id(txn, occupant, remote.id)
                occupant.rev, occupant.srv_parent, occupant.srv_name = remote.rev, parent, remote.name
                occupant.record_attrs(remote)
                self.cache.put(txn, occupant)
            return "merged"
        name = conflicted_name(occupant.name, self.device, self.cache, parent)
        log.warning("%r arrived from another device where a local change is pending: keeping ours as %r",
                    remote.name, name)
        with self.cache.write() as txn:
            self.cache.unlink(txn, parent, occupant.name)
            occupant.name = name
            self.cache.place(txn, occupant)
            self.cache.put(txn, occupant)
            self.cache.enqueue(txn, {"op": "upload" if occupant.kind == "file" else "push", "ino": occupant.ino})
            count_conflict(self.cache, txn)
        self._inval.append(("entry", parent, remote.name))
        return "free"

    def _create(self, remote: wire.Node, parent: int) -> None:
        with self.cache.write() as txn:
            node = self._inode_from(remote, self.cache.new_ino(txn), parent)
            self.cache.put(txn, node, create=True)
            self.cache.bind_node_id(txn, node, remote.id)
            self.cache.link(txn, parent, remote.name, node.ino)
        self._inval.append(("entry", parent, remote.name))

    def _replace(self, local: Inode, remote: wire.Node, parent: int) -> None:
        """New content: a new inode under the name, so the kernel forgets the old size.
        Its other names (hard links) go with it."""
        with self.cache.write() as txn:
            self.cache.unlink(txn, local.parent, local.name)
            node = self._inode_from(remote, self.cache.new_ino(txn), parent)
            self.cache.put(txn, node, create=True)
            moved = links.move_aliases(self.cache, txn, local, node)
            if self._in_use(local.ino):
                path = self.cache.names_to(local.ino)  # the entry is gone, the parent chain is not
                local.parent = 0  # an orphan, readable through open handles until released
                if local.kind == "file" and path:  # written through one, it becomes a conflicted copy
                    local.extra["orphaned_from"] = path
                self.cache.put(txn, local)
            else:
                self.cache.drop(txn, local)
            self.cache.bind_node_id(txn, node, remote.id)
            self.cache.link(txn, parent, remote.name, node.ino)
        self.on_replaced(local.ino, node.ino)
        self._inval.append(("entry", local.parent or parent, local.name))
        if (local.parent, local.name) != (parent, remote.name):
            self._inval.append(("entry", parent, remote.name))
        self._inval.extend(("entry", alias.parent, alias.name) for alias in moved)

    def _link_target(self, remote: wire.Node) -> Inode | None:
        """The local inode an alias row names, if it is here and has a name."""
        ino = self.cache.ino_for_node(remote.link_to or 0)
        target = self.cache.get(ino) if ino else None
        if target is None or target.kind in ("link", "dir") or target.parent == 0:
            return None
        return target

    def _apply_link(self, local: Inode | None, remote: wire.Node, parent: int, target: Inode) -> None:
        """An alias row: a new name of `target`, or a known one moved or naming a file that
        has another inode here now (the winner of a conflict)."""
        if local is None:
            if self._deleting(remote.id):
                return
            with self.cache.write() as txn:
                links.add_alias(self.cache, txn, target, parent, remote.name, node_id=remote.id)
            self._inval += [("entry", parent, remote.name), ("inode", target.ino)]
            return
        old_parent, old_name, old_target = local.parent, local.name, local.extra.get("target", 0)
        with self.cache.write() as txn:
            if (old_parent, old_name) != (parent, remote.name):
                links.unplace(self.cache, txn, local)
                local.parent, local.name = parent, remote.name
            local.srv_parent, local.srv_name = parent, remote.name
            links.repoint(self.cache, txn, local, target)
            self.cache.place(txn, local)
            self.cache.put(txn, local)
        self._inval += [("entry", old_parent, old_name), ("entry", parent, remote.name), ("inode", target.ino)]
        if old_target and old_target != target.ino:
            self._inval.append(("inode", old_target))

    def _update(self, local: Inode, remote: wire.Node, parent: int) -> None:
        """A move or an attribute change: the same inode, so open handles follow it."""
        moved = (local.parent, local.name) != (parent, remote.name)
        old_parent, old_name = local.parent, local.name
        with self.cache.write() as txn:
            if moved:
                self.cache.unlink(txn, local.parent, local.name)
                self.cache.link(txn, parent, remote.name, local.ino)
                local.parent, local.name = parent, remote.name
            local.srv_parent, local.srv_name = parent, remote.name
            local.adopt_attrs(remote)
            local.ctime_ns = time.time_ns()
            local.rev = remote.rev
            if local.kind == "symlink":
                local.target, local.size = remote.target or "", remote.size
            self.cache.put(txn, local)
        if moved:
            self._inval.append(("entry", old_parent, old_name))
            self._inval.append(("entry", local.parent, local.name))
        self._inval.append(("inode", local.ino))

    def _apply_delete(self, local: Inode) -> None:
        """Drop a node and its subtree (the server tombstoned them as one entry), except
        what still has local work: that, and the directories leading to it, stay and are
        created on the server again. Nodes moved in here whose move has not reached the
        server yet were not part of what the server deleted: they stay as they are."""
        if local.kind == "link":
            self._apply_alias_delete(local)
            return
        keep, alive, promote = self._with_local_work(local)
        parent, name = local.parent, local.name
        with self.cache.write() as txn:
            stack = [(local, self.cache.names_to(local.ino))]
            for _ in range(10_000_000):
                if not stack:
                    break
                node, path = stack.pop()
                if node.ino in alive:
                    continue  # its queued move brings it (and all below it) here again
                if node.ino in keep:
                    self.cache.detach(txn, node, queue=True)
                    if node.kind == "dir":
                        stack.extend((c, path + [c.name]) for c in map(
                            self.cache.get, (i for _, i in self.cache.entries(node.ino))) if c is not None)
                    continue
                if node.kind == "link":  # an extra name inside: the file it names lives on elsewhere
                    target = links.drop_alias(self.cache, txn, node)
                    if target is not None:
                        self._inval.append(("inode", target.ino))
                    continue
                if node.ino in promote:  # it has a name outside, made here: it lives on there
                    self.cache.unlink(txn, node.parent, node.name)
                    links.promote(self.cache, txn, node, promote[node.ino])
                    self.cache.detach(txn, node, queue=True)
                    log.warning("%r was deleted on another device: it lives on as %r, a name it was given here",
                                path[-1] if path else node.name, "/".join(self.cache.names_to(node.ino)))
                    self._inval += [("entry", node.parent, node.name), ("inode", node.ino)]
                    continue
                self.cache.unlink(txn, node.parent, node.name)
                if node.kind == "dir":
                    for child_name, child_ino in self.cache.entries(node.ino):
                        child = self.cache.get(child_ino)
                        self.cache.unlink(txn, node.ino, child_name)
                        if child is not None:
                            stack.append((child, path + [child_name]))
                if self._in_use(node.ino):
                    if node.kind == "file" and path:  # a write or truncate through it revives it
                        node.extra["orphaned_from"] = path  # (Drive._revive_if_orphaned)
                    node.parent = 0
                    self.cache.put(txn, node)
                else:
                    self.chunks.dirty_bytes -= self.cache.drop_blocks(txn, node.ino, from_block=0)
                    self.cache.drop(txn, node)
        if local.ino in keep:
            log.warning("%r was deleted on another device but has local changes here: keeping it", name)
        else:
            self._inval.append(("entry", parent, name))

    def _apply_alias_delete(self, alias: Inode) -> None:
        """One extra name of a file went; moved here meanwhile, it is created again."""
        if self._changed(alias):
            with self.cache.write() as txn:
                self.cache.detach(txn, alias, queue=True)
            return
        with self.cache.write() as txn:
            target = links.drop_alias(self.cache, txn, alias)
        self._inval.append(("entry", alias.parent, alias.name))
        if target is not None:
            self._inval.append(("inode", target.ino))

    def _with_local_work(self, top: Inode) -> tuple[set[int], set[int], dict[int, int]]:
        """What of `top`'s subtree must survive its remote deletion: `keep`, inodes with
        local work and the directories leading to them; `alive`, nodes moved into the
        subtree here from outside it (the server still has them where they were); and
        `promote`, files that have a name outside it made here, which the server has not
        seen (those it has, it moved the file to before this delete): each moves to its
        oldest such name (alias record), as the server does, instead of coming back."""
        below: dict[int, Inode] = {}
        path: dict[int, int] = {top.ino: 0}
        stack = [top]
        for _ in range(10_000_000):
            if not stack:
                break
            node = stack.pop()
            below[node.ino] = node
            if node.kind == "dir":
                for _, child_ino in self.cache.entries(node.ino):
                    child = self.cache.get(child_ino)
                    if child is not None:
                        path[child.ino] = node.ino
                        stack.append(child)
        keep: set[int] = set()
        alive: set[int] = set()

        def moved_in(node: Inode) -> bool:
            return (node.ino != top.ino and bool(node.node_id) and not node.extra.get("detached")
                    and node.srv_parent != node.parent and node.srv_parent not in below)

        def under_alive(ino: int) -> bool:
            while ino:
                if ino in alive:
                    return True
                ino = path.get(ino, 0)
            return False

        def keep_up_from(ino: int) -> None:
            while ino and ino not in keep:
                keep.add(ino)
                ino = path.get(ino, 0)

        alive.update(node.ino for node in below.values() if moved_in(node))
        for node in below.values():
            if under_alive(node.ino):
                if node.ino in alive:
                    keep_up_from(path.get(node.ino, 0))  # the directories it was moved into
            elif not node.node_id or (node.kind != "dir" and self._changed(node)):
                keep_up_from(node.ino)  # merely open for writing is not work: a write revives it
        # Hard links: a kept name keeps the file it names where it is.
        for node in below.values():
            if node.kind == "link" and node.ino in keep and node.extra.get("target") in below:
                keep_up_from(node.extra["target"])
        promote = {}
        for node in below.values():
            outside = [a for a in links.aliases(node) if a not in below]
            if outside and node.ino not in keep:
                promote[node.ino] = outside[0]
        return keep, alive, promote


    # --- the kernel ---

    async def invalidate_entry(self, parent: int, name: str) -> None:
        """Make the kernel forget a name this mount changed on its own (the syncer's
        conflicted copies), now rather than with the next batch of changes."""
        self._inval.append(("entry", parent, name))
        await self._flush_invalidations()

    async def _flush_invalidations(self) -> None:
        if not self._inval:
            return
        batch, self._inval = self._inval, []

        def run() -> None:
            for what, *args in batch:
                if what == "entry":
                    self.invalidate.entry(*args)
                else:
                    self.invalidate.inode(*args)

        await trio.to_thread.run_sync(run)

    # --- the whole tree ---

    async def _run_reconcile(self) -> None:
        async with self._reconciling:
            await self._reconcile_once()

    async def _reconcile_once(self) -> None:
        """Make the mirror match a server snapshot, leaving pending local work alone."""
        me = await self.client.me()
        nodes, cursor = await self._snapshot()
        by_id = {n.id: n for n in nodes}
        children: dict[int, list[wire.Node]] = {}
        for n in nodes:
            if n.parent_id is not None:
                children.setdefault(n.parent_id, []).append(n)
        # Parents before children, so every create finds its directory.
        order, stack = [], [me.root_id]
        for _ in range(len(nodes) + 1):
            if not stack:
                break
            node_id = stack.pop()
            for child in children.get(node_id, []):
                order.append(child)
                stack.append(child.id)
        order.sort(key=lambda n: n.kind == "link")  # extra names once the files they name are here
        changed = 0
        for remote in order:
            ino = self.cache.ino_for_node(remote.id)
            local = self.cache.get(ino) if ino else None
            if local is None or self._differs(local, remote):
                self.apply(wire.Change(seq=0, op="modify", node=remote, device="reconcile"))
                changed += 1
        for local in list(self.cache.iter_inodes()):
            if local.node_id and local.ino != ROOT_INO and local.parent and local.node_id not in by_id \
                    and not local.extra.get("detached"):
                current = self.cache.get(local.ino)
                if current is not None and current.parent:
                    self._delete_unless_moving(current)
                    changed += 1
        await self._flush_invalidations()
        self._save_cursor(cursor)
        self.reconciles += 1
        log.info("reconciled the mirror with the server at cursor %d: %d node(s) repaired", cursor, changed)
        done, self._reconciled = self._reconciled, trio.Event()
        done.set()

    def _differs(self, local: Inode, remote: wire.Node) -> bool:
        parent = self.cache.ino_for_node(remote.parent_id) if remote.parent_id else 0
        if remote.kind == "link":
            return (local.parent, local.name, local.extra.get("target")) != \
                (parent, remote.name, self.cache.ino_for_node(remote.link_to or 0))
        if (local.parent, local.name, local.mode, local.uid, local.gid, local.xattrs) != \
                (parent, remote.name, remote.mode, remote.uid, remote.gid, remote.xattrs):
            return True
        return local.kind == "file" and (local.rev, local.size) != (remote.rev, remote.size)
