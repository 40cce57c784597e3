"""Which outbox entries may go now, and in which runs.

Deletes wait a moment in the outbox (delete_guard.SETTLE_S) and are judged together by
the guard against mass deletes; a held delete stays queued, and so does each entry after
it that needs it gone first (something put at the name it frees). Every other change
passes it, so a held `rm -rf` never stops the rest of the drive from syncing. What may
go is then split into runs the syncer applies one after the other: uploads of distinct
files together, file deletes together, everything else alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..local.cache import Cache
from .delete_guard import WINDOW_S, DeleteGuard

log = logging.getLogger("cloudfs.syncer")

PARALLEL_UPLOADS = 16
PAGE = 1000
"""Outbox entries `_past_withheld` reads at a time: it stops after 500 that may go, and
a `cp -r` of 100,000 files queued behind a held delete was read whole on every pass."""

Entry = tuple[int, dict]
"""An outbox entry: (seq, op)."""


@dataclass
class _Walk:
    """How far `OutboxOrder._past_withheld` has read past the withheld deletes, kept
    between passes: a held `rm -rf` of many files is read once, not again on every
    change queued behind it (3,000 held deletes, read twice per pass, had each small
    file saved after them take 150 ms of the mount's CPU to sync)."""

    start: int
    """The first withheld delete, where the walk began."""
    cleared: int
    """`_cleared_upto` when it began: a confirm starts it afresh."""
    upto: int
    """The last outbox seq read."""
    freed: dict[tuple[int | None, str], int] = field(default_factory=dict)
    """Each name a withheld delete read so far frees: the seq of the first such delete."""
    waiting: list[Entry] = field(default_factory=list)
    """The other entries read so far, in order: judged again on every pass (a node may
    have moved onto a freed name), dropped once the run loop has applied them."""


class OutboxOrder:
    """The mass-delete guard's hold over the outbox, as the syncer's run loop sees it."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.guard = DeleteGuard()
        self._cleared_upto = 0
        """Deletes up to this outbox seq were judged by the guard and may go."""
        self._queued: dict[int, float] = {}
        """The queued deletes the guard judged (seq: when made), while it holds them."""
        self._read_upto = 0
        """The last outbox seq `_burst_may_go` read."""
        self._walk: _Walk | None = None
        self.stuck_at: int | None = None
        """The first entry waiting for a withheld delete (it and what follows wait)."""

    def withholds(self, seq: int) -> bool:
        """The delete queued at `seq` is held by the guard."""
        return bool(self.guard.held) and seq > self._cleared_upto

    def passable(self, items: list[Entry]) -> list[Entry]:
        """The entries that may go now. A delete still settling, or held by the
        mass-delete guard, stays queued, and so does each entry after it that needs it
        gone first (something put at the name it frees); every other change passes it,
        so a held `rm -rf` never stops the rest of the drive from syncing."""
        first = next((i for i, (_, op) in enumerate(items) if op["op"] == "delete"), None)
        if first is None:
            self.guard.drained()
            self.stuck_at, self._walk = None, None
            return items
        if items[first][0] <= self._cleared_upto:
            return items  # judged with its burst already
        if self.guard.due(items[first][1]) and self._burst_may_go():
            self.stuck_at, self._walk = None, None
            return items
        return items[:first] + due(self._past_withheld(items[first][0]))

    def _burst_may_go(self) -> bool:
        """Judge the queued deletes with the guard. While it holds them, only what was
        queued since the last judgement is read; the held ones are known."""
        if not self.guard.held:
            self._queued, self._read_upto = {}, 0
        fresh = self.cache.outbox_items(limit=10_000_000, start=self._read_upto + 1)
        if self.guard.held and not fresh:
            return False  # still held, nothing new
        if fresh:
            self._read_upto = fresh[-1][0]
        self._queued.update((seq, op.get("t", 0.0)) for seq, op in fresh if op["op"] == "delete")
        sent = [seq for seq in self._queued if seq <= self._cleared_upto]  # of the burst before
        if sent:
            gone = set(sent) - self.cache.outbox_present(sent)
            self._queued = {seq: t for seq, t in self._queued.items() if seq not in gone}
        newest = max(self._queued.values())
        burst = sum(1 for t in self._queued.values() if t >= newest - WINDOW_S)
        was_held = self.guard.held
        if self.guard.check(burst, self.cache.inode_count()):
            self._cleared_upto = max(self._queued)
            return True
        if not was_held:
            log.warning("holding %d deletes made here within a minute (a mass delete?): other devices keep the files "
                        "until `cloudfs deletes confirm` (or `cloudfs deletes undo` brings them back here)",
                        len(self._queued))
        self.guard.held = len(self._queued)
        return False

    def _past_withheld(self, start: int) -> list[Entry]:
        """The entries from seq `start` on that need none of the withheld deletes, up to
        the first that does (it and what follows wait, in order). Carries on from where
        the last pass stopped reading (`_Walk`)."""
        walk = self._walk
        if walk is None or (walk.start, walk.cleared) != (start, self._cleared_upto):
            walk = self._walk = _Walk(start, self._cleared_upto, upto=start - 1)
        if walk.waiting:
            present = self.cache.outbox_present([seq for seq, _ in walk.waiting])
            walk.waiting = [(seq, op) for seq, op in walk.waiting if seq in present]
        out: list[Entry] = []
        self.stuck_at = None
        for seq, op in self._to_judge(walk):
            if self._waits(seq, op, walk.freed):
                self.stuck_at = seq
                break
            out.append((seq, op))
            if len(out) >= 500:
                break
        return out

    def _to_judge(self, walk: _Walk) -> Iterator[Entry]:
        """The entries the walk read before and that are still queued, then the rest of
        the outbox, a page at a time: the withheld deletes among them only noted (the
        names they free), the others kept as read."""
        yield from list(walk.waiting)
        while True:
            page = self.cache.outbox_items(limit=PAGE, start=walk.upto + 1)
            for seq, op in page:
                walk.upto = seq
                if op["op"] == "delete" and seq > self._cleared_upto and "name" in op:
                    walk.freed.setdefault((op.get("parent_node"), op["name"]), seq)
                    continue
                walk.waiting.append((seq, op))
                yield seq, op
            if len(page) < PAGE:
                return

    def _waits(self, seq: int, op: dict, freed: dict[tuple[int | None, str], int]) -> bool:
        """The entry at `seq` needs a withheld delete queued before it to go first."""
        if op["op"] == "delete" and seq > self._cleared_upto:
            return True  # queued by an older release, without its name: where it was is unknown
        node = self.cache.get(op["ino"])
        if node is None or not freed:
            return False
        parent = self.cache.get(node.parent)
        return parent is not None and freed.get((parent.node_id, node.name), seq) < seq

    def take_held_deletes(self) -> list[int]:
        """`cloudfs deletes undo`: drop every queued delete; the node ids the server still has."""
        deletes = [(seq, op["node_id"]) for seq, op in self.cache.outbox_items(limit=10_000_000) if op["op"] == "delete"]
        self.cache.dequeue(*(seq for seq, _ in deletes))
        node_ids = [node_id for _, node_id in deletes]
        self.guard.drained()
        self._walk, self._queued = None, {}
        return node_ids


def runs(items: list[Entry]) -> list[list[Entry]]:
    """Split the outbox into runs that may be applied concurrently: uploads of
    distinct inodes together, deletes together, everything else alone, order kept
    between runs."""
    groups: list[list[Entry]] = []
    current: list[Entry] = []
    inos: set[int] = set()
    kind = ""
    for seq, op in items:
        joins = op["op"] == kind and not deletes_dir(op) and (op["ino"] in inos or len(inos) < PARALLEL_UPLOADS)
        if op["op"] in ("upload", "delete") and joins:
            current.append((seq, op))  # a repeat of an inode in the group is applied once
            inos.add(op["ino"])
            continue
        if current:
            groups.append(current)
            current, inos, kind = [], set(), ""
        if op["op"] in ("upload", "delete") and not deletes_dir(op):
            current, inos, kind = [(seq, op)], {op["ino"]}, op["op"]
        else:
            groups.append([(seq, op)])
    if current:
        groups.append(current)
    return groups


def due(items: list[Entry]) -> list[Entry]:
    """Entries that are not waiting for a later retry (an upload over quota)."""
    now = time.time()
    return [item for item in items if item[1].get("retry_at", 0) <= now]


def deletes_dir(op: dict) -> bool:
    """A directory's delete waits for the deletes before it (of what was inside)."""
    return op["op"] == "delete" and op.get("rev") is None
