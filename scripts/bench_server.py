#!/usr/bin/env python
"""Benchmark the metadata server over real HTTP: commit throughput, /changes fan-out
latency, the memory an idle long-poll costs, and what one device that follows 200
namespaces (a member of 200 shared folders) costs.

Why a script and not a test: the figures depend on the machine and take a minute or
two; BENCHMARKS.md records them with the machine they came from. The server is a real
`cloudfs server` process (tests.harness.cloudfs_server) on SQLite, or on a fresh
PostgreSQL database with `--db`, with the local chunk store in a temp dir; the client
is httpx on trio in this process, so on a small machine the two share the CPUs and the
figures are end to end, client cost included.

    .venv/bin/python scripts/bench_server.py [--quick] [--db postgresql://...]

Exit status: 0 when every target is met, 1 when one is missed, 2 when the run broke.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import httpx
import trio

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.harness import ServerProcess, cloudfs_server, postgres_database  # noqa: E402

CHUNK_BYTES = 4096
CLK_TCK = os.sysconf("SC_CLK_TCK")
DEVICE = "bench"


@dataclass(frozen=True)
class Sizes:
    """How much work each part does; `--quick` shrinks everything but the shapes."""

    concurrency: int = 16
    chunk_pool: int = 512
    creates_1: int = 2000          # 1-chunk commits, each a new file
    revisions_1: int = 100         # 1-chunk commits per file, `concurrency` files
    creates_100: int = 300
    revisions_100: int = 20
    fanout_waiters: int = 200
    fanout_rounds: int = 10
    idle_polls: int = 1000
    namespaces: int = 200
    namespace_polls: int = 200
    phase_timeout: float = 180.0   # no single phase runs longer than this

    @classmethod
    def quick(cls) -> "Sizes":
        return cls(creates_1=400, revisions_1=25, creates_100=60, revisions_100=5,
                   fanout_rounds=3, idle_polls=300, phase_timeout=60.0, namespace_polls=50)


@dataclass
class Row:
    """One line of the result table; `ok` is None for figures without a target."""

    name: str
    value: str
    target: str = "-"
    ok: bool | None = None


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, name: str, value: str, target: str = "-", ok: bool | None = None) -> None:
        self.rows.append(Row(name, value, target, ok))
        print(f"  {name}: {value}" + (f"  (target {target}: {'PASS' if ok else 'FAIL'})" if ok is not None else ""),
              flush=True)

    def table(self) -> str:
        header = ("Measure", "Result", "Target", "Status")
        body = [(r.name, r.value, r.target, "-" if r.ok is None else ("PASS" if r.ok else "FAIL")) for r in self.rows]
        widths = [max(len(x[i]) for x in [header, *body]) for i in range(4)]
        lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(header, widths)) + " |",
                 "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in body]
        return "\n".join(lines)

    @property
    def passed(self) -> bool:
        return all(r.ok is not False for r in self.rows)


class BenchError(Exception):
    """The run itself went wrong (an unexpected status, a waiter that never answered)."""


# --- the server process, seen from outside -----------------------------------------------


def cpu_ticks(pid: int) -> int:
    """User + system clock ticks of the whole process, all threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for pid {pid}")


def socket_inodes(pid: int) -> set[str]:
    """The server's open sockets. A connection the client has opened may still sit in
    the listen backlog; only once it shows up here does the server hold it."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            inodes.add(target)
    return inodes


async def wait_quiet(pid: int, *, timeout: float = 15.0, window: float = 0.2) -> bool:
    """Wait until the server has burnt at most one tick of CPU over `window`: every
    request it was sent has been read, and each long-poll has done its first journal
    read and is parked on its event. False if it never got quiet within `timeout`."""
    deadline = time.monotonic() + timeout
    before = cpu_ticks(pid)
    while time.monotonic() < deadline:
        await trio.sleep(window)
        now = cpu_ticks(pid)
        if now - before <= 1:
            return True
        before = now
    return False


async def wait_for(check: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout}s waiting for {what}")
        await trio.sleep(0.02)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile: p99 of 2,000 samples is the 1,980th smallest."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


# --- HTTP ---------------------------------------------------------------------------------


def make_client(server: ServerProcess, token: str, *, connections: int, timeout: float = 90.0) -> httpx.AsyncClient:
    """One pooled client; `trust_env=False` so a proxy in the environment never sits in
    the measurement."""
    return httpx.AsyncClient(
        base_url=server.url, trust_env=False, timeout=httpx.Timeout(timeout, connect=30.0),
        headers={"Authorization": f"Bearer {token}", "X-Cloudfs-Device": DEVICE},
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


async def call(client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    response = await client.request(method, path, **kwargs)
    if response.status_code >= 300:
        raise BenchError(f"{method} {path}: {response.status_code} {response.text[:300]}")
    return response.json()


@dataclass(frozen=True)
class Chunk:
    fingerprint: str
    length: int


async def upload_pool(client: httpx.AsyncClient, count: int, concurrency: int) -> list[Chunk]:
    """Random chunks, uploaded the way a device does it (prepare, then PUT each missing
    one on its signed URL), so the commits measured later find them all verified."""
    datas = [os.urandom(CHUNK_BYTES) for _ in range(count)]
    pool = [Chunk(hashlib.sha256(d).hexdigest(), len(d)) for d in datas]
    by_fp = dict(zip((c.fingerprint for c in pool), datas))
    prepared = await call(client, "POST", "/uploads/prepare", json={
        "chunks": [{"fingerprint": c.fingerprint, "length": c.length} for c in pool]})
    tickets = prepared["missing"]
    send, receive = trio.open_memory_channel(len(tickets))
    for ticket in tickets:
        send.send_nowait(ticket)
    send.close()

    async def putter() -> None:
        async for ticket in receive:
            upload = ticket["upload"]
            response = await client.request(upload["method"], upload["url"], content=by_fp[ticket["fingerprint"]],
                                            headers={k: v for k, v in upload.get("headers", {}).items()})
            if response.status_code >= 300:
                raise BenchError(f"PUT chunk {ticket['fingerprint']}: {response.status_code} {response.text[:200]}")

    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(putter)
    return pool


def chunk_refs(pool: list[Chunk], n: int, k: int) -> list[dict[str, Any]]:
    """The `k`-chunk list of commit number `n`: distinct chunks, rotating through the pool."""
    start = (n * 37) % len(pool)
    return [{"fingerprint": c.fingerprint, "length": c.length}
            for c in (pool[(start + j) % len(pool)] for j in range(k))]


# --- 1. commits per second --------------------------------------------------------------


@dataclass
class CommitRun:
    done: int
    seconds: float
    latencies: list[float]
    server_cpu: float  # seconds of server CPU (all threads) spent meanwhile
    client_cpu: float  # seconds of this process's CPU (the httpx clients) spent meanwhile
    other_cores: float  # cores used by every other process meanwhile (a shared machine)

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0


async def run_commits(client: httpx.AsyncClient, pid: int, bodies_per_worker: list[Callable[[int, dict], dict | None]],
                      *, timeout: float) -> CommitRun:
    """Each worker commits its own sequence, one request in flight at a time; a worker's
    `next_body(i, last_response)` returns the next request body, or None when it is done.
    Only this part is timed."""
    latencies: list[float] = []
    done = 0

    async def worker(next_body: Callable[[int, dict], dict | None]) -> None:
        nonlocal done
        last: dict = {}
        for i in range(1_000_000):
            if time.perf_counter() > deadline:
                return
            body = next_body(i, last)
            if body is None:
                return
            t0 = time.perf_counter()
            last = await call(client, "POST", "/files", json=body)
            latencies.append(time.perf_counter() - t0)
            done += 1

    ticks, own, meter = cpu_ticks(pid), sum(os.times()[:2]), LoadMeter(pid)
    start = time.perf_counter()
    deadline = start + timeout
    with trio.fail_after(timeout + 60):
        async with trio.open_nursery() as nursery:
            for next_body in bodies_per_worker:
                nursery.start_soon(worker, next_body)
    return CommitRun(done, time.perf_counter() - start, latencies, (cpu_ticks(pid) - ticks) / CLK_TCK,
                     sum(os.times()[:2]) - own, meter.other_cores())


async def bench_commits(client: httpx.AsyncClient, pid: int, root_id: int, pool: list[Chunk], k: int, *,
                        creates: int, revisions: int, sizes: Sizes, report: Report, target: float | None) -> None:
    """New files (parent_id + name, base_rev 0), then successive revisions of one file
    per worker (by path, base_rev = the previous rev). Besides the rate, report the
    server's CPU per commit: the server is one process with one GIL, so 1000 / that
    is its ceiling on one core, whatever else the machine is doing."""
    label = f"{k}-chunk"
    folder = await call(client, "POST", "/dirs", json={"parent_id": root_id, "name": f"bench-{k}"})
    dir_id = folder["node"]["id"]
    workers = sizes.concurrency
    size = k * CHUNK_BYTES

    def creator(w: int) -> Callable[[int, dict], dict | None]:
        mine = list(range(w, creates, workers))

        def next_body(i: int, _last: dict) -> dict | None:
            if i >= len(mine):
                return None
            n = mine[i]
            return {"parent_id": dir_id, "name": f"f{n}", "base_rev": 0, "size": size, "mtime_ns": time.time_ns(),
                    "chunks": chunk_refs(pool, n, k)}
        return next_body

    run = await run_commits(client, pid, [creator(w) for w in range(workers)], timeout=sizes.phase_timeout)
    if run.done != creates:
        raise BenchError(f"{label} creates: {run.done} of {creates} within {sizes.phase_timeout}s")
    ok = None if target is None else run.rate >= target
    report.add(f"commits/s, {label}, new files (x{workers} concurrent)", f"{run.rate:.0f}",
               "-" if target is None else f">= {target:.0f}", ok)
    report.add(f"commit latency, {label}, new files: p50 / p99",
               f"{percentile(run.latencies, 50) * 1000:.1f} / {percentile(run.latencies, 99) * 1000:.1f} ms")
    report.add(f"server CPU per commit, {label}, new files", f"{run.server_cpu * 1000 / run.done:.2f} ms")
    report.add(f"  (benchmark client's own CPU per commit, {label}, new files)", f"{run.client_cpu * 1000 / run.done:.2f} ms")
    report.add(f"  (other processes meanwhile, {label}, new files)", f"{run.other_cores:.2f} cores of {os.cpu_count()}")

    # Successive revisions: each worker owns one file and moves it forward by base_rev.
    for w in range(workers):
        await call(client, "POST", "/files", json={"parent_id": dir_id, "name": f"r{w}", "base_rev": 0, "size": size,
                                                   "mtime_ns": time.time_ns(), "chunks": chunk_refs(pool, w, k)})

    def reviser(w: int) -> Callable[[int, dict], dict | None]:
        def next_body(i: int, last: dict) -> dict | None:
            if i >= revisions:
                return None
            rev = last["version"]["rev"] if last else 1
            return {"path": f"/bench-{k}/r{w}", "base_rev": rev, "size": size, "mtime_ns": time.time_ns(),
                    "chunks": chunk_refs(pool, w * 1000 + i + 1, k)}
        return next_body

    run = await run_commits(client, pid, [reviser(w) for w in range(workers)], timeout=sizes.phase_timeout)
    if run.done != revisions * workers:
        raise BenchError(f"{label} revisions: {run.done} of {revisions * workers} within {sizes.phase_timeout}s")
    ok = None if target is None else run.rate >= target
    report.add(f"commits/s, {label}, revisions of {workers} files", f"{run.rate:.0f}",
               "-" if target is None else f">= {target:.0f}", ok)
    report.add(f"commit latency, {label}, revisions: p50 / p99",
               f"{percentile(run.latencies, 50) * 1000:.1f} / {percentile(run.latencies, 99) * 1000:.1f} ms")
    report.add(f"server CPU per commit, {label}, revisions", f"{run.server_cpu * 1000 / run.done:.2f} ms")
    report.add(f"  (benchmark client's own CPU per commit, {label}, revisions)", f"{run.client_cpu * 1000 / run.done:.2f} ms")
    report.add(f"  (other processes meanwhile, {label}, revisions)", f"{run.other_cores:.2f} cores of {os.cpu_count()}")


# --- 2. /changes fan-out ----------------------------------------------------------------

Arrival = tuple[float, int, bytes]  # (perf_counter when the whole answer was in, status, body)


class RawHttp:
    """A minimal HTTP/1.1 keep-alive client for long-polls.

    Why not httpx here too: with 200 connections in one pool, httpx spent ~2.4 s of CPU
    per round taking the 200 answers on the 2-core test machine (its per-request cost
    grows with the pool), so the last waiter's time measured the benchmark. Real devices
    each receive one answer. This client costs ~0.2 ms per answer, so the figure is the
    server's; the httpx variant is reported beside it.
    Only what our server sends is understood: Content-Length bodies, no chunking."""

    def __init__(self, url: str, token: str) -> None:
        self.host, port = url.split("://", 1)[1].rstrip("/").rsplit(":", 1)
        self.port = int(port)
        self.headers = (f"Host: {self.host}:{self.port}\r\nAuthorization: Bearer {token}\r\n"
                        f"X-Cloudfs-Device: {DEVICE}\r\n").encode()
        self.idle: list[trio.SocketStream] = []

    async def get(self, target: str, on_sent: Callable[[], None]) -> Arrival:
        try:
            stream = self.idle.pop() if self.idle else await trio.open_tcp_stream(self.host, self.port)
        except OSError as exc:
            raise BenchError(f"cannot connect for a long-poll: {exc!r}") from exc
        try:
            await stream.send_all(b"GET " + target.encode() + b" HTTP/1.1\r\n" + self.headers + b"\r\n")
            on_sent()
            buf = b""
            while b"\r\n\r\n" not in buf:
                data = await stream.receive_some(65536)
                if not data:
                    raise BenchError("the server closed a long-poll connection without answering")
                buf += data
            head, _, body = buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            fields = dict(line.split(":", 1) for line in lines[1:])
            length = int({k.strip().lower(): v.strip() for k, v in fields.items()}.get("content-length", "-1"))
            if length < 0:
                raise BenchError(f"an answer without Content-Length: {head[:200]!r}")
            while len(body) < length:
                data = await stream.receive_some(65536)
                if not data:
                    raise BenchError("the server closed a long-poll connection mid-answer")
                body += data
            arrived = time.perf_counter()
        except (trio.BrokenResourceError, OSError) as exc:
            await trio.aclose_forcefully(stream)
            raise BenchError(f"a long-poll connection broke: {exc!r}") from exc
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        self.idle.append(stream)
        return arrived, status, body

    async def aclose(self) -> None:
        for stream in self.idle:
            await trio.aclose_forcefully(stream)
        self.idle.clear()


class HttpxGet:
    """The same long-poll through httpx, for the figure a single httpx process sees."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def get(self, target: str, on_sent: Callable[[], None]) -> Arrival:
        async def trace(name: str, _info: dict) -> None:
            if name.endswith("send_request_body.complete"):
                on_sent()

        response = await self.client.get(target, extensions={"trace": trace})
        return time.perf_counter(), response.status_code, response.content


async def hold_long_polls(getter: RawHttp | HttpxGet, pid: int, cursor: int, count: int, wait: float,
                          results: list[Arrival | None], nursery: trio.Nursery, *, pace: int = 0,
                          accepted: Callable[[], int] | None = None) -> None:
    """Start `count` long-polls from `cursor` in `nursery` and return once the server
    holds them all: every request fully sent, then the server quiet (each has done its
    first journal read and is parked). Each waiter stores its `Arrival` in `results`.
    With `pace`, start them `pace` at a time and let each batch be sent (and, given
    `accepted`, counting the server's new sockets, accepted) before the next, so a
    burst of new connections never overflows the server's listen backlog (100)."""
    sent = 0
    target = f"/changes?cursor={cursor}&wait={wait:g}"

    def on_sent() -> None:
        nonlocal sent
        sent += 1

    async def waiter(i: int) -> None:
        results[i] = await getter.get(target, on_sent)

    for i in range(count):
        nursery.start_soon(waiter, i)
        if pace and (i % pace == pace - 1 or i == count - 1):
            await wait_for(lambda: sent > i, timeout=60, what=f"long-poll {i + 1} to be sent")
            if accepted is not None:
                await wait_for(lambda: accepted() > i, timeout=60, what=f"the server to accept connection {i + 1}")
    await wait_for(lambda: sent >= count, timeout=60, what=f"{count} long-polls to be sent")
    if not await wait_quiet(pid):
        raise BenchError("the server never went quiet after the long-polls were sent")
    early = [r for r in results if r is not None]
    if early:
        raise BenchError(f"{len(early)} long-poll(s) answered before any change: {early[0][1]} {early[0][2][:200]!r}")


async def one_change(client: httpx.AsyncClient, dir_id: int, name: str, pool: list[Chunk]) -> tuple[float, float, int]:
    """Commit one new 1-chunk file; returns (sent at, answered at, its journal seq)."""
    body = {"parent_id": dir_id, "name": name, "base_rev": 0, "size": CHUNK_BYTES, "mtime_ns": time.time_ns(),
            "chunks": chunk_refs(pool, len(name), 1)}
    sent = time.perf_counter()
    answer = await call(client, "POST", "/files", json=body)
    return sent, time.perf_counter(), answer["cursor"]


def check_woken(results: list[Arrival | None], seq: int) -> list[float]:
    """Arrival times, after checking every waiter got the change it waited for."""
    missing = sum(r is None for r in results)
    if missing:
        raise BenchError(f"{missing} of {len(results)} long-polls never answered")
    arrivals = []
    for arrived, status, body in results:  # type: ignore[misc]
        changes = json.loads(body).get("changes", []) if status == 200 else []
        if seq not in {c["seq"] for c in changes}:
            raise BenchError(f"a long-poll answered {status} without seq {seq}: {body[:300]!r}")
        arrivals.append(arrived)
    return arrivals


async def fanout_rounds(getter: RawHttp | HttpxGet, committer: httpx.AsyncClient, pid: int, dir_id: int,
                        pool: list[Chunk], sizes: Sizes, label: str) -> dict[str, list[float]]:
    """`fanout_rounds` rounds of: hold `fanout_waiters` long-polls, commit once, time
    each waiter's answer from the moment the commit was sent and from its answer."""
    n = sizes.fanout_waiters
    out: dict[str, list[float]] = {"from_send": [], "from_answer": [], "commit_ms": [], "server_cpu_ms": [],
                                   "client_cpu_ms": []}
    for rnd in range(sizes.fanout_rounds):
        cursor = (await call(committer, "GET", "/me"))["cursor"]
        results: list[Arrival | None] = [None] * n
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                await hold_long_polls(getter, pid, cursor, n, 30, results, nursery, pace=100)
                ticks, own = cpu_ticks(pid), sum(os.times()[:2])
                sent, answered, seq = await one_change(committer, dir_id, f"{label}-{rnd}", pool)
        out["server_cpu_ms"].append((cpu_ticks(pid) - ticks) * 1000 / CLK_TCK)
        out["client_cpu_ms"].append((sum(os.times()[:2]) - own) * 1000)
        arrivals = check_woken(results, seq)
        out["from_send"] += [a - sent for a in arrivals]
        out["from_answer"] += [a - answered for a in arrivals]
        out["commit_ms"].append((answered - sent) * 1000)
        print(f"    {label} round {rnd + 1}: last of {n} answered {(max(arrivals) - sent) * 1000:.1f} ms after the "
              f"commit was sent; server CPU {out['server_cpu_ms'][-1]:.0f} ms", flush=True)
    return out


async def bench_fanout(server: ServerProcess, token: str, root_id: int, pool: list[Chunk], sizes: Sizes,
                       report: Report) -> None:
    pid = server.proc.pid
    n, rounds = sizes.fanout_waiters, sizes.fanout_rounds
    async with make_client(server, token, connections=4) as committer, \
            make_client(server, token, connections=n + 16, timeout=60) as client:
        folder = await call(committer, "POST", "/dirs", json={"parent_id": root_id, "name": "fanout"})
        dir_id = folder["node"]["id"]
        raw = RawHttp(server.url, token)
        try:
            light = await fanout_rounds(raw, committer, pid, dir_id, pool, sizes, "raw")
        finally:
            await raw.aclose()
        heavy = await fanout_rounds(HttpxGet(client), committer, pid, dir_id, pool,
                                    replace(sizes, fanout_rounds=min(3, rounds)), "httpx")

    p99 = percentile(light["from_send"], 99) * 1000
    report.add(f"/changes fan-out, {n} waiters x {rounds} rounds: median (from commit sent)",
               f"{percentile(light['from_send'], 50) * 1000:.1f} ms")
    report.add(f"/changes fan-out, {n} waiters: p99 (from commit sent)", f"{p99:.1f} ms", "<= 100 ms", p99 <= 100)
    report.add("/changes fan-out: max (from commit sent)", f"{max(light['from_send']) * 1000:.1f} ms")
    report.add("/changes fan-out: median / p99 from the commit's answer",
               f"{percentile(light['from_answer'], 50) * 1000:.1f} / {percentile(light['from_answer'], 99) * 1000:.1f} ms")
    report.add("fan-out round: commit round trip (median)", f"{statistics.median(light['commit_ms']):.1f} ms")
    report.add(f"fan-out round: server CPU to answer {n} waiters (median)",
               f"{statistics.median(light['server_cpu_ms']):.0f} ms")
    report.add(f"same with one httpx client holding all {n} ({min(3, rounds)} rounds): median / p99",
               f"{percentile(heavy['from_send'], 50) * 1000:.1f} / {percentile(heavy['from_send'], 99) * 1000:.1f} ms")
    report.add("  (benchmark's own CPU per round: raw / httpx)",
               f"{statistics.median(light['client_cpu_ms']):.0f} / {statistics.median(heavy['client_cpu_ms']):.0f} ms")


# --- 3. memory of idle long-polls ---------------------------------------------------------


async def bench_idle_memory(server: ServerProcess, token: str, root_id: int, pool: list[Chunk], sizes: Sizes,
                            report: Report) -> None:
    """RSS of the server process before and while `idle_polls` long-polls are parked
    (each a connection, a hypercorn task, a request scope and a trio.Event wait)."""
    pid = server.proc.pid
    n = sizes.idle_polls
    async with make_client(server, token, connections=4) as committer:
        folder = await call(committer, "POST", "/dirs", json={"parent_id": root_id, "name": "idle"})
        cursor = folder["cursor"]
        await wait_quiet(pid)
        before = rss_mib(pid)
        sockets_before = socket_inodes(pid)
        results: list[Arrival | None] = [None] * n
        raw = RawHttp(server.url, token)
        try:
            with trio.fail_after(180):
                async with trio.open_nursery() as nursery:
                    await hold_long_polls(raw, pid, cursor, n, 60, results, nursery, pace=50,
                                          accepted=lambda: len(socket_inodes(pid) - sockets_before))
                    await wait_for(lambda: len(socket_inodes(pid) - sockets_before) >= n, timeout=30,
                                   what=f"the server to hold {n} new sockets")
                    held = max(rss_mib(pid) for _ in range(3))
                    sockets_new = len(socket_inodes(pid) - sockets_before)
                    sent, _answered, seq = await one_change(committer, folder["node"]["id"], "wake", pool)
        finally:
            await raw.aclose()
        last = max(check_woken(results, seq))
        await wait_quiet(pid)
        after = rss_mib(pid)
    growth = held - before
    report.add("server RSS idle (before long-polls)", f"{before:.1f} MiB")
    report.add(f"server RSS with {n} idle long-polls ({sockets_new} new sockets)", f"{held:.1f} MiB")
    report.add(f"server RSS growth for {n} idle long-polls", f"{growth:.1f} MiB", "<= 50 MiB", growth <= 50)
    report.add("server RSS per idle long-poll", f"{growth * 1024 / n:.1f} KiB")
    report.add(f"{n} long-polls woken by one commit: last answered after", f"{(last - sent) * 1000:.0f} ms")
    report.add("server RSS after they were answered", f"{after:.1f} MiB")


# --- one device that follows many namespaces ------------------------------------------------


async def bench_namespaces(server: ServerProcess, token: str, root_id: int, pool: list[Chunk], sizes: Sizes,
                           report: Report) -> None:
    """A member of `namespaces` shared folders: what one of its devices costs the server.
    Its whole feed is one `POST /sync` carrying a cursor per namespace (plus its own
    tree's): measured idle (answered at once), parked (the server's CPU while it waits),
    and woken by a commit in one of the folders."""
    pid = server.proc.pid
    n = sizes.namespaces
    member = f"member-{os.getpid()}"
    member_token = server.add_user(member)
    async with make_client(server, token, connections=8) as owner, \
            make_client(server, member_token, connections=4) as device:
        folders = []
        for i in range(n):
            folder = await call(owner, "POST", "/dirs", json={"parent_id": root_id, "name": f"team-{i:03d}"})
            shared = await call(owner, "POST", "/shares", json={"node_id": folder["node"]["id"], "user": member})
            await call(device, "POST", f"/shares/{shared['id']}/accept", json={})
            folders.append(folder["node"]["id"])
        cursors = (await call(device, "GET", "/me"))["cursors"]
        if len(cursors) != n + 1:
            raise BenchError(f"the member sees {len(cursors)} namespaces, not {n + 1}")
        body = {"cursors": cursors, "wait": 0}
        await call(device, "POST", "/sync", json=body)  # warm
        await wait_quiet(pid)
        rounds = sizes.namespace_polls
        ticks, times = cpu_ticks(pid), []
        for _ in range(rounds):
            t = time.perf_counter()
            await call(device, "POST", "/sync", json=body)
            times.append(time.perf_counter() - t)
        per_poll = (cpu_ticks(pid) - ticks) / CLK_TCK / rounds
        report.add(f"/sync over {n + 1} namespaces, nothing new: round trip median / p99",
                   f"{statistics.median(times) * 1000:.1f} / {percentile(times, 99) * 1000:.1f} ms")
        report.add(f"/sync over {n + 1} namespaces, nothing new: server CPU per call", f"{per_poll * 1000:.2f} ms")
        single = []
        for _ in range(rounds):
            t = time.perf_counter()
            await call(device, "GET", "/changes", params={"cursor": cursors[next(iter(cursors))]})
            single.append(time.perf_counter() - t)
        report.add("/changes of one namespace, nothing new: round trip median (for comparison)",
                   f"{statistics.median(single) * 1000:.1f} ms")

        wakes, idle_cpu = [], []
        for r in range(sizes.fanout_rounds):
            parked: dict[str, Any] = {}

            async def park() -> None:
                response = await device.post("/sync", json={"cursors": cursors, "wait": 30})
                parked["at"] = time.perf_counter()
                parked["body"] = response.json()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(park)
                await wait_quiet(pid)
                before = cpu_ticks(pid)
                await trio.sleep(1.0)
                idle_cpu.append((cpu_ticks(pid) - before) / CLK_TCK)
                target = folders[(r * 37) % n]
                sent, _answered, seq = await one_change(owner, target, f"wake-{r}", pool)
            changes = parked["body"]["changes"]
            if [c["seq"] for c in changes] != [seq]:
                raise BenchError(f"the parked /sync answered {changes!r}, not seq {seq}")
            cursors[str(changes[0]["ns"])] = seq
            wakes.append(parked["at"] - sent)
        report.add(f"one /sync parked over {n + 1} namespaces: server CPU per second idle",
                   f"{statistics.mean(idle_cpu) * 1000:.1f} ms", "<= 10 ms", statistics.mean(idle_cpu) <= 0.010)
        report.add(f"a commit in 1 of {n} shared folders wakes the parked /sync: median / max",
                   f"{statistics.median(wakes) * 1000:.0f} / {max(wakes) * 1000:.0f} ms", "median <= 1000 ms",
                   statistics.median(wakes) <= 1.0)
        report.add(f"requests a device of a member of {n} shared folders keeps waiting", "1 (/sync)")


# --- driver -------------------------------------------------------------------------------


def raise_fd_limit(wanted: int) -> int:
    """Long-polls hold a socket each on both sides; the server inherits this limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class LoadMeter:
    """How much CPU the rest of the machine used during a phase. The box may be shared
    (other test runs, other servers); a figure taken while something else burns a
    core is not comparable, so the table says so next to it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = self._sample()

    def _sample(self) -> tuple[float, int, int, float]:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
        busy = sum(values) - values[3] - values[4]  # all but idle and iowait (steal included)
        return time.monotonic(), busy, cpu_ticks(self.pid), sum(os.times()[:2])

    def other_cores(self) -> float:
        """Average cores used by everything but the server and this process."""
        t0, busy0, server0, own0 = self.start
        t1, busy1, server1, own1 = self._sample()
        other = (busy1 - busy0) - (server1 - server0) - (own1 - own0) * CLK_TCK
        return max(0.0, other / CLK_TCK / max(t1 - t0, 1e-9))


async def run_all(server: ServerProcess, token: str, sizes: Sizes, report: Report) -> None:
    pid = server.proc.pid
    load: list[str] = []
    async with make_client(server, token, connections=sizes.concurrency + 8) as client:
        me = await call(client, "GET", "/me")
        root_id = me["root_id"]
        print(f"uploading a pool of {sizes.chunk_pool} chunks ...", flush=True)
        pool = await upload_pool(client, sizes.chunk_pool, sizes.concurrency)
        print("1. commits", flush=True)
        meter = LoadMeter(pid)
        await bench_commits(client, pid, root_id, pool, 1, creates=sizes.creates_1, revisions=sizes.revisions_1,
                            sizes=sizes, report=report, target=300)
        await bench_commits(client, pid, root_id, pool, 100, creates=sizes.creates_100, revisions=sizes.revisions_100,
                            sizes=sizes, report=report, target=None)
        load.append(f"{meter.other_cores():.2f}")
    # Memory before fan-out: the fan-out's few hundred connections would leave freed
    # heap behind that the idle long-polls then reuse, hiding their real cost.
    print("3. memory of idle long-polls", flush=True)
    meter = LoadMeter(pid)
    await bench_idle_memory(server, token, root_id, pool, sizes, report)
    load.append(f"{meter.other_cores():.2f}")
    print("2. /changes fan-out", flush=True)
    meter = LoadMeter(pid)
    await bench_fanout(server, token, root_id, pool, sizes, report)
    load.append(f"{meter.other_cores():.2f}")
    print("4. one device following 200 namespaces", flush=True)
    meter = LoadMeter(pid)
    await bench_namespaces(server, token, root_id, pool, sizes, report)
    load.append(f"{meter.other_cores():.2f}")
    report.add(f"CPU used by other processes: commits / memory / fan-out / namespaces (cores of {os.cpu_count()})",
               " / ".join(load))


def code_state() -> str:
    """Which server code was measured: the commit, and any uncommitted server files."""
    import subprocess

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return ""

    head = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    dirty = [line[3:] for line in git("status", "--porcelain", "--", "server", "backend", "cloudfs").splitlines()]
    return head + (f" + uncommitted {', '.join(dirty)}" if dirty else "")


def machine() -> str:
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
    return (f"{os.cpu_count()} cores, {mem_kib / 1024 / 1024:.0f} GiB, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts (a sanity run, not the recorded figures)")
    parser.add_argument("--db", metavar="URL",
                        help="PostgreSQL admin URL; the run gets its own fresh database (default: SQLite)")
    args = parser.parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes()
    limit = raise_fd_limit(4 * sizes.idle_polls + 1024)
    report = Report()
    engine = "PostgreSQL" if args.db else "SQLite"
    print(f"cloudfs server benchmark: {engine} + local store; {machine()}; open files {limit}", flush=True)
    print(f"code: {code_state()}", flush=True)

    with tempfile.TemporaryDirectory(prefix="cloudfs-bench-") as tmp, \
            (postgres_database(args.db) if args.db else contextlib.nullcontext()) as db_url:
        with cloudfs_server(Path(tmp) / "server", db_url=db_url) as server:
            token = server.add_user("bench")
            broken = False
            try:
                trio.run(run_all, server, token, sizes, report)
            except* (BenchError, trio.TooSlowError) as group:
                broken = True
                for exc in _leaves(group):
                    print(f"benchmark failed: {exc!r}", file=sys.stderr)
            finally:
                if "Traceback" in server.log():
                    print("server log has a traceback:\n" + server.log()[-3000:], file=sys.stderr)
            if broken:
                print(report.table())
                return 2
    print()
    print(f"Engine: {engine} + local store{'  (--quick)' if args.quick else ''}; code {code_state()}")
    print(report.table())
    return 0 if report.passed else 1


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


if __name__ == "__main__":
    sys.exit(main())
