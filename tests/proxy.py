"""A TCP proxy on loopback that injects network faults between a device and the
server or S3: it can stop answering (connections accepted, then silence: what a
stopped server does not show), and it can answer 503, reset connections part-way
through a transfer, or be slow, at random but from a seed. It can also hold back only
the requests whose first line matches a pattern (`hold`), so a test decides which of a
device's requests reach the server first (its change feed before its queued move)),
and lose the answers of requests it did forward (`lose_answers`: the server acted, the
device never hears so, as when a connection breaks at the worst moment). `delay` gives
the requests matching a pattern a round trip's latency each and counts how many wait at
once: how many of them a client keeps in flight. `hold_answers` lets matching requests
reach the server and holds their answers back, each until the test lets it go: the
server has acted, the device does not know yet."""

from __future__ import annotations

import contextlib
import random
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field, replace
from typing import TypeVar

S = TypeVar("S")


@dataclass
class HeldAnswer:
    """A request that reached the server and whose answer `hold_answers` holds back."""

    request: bytes = b""
    """What the device sent (head and body)."""
    answered: threading.Event = field(default_factory=threading.Event)
    """Set once the server's answer has come (and is being held)."""
    go: threading.Event = field(default_factory=threading.Event)


@dataclass
class Faults:
    """Per new connection: the chance it is answered with a 503, reset after a random
    number of bytes, or delayed; `seed` makes a run repeatable."""

    error: float = 0.0
    reset: float = 0.0
    slow: float = 0.0
    slow_s: float = 0.5
    seed: int = 1
    rate: float = 0.0
    """Bytes per second through the proxy, all connections and both directions together
    (0: unlimited): a slow link, so an upload's progress can be watched."""


BODY_503 = b'{"error":"unavailable","detail":"fault injected by the test proxy"}'
ANSWER_503 = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
              b"Content-Length: " + str(len(BODY_503)).encode() + b"\r\n\r\n" + BODY_503)


class Proxy:
    def __init__(self, target_port: int, faults: Faults | None = None) -> None:
        self.faults = faults or Faults()
        self._random = random.Random(self.faults.seed)
        self.injected = {"error": 0, "reset": 0, "slow": 0}
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._link_free_at = 0.0
        self._held: re.Pattern[bytes] | None = None
        self._released = threading.Event()
        self._released.set()
        self.holding = 0
        """Requests waiting at a `hold` right now."""
        self._failing: re.Pattern[bytes] | None = None
        self.failed = 0
        """Requests answered 503 by `fail` so far."""
        self._lose: re.Pattern[bytes] | None = None
        self._lose_left = 0
        self._then_fail = False
        self.lost = 0
        """Answers dropped by `lose_answers` so far: counted once the server has answered
        (the request was carried out), as the connection is reset."""
        self._delayed: re.Pattern[bytes] | None = None
        self._delay_s = 0.0
        self.delayed: list[tuple[bytes, float, float]] = []
        """(first line, start, end of the wait) of the requests that waited out a `delay`."""
        self._hold_answers: re.Pattern[bytes] | None = None
        self._hold_answers_left = 0
        self.answers_held: list[HeldAnswer] = []
        """The requests `hold_answers` caught, in the order they came."""
        threading.Thread(target=self._accept, daemon=True).start()

    def hang(self) -> None:
        """From now on nothing passes, in either direction; connections stay open."""
        self._flowing.clear()

    def resume(self) -> None:
        """Drop the connections that hung (their peers see a reset) and pass again."""
        with self._lock:
            stuck, self._sockets = self._sockets, []
        for s in stuck:
            _close(s)
        self._flowing.set()

    def hold(self, request_line: bytes) -> None:
        """Hold back every request whose first line matches the regex `request_line`
        (say rb"^POST /nodes/\\d+/move ") until `release`; the others pass."""
        self._held = re.compile(request_line)
        self._released.clear()

    def lose_answers(self, request_line: bytes, count: int = 1, *, then_fail: bool = False) -> None:
        """The next `count` requests whose first line matches the regex `request_line`
        reach the server, but their answers do not come back: the connection is reset
        instead. `then_fail`: once they are lost, later matching requests (the client's
        retries) are answered 503, as by `fail`, until `release`."""
        with self._lock:
            self._lose, self._lose_left, self._then_fail = re.compile(request_line), count, then_fail

    def hold_answers(self, request_line: bytes, count: int = 1) -> None:
        """The next `count` requests whose first line matches the regex `request_line`
        reach the server; each answer waits until the test sets its `go` (`answers_held`)
        or the proxy closes."""
        with self._lock:
            self._hold_answers, self._hold_answers_left = re.compile(request_line), count

    def delay(self, request_line: bytes, seconds: float) -> None:
        """Every request whose first line matches the regex `request_line` waits `seconds`
        before it is passed on (a slow store's latency, per request, not per connection);
        `most_at_once` tells how many a client had in flight at once."""
        with self._lock:
            self._delayed, self._delay_s = re.compile(request_line), seconds
            self.delayed = []

    def most_at_once(self, line_prefix: bytes) -> int:
        """The most delayed requests starting with `line_prefix` that waited at the same time."""
        with self._lock:
            spans = [(start, end) for line, start, end in self.delayed if line.startswith(line_prefix)]
        events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
        most = now = 0
        for _, step in events:  # an end before a start at the same instant: -1 sorts first
            now += step
            most = max(most, now)
        return most

    def fail(self, request_line: bytes) -> None:
        """Answer 503 to every request whose first line matches the regex `request_line`,
        without passing it on, until `release`."""
        self._failing = re.compile(request_line)

    def stop_failing(self) -> None:
        """End `fail` alone: what `hold` holds stays held."""
        self._failing = None

    def release(self) -> None:
        """End `hold` (the held requests go on) and `fail`."""
        self._held = None
        self._failing = None
        self._released.set()

    def set_faults(self, faults: Faults) -> None:
        """New fault rates, met by every request from now on: the connections open
        now are dropped (their peers see a reset and connect again)."""
        with self._lock:
            self.faults = faults
            self._random = random.Random(faults.seed)
            open_now, self._sockets = self._sockets, []
        for s in open_now:
            _close(s)

    def front(self, server: S) -> S:
        """`server` (a harness ServerProcess) as a device behind this proxy reaches it."""
        return replace(server, url=self.url)

    def close(self) -> None:
        self._closed.set()
        self._released.set()
        self._flowing.set()
        _close(self.listener)
        with self._lock:
            for s in self._sockets:
                _close(s)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _fate(self) -> tuple[str, int]:
        with self._lock:
            roll, budget = self._random.random(), self._random.randrange(0, 256 * 1024)
        f = self.faults
        for fate, chance in (("error", f.error), ("reset", f.reset), ("slow", f.slow)):
            if roll < chance:
                self.injected[fate] += 1
                return fate, budget
            roll -= chance
        return "pass", budget

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            self._sockets.append(client)
        self._flowing.wait()
        fate, budget = self._fate()
        if fate == "error":
            try:
                client.recv(65536)  # the request head, unread by anyone
                client.sendall(ANSWER_503)
            except OSError:
                pass
            _close(client)
            return
        if fate == "slow":
            time.sleep(self.faults.slow_s)
        try:
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
        except OSError:
            _close(client)
            return
        with self._lock:
            self._sockets.append(upstream)
        limit = [budget if fate == "reset" else -1, 0, None]  # bytes both directions may pass; answer to lose;
        # the answer to hold (HeldAnswer)
        threading.Thread(target=self._pump, args=(upstream, client, limit), daemon=True).start()
        self._pump(client, upstream, limit, outbound=True)

    def _pump(self, src: socket.socket, dst: socket.socket, limit: list, *, outbound: bool = False) -> None:
        """Copy src to dst; `limit` is shared by both directions of a connection: bytes
        still allowed through (-1: no limit), whether the answer coming is lost, and the
        HeldAnswer waiting for it."""
        while not self._closed.is_set():
            try:
                data = src.recv(65536)
            except OSError:
                break
            if not data:
                break
            while not self._flowing.is_set() and not self._closed.is_set():
                self._flowing.wait(0.1)  # hung: hold the bytes, answer nothing
            if outbound:
                self._wait_if_held(data)
                self._wait_if_delayed(data)
                if self._fails(data):
                    with contextlib.suppress(OSError):
                        src.sendall(ANSWER_503)
                    break
                limit[1] = limit[1] or self._to_lose(data)
                limit[2] = limit[2] or self._answer_to_hold(data)
                if limit[2] is not None:
                    limit[2].request += data
            elif limit[2] is not None:
                held, limit[2] = limit[2], None
                held.answered.set()
                while not held.go.wait(0.1) and not self._closed.is_set():
                    pass
            if not outbound and limit[1]:
                _reset(src)  # the server answered; the device never hears it
                _reset(dst)
                with self._lock:
                    self.lost += 1
                return
            if self._closed.is_set():
                break
            if limit[0] >= 0:
                if len(data) >= limit[0]:
                    _reset(src)
                    _reset(dst)
                    return
                limit[0] -= len(data)
            self._pace(len(data))
            try:
                dst.sendall(data)
            except OSError:
                break
        _close(src)
        _close(dst)

    def _pace(self, nbytes: int) -> None:
        """Under `rate`, each piece waits for its slot on the one shared link."""
        if self.faults.rate <= 0:
            return
        with self._lock:
            now = time.monotonic()
            start = max(self._link_free_at, now)
            self._link_free_at = start + nbytes / self.faults.rate
            wait = self._link_free_at - now
        time.sleep(wait)

    def _fails(self, data: bytes) -> bool:
        failing = self._failing
        if failing is None or not failing.search(data.split(b"\r\n", 1)[0]):
            return False
        with self._lock:
            self.failed += 1
        return True

    def _to_lose(self, data: bytes) -> int:
        with self._lock:
            if not self._lose_left or not self._lose.search(data.split(b"\r\n", 1)[0]):
                return 0
            self._lose_left -= 1
            if not self._lose_left and self._then_fail:
                self._failing = self._lose
            return 1

    def _answer_to_hold(self, data: bytes) -> HeldAnswer | None:
        with self._lock:
            if not self._hold_answers_left or not self._hold_answers.search(data.split(b"\r\n", 1)[0]):
                return None
            self._hold_answers_left -= 1
            self.answers_held.append(HeldAnswer())
            return self.answers_held[-1]

    def _wait_if_delayed(self, data: bytes) -> None:
        delayed, line = self._delayed, data.split(b"\r\n", 1)[0]
        if delayed is None or not delayed.search(line):
            return
        start = time.monotonic()
        self._closed.wait(self._delay_s)
        with self._lock:
            self.delayed.append((line, start, time.monotonic()))

    def _wait_if_held(self, data: bytes) -> None:
        """A request head (httpx sends it in one piece) matching the held pattern waits."""
        held = self._held
        if held is None or not held.search(data.split(b"\r\n", 1)[0]):
            return
        with self._lock:
            self.holding += 1
        try:
            while not self._released.wait(0.1) and not self._closed.is_set():
                pass
        finally:
            with self._lock:
                self.holding -= 1


def _reset(s: socket.socket) -> None:
    """Break the connection part-way, as a crashed peer or a middlebox would (an RST
    where the kernel still can). The shutdown wakes the pump thread blocked on this
    socket: a bare close() would wait for that thread and the peer would see nothing."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    _close(s)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
