"""Transfers under way, for `cloudfs status` and the progress bars: what moves (a file's
upload, the download of pinned files), how much of it is done, how fast, and how
long the rest should take.

Speed is measured over the last WINDOW_S seconds (a transfer that stalled shows its
speed falling to zero, not its average since the start). Everything runs on the trio
thread; `advance` is a few additions.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field

WINDOW_S = 10.0


@dataclass
class Transfer:
    direction: str
    """"up" (an upload) or "down" (pinned files being fetched)."""
    path: str
    total: int
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    sent: int = 0
    """Bytes that went over the wire (for an upload: chunks PUT, not those the store had)."""
    key: int = 0
    _samples: deque = field(default_factory=deque)
    id: int = 0

    def advance(self, nbytes: int, *, sent: bool = True) -> None:
        self.done += nbytes
        self.sent += nbytes if sent else 0
        now = time.monotonic()
        self._samples.append((now, self.done))
        while self._samples and self._samples[0][0] < now - WINDOW_S:
            self._samples.popleft()

    def speed(self) -> float:
        """Bytes per second over the last WINDOW_S seconds (since the start if younger)."""
        now = time.monotonic()
        recent = [(t, d) for t, d in self._samples if t >= now - WINDOW_S]
        if not recent:
            return 0.0
        since, base = (self.started, 0) if now - self.started <= WINDOW_S else recent[0]
        elapsed = now - since
        return (self.done - base) / elapsed if elapsed > 0 else 0.0

    def as_dict(self) -> dict:
        speed = self.speed()
        left = max(0, self.total - self.done)
        return {"direction": self.direction, "path": self.path, "done_bytes": self.done, "total_bytes": self.total,
                "speed_bps": round(speed), "eta_s": round(left / speed, 1) if speed > 0 else None}


class Transfers:
    def __init__(self) -> None:
        self._live: dict[int, Transfer] = {}
        self._ids = itertools.count(1)

    def start(self, direction: str, path: str, total: int, *, key: int = 0) -> Transfer:
        transfer = Transfer(direction, path, total, key=key, id=next(self._ids))
        self._live[transfer.id] = transfer
        return transfer

    def finish(self, transfer: Transfer) -> None:
        self._live.pop(transfer.id, None)

    def current(self) -> list[dict]:
        return [t.as_dict() for t in self._live.values()]

    def sent_bytes(self, direction: str) -> int:
        return sum(t.sent for t in self._live.values() if t.direction == direction)

    def sent_for(self, key: int) -> int:
        return sum(t.sent for t in self._live.values() if t.key == key)
