"""The guard against mass deletes: one mistaken `rm -rf` (or ransomware rewriting
everything into new files) on one device must not be applied on every device a
second later.

Deletes wait in the outbox a moment (SETTLE_S) before the syncer sends them, so the
deletes of one gesture are counted together. When those queued, plus those sent in the
last WINDOW_S, are more than `max_files`, or more than `fraction` of the drive's files
(once at least FRACTION_FLOOR are involved), the syncer stops at the first queued
delete and holds it and everything behind it: the other devices keep the files.
`cloudfs deletes confirm` lets them through; `cloudfs deletes undo` drops them and
brings the files back here from the server (the session pulls them). Files deleted one
by one, or in ordinary numbers, are never held.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field

SETTLE_S = 0.3
WINDOW_S = 60.0
FRACTION_FLOOR = 100


@dataclass
class DeleteGuard:
    max_files: int = 1000
    """0 turns the guard off."""
    fraction: float = 0.25
    sent: collections.deque = field(default_factory=collections.deque)
    held: int = 0
    """Deletes waiting for `confirm` or `undo` (0: none held)."""
    confirmed: bool = False

    def due(self, op: dict, now: float | None = None) -> bool:
        """A queued delete goes once it has waited SETTLE_S (deletes queued by older
        releases carry no time and go at once)."""
        now = time.time() if now is None else now
        return now - op.get("t", 0.0) >= SETTLE_S

    def check(self, queued_deletes: int, total_files: int, now: float | None = None) -> bool:
        """True when the queued deletes may go; otherwise they are held."""
        if self.max_files <= 0 or self.confirmed:
            self.held = 0
            return True
        now = time.monotonic() if now is None else now
        while self.sent and now - self.sent[0] > WINDOW_S:
            self.sent.popleft()
        burst = len(self.sent) + queued_deletes
        too_many = burst > self.max_files or (burst >= FRACTION_FLOOR and burst > self.fraction * max(total_files, 1))
        self.held = queued_deletes if too_many else 0
        return not too_many

    def record_sent(self, count: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.sent.extend([now] * count)

    def confirm(self) -> None:
        """Let the held deletes through; the guard arms again once they are sent."""
        self.confirmed = True
        self.held = 0

    def drained(self) -> None:
        """No delete is queued any more: the next burst is judged afresh."""
        if self.confirmed:
            self.confirmed = False
            self.sent.clear()
        self.held = 0
