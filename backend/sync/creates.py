"""Our own create requests that may be taking a name on the server right now.

A burst's uploads go side by side. When one of those files is renamed over, or removed,
here while its create is out, the create still lands, and its answer then removes the
node again (syncer `_still_here`). Until then another request of ours can meet that
node in its way: unknown here, with no delete queued, it looked like another device's
file, and ours became a conflicted copy of a file nobody else touched (soak, seed
210064: `mv b14.dat b1.dat` during the burst that made both). A request that meets an
unknown node where a create of ours went first waits for that create to settle (its
answer recorded, or its node removed again), then tries again.

Only creates that went out before the refused request did are waited for, and a request
stops counting as out once its answer is an error: a request that is itself handling a
refusal is never waited for, so two never wait for each other.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from typing import Iterator

import trio

from ..protocol import wire

log = logging.getLogger("cloudfs.syncer")

SETTLE_WAIT_S = 60.0
"""The longest a refused request waits for the creates ahead of it (each is a request
with its own timeout; this only bounds a stuck one)."""


@dataclass
class Create:
    """One request that may create a node: where it went, and when."""

    place: tuple[int, str] | None = None
    """(parent node id, name) the request named; None until it went, or for an edit."""
    went_at: float = math.inf
    settled: trio.Event = field(default_factory=trio.Event)

    def went(self, parent_id: int, name: str) -> None:
        self.place, self.went_at = (parent_id, name), trio.current_time()

    def sending(self, request: wire.CommitRequest) -> None:
        """The uploader's hook, just before the commit goes: a new file's commit creates."""
        if request.node_id is None and request.parent_id is not None and request.name is not None:
            self.went(request.parent_id, request.name)
        else:
            self.went_at = trio.current_time()


class CreatesOut:
    def __init__(self) -> None:
        self._out: dict[int, Create] = {}

    @contextlib.contextmanager
    def start(self, ino: int) -> Iterator[Create]:
        """Around one request about inode `ino` and the recording of its answer; left
        (by the error) before a refusal is handled."""
        create = self._out[ino] = Create()
        try:
            yield create
        finally:
            if self._out.get(ino) is create:
                del self._out[ino]
            create.settled.set()

    async def wait_for_ours(self, ino: int, occupant: dict, sent_at: float) -> bool:
        """`occupant` (a node in the server's refusal) may be the node of a create of ours
        that went out before `sent_at` and has not settled: wait until those have, and
        say True (the caller tries again). False when there is none."""
        place = (occupant.get("parent_id"), occupant.get("name"))
        ahead = [c for i, c in self._out.items() if i != ino and c.place == place and c.went_at < sent_at]
        if not ahead:
            return False
        log.info("%r is taken on the server by a node that may be ours, whose create is still settling: waiting "
                 "for it", occupant.get("name"))
        with trio.move_on_after(SETTLE_WAIT_S):
            for create in ahead:
                await create.settled.wait()
        return True
