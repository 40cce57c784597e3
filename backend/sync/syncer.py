"""Pushes the outbox to the server, in order, until it is empty; then waits.

Outbox entries name *what* changed, not how: `push` (make the server's location and
attributes of an inode match the mirror, creating it if the server has never seen
it), `upload` (commit its content) and `delete` (tombstone a node). Applying the
mirror's current state makes every entry idempotent, so an entry that is retried after
a crash or an outage does no harm, and later entries for the same inode become no-ops.

Failures: network trouble and 5xx keep the entry at the head of the queue and retry
with backoff (the drive is offline meanwhile); a 409 from a stale base revision turns
the local edit into a conflicted copy; anything else is logged and the entry dropped,
so one bad entry never wedges the queue.

Conflicts never lose bytes. A name taken on the server by a node this device has not
seen yet makes ours a conflicted copy (two new directories merge). A file deleted on
the server while edited here is created again (the edit survives); so is a directory
deleted there while something new was put in it here. A delete sent from here names
the revision it saw, so it fails, and the node comes back, if someone committed since;
a directory's delete refused as not empty brings it back too, unless all the server
still has in it is what was removed here with deletes queued behind it (a move out of
it skipped because the node was removed before the move went: `_empty_of_our_deletes`).
Whenever the server's state of a node turns out to differ, `on_stale` asks the follower
to pull that node.

Hard links (links.py): an alias record is pushed like any node, created through POST
/links once its inode has a node id (the inode is pushed first). When the inode loses
an edit conflict, its aliases stay with the winner: the follower re-points them once
the winner is here (`_aliases_follow_winner`).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Awaitable, Callable, Iterable

import trio

from ..errors import ConflictError, MissingChunksError, OfflineError, ServerError, StaleRevisionError
from ..local.cache import ROOT_INO, Cache, GoneError, Inode
from ..local.chunkcache import ChunkCache
from ..model import links
from ..protocol import wire
from ..protocol.api_client import ApiClient
from . import shared
from .conflicts import conflicted_name, conflicts_seen, count_conflict
from .creates import CreatesOut
from .delete_guard import DeleteGuard
from .outbox_order import OutboxOrder, due, runs
from .uploader import CLOCK_SLACK_S, FirstTry, UploadResult, Uploader, finish_upload

log = logging.getLogger("cloudfs.syncer")

QUIET_S = 0.03
"""Silence that ends a burst of local changes (tar x, cp -r: well under 1 ms between files)."""
MAX_DELAY_S = 2.0
MAX_BACKOFF_S = 10.0
QUOTA_RETRY_S = 5.0
TRIED_PLACES = 8
"""Places (directory, name) a new file's create tried, remembered until it is bound."""


class Syncer:
    def __init__(self, client: ApiClient, cache: Cache, chunks: ChunkCache, uploader: Uploader, *,
                 device: str, open_count: dict[int, int]) -> None:
        self.client = client
        self.cache = cache
        self.chunks = chunks
        self.uploader = uploader
        self.device = device
        self.open_count = open_count
        self.online = True
        self.on_stale: Callable[[int], None] = lambda node_id: None  # the follower's refresh
        self.forget_name: Callable[[int, str], Awaitable[None]] = _nothing_to_forget
        """Make the kernel drop a name (the follower's invalidate_entry)."""
        self.took_name: Callable[[int, str, Inode], None] = lambda parent, name, node: None
        """The follower's `took_name`: a conflicted copy leaves a name the kernel may still
        show it under, and what comes there next it never showed (stale_names.py)."""
        self.keep_local: Callable[[Inode], Awaitable[bool]] = _send_everything
        """Whether a node the server has not seen stays on this device (ignore.py)."""
        self.quota_blocked: set[int] = set()
        """Files whose upload the server refused for the quota; retried every QUOTA_RETRY_S."""
        self.last_error = ""
        self._wake = trio.Event()
        self._locks: dict[int, trio.Lock] = {}
        self._last_activity = 0.0
        self._burst_start = 0.0
        self.order = OutboxOrder(cache)
        self.creates = CreatesOut()

    @property
    def guard(self) -> DeleteGuard:
        return self.order.guard

    def take_held_deletes(self) -> list[int]:
        """`cloudfs deletes undo`: drop every queued delete; the node ids the server still has."""
        return self.order.take_held_deletes()

    @property
    def conflicts(self) -> int:
        return conflicts_seen(self.cache)

    def wake(self) -> None:
        now = time.monotonic()
        if now - self._last_activity >= QUIET_S:
            self._burst_start = now
        self._last_activity = now
        self._wake.set()

    async def _quiet_period(self, head: dict, due: int) -> None:
        """Debounce: let a burst of local changes (cp -r, tar x) finish before pushing,
        so the burst is not slowed by uploads competing for the CPU. Bounded by
        MAX_DELAY_S. Goes at once for an fsync'ed file (`force`) and for a lone change
        that came after a silence (a saved document: what other devices wait for)."""
        if head.get("force"):
            return
        if due == 1 and self._last_activity - self._burst_start < QUIET_S:
            return
        deadline = time.monotonic() + MAX_DELAY_S
        while time.monotonic() < deadline and time.monotonic() - self._last_activity < QUIET_S:
            await trio.sleep(QUIET_S / 4)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Drain the outbox in order. Consecutive uploads of different files run
        concurrently (up to outbox_order.PARALLEL_UPLOADS); every other entry waits for them."""
        task_status.started()
        backoff = 0.2
        while True:
            queued = due(self.cache.outbox_items(limit=500))
            items = self.order.passable(queued) if queued else []
            if not items:
                self._wake = trio.Event()
                with trio.move_on_after(0.1 if queued else 1.0):  # deletes settling or held (delete_guard.py)
                    await self._wake.wait()
                continue
            # Only what may go counts: a lone change saved behind held deletes is no burst
            # (it waited out the debounce, 40 ms of bench.py's propagation row).
            await self._quiet_period(items[0][1], len(items))
            items = self.order.passable(due(self.cache.outbox_items(limit=500)))
            if not items:
                continue
            failed: BaseException | None = None
            for group in runs(items):
                failed = await self._apply_group(group)
                if failed is not None:
                    break
                for seq, _ in group:
                    self.cache.dequeue(seq)
                self.guard.record_sent(sum(op["op"] == "delete" for _, op in group))
                self.online, backoff = True, 0.2
                if time.monotonic() - self._last_activity < QUIET_S:
                    break  # a burst is on again: one group per quiet period, so it keeps the CPU
            if failed is not None:
                if isinstance(failed, _Retry):
                    log.info("retrying shortly: %s", failed)  # the server answered: not offline
                else:
                    self._went_offline(failed)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _apply_group(self, group: list[tuple[int, dict]]) -> BaseException | None:
        """Apply entries concurrently; return the first transient failure (the whole
        group is retried later, which is safe because every entry is idempotent)."""
        failures: list[BaseException] = []
        over_quota: list[dict] = []

        async def one(op: dict) -> None:
            try:
                await self._apply(op)
                if op["op"] == "upload":
                    self.quota_blocked.discard(op["ino"])
            except GoneError:
                pass  # removed locally while we worked on it; its delete entry follows
            except (OfflineError, MissingChunksError, _Retry) as exc:
                failures.append(exc)  # missing chunks: a PUT was lost; the retry sends it again
            except ServerError as exc:
                if exc.status == 507:
                    over_quota.append(op)
                    self._went_offline(exc)
                elif exc.status >= 500 or exc.status in (401, 408, 429):
                    failures.append(exc)
                elif exc.status == 403:
                    await self._refused(op, exc)
                else:
                    log.error("dropping outbox entry %s: the server refused it: %s", op, exc)

        distinct: dict[Any, dict] = {}
        for _, op in group:
            key = (op["op"], op["ino"]) if op["op"] in ("upload", "delete") else id(op)
            distinct[key] = {**distinct.get(key, {}), **op}  # the latest entry wins, "force" sticks
        async with trio.open_nursery() as nursery:
            for op in distinct.values():
                nursery.start_soon(one, op)
        if over_quota:
            # To the back of the queue, tried again later: the deletes behind it may be
            # what makes room, so it must not hold them up.
            with self.cache.write() as txn:
                for op in over_quota:
                    self.quota_blocked.add(op["ino"])
                    self.cache.enqueue(txn, {**op, "retry_at": time.time() + QUOTA_RETRY_S})
        return failures[0] if failures else None

    async def _refused(self, op: dict, exc: ServerError) -> None:
        """The server refused a change for good (403: this account became a viewer of the
        shared folder meanwhile). Nothing is kept here that cannot be uploaded: the node
        goes back to what the server has (pulled again), one the server never had goes."""
        log.warning("the server refused a change to inode %s (%s): going back to the server's copy", op.get("ino"),
                    exc.body.get("detail", exc))
        node = self.cache.get(op.get("ino", 0))
        root = shared.root_of(self.cache, node.parent) if node is not None and node.parent else None
        if root is not None and root.node_id:
            self.on_stale(root.node_id)  # the role changed: the folder's root says so once pulled
        if op["op"] == "delete" or node is None:
            if op.get("node_id"):
                self.on_stale(op["node_id"])
            return
        parent, name = node.parent, node.name
        with self.cache.write() as txn:
            stack = [node]
            for _ in range(10_000_000):
                if not stack:
                    break
                here = stack.pop()
                if here.kind == "dir":
                    stack.extend(c for c in map(self.cache.get, (i for _, i in self.cache.entries(here.ino))) if c)
                if here.parent:
                    self.cache.unlink(txn, here.parent, here.name)
                self.chunks.dirty_bytes -= self.cache.drop_blocks(txn, here.ino, from_block=0)
                self.cache.drop(txn, here)
        await self.forget_name(parent, name)
        if node.bound:
            self.on_stale(node.node_id)

    def _went_offline(self, exc: BaseException) -> None:
        if isinstance(exc, ServerError) and exc.status == 507:
            if self.last_error != str(exc):
                log.warning("over quota, changes stay queued until room is made: %s", exc)
            self.last_error = str(exc)
            return
        if self.online:
            log.warning("server unreachable, changes stay queued: %s", exc)
        self.online = False
        self.last_error = str(exc)

    async def wait_idle(self, upto_seq: int) -> None:
        """Return once every outbox entry up to `upto_seq` has been applied, except the
        deletes the mass-delete guard holds and what waits for them (nothing more can
        happen to those until the user says)."""
        while True:
            items = self.cache.outbox_items(limit=1)
            if not items or items[0][0] > upto_seq:
                return
            if self.guard.held and items[0][1]["op"] == "delete" and not any(
                    op["op"] != "delete" and (self.order.stuck_at is None or seq < self.order.stuck_at)
                    for seq, op in self.cache.outbox_items(limit=10_000_000) if seq <= upto_seq):
                return
            self._wake.set()  # not wake(): waiting is not local activity, no debounce
            await trio.sleep(0.05)

    # --- applying one entry ---

    async def _apply(self, op: dict) -> None:
        kind = op["op"]
        if kind == "delete":
            await self._delete_entry(op)
            return
        if kind == "unland":
            await self._unland(op)
            return
        node = self.cache.get(op["ino"])
        if node is None or (node.parent == 0 and node.ino != ROOT_INO):
            return  # gone or orphaned since: a later delete entry (if any) handles the server
        if kind == "upload":
            if not node.dirty or (self.open_count.get(node.ino) and not op.get("force")):
                return  # clean already, or still open: release() queues another upload
        if not node.node_id and await self.keep_local(node):
            return  # an ignore rule keeps it here; what the server has already keeps syncing
        async with self._lock(node.ino):
            await self._push(node, depth=0)

    async def _delete(self, node_id: int) -> None:
        try:
            await self.client.delete(node_id, recursive=True)
        except ServerError as exc:
            if exc.status != 404:
                raise

    async def _delete_entry(self, op: dict, depth: int = 0) -> bool:
        """A local unlink or rmdir. Not recursive and guarded by the revision we saw:
        what another device put there meanwhile survives and is pulled back here.
        True when the node is gone from the server."""
        try:
            answer = await self.client.delete(op["node_id"], rev=op.get("rev"))
        except ConflictError as exc:
            if exc.code == "not_empty" and depth < 64 and await self._empty_of_our_deletes(op["node_id"], depth):
                return await self._delete_entry(op, depth + 1)
            if exc.code == "stale_revision" and depth < 64 and await self._removed_our_own_commit(op, exc):
                return await self._delete_entry({**op, "rev": exc.body["current_rev"]}, depth + 1)
            log.warning("not deleting node %d: changed on another device meanwhile (%s); pulling it back",
                        op["node_id"], exc.code)
            self.on_stale(op["node_id"])
            return False
        except ServerError as exc:
            if exc.status != 404:
                raise
            return True
        if not answer.node.deleted:  # it has names we did not know of: it moved to one (a hard link)
            self.on_stale(answer.node.id)
        return True

    async def _removed_our_own_commit(self, op: dict, exc: ConflictError) -> bool:
        """The revision that refused a guarded delete of ours is the next one, made here:
        our own commit of the file, on its way when the file was removed here, whose
        answer was lost (a kill). That version is what was removed here (soak, seed
        930022: an append, `rm -r` 11 ms later, the mount killed; mounted again, its
        delete took the append for another device's and brought the file back)."""
        rev = op.get("rev")
        if rev is None or exc.body.get("current_rev") != rev + 1:
            return False
        return await self._made_here_at(op["node_id"], rev + 1) is not None

    async def _made_here_at(self, node_id: int, rev: int) -> wire.FileInfo | None:
        """The file's current version, if it is revision `rev` and this device made it."""
        try:
            info = await self.client.file_info(node_id, urls=False)
        except ServerError as missing:
            if missing.status == 404:
                return None
            raise
        if info.version is None or info.version.rev != rev or not self.uploader.made_here(info.version):
            return None
        return info

    async def _unland(self, op: dict) -> None:
        """A new node went here while a create of it may have landed with its answer lost
        (a kill, a broken connection; drive.py queues this). No retry of it goes, so
        nothing told the server, and every other device kept what was removed here. At
        each place the create went to, a node this mirror does not know that the create
        made is removed (guarded by its revision): a file all of whose versions this
        device made since the first try; a symlink, hard link or special file just as
        sent; a directory while empty (soak, seed 600306: `ln -s` and `rm` 1 ms apart, the
        symlink stayed on the other devices). A new node of that name here now, not yet
        on the server, is left to its own retry, which finds out for itself
        (uploader._landed_before; a symlink's or link's retry meets its own try). What a
        try made is removed wherever it is now: another device may have moved it, and the
        delete of a node whose answer came would have removed it there too."""
        shape = op.get("shape") or {"kind": "file"}  # entries queued before shapes were kept: files
        for parent_id, name in op["places"]:
            parent_ino = self.cache.ino_for_node(parent_id)
            here = self.cache.get(self.cache.lookup(parent_ino, name) or 0) if parent_ino else None
            if here is not None and not here.node_id:
                continue
            try:
                candidates = await self._made_at(parent_id, name, op.get("after"))
            except ServerError as exc:
                if exc.status != 404:
                    raise
                continue  # the directory is gone, and whatever was made in it
            for found in candidates:
                if found.deleted or self.cache.ino_for_node(found.id) is not None \
                        or not await self._made_by_try(found, shape, op["since"]):
                    continue
                log.info("%r (node %d, now %r) was made by a create of a %s since removed here, whose answer "
                         "was lost: removing it", name, found.id, found.name, found.kind)
                try:
                    await self.client.delete(found.id, rev=found.rev if found.kind == "file" else None)
                except ConflictError:
                    continue  # changed elsewhere meanwhile: that change stays
                except ServerError as exc:
                    if exc.status != 404:
                        raise

    async def _made_at(self, parent_id: int, name: str, after: int | None) -> list[wire.Node]:
        """The nodes a create at (`parent_id`, `name`) may have made: those the journal
        says were created there since the first try (`after`, its position), wherever
        they are now; for a try noted before positions were kept, what has the name."""
        if after is not None:
            return await self.client.created_named(parent_id, name, after=after)
        found = await self.client.child_named(parent_id, name)
        return [found] if found is not None else []

    async def _made_by_try(self, found: wire.Node, shape: dict, since: float) -> bool:
        if shape["kind"] != "file":
            return _made_as(found, shape)  # a directory: the delete is refused if anything is in it
        if found.kind != "file":
            return False
        versions = (await self.client.versions(found.id)).versions
        return bool(versions) and all(self.uploader.made_here(v) for v in versions) \
            and min(v.created_at for v in versions) >= since - CLOCK_SLACK_S

    async def _empty_of_our_deletes(self, dir_id: int, depth: int) -> bool:
        """The server refused to delete directory `dir_id` as not empty. When all it still
        has there is what this device removed too, with deletes queued behind this one,
        send those first and say so (the caller tries again). That happens when a node
        left the directory here (a move, or the removal of a file's own name while it had
        another, links.promote) and was then removed before its move was sent: the move
        is skipped (the node is gone here), so the server still has it in the directory.
        False if anything there is another device's (it is pulled back, with the
        directory), or a delete the mass-delete guard holds."""
        try:
            children = await self.client.list_dir(dir_id)
        except ServerError as exc:
            if exc.status != 404:
                raise
            return True  # deleted meanwhile: the retry is answered 404, which is done
        queued = {op["node_id"]: (seq, op) for seq, op in self.cache.outbox_items(limit=10_000_000)
                  if op["op"] == "delete"}
        ours: list[dict] = []
        for child in children:
            seq, op = queued.get(child.id, (0, None))
            if op is None or self.order.withholds(seq):
                return False
            ours.append(op)
        log.info("deleting directory node %d: first the %d nodes in it on the server that were removed here",
                 dir_id, len(ours))
        for op in ours:
            if not await self._delete_entry(op, depth + 1):
                return False
        return True

    def _queued_delete(self, node_id: int) -> dict | None:
        queued = self.cache.queued_delete(node_id)
        return queued[1] if queued is not None else None

    def lock(self, ino: int) -> trio.Lock:
        """The per-file lock: one upload (or streaming round, streamer.py) at a time."""
        return self._lock(ino)

    def _lock(self, ino: int) -> trio.Lock:
        lock = self._locks.get(ino)
        if lock is None:
            lock = self._locks[ino] = trio.Lock()
        return lock

    async def _ensure_parent(self, node: Inode, depth: int) -> int:
        """Create missing ancestors first. Locks are taken child before parent, so
        concurrent uploads into one new directory create it once, without deadlock."""
        parent = self.cache.get(node.parent)
        if parent is None:
            raise _Retry(f"parent inode {node.parent} of {node.name!r} vanished")
        if not parent.node_id:
            async with self._lock(parent.ino):
                if not parent.node_id:
                    await self._push(parent, depth + 1)
        return parent.node_id

    async def _push(self, node: Inode, depth: int) -> None:
        """Make the server agree with the mirror about `node`."""
        if depth > 64:
            raise _Retry("directory chain too deep to create in one go")
        if node.ino == ROOT_INO:
            return
        parent_id = await self._ensure_parent(node, depth)
        if node.kind == "file" and (node.dirty or not node.bound):
            await self._upload(node, parent_id)
        elif not node.node_id:
            await self._create(node, parent_id, depth)
        if node.node_id and (node.srv_parent != node.parent or node.srv_name != node.name):
            await self._move(node)
        if node.node_id and not node.dirty:
            changes = node.attrs_pending()
            if changes:
                try:
                    answer = await self.client.set_attr(node.node_id, **changes)
                except ServerError as exc:
                    if exc.status != 404:
                        raise
                    return await self._attrs_of_a_deleted_node(node)
                self._record(node, answer.node, answer.cursor, placed=False, attrs=changes)

    async def _attrs_of_a_deleted_node(self, node: Inode) -> None:
        """Another device deleted the node whose attributes (mode, xattrs...) changed here
        before the change reached the server. What the follower does with that delete
        decides: a directory goes (but for what below it has local work); anything else
        is kept with its new attributes and created again (follower._with_local_work).
        If the follower has not seen the delete yet, the same is done here."""
        current = self.cache.get(node.ino)
        if node.kind == "dir" or current is None or current.node_id != node.node_id or current.extra.get("detached"):
            log.info("%r was deleted on the server before its attribute change arrived: the follower "
                     "applies the delete (the journal brings it)", node.name)
            return
        log.info("%r was deleted on the server before its attribute change arrived: creating it again", node.name)
        self._detach(current)
        await self._push(current, 0)

    def _record(self, node: Inode, remote: wire.Node, seq: int = 0, *, placed: bool = True,
                attrs: Iterable[str] = Inode._ATTRS) -> None:
        """The server acknowledged `node` as `remote`, by the journal entry `seq` (0: none
        of ours, as when two new directories merge). `attrs`: those our request set (a
        move sets none; `Inode.record_attrs`). `placed`: our request put the node
        where `remote` says (a create or a move). An attribute change does not: if the
        node is elsewhere on the server, another device moved it, and the follower brings
        that move here. Recorded as where the server has it, the node looked moved here
        and not sent, so the follower held the move back for ever and nothing sent ours
        (soak, seed 180156: a directory renamed elsewhere while its xattr changed here)."""
        if self.cache.get(node.ino) is None:
            return  # dropped locally meanwhile; a delete entry follows if it had a node id
        srv_parent = self.cache.ino_for_node(remote.parent_id) or 0 if remote.parent_id else 0
        moved_elsewhere = not placed and node.node_id and (srv_parent, remote.name) != (node.srv_parent, node.srv_name)
        with self.cache.write() as txn:
            if not node.node_id:
                self.cache.bind_node_id(txn, node, remote.id)
            if not moved_elsewhere:
                node.srv_parent, node.srv_name = srv_parent, remote.name
            node.record_attrs(remote, attrs)
            shared.mark(node, remote)
            if remote.kind != "file":
                node.rev = remote.rev
            if seq:
                node.extra["srv_seq"] = seq  # follower.py: our own entries older than this are stale
            node.extra.pop("winner", None)
            node.extra.pop("target_gone", None)
            self.cache.put(txn, node)
        if moved_elsewhere:
            self.on_stale(remote.id)

    def _still_here(self, node: Inode) -> bool:
        """False when the inode left the tree while a request about it was in flight."""
        current = self.cache.get(node.ino)
        return current is not None and (current.parent != 0 or current.ino == ROOT_INO)

    async def _create(self, node: Inode, parent_id: int, depth: int = 0) -> None:
        if depth > 64:
            raise _Retry(f"could not create {node.name!r} in one go")
        link_to = 0
        try:
            with self.creates.start(node.ino) as out:
                if node.kind == "link":
                    link_to = await self._link_target(node, depth)
                self._trying(node, parent_id, _shape(node, link_to))
                out.went(parent_id, node.name)
                if node.kind == "dir":
                    answer = await self.client.mkdir(parent_id, node.name, mode=node.mode, mtime_ns=node.mtime_ns)
                elif node.kind == "symlink":
                    answer = await self.client.symlink(parent_id, node.name, node.target, mtime_ns=node.mtime_ns)
                elif node.kind == "link":
                    answer = await self.client.link(parent_id, node.name, link_to)
                else:
                    answer = await self.client.mknod(parent_id, node.name, node.kind, mode=node.mode, rdev=node.rdev,
                                                     mtime_ns=node.mtime_ns)
                await self._created(node, answer)
        except ConflictError as exc:
            if exc.code not in ("name_exists", "is_a_directory"):
                raise
            if not self._still_here(node):
                return  # removed here meanwhile: its unland entry (drive.py) looks for what a try made
            occupant = wire.Node.model_validate(exc.body["node"])
            if self.cache.ino_for_node(occupant.id) == node.ino:
                return  # the follower merged ours into theirs while our request was in flight
            if _renamed_meanwhile(exc, node) or self._moved_meanwhile(node, parent_id):
                return await self._create(node, await self._ensure_parent(node, depth), depth + 1)
            if await self._clear_the_way(exc, node, out.went_at):
                return await self._create(node, parent_id, depth + 1)
            if node.kind == "dir" and occupant.kind == "dir" and self.cache.ino_for_node(occupant.id) is None:
                self._record(node, occupant)  # two new directories of one name: one directory
                self.on_stale(occupant.id)  # and pull in what the other device put there
                return
            if node.kind == "symlink" and occupant.kind == "symlink" and occupant.target == node.target \
                    and self.cache.ino_for_node(occupant.id) is None:
                # Our own first attempt, whose answer was lost (or another device's
                # identical link): one symlink, not a conflicted copy of itself.
                return await self._own_first_attempt(node, occupant)
            if node.kind == "link" and occupant.kind == "link" and occupant.link_to == link_to \
                    and self.cache.ino_for_node(occupant.id) is None:
                # The same for a hard link: our own name for that file (or another device's
                # of the same file under the same name), not a conflicted copy of it.
                return await self._own_first_attempt(node, occupant)
            await self._rename_conflicted(node, exc)
            return await self._create(node, parent_id, depth + 1)
        except ServerError as exc:
            if exc.status == 404 and exc.body.get("field") == "parent_id":
                await self._detach_parent(node)
                raise _Retry(f"the directory of {node.name!r} was deleted on the server: creating it again")
            if exc.status == 404 and exc.body.get("field") == "node_id" and node.kind == "link":
                self._link_target_gone(node)
                return await self._create(node, parent_id, depth + 1)  # the winner went: to the file here
            raise

    def _trying(self, node: Inode, parent_id: int, shape: dict, name: str | None = None) -> None:
        after = 0 if "first_try" in node.extra else self._journal_position()  # kept from the first try
        with self.cache.write() as txn:
            self._note_try(node, parent_id, shape, after, name)
            self.cache.put(txn, node)

    @staticmethod
    def _note_try(node: Inode, parent_id: int, shape: dict, after: int, name: str | None = None) -> None:
        """A create of `node` goes to `parent_id` (under `name`, or its name now): until the
        node is bound, a retry may find that a try landed with its answer lost, and a
        removal here must look for what it made (drive.py queues `unland`; `shape` says
        what to look for). `after`: the journal position read here before the first try
        (`_journal_position`), below every entry a try makes."""
        place = [parent_id, node.name if name is None else name]
        tried = node.extra.get("first_try")
        if tried is None:
            tried = node.extra["first_try"] = {"at": time.time(), "after": after, "places": []}
        tried["shape"] = shape
        if place not in tried["places"]:
            tried["places"] = (tried["places"] + [place])[-TRIED_PLACES:]

    async def _own_first_attempt(self, node: Inode, occupant: wire.Node) -> None:
        """`occupant` is what our first try of this create made. If the node went here
        while the retry was under way (a hard link's record, taken over by its file when
        the file's own name was removed: links.promote), it goes from the server too: it
        stood in the way of the file's move to that name (soak, seed 230010)."""
        if self._still_here(node):
            self._unland_elsewhere(node, occupant)
            self._record(node, occupant)
        else:
            await self._delete(occupant.id)

    def _journal_position(self) -> int:
        """The newest journal position the follower has read, in any namespace. Seqs are one
        sequence over every namespace, handed out as entries are made, so each entry a
        request sent after this is read makes lies past it, whichever namespace it is in."""
        return max(shared.load_cursors(self.cache).values(), default=0)

    def _unland_elsewhere(self, node: Inode, landed: wire.Node) -> None:
        """The create landed at last; a try that went to another place before it (the
        node moved here while that try was unanswered) may have landed too, and nothing
        else would remove it: the syncer looks for it as for a create removed here
        (`_unland`; soak, seed 710168: a symlink, its create unanswered, renamed over a
        file: the retry replaced the file, and the first try stayed at the symlink's old
        name on every other device)."""
        tried = node.extra.get("first_try")
        others = [place for place in (tried or {}).get("places", []) if place != [landed.parent_id, landed.name]]
        if others:
            with self.cache.write() as txn:
                self.cache.enqueue(txn, {"op": "unland", "ino": node.ino, "since": tried["at"], "places": others,
                                         "shape": tried.get("shape"), "after": tried.get("after")})

    async def _created(self, node: Inode, answer: wire.NodeResponse) -> None:
        if not self._still_here(node):
            await self._delete(answer.node.id)  # removed locally meanwhile
            return
        self._unland_elsewhere(node, answer.node)
        self._record(node, answer.node, answer.cursor)
        if node.kind == "link":
            target = self.cache.get(node.extra["target"])
            if target is None or target.node_id != answer.node.link_to or target.extra.get("detached"):
                self.on_stale(answer.node.id)  # it names the winner of a conflict: re-pointed once it is here

    async def _link_target(self, alias: Inode, depth: int) -> int:
        """The node id an alias record names on the server: its inode's, pushed first if the
        server has not seen it; the winner's if the inode lost a conflict meanwhile."""
        if alias.extra.get("winner"):
            return alias.extra["winner"]
        target = self.cache.get(alias.extra["target"])
        if target is None:
            raise GoneError(f"the inode of {alias.name!r} was removed meanwhile")
        if not target.bound:
            async with self._lock(target.ino):
                if not target.bound:
                    await self._push(target, depth + 1)
            if not target.bound:
                raise _Retry(f"{target.name!r} is not on the server yet")
        return target.node_id

    def _link_target_gone(self, alias: Inode) -> None:
        """The node an alias was to name is gone from the server. The winner of a conflict:
        the alias names the file here instead (returns). Its own file, deleted on another
        device while linked here: the follower applies that delete, which keeps the file
        under the name made here (follower._apply_delete); this entry waits for it, and
        marks the alias (`target_gone`) so that the delete does not in turn wait for a move
        queued behind this entry (follower._move_waits)."""
        if alias.extra.pop("winner", None) is not None:
            with self.cache.write() as txn:
                self.cache.put(txn, alias)
            return
        target = self.cache.get(alias.extra["target"])
        if not alias.extra.get("target_gone"):
            alias.extra["target_gone"] = True  # the follower applies that delete now (follower._named_anew)
            with self.cache.write() as txn:
                self.cache.put(txn, alias)
        if target is not None and target.bound:
            self.on_stale(target.node_id)
        raise _Retry(f"the file {alias.name!r} names was deleted on the server: waiting for the follower")

    async def _move(self, node: Inode) -> None:
        """Move the server's node to where `node` is now (asked here, not by the caller:
        an upload before it may have taken long enough for another local move)."""
        parent_id = await self._ensure_parent(node, 0)
        sent_at = trio.current_time()
        try:
            answer = await self.client.move(node.node_id, parent_id, node.name)
        except ConflictError as exc:
            if exc.code in ("shared_folder", "invalid_move") and await self._move_back(node, exc):
                return
            if exc.code not in ("name_exists", "is_a_directory", "not_a_directory"):
                raise
            if await self._exchange(exc, node, parent_id):
                return
            if not await self._clear_the_way(exc, node, sent_at):
                await self._rename_conflicted(node, exc)
            return await self._move(node)
        except ServerError as exc:
            if exc.status != 404:
                raise
            await self._retry_if_parent_gone(exc, node)
            self._detach(node)  # deleted on the server while moved here: create it again
            if node.kind == "dir":
                await self._detach_gone_below(node)
            return await self._push(node, 0)
        self._record(node, answer.node, answer.cursor, attrs=())

    async def _move_back(self, node: Inode, exc: ServerError) -> bool:
        """The server refused for good to move `node` where it is here: across a shared
        folder's boundary while one of its files has a hard link on the side it leaves
        (made on another device after this one moved it), or into a directory that
        another device moved into it first (`invalid_move`). Dropping the move would leave
        this mirror disagreeing with the server forever; the node goes back where the
        server has it, with everything in it, so nothing is lost (beside a name taken
        there meanwhile, as a conflicted copy). False when that place is gone here too."""
        home = self.cache.get(node.srv_parent) if node.srv_parent else None
        if home is None or home.kind != "dir" or (not home.parent and home.ino != ROOT_INO) \
                or self.cache.within(home.ino, node.ino):
            return False
        log.warning("the server refused to move %r (%s): it goes back where it was", node.name,
                    exc.body.get("detail", exc))
        old_parent, old_name = node.parent, node.name
        name = node.srv_name
        if self.cache.lookup(home.ino, name) not in (None, node.ino):
            name = conflicted_name(name, self.device, self.cache, home.ino)
        with self.cache.write() as txn:
            self.cache.unlink(txn, node.parent, node.name)
            node.parent, node.name = home.ino, name
            self.cache.place(txn, node)
            self.cache.put(txn, node)
        await self.forget_name(old_parent, old_name)
        await self.forget_name(home.ino, name)
        if name != node.srv_name:
            await self._move(node)
        return True

    def _moved_meanwhile(self, node: Inode, parent_id: int) -> bool:
        """`node` is no longer in the directory `parent_id` a request in flight named:
        a conflict there is not about where it is now."""
        parent = self.cache.get(node.parent)
        return parent is None or parent.node_id != parent_id

    async def _exchange(self, exc: ConflictError, node: Inode, parent_id: int) -> bool:
        """The node in our way went to our old place here: the two were exchanged
        (RENAME_EXCHANGE), which the server does in one step. True when done."""
        occupant_ino = self.cache.ino_for_node(int((exc.body.get("node") or {}).get("id", 0)))
        other = self.cache.get(occupant_ino) if occupant_ino else None
        if other is None or other.ino == node.ino or \
                (other.parent, other.name, node.parent, node.name) != (node.srv_parent, node.srv_name,
                                                                      other.srv_parent, other.srv_name):
            return False
        answer = await self.client.move(node.node_id, parent_id, node.name, exchange=True)
        self._record(node, answer.node, answer.cursor, attrs=())
        with self.cache.write() as txn:
            if self.cache.get(other.ino) is not None:
                other.srv_parent, other.srv_name = other.parent, other.name
                self.cache.put(txn, other)
        return True

    async def _clear_the_way(self, exc: ConflictError, node: Inode, sent_at: float) -> bool:
        """The server has another node where `node` belongs (refusing the request sent at
        `sent_at`). If the mirror moved or deleted that node, apply that first and say so
        (the caller retries); so too when it may be the node of a create of ours still
        settling (creates.py)."""
        occupant = exc.body.get("node") or {}
        occupant_id = int(occupant.get("id", 0))
        occupant_ino = self.cache.ino_for_node(occupant_id)
        local = self.cache.get(occupant_ino) if occupant_ino else None
        if local is None or local.parent == 0:
            queued = self._queued_delete(occupant_id)
            if queued is None:
                if occupant_ino is None and await self.creates.wait_for_ours(node.ino, occupant, sent_at):
                    return True
                if occupant_ino is None and occupant.get("kind") == "link" and node.bound \
                        and occupant.get("link_to") == node.node_id:
                    # A name of this very file that the mirror does not have: a hard link
                    # made here whose create landed unanswered, its record since taken over
                    # by the file (links.promote). The file has one name here, this one.
                    log.info("%r is another name of the file moved there, unknown here: removing it", node.name)
                    await self._delete(occupant_id)
                    return True
                self.on_stale(occupant_id)  # another device's node that we have not seen yet
                return False
            return await self._delete_entry(queued)  # we removed it here; its delete is still queued
        if local.ino != node.ino and (local.parent, local.name) != (node.parent, node.name):
            if (local.parent, local.name) == (local.srv_parent, local.srv_name):
                return False
            if self._inside_a_directory_being_made(local):
                await self._step_aside(local, occupant_id, int(occupant.get("parent_id") or 0))
                return True
            await self._push(local, 1)
            return True
        return False

    def _inside_a_directory_being_made(self, node: Inode) -> bool:
        """`node` is, here, inside a directory not on the server yet whose push is under
        way (its lock taken: by this task, creating it, or by another). Pushing `node`
        now would wait for that directory, which may wait for the name `node` holds on
        the server (`mkdir b; mv a b/; mv b a`: the new a's create met the old a; pushing
        the old a needed the new a's lock, held by the same task, and the mount died)."""
        ino = node.parent
        for _ in range(4096):
            here = self.cache.get(ino)
            if here is None or here.ino == ROOT_INO or here.node_id:
                return False
            lock = self._locks.get(ino)
            if lock is not None and lock.locked():
                return True
            ino = here.parent
        return False

    async def _step_aside(self, node: Inode, node_id: int, parent_id: int) -> None:
        """Give `node` a temporary name where the server has it, freeing the name it
        holds there; its move to its place here is queued and goes once that place exists.
        Other devices may see the temporary name for that long."""
        log.info("%r steps aside on the server: its place here is in a directory not made yet", node.srv_name)
        answer = await self.client.move(node_id, parent_id, f".cloudfs-moving-{node_id}")
        self._record(node, answer.node, answer.cursor, attrs=())
        with self.cache.write() as txn:
            self.cache.enqueue(txn, {"op": "upload" if node.kind == "file" and node.dirty else "push", "ino": node.ino})

    async def _upload(self, node: Inode, parent_id: int) -> None:
        creating = not node.bound
        retrying = creating and "first_try" in node.extra
        after = self._journal_position() if creating and not retrying else 0  # a retry keeps the first's
        with self.cache.write() as txn:
            node.min_trunc = -1
            if creating:
                self._note_try(node, parent_id, {"kind": "file"}, after)
            self.cache.put(txn, node)
        tried = node.extra["first_try"] if creating else None
        first_try = FirstTry(tried["at"], tried.get("after")) if tried else None
        try:
            with self.creates.start(node.ino) as out:
                def sending(request: wire.CommitRequest) -> None:
                    out.sending(request)
                    if request.node_id is None and request.parent_id is not None and request.name is not None:
                        # The place as sent: the file may have been renamed while its chunks went
                        # (soak, seed 820167: the directory it was in, the name it had by then).
                        self._trying(node, request.parent_id, {"kind": "file"}, request.name)

                result = await self.uploader.upload(node, parent_node_id=parent_id, sending=sending,
                                                    first_try=first_try, retrying=retrying)
                await self._uploaded(node, result)
        except StaleRevisionError as exc:
            if await self._adopt_own_lost_commit(node, exc):
                return await self._upload(node, parent_id)
            await self._conflicted_copy(node, exc)
            return
        except ConflictError as exc:
            if _renamed_meanwhile(exc, node) or self._moved_meanwhile(node, parent_id):
                return await self._upload(node, await self._ensure_parent(node, 0))
            occupant = exc.body.get("node") or {}
            if self.cache.ino_for_node(int(occupant.get("id", 0))) is None \
                    and await self.creates.wait_for_ours(node.ino, occupant, out.went_at):
                return await self._upload(node, parent_id)  # before taking it for a lost commit of ours
            if exc.code == "name_exists" and await self._adopt_own_lost_commit(node, exc):
                return await self._upload(node, parent_id)
            if exc.code in ("name_exists", "is_a_directory") and await self._clear_the_way(exc, node, out.went_at):
                return await self._upload(node, parent_id)
            # Never drop content the server refused: keep it under a conflicted name.
            await self._conflicted_copy(node, exc)
            return
        except ServerError as exc:
            if exc.status != 404:
                raise
            if exc.body.get("field") == "parent_id" and node.extra.get("first_try"):
                with self.cache.write() as txn:  # no try landed there (earlier ones were looked for):
                    node.extra.pop("first_try")  # the follower need not hold the directory's delete
                    self.cache.put(txn, node)
            await self._retry_if_parent_gone(exc, node)
            if exc.body.get("field") != "node_id":
                raise
            log.warning("%r was deleted on another device while edited here: keeping the edit", node.name)
            self._detach(node)
            return await self._upload(node, parent_id)

    async def _uploaded(self, node: Inode, result: UploadResult) -> None:
        if not self._still_here(node):
            # Deleted locally while uploading: the server must not keep it, but only the
            # version sent from here. Our commit's answer may come late (a lost answer,
            # found by the retry), and another device may have built on it since: that
            # is pulled back, as for any delete of ours that meets a newer revision
            # (soak, seed 460189: an unguarded delete took another device's append).
            self.uploader.content.watches.pop(node.ino, None)
            await self._delete_entry({"node_id": result.response.node.id, "rev": result.response.version.rev})
            return
        if not node.bound:
            # A create: an earlier try that went elsewhere may have landed unanswered. After a
            # kill the retry is built anew with the name the file has then, so it never meets
            # that try, which stayed on every other device (soak, seed 820167).
            self._unland_elsewhere(node, result.response.node)
        finish_upload(self.cache, self.uploader.content, node, result)
        if result.response.node.deleted or result.landed_before:
            # Ours had landed: another device saw it and deleted the file, or may have
            # changed or moved it since; the follower brings that as it would have.
            self.on_stale(result.response.node.id)

    async def _adopt_own_lost_commit(self, node: Inode, exc: ConflictError) -> bool:
        """The newer revision the server has (stale_revision), or the new file under our
        name (name_exists), is our own earlier commit of `node` whose answer was lost,
        and the file changed here before that could be found out (the uploader's
        `_landed_already` knows only the very same bytes). Build on it: it becomes the
        base the next commit names, instead of our later bytes becoming a conflicted
        copy of our earlier ones. The base chunk list moves to it too; that reads the
        same bytes wherever no dirty block covers them, as both came from the old base
        overlaid with blocks that are all still dirty. True when adopted."""
        occupant = exc.body.get("node") or {}
        node_id = int(occupant.get("id", 0))
        if exc.code == "stale_revision":
            expected = node.rev + 1
            if not node.bound or node_id != node.node_id or exc.body.get("current_rev") != expected:
                return False
        else:
            expected = 1
            if node.bound or occupant.get("kind") != "file" or occupant.get("rev") != 1 \
                    or self.cache.ino_for_node(node_id) is not None or self._queued_delete(node_id) is not None:
                return False  # known here, or a file replaced or removed here whose delete is queued
        info = await self._made_here_at(node_id, expected)
        if info is None:
            return False
        log.info("the commit of node %d rev %d had landed before its answer was lost; %r changed since: "
                 "building on it", node_id, expected, node.name)
        with self.cache.write() as txn:
            if exc.code != "stale_revision":
                self.cache.bind_node_id(txn, node, node_id)
                node.extra.pop("detached", None)
            node.rev = expected
            self.cache.set_chunklist(txn, node.ino, expected, [(c.fingerprint, c.length) for c in info.chunks])
            self.cache.put(txn, node)
        return True

    async def _conflicted_copy(self, node: Inode, exc: ServerError) -> None:
        """Someone else committed first: keep their version under the name, ours beside it."""
        node_id = node.node_id if node.bound else 0
        await self._rename_conflicted(node, exc)
        if node_id:
            self._detach(node)
            self.on_stale(node_id)  # bring the winner in under the name
            self._aliases_follow_winner(node, node_id)
        await self._push(node, 0)

    def _aliases_follow_winner(self, loser: Inode, winner_id: int) -> None:
        """The loser of a conflict is a single-name conflicted copy: its other names stay
        with the winner. Those the server has are pulled again once the winner is here
        (their ids are younger: `_pull_deferred` takes them after it) and re-pointed then;
        those it has not seen yet are created as names of the winner."""
        known = []
        with self.cache.write() as txn:
            for ino in links.aliases(loser):
                alias = self.cache.get(ino)
                if alias is None:
                    continue
                if alias.node_id:
                    known.append(alias.node_id)
                else:
                    alias.extra["winner"] = winner_id
                    self.cache.put(txn, alias)
        for node_id in known:
            self.on_stale(node_id)

    async def _rename_conflicted(self, node: Inode, exc: ServerError) -> None:
        name = conflicted_name(node.name, self.device, self.cache, node.parent)
        log.warning("conflict on %r (%s): keeping this device's version as %r", node.name, exc.code, name)
        occupant = (exc.body.get("node") or {}).get("id")
        old_name = node.name
        with self.cache.write() as txn:
            self.cache.unlink(txn, node.parent, node.name)
            node.name = name
            self.cache.place(txn, node)
            self.cache.put(txn, node)
            count_conflict(self.cache, txn)
        self.took_name(node.parent, old_name, node)
        # The kernel still maps the old name to this inode (entries live 300 s): a program
        # writing to that name next would write into our conflicted copy.
        await self.forget_name(node.parent, old_name)
        if occupant and self.cache.ino_for_node(int(occupant)) is None:
            self.on_stale(int(occupant))

    def _detach(self, node: Inode) -> None:
        """The server's node is gone (or someone else's now): create ours anew."""
        with self.cache.write() as txn:
            self.cache.detach(txn, node, queue=False)

    async def _detach_gone_below(self, top: Inode) -> None:
        """`top`, a directory moved here, was deleted on the server, most likely with
        everything below it: what below it the server no longer has is created again
        (queued, node by node). Each node is asked about, because one that another
        device moved elsewhere first is alive, and the follower brings its move."""
        inside = {top.ino}
        stack = [top]
        for _ in range(10_000_000):
            if not stack:
                break
            for _, ino in self.cache.entries(stack.pop().ino):
                child = self.cache.get(ino)
                if child is None or (child.node_id and child.srv_parent not in inside):
                    continue  # moved in from elsewhere: its own queued move brings it
                if child.bound and await self.client.node(child.node_id):
                    continue  # alive elsewhere on the server
                inside.add(child.ino)
                with self.cache.write() as txn:
                    self.cache.detach(txn, child, queue=True)
                if child.kind == "dir":
                    stack.append(child)

    async def _retry_if_parent_gone(self, exc: ServerError, node: Inode) -> None:
        """A 404 naming `parent_id`: `node`'s directory was deleted on the server. The
        follower applies that delete (keeping what has local work), then the retry
        creates the directory again."""
        if exc.body.get("field") == "parent_id":
            await self._detach_parent(node)
            raise _Retry(f"the directory of {node.name!r} was deleted on the server: creating it again") from None

    async def _detach_parent(self, node: Inode) -> None:
        """The server deleted `node`'s directory: the follower applies that delete, which
        keeps (and detaches) whatever has local work in it; then the retry creates it.

        Unless a move of that directory, or of one above it, is still queued here: the
        follower then leaves the delete to the move (follower._delete_unless_moving), and
        the move waits in the outbox behind the entry being retried, which retried for
        ever (soak, seed 150062: an attribute change of a file in a directory that another
        device removed while this one moved it). So that move goes now; finding its
        directory gone from the server, it creates it again where it is here, with what
        the server lost below it (`_move`)."""
        parent = self.cache.get(node.parent)
        if parent is None or not parent.node_id:
            return
        moved = self._moved_ancestor(parent)
        if moved is None:
            self.on_stale(parent.node_id)
            return
        async with self._lock(moved.ino):
            current = self.cache.get(moved.ino)  # as it is now: its own entry may have gone meanwhile
            if current is not None and current.node_id and \
                    (current.parent, current.name) != (current.srv_parent, current.srv_name):
                await self._move(current)

    def _moved_ancestor(self, directory: Inode) -> Inode | None:
        """`directory` or the nearest directory above it with a move the server has not seen."""
        here: Inode | None = directory
        for _ in range(4096):
            if here is None or here.ino == ROOT_INO or here.parent == 0:
                return None
            if here.node_id and (here.parent, here.name) != (here.srv_parent, here.srv_name):
                return here
            here = self.cache.get(here.parent)
        return None


class _Retry(Exception):
    """Transient: leave the entry at the head of the queue and try again later."""


def _shape(node: Inode, link_to: int) -> dict:
    """What a create of `node` makes on the server, beside its place: what `_unland`
    compares a node it finds there with."""
    if node.kind == "symlink":
        return {"kind": "symlink", "target": node.target}
    if node.kind == "link":
        return {"kind": "link", "link_to": link_to}
    if node.kind == "dir":
        return {"kind": "dir"}
    return {"kind": node.kind, "rdev": node.rdev}


def _made_as(found: wire.Node, shape: dict) -> bool:
    """`found` is what a create of `shape` (not a file) makes: same kind, and the same
    target, file or device number."""
    return found.kind == shape["kind"] and all(getattr(found, k) == v for k, v in shape.items() if k != "kind")


def _renamed_meanwhile(exc: ConflictError, node: Inode) -> bool:
    """The name the server refused is no longer `node`'s: it was renamed here (by the
    user, or by the follower making room for another device's file) while the request
    was being retried. Not a conflict: the request goes again under the new name."""
    occupant = exc.body.get("node") or {}
    return exc.code == "name_exists" and occupant.get("name") not in (None, node.name)


async def _send_everything(node: Inode) -> bool:
    """Without ignore rules (tests of the syncer alone) every node is sent."""
    return False


async def _nothing_to_forget(parent: int, name: str) -> None:
    """Without a kernel (tests of the syncer alone) there is nothing to invalidate."""
