"""Follows the server's change journal and applies other devices' changes locally.

The cursor is persisted in LMDB with every applied batch, so a remount resumes where it
stopped. Our own changes are skipped (the mirror made them first), unless another
device's older change was applied over one of them since (`_echo`).

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

Shared folders (shared.py): the account's own tree and every shared folder it has are
namespaces, each with its own journal and cursor; one long-poll (`POST /sync`) follows
all of them, and its answer is applied in seq order. A namespace the device has not
followed yet (a folder shared with this account, or just shared by it) is compared
with its snapshot first; so is one whose cursor the server no longer reaches (410 for
that namespace alone). A shared folder's root arrives placed where this account mounted
it, marked with its namespace and role; the folder's own entries about its root carry
attributes only. A folder that leaves this account's tree (left, removed) is a delete
of its root: what was not uploaded yet stays, as a folder of the account's own. A node
that moved to another namespace is a delete there marked `to_ns`: skipped when this
device follows that namespace too, where the move arrives (a directory moved in from a
namespace this device does not follow is pulled with everything in it). Our own
changes are those of this device *and* account (another account's device may have the
same name).

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

from ..errors import OfflineError, ServerError
from ..local.cache import ROOT_INO, Cache, Inode
from ..local.chunkcache import ChunkCache
from ..model import links
from ..model.stale_names import StaleNames
from ..protocol import wire
from ..protocol.api_client import ApiClient
from . import mirror, shared
from .conflicts import conflicted_name, count_conflict

log = logging.getLogger("cloudfs.follower")

RECONCILE_EVERY_S = 3600.0
UNANSWERED_KEPT = 1000
"""Own creates remembered while their node is not bound here (`_echo`): the newest."""
SETTLE_EVERY_S = 0.25
MAX_PULL_DEPTH = 4096


@dataclass
class Invalidator:
    inode: Callable[[int], None] = lambda ino: None
    entry: Callable[[int, str], None] = lambda parent, name: None


class Follower:
    def __init__(self, client: ApiClient, cache: Cache, chunks: ChunkCache, *, device: str,
                 open_count: dict[int, int], lookups: dict[int, int] | None = None,
                 writers: dict[int, int] | None = None, invalidate: Invalidator | None = None,
                 stale: StaleNames | None = None) -> None:
        self.client = client
        self.cache = cache
        self.chunks = chunks
        self.device = device
        self.open_count = open_count
        self.lookups = lookups if lookups is not None else {}
        self.writers = writers if writers is not None else {}
        self.invalidate = invalidate or Invalidator()
        self.stale = stale if stale is not None else StaleNames()
        """The Drive's: names this gives to something else while the kernel may still show
        what they had (a removal through one is meant for that)."""
        self.user_id = int(cache.get_meta("user_id") or 0)
        self.cursors: dict[int, int] = shared.load_cursors(cache)
        self._adopt_legacy_cursor()
        self._moved_in: set[int] = set()
        self.visible: set[int] = set(self.cursors)
        """The namespaces the server last said this account sees."""
        self.deferred: set[int] = set(json.loads(cache.get_meta("deferred", "[]") or "[]"))
        self.unanswered: dict[int, tuple[int, str]] = {
            int(k): (int(v[0]), str(v[1])) for k, v in self._kept("unanswered").items()}
        """Files this device created whose create came back through the journal before
        the node was bound here (node id -> parent node id, name): usually the answer is
        on its way; after a kill or a lost answer, it never comes (`_make_room`). Kept
        in LMDB with the cursors, since the kill may come after the entry was applied."""
        self.landed: dict[int, int] = {int(k): int(v) for k, v in self._kept("landed").items()}
        """Files with an upload pending here whose commit came back through the journal
        first (node id -> the revision it made): the answer is on its way, or was lost.
        A remote delete of such a file waits for the syncer (`_awaiting_answer`), whose
        retry finds out whether the version the other device deleted was these bytes.
        Kept in LMDB with the cursors, like `unanswered`."""
        self._saved = self._node_maps()
        self._pulling = 0
        """Deferred pulls under way (_pull_deferred)."""
        self._in_flight: set[int] = set()
        """Deferred nodes being pulled: kept in LMDB with `deferred` until pulled."""
        self._fetching: dict[int, int] = {}
        """Node id -> pulls of it waiting for the server's answer (`pull`)."""
        self._journal_step = 0
        self._overtaken: dict[int, int] = {}
        """Node id (while fetched) -> the journal step of its latest change applied."""
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
        await mirror.bootstrap(self)

    def _adopt_legacy_cursor(self) -> None:
        """A cache of format 3 whose account was not recorded (cache_format.py): its one
        cursor is the account's own tree's, once the account is known."""
        legacy = self.cache.get_meta("cursor")
        if legacy is not None and self.user_id:
            with self.cache.write() as txn:
                self.cursors.setdefault(self.user_id, int(legacy))
                shared.save_cursors(self.cache, txn, self.cursors)
                txn.delete(b"cursor", db=self.cache.meta)

    @property
    def cursor(self) -> int:
        """The cursor of the account's own tree (`cursors` has every namespace's)."""
        return self.cursors.get(self.user_id, 0)

    def _inode_from(self, node: wire.Node, ino: int, parent: int) -> Inode:
        local = Inode(ino=ino, parent=parent, name=node.name, kind=node.kind, mode=node.mode, size=node.size,
                      mtime_ns=node.mtime_ns, ctime_ns=node.mtime_ns, target=node.target or "", node_id=node.id,
                      rev=node.rev, base_len=node.size if node.kind == "file" else 0,
                      srv_parent=parent, srv_name=node.name, extra={"srv_size": node.size} if node.kind == "file" else {})
        local.adopt_attrs(node)
        shared.mark(local, node)
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
            if not self.user_id:
                try:
                    self.user_id = (await self.client.me()).user_id
                    self._adopt_legacy_cursor()
                except (OfflineError, ServerError):
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, 10)
                    continue
            try:
                answer = await self.client.sync(self.cursors or {self.user_id: 0}, wait=25)
            except (OfflineError, ServerError) as exc:
                if self.online:
                    log.warning("change feed unavailable: %s", exc)
                self.online = False
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 10)
                continue
            self.online, backoff = True, 0.2
            gone = set(answer.gone)
            try:
                for ns in sorted(gone):
                    log.warning("the journal of namespace %d no longer reaches cursor %d: comparing the whole tree "
                                "of that namespace", ns, self.cursors.get(ns, 0))
                    await self._run_reconcile(ns)
            except (OfflineError, ServerError) as exc:
                log.warning("comparing with the server postponed: %s", exc)
                continue
            for change in answer.changes:
                if change.ns in gone:
                    continue
                self._journal_step += 1
                if change.node.id in self._fetching:
                    self._overtaken[change.node.id] = self._journal_step
                if self._own(change):
                    self._echo(change)
                else:
                    log.debug("applying %s of node %d rev %d (seq %s)", change.op, change.node.id, change.node.rev,
                              change.seq)
                    self.apply(change)
            await self._flush_invalidations()
            try:
                await self._pull_moved_in()
            except (OfflineError, ServerError) as exc:
                log.warning("pulling what moved in postponed: %s", exc)
            visible = {n.id for n in answer.namespaces}
            self._save_cursors({int(ns): c for ns, c in answer.cursors.items() if int(ns) not in gone}, visible)
            for ns in sorted(visible - set(self.cursors)):
                log.info("following the shared folder of namespace %d", ns)
                try:
                    await self._run_reconcile(ns)
                except (OfflineError, ServerError) as exc:
                    log.warning("following namespace %d postponed: %s", ns, exc)

    def _own(self, change: wire.Change) -> bool:
        """Made by this device (of this account: another account's may have its name)."""
        return change.device == self.device and change.user_id in (None, self.user_id)

    async def _pull_moved_in(self) -> None:
        """Directories that moved into a namespace from one this device does not follow:
        the move entry named the directory alone; its contents are pulled."""
        while self._moved_in:
            node_id = self._moved_in.pop()
            try:
                for child in await self.client.list_dir(node_id):
                    await self.pull(child.id, 1)
            except ServerError as exc:
                if exc.status != 404:
                    raise
        await self._flush_invalidations()

    def _echo(self, change: wire.Change) -> None:
        """Our own change, back through the journal: the mirror made it first, so it is
        skipped, unless an older change of another device was applied over it after it
        reached the server (that entry came to us later than our answer did): then the
        mirror no longer shows what the server has, and ours is applied again. An entry
        older than our last acknowledged change of the node (`srv_seq`, recorded by the
        syncer) is skipped always: applying it would only undo ours for a moment."""
        local = self._mirrored(change.node.id)
        if local is None and change.op == "create" and change.node.kind == "file" and change.node.parent_id:
            self.unanswered[change.node.id] = (change.node.parent_id, change.node.name)
        if local is not None and local.kind == "file" and change.node.rev > local.rev and local.bound \
                and self._changed(local):
            self.landed[change.node.id] = change.node.rev
        if local is None or change.node.parent_id is None or self._pending(local):
            return
        if change.seq < local.extra.get("srv_seq", 0):
            return
        remote = change.node
        if change.op == "delete" or remote.deleted or mirror.differs(self.cache, local, remote) \
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
        leaves its node deferred, to be tried again.

        A node leaves the deferred set kept in LMDB only once its pull is done: killed
        while the answer was out, the mount pulls it again after the remount. Dropped
        before the pull, it was never pulled again, and whatever named it (a hard link)
        waited for it for ever (soak, seed 370059)."""
        self._pulling += 1
        try:
            for node_id in sorted(self.deferred):
                if self._blocked(node_id):
                    continue
                self.deferred.discard(node_id)  # the pull may defer it again
                self._in_flight.add(node_id)
                try:
                    await self.pull(node_id)
                except BaseException:
                    self.deferred.add(node_id)
                    raise
                finally:
                    self._in_flight.discard(node_id)
                    self._save_deferred()
            await self._flush_invalidations()
        finally:
            self._pulling -= 1

    async def pull(self, node_id: int, depth: int = 0) -> None:
        """Make the mirror agree with the server about one node (and, for a directory
        the mirror did not know, everything in it).

        The journal goes on while the answer is out: when a change of the node was
        applied meanwhile, the answer may be older than the mirror (its next revision
        came first), so the node is deferred and pulled again instead. Applied, an
        older revision replaced a newer one for good (soak, seed 400014)."""
        asked_at = self._journal_step
        self._fetching[node_id] = self._fetching.get(node_id, 0) + 1
        try:
            remote = await self.client.node(node_id)
        finally:
            overtaken = self._overtaken.get(node_id, 0) > asked_at
            self._fetching[node_id] -= 1
            if not self._fetching[node_id]:
                del self._fetching[node_id]
                self._overtaken.pop(node_id, None)
        if overtaken:
            self._defer(node_id)
            return
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

    def _save_cursors(self, cursors: dict[int, int], visible: set[int] | None = None) -> None:
        """Record applied positions; with `visible`, forget namespaces no longer seen."""
        merged = {**self.cursors, **cursors}
        if visible is not None:
            merged = {ns: c for ns, c in merged.items() if ns in visible}
            self.visible = visible
        self.unanswered = {node_id: placed for node_id, placed in list(self.unanswered.items())[-UNANSWERED_KEPT:]
                           if self.cache.ino_for_node(node_id) is None}
        self.landed = {node_id: rev for node_id, rev in list(self.landed.items())[-UNANSWERED_KEPT:]
                       if self._awaited(node_id, rev) is not None}
        changed = {key: kept for key, kept in self._node_maps().items() if kept != self._saved[key]}
        if merged != self.cursors or changed:
            with self.cache.write() as txn:
                shared.save_cursors(self.cache, txn, merged)
                for key, kept in changed.items():
                    self.cache.set_meta(txn, key, json.dumps({str(k): v for k, v in kept.items()}))
            self.cursors = merged
            self._saved.update(changed)
        self._advanced.set()
        self._advanced = trio.Event()

    def _kept(self, key: str) -> dict:
        """A node map kept in LMDB with the cursors (`unanswered`, `landed`)."""
        return json.loads(self.cache.get_meta(key, "{}") or "{}")

    def _node_maps(self) -> dict[str, dict]:
        """Copies of the node maps saved with the cursors, by their LMDB key."""
        return {"unanswered": dict(self.unanswered), "landed": dict(self.landed)}

    async def wait_for(self, targets: dict[int, int]) -> None:
        """Until every namespace of `targets` is applied up to its position (a namespace
        this device does not follow yet: until it does, and is)."""
        while any(self.cursors.get(ns, -1) < cursor for ns, cursor in targets.items() if ns in self.visible):
            await self._advanced.wait()

    async def advanced(self) -> None:
        """Until some namespace's cursor moves (an idle long-poll's answer does not)."""
        before = dict(self.cursors)
        while self.cursors == before:
            await self._advanced.wait()

    async def settled(self) -> None:
        """Return once every deferred node that can be pulled has been."""
        for _ in range(100_000):
            waiting = [i for i in self.deferred if not self._blocked(i)]
            if not waiting and not self._pulling:
                return
            await trio.sleep(SETTLE_EVERY_S / 5)

    def _blocked(self, node_id: int) -> bool:
        local = self._mirrored(node_id)
        if local is None:
            return self._unanswered_occupant(node_id) is not None or self._unlanding(node_id) or self._deleting(node_id)
        return self._pending(local) or self._move_waits(local) or self._awaiting_answer(local)

    # --- what counts as local work ---

    def _mirrored(self, node_id: int) -> Inode | None:
        """The inode `node_id` has here. An orphan (unlinked, kept for the handles open on
        it or the kernel's references) counts as none unless written since: it has no
        place to keep. Taken for the node, its place "differed" from the server's, and
        every change of the node was held back for good (soak, seed 570330: a file held
        open in a directory deleted elsewhere, after it had moved out of it there)."""
        ino = self.cache.ino_for_node(node_id)
        local = self.cache.get(ino) if ino else None
        if local is not None and local.parent == 0 and local.ino != ROOT_INO and not local.dirty:
            return None
        return local

    def _pending(self, local: Inode) -> bool:
        """True while `local` has changes the server has not acknowledged, or is open for
        writing (replacing it would pull the bytes from under a writer)."""
        return bool(self.writers.get(local.ino)) or self._changed(local)

    def _changed(self, local: Inode) -> bool:
        """True while `local` has changes the server has not acknowledged."""
        if local.ino == ROOT_INO:
            return False
        if not local.bound:
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

    def _move_waits(self, local: Inode) -> bool:
        """A change of `local` from the server waits for a queued move above it
        (`_move_queued`), unless a name made here for the file waits for that change:
        the server refused the name because the file is gone (syncer._link_target_gone),
        and the name stays queued, with the move behind it, until the delete is applied
        (it moves the file to the name). Deferred for the move, each waited for the other
        and the device never synced again (soak, seed 660039)."""
        return self._move_queued(local) and not self._named_anew(local)

    def _named_anew(self, local: Inode) -> bool:
        """`local` has a name made here that the server refused as its file was gone."""
        for ino in links.aliases(local):
            alias = self.cache.get(ino)
            if alias is not None and alias.extra.get("target_gone"):
                return True
        return False

    def _awaited(self, node_id: int, rev: int) -> Inode | None:
        """The file `landed` says has its commit of `rev` out, while it still has."""
        local = self._mirrored(node_id)
        if local is None or local.rev >= rev or local.extra.get("detached") or not self._changed(local):
            return None
        return local

    def _awaiting_answer(self, top: Inode) -> bool:
        """True while `top` is, or is a directory above, a file whose commit came back
        through the journal unanswered (`landed`). Applied now, a remote delete of it
        would keep the file for the pending upload, which then comes back as a new file,
        though the other device saw exactly those bytes and deleted them (soak, seed
        160082). Deferred, the syncer's retry finds its version in the deleted node's
        history, records the file as clean, and the delete then takes it.

        The same for a new file whose create came back unanswered (`unanswered`) while
        a retry may still find it landed (`first_try`, syncer): a directory above it
        deleted elsewhere waits too, as the retry finds the deleted node its first try
        made (uploader._landed_before) and takes the delete; applied at once, the
        directory was kept for the file and both came back."""
        awaited = [self._awaited(node_id, rev) for node_id, rev in list(self.landed.items())]
        for node_id in list(self.unanswered):
            occupant = self._unanswered_occupant(node_id)
            if occupant is not None and occupant.extra.get("first_try"):
                awaited.append(occupant)
        for local in awaited:
            for _ in range(MAX_PULL_DEPTH):
                if local is None:
                    break
                if local.ino == top.ino:
                    return True
                local = self.cache.get(local.parent) if local.parent else None
        return False

    def _delete_unless_moving(self, local: Inode) -> None:
        """Apply the server's delete of `local`, unless a queued move of a directory at or
        above it is still on its way: that move decides. Applied now, the delete would
        take files the move needs (another device's rm -r of the directory `local` was
        moved out of here: its per-file deletes arrive before our move reaches the
        server, which then finds the tree gone and creates it again, with whatever is
        still in it here). Deferred, the node is pulled again once the move is pushed,
        and goes only if the server still says it is gone."""
        if self._move_waits(local) or self._awaiting_answer(local):
            self._defer(local.node_id)
        else:
            self._apply_delete(local)

    def _deleting(self, node_id: int) -> bool:
        """A delete of `node_id` is queued in the outbox."""
        return self.cache.queued_delete(node_id) is not None

    def took_name(self, parent: int, name: str, gone: Inode) -> None:
        """`gone` left the name (moved, deleted, replaced here, or a conflicted copy of the
        syncer's): what this puts there next, the kernel never showed under it."""
        self.stale.took(parent, name, gone=gone, known=self._in_use(gone.ino))

    def _in_use(self, ino: int) -> bool:
        return bool(self.open_count.get(ino) or self.lookups.get(ino))

    def _defer(self, node_id: int) -> None:
        if node_id not in self.deferred:
            self.deferred.add(node_id)
            self._save_deferred()

    def _save_deferred(self) -> None:
        with self.cache.write() as txn:
            self.cache.set_meta(txn, "deferred", json.dumps(sorted(self.deferred | self._in_flight)))

    # --- applying one change ---

    def apply(self, change: wire.Change) -> None:
        remote = change.node
        if change.op == "delete" and change.to_ns is not None and change.to_ns in self.cursors:
            return  # it moved to a namespace this device follows: the move arrives there
        local = self._mirrored(remote.id)
        if change.op == "delete" or remote.deleted:
            if local is not None:
                self._delete_unless_moving(local)
            return
        if remote.parent_id is None:
            if local is not None and local.extra.get("ns") and not self._pending(local):
                self._root_attrs(local, remote)  # a shared folder's root, as its own journal has it
            return  # the root: nothing of it is mirrored but its children
        if local is not None and self._pending(local):
            self._follow_move(local, remote)
            self._defer(remote.id)
            return
        if local is None and (self._unanswered_occupant(remote.id) is not None or self._unlanding(remote.id)):
            # Our own create, its answer lost, its retry still to go: another device's
            # version or move of the node waits for the retry, which binds the file here to
            # the node where the create put it (uploader._landed_before), and is pulled
            # over it then. Applied now, a move made the node here a second time, and the
            # retry, finding it another inode's, sent the bytes the other device had
            # overwritten as a new file (soak, seed 1060113). The file removed here
            # meanwhile, the change waits for the syncer's unland, which removes the node
            # if it is still as the create made it; applied first, the node came back here
            # as another device's, and unland left it alone.
            self._defer(remote.id)
            return
        if local is not None and change.seq and change.seq < local.extra.get("srv_seq", 0):
            # Older than what the answer to a request of ours showed of the node: applied,
            # it put the node back where it was before our change, and nothing brought ours
            # back when the answer's cursor was past our own entry (a retried move whose
            # first try had landed; soak, seed 470199). The server's node as it is now is.
            self._defer(remote.id)
            return
        target = self._link_target(remote) if remote.kind == "link" else None
        if remote.kind == "link" and target is None:
            self._defer(remote.id)  # the file it names is not here (yet): pulled once it is
            return
        if change.op == "exchange" and local is not None and self._exchange(local, remote):
            return
        parent = self._parent_here(remote)
        if parent is None:
            self._defer(remote.id)  # its directory is not here (yet): pulled once it is
            return
        if local is not None and local.kind == "dir" and self.cache.within(parent.ino, local.ino):
            # Into a directory that is inside it here: a move of ours put it there, which
            # the server refuses (the syncer moves it back), or has yet to see. Applied
            # now, each directory was inside the other and both fell out of the tree
            # (soak, seed 420051).
            self._defer(remote.id)
            return
        if local is None and self._deleting(remote.id):
            # Deleted here, the delete is on its way: it must not come back now. Pulled
            # again once the delete is sent (_blocked until then): refused as stale,
            # the server's newer version must come back; a pull made while the refused
            # delete was still queued (its run waits for the others) was dropped here,
            # and the file was missing on this device for good (soak, seed 140054).
            # Nor may it take the name from a new node made here since: a new directory
            # was merged into it, and went on the server with it (soak, seed 520025).
            self._defer(remote.id)
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
            self._create(remote, parent.ino)
            if change.op == "move" and remote.kind == "dir":
                self._moved_in.add(remote.id)  # from a namespace we do not follow: what is in it, too
        elif local.kind == "file" and (remote.rev, remote.size, remote.mtime_ns) != (local.rev, local.size, local.mtime_ns):
            self._replace(local, remote, parent.ino)
        else:
            self._update(local, remote, parent.ino)

    def _parent_here(self, remote: wire.Node) -> Inode | None:
        """The directory `remote` is in, if the mirror has it in the tree (not removed)."""
        parent_ino = self.cache.ino_for_node(remote.parent_id or 0)
        parent = self.cache.get(parent_ino) if parent_ino else None
        if parent is None or parent.parent == 0 and parent.ino != ROOT_INO:
            return None
        return parent

    def _follow_move(self, local: Inode, remote: wire.Node) -> None:
        """A file with local work (written, open for writing) that another device moved,
        or that the server moved to its other name when its first one was taken: the
        move is applied now, and the rest waits for the local work. Its content and its
        place are apart: held back with the content, the move left the file's old name
        taken here, and what the server put there next met the file (a conflicted copy
        of the file itself), or the device kept the old name for good (soak, seed
        330061). Not when the file was moved here too: that move is on its way."""
        if local.kind != "file" or not local.bound or remote.parent_id is None \
                or (local.parent, local.name) != (local.srv_parent, local.srv_name):
            return
        parent = self._parent_here(remote)
        if parent is None or parent.kind != "dir" or (parent.ino, remote.name) == (local.parent, local.name):
            return
        if self._make_room(parent.ino, remote, local) != "free":
            return
        old_parent, old_name = local.parent, local.name
        with self.cache.write() as txn:
            local = self.cache.get(local.ino, txn) or local
            links.unplace(self.cache, txn, local)
            local.parent, local.name = parent.ino, remote.name
            local.srv_parent, local.srv_name = parent.ino, remote.name
            local.ctime_ns = time.time_ns()
            self.cache.place(txn, local)
            self.cache.put(txn, local)
        self._inval += [("entry", old_parent, old_name), ("entry", parent.ino, remote.name), ("inode", local.ino)]

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
        for node, gone in ((local, other), (other, local)):  # the kernel may show `gone` there still
            self.took_name(node.parent, node.name, gone)
            self.stale.put(node.parent, node.name, node.ino)
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
        if self._answer_due(occupant):
            return "wait"  # pulled again once the retry has its answer
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
        self.took_name(parent, remote.name, occupant)
        self._inval.append(("entry", parent, remote.name))
        return "free"

    def _answer_due(self, occupant: Inode) -> bool:
        """True while the file `occupant` has a create or commit that landed unanswered
        (came back through the journal, `unanswered` and `landed`): what arrives at its
        name may be built on exactly those bytes. Another device changed the node (the
        retry binds to it, and the change is pulled over it), or removed it and made a
        new file of that name (the retry finds its version among the deleted, and the
        file goes with the delete). A conflicted copy made at once brought back bytes
        the other device had seen and overwritten or removed (soak, seeds 130006 and
        350172)."""
        if occupant.kind != "file":
            return False
        if occupant.bound:
            rev = self.landed.get(occupant.node_id)
            return rev is not None and self._awaited(occupant.node_id, rev) is not None
        for node_id in list(self.unanswered):
            mine = self._unanswered_occupant(node_id)
            if mine is not None and mine.ino == occupant.ino:
                return True
        return False

    def _unlanding(self, node_id: int) -> bool:
        """A create of ours made `node_id`, its answer lost, and the file was removed here
        since: an unland of that place is queued (syncer._unland)."""
        placed = self.unanswered.get(node_id)
        return placed is not None and self.cache.unland_queued(*placed)

    def _unanswered_occupant(self, node_id: int) -> Inode | None:
        """The local file whose create made `node_id`, when its answer never came (a kill,
        a lost answer) and it is still unbound, under the name it was created with.
        Another device's change to that node is not a conflict by itself: the
        uploader's retry finds its own version in the history and binds the file to the
        node (uploader._landed_already), then the newer change is pulled over it. A
        conflicted copy made at once brought back bytes that the other device had seen
        and overwritten (found by the soak, seed 130006). If the file changed after that
        create, the retry is refused as a conflict and the syncer keeps it as a copy.
        A file created anew (`detached`: a conflicted copy, a file deleted elsewhere
        and kept) still has its old node's id until then, and is unbound all the same:
        taken for bound, its copy was kept as a conflicted copy of itself, bringing
        back bytes the other device had overwritten (soak, seed 730266)."""
        placed = self.unanswered.get(node_id)
        if placed is None or self.cache.ino_for_node(node_id) is not None:
            return None
        parent_ino = self.cache.ino_for_node(placed[0])
        ino = self.cache.record_at(parent_ino, placed[1]) if parent_ino else None
        local = self.cache.get(ino) if ino else None
        return local if local is not None and local.kind == "file" and not local.bound else None

    def _create(self, remote: wire.Node, parent: int) -> None:
        with self.cache.write() as txn:
            node = self._inode_from(remote, self.cache.new_ino(txn), parent)
            self.cache.put(txn, node, create=True)
            self.cache.bind_node_id(txn, node, remote.id)
            self.cache.link(txn, parent, remote.name, node.ino)
        self.stale.put(parent, remote.name, node.ino)
        self._inval.append(("entry", parent, remote.name))

    def _replace(self, local: Inode, remote: wire.Node, parent: int) -> None:
        """New content: a new inode under the name, so the kernel forgets the old size.
        Its other names (hard links) go with it."""
        old_parent, old_name = local.parent, local.name
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
        self.took_name(old_parent, old_name, local)
        self.stale.put(parent, remote.name, node.ino)
        log.debug("replaced inode %d (node %d rev %d) with inode %d (rev %d) at %d/%r", local.ino, remote.id,
                  local.rev, node.ino, remote.rev, parent, remote.name)
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

    def _root_attrs(self, local: Inode, remote: wire.Node) -> None:
        """A shared folder's root changed in its own namespace (mode, times, xattrs): its
        place is this account's, from the mount."""
        with self.cache.write() as txn:
            local.adopt_attrs(remote)
            local.ctime_ns = time.time_ns()
            self.cache.put(txn, local)
        self._inval.append(("inode", local.ino))

    def _update(self, local: Inode, remote: wire.Node, parent: int) -> None:
        """A move or an attribute change: the same inode, so open handles follow it."""
        moved = (local.parent, local.name) != (parent, remote.name)
        old_parent, old_name = local.parent, local.name
        shared.mark(local, remote)
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
            self.took_name(old_parent, old_name, local)
            self.stale.put(parent, remote.name, local.ino)
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
        repull: list[int] = []
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
                if node.ino in promote:  # it has a name outside: it lives on there
                    self.cache.unlink(txn, node.parent, node.name)
                    to, known = promote[node.ino]
                    if links.promote(self.cache, txn, node, to) is not None and known:
                        # As the server did before the delete: applied ahead of the journal
                        # (a pull), whose move entries for it come later. Taken for a name
                        # given here, the file was created anew with the bytes it had here,
                        # and the other device's newer ones became a conflicted copy of
                        # them (soak, seed 1090052). Pulled again after the journal.
                        node.srv_parent, node.srv_name = node.parent, node.name
                        self.cache.put(txn, node)
                        repull.append(node.node_id)
                        log.info("%r was deleted on another device: the server moved it to its other name %r",
                                 path[-1] if path else node.name, "/".join(self.cache.names_to(node.ino)))
                    else:
                        self.cache.detach(txn, node, queue=True)
                        log.warning("%r was deleted on another device: it lives on as %r, a name it was given here",
                                    path[-1] if path else node.name, "/".join(self.cache.names_to(node.ino)))
                    self._inval += [("entry", node.parent, node.name), ("inode", node.ino)]
                    continue
                if node.parent in keep:  # its directory stays here: the kernel must forget the name
                    self._inval.append(("entry", node.parent, node.name))  # (below a dropped one it goes with it)
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
        for node_id in repull:
            self._defer(node_id)
        if local.ino in keep:
            log.warning("%r was deleted on another device but has local changes here: keeping it", name)
        else:
            if local.ino not in alive and local.ino not in promote:
                self.took_name(parent, name, local)
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

    def _with_local_work(self, top: Inode) -> tuple[set[int], set[int], dict[int, tuple[int, bool]]]:
        """What of `top`'s subtree must survive its remote deletion: `keep`, inodes with
        local work and the directories leading to them; `alive`, nodes moved into the
        subtree here from outside it (the server still has them where they were); and
        `promote`, files that have a name outside it, each moving there instead of going:
        (alias record, whether the server has it there). To the oldest the server has
        there (it moved the file there before this delete; the journal says so after the
        delete when a pull brought the delete first), else to the oldest made here, where
        it is created again."""
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
            return (node.ino != top.ino and node.bound
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
            outside = [a for a in map(self.cache.get, links.aliases(node)) if a is not None and a.ino not in below]
            if outside and node.ino not in keep:
                known = sorted((a for a in outside if self._known_outside(a, below)), key=lambda a: a.node_id)
                promote[node.ino] = (known[0].ino, True) if known else (outside[0].ino, False)
        return keep, alive, promote

    @staticmethod
    def _known_outside(alias: Inode, below: dict[int, Inode]) -> bool:
        """The server has alias record `alias` where it is here, outside the deleted
        subtree: before the delete, the server moved the file there itself (tree.py,
        `_promote_out_of`, oldest alias row first)."""
        return alias.bound and (alias.parent, alias.name) == (alias.srv_parent, alias.srv_name) \
            and alias.parent not in below


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
        log.debug("the kernel forgets %d names and inodes", len(batch))

        def run() -> None:
            for what, *args in batch:
                if what == "entry":
                    self.invalidate.entry(*args)
                else:
                    self.invalidate.inode(*args)

        await trio.to_thread.run_sync(run)

    # --- the whole tree ---

    async def _run_reconcile(self, ns: int | None = None) -> None:
        """Compare one namespace (`ns`) with its snapshot, or every one this account sees."""
        async with self._reconciling:
            if ns is not None:
                await self._reconcile_ns(ns)
            else:
                me = await self.client.me()
                self.user_id = me.user_id
                visible = {int(k) for k in me.cursors} or {me.user_id}
                for each in sorted(visible, key=lambda n: n != me.user_id):  # its own tree first: the mounts
                    await self._reconcile_ns(each)
                self._save_cursors({}, visible)
        done, self._reconciled = self._reconciled, trio.Event()
        done.set()

    async def _reconcile_ns(self, ns: int) -> None:
        await mirror.reconcile_namespace(self, ns)
