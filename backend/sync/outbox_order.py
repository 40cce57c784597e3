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

from ..local.cache import Cache, u64
from .delete_guard import WINDOW_S, DeleteGuard

log = logging.getLogger("cloudfs.syncer")

PARALLEL_UPLOADS = 16

Entry = tuple[int, dict]
"""An outbox entry: (seq, op)."""


class OutboxOrder:
    """The mass-delete guard's hold over the outbox, as the syncer's run loop sees it."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.guard = DeleteGuard()
        self._cleared_upto = 0
        """Deletes up to this outbox seq were judged by the guard and may go."""
        self._held_len = 0
        self.stuck_at: int | None = None
        """The first entry waiting for a withheld delete (it and what follows wait)."""
        self._withheld_len = -1

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
            self.stuck_at = None
            return items
        if items[first][0] <= self._cleared_upto:
            return items  # judged with its burst already
        if self.guard.due(items[first][1]) and self._burst_may_go():
            self.stuck_at = None
            return items
        return items[:first] + due(self._past_withheld(items[first][0]))

    def _burst_may_go(self) -> bool:
        """Judge the queued deletes with the guard (once per change of the outbox)."""
        if self.guard.held and self.cache.outbox_len() == self._held_len:
            return False  # still held, nothing new: no need to count again
        queued = [(seq, op.get("t", 0.0)) for seq, op in self.cache.outbox_items(limit=10_000_000)
                  if op["op"] == "delete"]
        newest = max(t for _, t in queued)
        burst = sum(1 for _, t in queued if t >= newest - WINDOW_S)
        was_held = self.guard.held
        if self.guard.check(burst, self.cache.inode_count()):
            self._cleared_upto = queued[-1][0]
            return True
        if not was_held:
            log.warning("holding %d deletes made here within a minute (a mass delete?): other devices keep the files "
                        "until `cloudfs deletes confirm` (or `cloudfs deletes undo` brings them back here)", len(queued))
        self.guard.held = len(queued)
        self._held_len = self.cache.outbox_len()
        return False

    def _past_withheld(self, start: int) -> list[Entry]:
        """The entries from seq `start` on that need none of the withheld deletes, up to
        the first that does (it and what follows wait, in order)."""
        length = self.cache.outbox_len()
        if length == self._withheld_len:
            return []  # nothing passed last time, and nothing changed since
        freed: set[tuple[int | None, str]] = set()
        out: list[Entry] = []
        self.stuck_at = None
        for seq, op in self.cache.outbox_items(limit=10_000_000, start=start):
            if op["op"] == "delete" and seq > self._cleared_upto:
                if "name" not in op:  # queued by an older release: where it was is unknown
                    self.stuck_at = seq
                    break
                freed.add((op.get("parent_node"), op["name"]))
                continue
            if self._puts_at(op, freed):
                self.stuck_at = seq
                break
            out.append((seq, op))
            if len(out) >= 500:
                break
        self._withheld_len = -1 if out else length
        return out

    def _puts_at(self, op: dict, freed: set[tuple[int | None, str]]) -> bool:
        node = self.cache.get(op["ino"])
        if node is None or not freed:
            return False
        parent = self.cache.get(node.parent)
        return parent is not None and (parent.node_id, node.name) in freed

    def take_held_deletes(self) -> list[int]:
        """`cloudfs deletes undo`: drop every queued delete; the node ids the server still has."""
        node_ids = []
        with self.cache.write() as txn:
            for seq, op in self.cache.outbox_items(limit=10_000_000):
                if op["op"] == "delete":
                    txn.delete(u64(seq), db=self.cache.outbox)
                    node_ids.append(op["node_id"])
        self.guard.drained()
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
