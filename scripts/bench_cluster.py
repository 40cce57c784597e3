#!/usr/bin/env python
"""Benchmark a cluster: 10,000 simulated devices against 1, 2 and 3 `cloudfs server`
replicas behind HAProxy, on one PostgreSQL database and one S3 bucket (moto server).

Each device is one account's device holding a long-poll (`GET /changes?wait=50`) on a
keep-alive connection through the balancer, and taking the next one as soon as it is
answered: 1,000 accounts of 10 devices. Meanwhile, for `steady_s` seconds, a steady
rate of small commits lands in random accounts (each wakes that account's 10 devices)
and a steady rate of downloads fetches a file's signed URLs and then the chunk from
S3. Then, for `burst_s` seconds, 16 writers commit as fast as they can into accounts
of their own (commits/s with the idle devices still held).

Reported per replica count: devices held, commits/s (steady and burst), fan-out
latency from a commit sent to each of its 10 devices' answers (p50/p99), errors (any
failed request, broken connection or change a device never got), and RSS and CPU
per replica, with the CPU of HAProxy, PostgreSQL, moto and this generator beside it,
and the load average. One process generates everything (trio, a raw HTTP/1.1 client
for the long-polls, httpx for the rest); the machine's cores are shared by all of it.

    .venv/bin/python scripts/bench_cluster.py [--quick] [--replicas 1,2,3] [--devices N]

File descriptors: each device holds one here, two in HAProxy and one in a replica.
The hard limit (20,000 on the test machine, not raisable without CAP_SYS_RESOURCE)
caps one HAProxy at ~9,750 connections, so two HAProxy processes share the balancer
port (SO_REUSEPORT). Exit status: 0 targets met, 1 missed, 2 the run broke.
"""

from __future__ import annotations

import argparse
import contextlib
import base64
import hashlib
import json
import math
import os
import random
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import trio

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cloudfs.server.db import open_database  # noqa: E402
from cloudfs.server.users import add_user  # noqa: E402
from tests.cluster.harness import Cluster, raise_fd_limit  # noqa: E402
from tests.harness import moto_server, postgres_database  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
RSS_TARGET_MIB = 512


@dataclass(frozen=True)
class Sizes:
    devices: int = 10_000
    per_account: int = 10
    commit_rate: float = 10.0      # steady commits per second, into the devices' accounts
    download_rate: float = 2.0     # steady downloads per second (metadata + chunk from S3)
    steady_s: float = 30.0
    burst_s: float = 15.0
    burst_workers: int = 16
    wait_s: int = 50               # each long-poll's wait
    connect_batch: int = 250       # long-polls opened together, then wait for them to be sent

    @classmethod
    def quick(cls) -> "Sizes":
        return cls(devices=2000, steady_s=10.0, burst_s=6.0)


# --- what the processes use -----------------------------------------------------------


def cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except OSError:
        return 0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pids_named(name: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() == name:
                    found.append(int(entry))
            except OSError:
                pass
    return found


class CpuMeter:
    """Cores used by each group of processes between `start` and `cores`."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.t0 = time.monotonic()
        self.t0_ticks = {pid: cpu_ticks(pid) for pids in groups.values() for pid in pids}
        self.own0 = sum(os.times()[:2])
        self.machine0 = self._machine()

    @staticmethod
    def _machine() -> int:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
        return sum(values) - values[3] - values[4]

    def cores(self) -> dict[str, float]:
        dt = max(time.monotonic() - self.t0, 1e-9)
        def used(pid: int) -> int:  # a process gone meanwhile counts nothing
            now = cpu_ticks(pid)
            return max(0, now - self.t0_ticks[pid]) if now else 0
        out = {name: sum(used(p) for p in pids) / CLK_TCK / dt for name, pids in self.groups.items()}
        out["generator"] = (sum(os.times()[:2]) - self.own0) / dt
        out["machine"] = (self._machine() - self.machine0) / CLK_TCK / dt
        return out


def pg_backends(db_url: str) -> list[int]:
    """The PostgreSQL backends serving this run's database (the server is shared)."""
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        return [pid for (pid,) in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")]


def moto_pid() -> int:
    """This run's moto server: the child of this process of that name."""
    for pid in pids_named("moto_server"):
        try:
            if int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) == os.getpid():
                return pid
        except (OSError, ValueError):
            pass
    return 0


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


# --- the devices ------------------------------------------------------------------------


@dataclass
class Stats:
    errors: list[str] = field(default_factory=list)
    sent: dict[int, float] = field(default_factory=dict)      # seq -> when its commit was sent
    arrivals: dict[int, list[float]] = field(default_factory=dict)  # seq -> when each device had it
    account_of: dict[int, int] = field(default_factory=dict)  # seq -> account index
    sent_requests: int = 0
    answers: int = 0
    record: bool = False  # arrivals are kept only while a phase measures them

    def error(self, what: str) -> None:
        if len(self.errors) < 10_000:
            self.errors.append(what)


class Device:
    """One long-poll at a time on one keep-alive connection (a raw HTTP/1.1 client: at
    ~0.2 ms per answer it keeps the generator's cost out of the figures; see
    scripts/bench_server.py RawHttp). On a broken connection it reconnects, as a
    device's follower does, and the break counts as an error."""

    def __init__(self, host: str, port: int, token: str, cursor: int, name: str) -> None:
        self.host, self.port, self.cursor = host, port, cursor
        self.head = (f"Host: {host}:{port}\r\nAuthorization: Bearer {token}\r\nX-Cloudfs-Device: {name}\r\n").encode()
        self.stream: trio.SocketStream | None = None

    async def run(self, stats: Stats, wait_s: int, sent: trio.Event) -> None:
        first = True
        while True:
            try:
                if self.stream is None:
                    self.stream = await trio.open_tcp_stream(self.host, self.port)
                target = f"/changes?cursor={self.cursor}&wait={wait_s}"
                await self.stream.send_all(b"GET " + target.encode() + b" HTTP/1.1\r\n" + self.head + b"\r\n")
                stats.sent_requests += 1
                if first:
                    first = False
                    sent.set()
                status, body = await self._answer()
                arrived = time.perf_counter()
                stats.answers += 1
                if status != 200:
                    stats.error(f"long-poll answered {status}: {body[:120]!r}")
                    await trio.sleep(0.5)
                    continue
                page = json.loads(body)
                if stats.record:
                    for change in page["changes"]:
                        stats.arrivals.setdefault(change["seq"], []).append(arrived)
                self.cursor = page["cursor"]
            except (OSError, trio.BrokenResourceError, ConnectionError, ValueError) as exc:
                stats.error(f"long-poll connection: {exc!r}")
                if self.stream is not None:
                    await trio.aclose_forcefully(self.stream)
                    self.stream = None
                await trio.sleep(0.5)

    async def _answer(self) -> tuple[int, bytes]:
        assert self.stream is not None
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = await self.stream.receive_some(65536)
            if not data:
                raise ConnectionError("closed without an answer")
            buf += data
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers.get("content-length", "-1"))
        if length < 0:
            raise ValueError(f"no Content-Length: {head[:120]!r}")
        while len(body) < length:
            data = await self.stream.receive_some(65536)
            if not data:
                raise ConnectionError("closed mid-answer")
            body += data
        if headers.get("connection", "").lower() == "close":
            await trio.aclose_forcefully(self.stream)
            self.stream = None
        return int(lines[0].split()[1]), body


def inline_body(name: str, data: bytes) -> dict:
    fp = hashlib.sha256(data).hexdigest()
    return {"path": f"/{name}", "base_rev": 0, "size": len(data), "mtime_ns": time.time_ns(),
            "chunks": [{"fingerprint": fp, "length": len(data)}],
            "inline": [{"fingerprint": fp, "data": base64.b64encode(data).decode()}]}


# --- one run against N replicas -----------------------------------------------------------


@dataclass
class Result:
    replicas: int
    figures: dict[str, str] = field(default_factory=dict)
    rss: list[float] = field(default_factory=list)
    held: int = 0
    errors: list[str] = field(default_factory=list)
    burst_rate: float = 0.0

    def add(self, name: str, value: str) -> None:
        self.figures[name] = value
        print(f"  {name}: {value}", flush=True)


async def held_each(c: Cluster) -> list[int]:
    """Long-polls parked on each replica, from its /metrics."""
    held = []
    async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
        for replica in c.replicas:
            text = (await client.get(replica.url + "/metrics")).text
            held.append(sum(int(float(line.split()[1])) for line in text.splitlines()
                            if line.startswith("cloudfs_long_polls_held ")))
    return held


async def notify_lag(c: Cluster) -> tuple[int, float, float]:
    """From every replica's `cloudfs_journal_notify_lag_seconds` histogram: how many
    notifications arrived from a commit's transaction (on any replica, this one
    included), and the bucket bounds holding the median and the 99th percentile."""
    buckets: dict[float, float] = {}
    async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
        for replica in c.replicas:
            for line in (await client.get(replica.url + "/metrics")).text.splitlines():
                if line.startswith("cloudfs_journal_notify_lag_seconds_bucket{"):
                    bound = line.split('le="', 1)[1].split('"', 1)[0]
                    le = float("inf") if bound == "+Inf" else float(bound)
                    buckets[le] = buckets.get(le, 0.0) + float(line.rsplit(" ", 1)[1])
    total = buckets.get(float("inf"), 0.0)
    if not total:
        return 0, float("nan"), float("nan")
    ordered = sorted(buckets.items())

    def bound(p: float) -> float:
        return next(le for le, count in ordered if count >= p / 100 * total)
    return int(total), bound(50), bound(99)


async def held_long_polls(c: Cluster) -> int:
    return sum(await held_each(c))


async def run_against(c: Cluster, tokens: list[str], burst_tokens: list[str], sizes: Sizes, result: Result) -> None:
    stats = Stats()
    host, port = "127.0.0.1", c.balancer_port
    accounts = len(tokens)
    api = httpx.AsyncClient(base_url=c.url, trust_env=False, timeout=httpx.Timeout(60, connect=10),
                            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))
    blobs = httpx.AsyncClient(trust_env=False, timeout=60)

    def auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}", "X-Cloudfs-Device": "bench"}

    async with api, blobs, trio.open_nursery() as nursery:
        # Seed: one file in each of 50 accounts, for the downloads.
        seeds: list[tuple[str, int, str]] = []
        for a in range(min(50, accounts)):
            data = os.urandom(3000)
            r = await api.post("/files", json=inline_body("seed.bin", data), headers=auth(tokens[a]))
            if r.status_code != 200:
                raise RuntimeError(f"seed commit: {r.status_code} {r.text[:200]}")
            seeds.append((tokens[a], r.json()["node"]["id"], hashlib.sha256(data).hexdigest()))
        cursors = []
        for a in range(accounts):
            r = await api.get("/me", headers=auth(tokens[a]))
            cursors.append(r.json()["cursor"])

        print(f"  opening {sizes.devices} long-polls ...", flush=True)
        t0 = time.monotonic()
        for start in range(0, sizes.devices, sizes.connect_batch):
            events = []
            for d in range(start, min(start + sizes.connect_batch, sizes.devices)):
                a = d % accounts
                sent = trio.Event()
                events.append(sent)
                nursery.start_soon(Device(host, port, tokens[a], cursors[a], f"dev{d}").run, stats, sizes.wait_s, sent)
            with trio.fail_after(120):
                for sent in events:
                    await sent.wait()
        with trio.fail_after(300):
            while (held := await held_long_polls(c)) < sizes.devices * 0.995:
                await trio.sleep(1)
        result.held = held
        result.add("devices held (long-polls parked, from /metrics)", f"{held} of {sizes.devices}, "
                   f"opened in {time.monotonic() - t0:.0f} s")
        await trio.sleep(3)  # settle
        result.rss = [rss_mib(r.pid) for r in c.replicas]
        result.add("idle long-polls per replica (from /metrics)", " / ".join(str(n) for n in await held_each(c)))
        result.add("RSS per replica, devices idle", " / ".join(f"{m:.0f} MiB" for m in result.rss))
        groups = {"replicas": [r.pid for r in c.replicas], "haproxy": [p.pid for p in c.balancer_procs],
                  "postgres": pg_backends(c.db_url), "moto": [moto_pid()]}
        idle = CpuMeter(groups)
        await trio.sleep(5)
        cores = idle.cores()
        result.add("CPU, devices idle (cores): replicas / haproxy / postgres / generator / machine",
                   f"{cores['replicas']:.2f} / {cores['haproxy']:.2f} / {cores['postgres']:.2f} / "
                   f"{cores['generator']:.2f} / {cores['machine']:.2f}")

        # Steady: commits into the devices' accounts, and downloads.
        print(f"  steady load for {sizes.steady_s:.0f} s ...", flush=True)
        stats.record = True
        errors_before = len(stats.errors)
        commits_ok, downloads_ok, commit_lat = 0, 0, []
        meter = CpuMeter(groups)
        per_replica = [cpu_ticks(r.pid) for r in c.replicas]
        steady_start = time.monotonic()
        deadline = steady_start + sizes.steady_s

        async def one_commit(n: int) -> None:
            nonlocal commits_ok
            a = random.randrange(accounts)
            body = inline_body(f"s{n}-{uuid.uuid4().hex[:6]}", os.urandom(200))
            sent = time.perf_counter()
            try:
                r = await api.post("/files", json=body, headers=auth(tokens[a]))
            except httpx.HTTPError as exc:
                stats.error(f"commit: {exc!r}")
                return
            if r.status_code != 200:
                stats.error(f"commit: {r.status_code} {r.text[:120]}")
                return
            commit_lat.append(time.perf_counter() - sent)
            seq = r.json()["cursor"]
            stats.sent[seq], stats.account_of[seq] = sent, a
            commits_ok += 1

        async def one_download(_n: int) -> None:
            nonlocal downloads_ok
            token, node_id, fp = random.choice(seeds)
            try:
                info = await api.get(f"/files/{node_id}", headers=auth(token))
                if info.status_code != 200:
                    stats.error(f"file info: {info.status_code} {info.text[:120]}")
                    return
                chunk = info.json()["chunks"][0]
                d = chunk["download"]
                got = await blobs.request(d["method"], d["url"], headers=d.get("headers", {}))
                if got.status_code != 200 or hashlib.sha256(got.content).hexdigest() != fp:
                    stats.error(f"download: {got.status_code}")
                    return
            except httpx.HTTPError as exc:
                stats.error(f"download: {exc!r}")
                return
            downloads_ok += 1

        async def paced(rate: float, fn) -> None:  # noqa: ANN001
            async with trio.open_nursery() as inner:
                n = 0
                while time.monotonic() < deadline:
                    inner.start_soon(fn, n)
                    n += 1
                    await trio.sleep_until(trio.current_time() + 1 / rate)

        async with trio.open_nursery() as steady:
            steady.start_soon(paced, sizes.commit_rate, one_commit)
            steady.start_soon(paced, sizes.download_rate, one_download)
        seconds = time.monotonic() - steady_start
        cores = meter.cores()
        replica_cores = [(cpu_ticks(r.pid) - t) / CLK_TCK / seconds for r, t in zip(c.replicas, per_replica)]
        await trio.sleep(3)  # the last wake-ups arrive
        stats.record = False
        fanout: list[float] = []
        missing = 0
        for seq, sent in stats.sent.items():
            arrivals = stats.arrivals.get(seq, [])
            fanout += [t - sent for t in arrivals]
            missing += max(0, _devices_of(stats.account_of[seq], sizes.devices, accounts) - len(arrivals))
        if missing:
            stats.error(f"{missing} wake-ups never arrived")
        result.add("steady commits/s (target rate) / downloads/s",
                   f"{commits_ok / seconds:.1f} ({sizes.commit_rate:g}) / {downloads_ok / seconds:.1f}")
        result.add("steady commit latency p50 / p99", f"{percentile(commit_lat, 50) * 1000:.0f} / "
                   f"{percentile(commit_lat, 99) * 1000:.0f} ms")
        result.add("fan-out, commit sent -> each of its account's devices: p50 / p99",
                   f"{percentile(fanout, 50) * 1000:.0f} / {percentile(fanout, 99) * 1000:.0f} ms "
                   f"({len(fanout)} wake-ups)")
        count, lag50, lag99 = await notify_lag(c)
        result.add("PostgreSQL notification lag, commit -> each replica: p50 / p99 (bucket bound)",
                   f"{lag50 * 1000:g} / {lag99 * 1000:g} ms ({count} notifications)")
        result.add("CPU, steady (cores): replicas / haproxy / postgres / moto / generator / machine",
                   f"{cores['replicas']:.2f} / {cores['haproxy']:.2f} / {cores['postgres']:.2f} / {cores['moto']:.2f} / "
                   f"{cores['generator']:.2f} / {cores['machine']:.2f}")
        result.add("CPU per replica, steady (cores)", " / ".join(f"{x:.2f}" for x in replica_cores))
        result.add("errors, steady", f"{len(stats.errors) - errors_before}")

        # Burst: as many commits as 16 writers get through, into accounts without devices.
        print(f"  burst for {sizes.burst_s:.0f} s ...", flush=True)
        errors_before = len(stats.errors)
        burst_ok, burst_lat = 0, []
        meter = CpuMeter(groups)
        per_replica = [cpu_ticks(r.pid) for r in c.replicas]
        burst_start = time.monotonic()
        burst_end = burst_start + sizes.burst_s

        async def writer(w: int) -> None:
            nonlocal burst_ok
            token = burst_tokens[w % len(burst_tokens)]
            i = 0
            while time.monotonic() < burst_end:
                t = time.perf_counter()
                try:
                    r = await api.post("/files", json=inline_body(f"b{w}-{i}-{uuid.uuid4().hex[:4]}", b"x" * 100),
                                       headers=auth(token))
                except httpx.HTTPError as exc:
                    stats.error(f"burst commit: {exc!r}")
                    continue
                i += 1
                if r.status_code != 200:
                    stats.error(f"burst commit: {r.status_code} {r.text[:120]}")
                    continue
                burst_lat.append(time.perf_counter() - t)
                burst_ok += 1

        async with trio.open_nursery() as burst:
            for w in range(sizes.burst_workers):
                burst.start_soon(writer, w)
        seconds = time.monotonic() - burst_start
        cores = meter.cores()
        replica_cores = [(cpu_ticks(r.pid) - t) / CLK_TCK / seconds for r, t in zip(c.replicas, per_replica)]
        result.burst_rate = burst_ok / seconds
        result.add(f"burst commits/s ({sizes.burst_workers} writers, devices still held)", f"{result.burst_rate:.0f}")
        result.add("burst commit latency p50 / p99", f"{percentile(burst_lat, 50) * 1000:.0f} / "
                   f"{percentile(burst_lat, 99) * 1000:.0f} ms")
        result.add("CPU, burst (cores): replicas / haproxy / postgres / generator / machine",
                   f"{cores['replicas']:.2f} / {cores['haproxy']:.2f} / {cores['postgres']:.2f} / "
                   f"{cores['generator']:.2f} / {cores['machine']:.2f}")
        result.add("CPU per replica, burst (cores)", " / ".join(f"{x:.2f}" for x in replica_cores))
        result.add("errors, burst", f"{len(stats.errors) - errors_before}")
        result.add("RSS per replica at the end", " / ".join(f"{rss_mib(r.pid):.0f} MiB" for r in c.replicas))
        result.add("requests sent by the devices / answers", f"{stats.sent_requests} / {stats.answers}")
        result.errors = list(stats.errors)
        nursery.cancel_scope.cancel()


def _devices_of(account: int, devices: int, accounts: int) -> int:
    """How many devices follow `account` (device d follows account d % accounts)."""
    return devices // accounts + (1 if account < devices % accounts else 0)


def make_users(db_url: str, accounts: int, burst: int) -> tuple[list[str], list[str]]:
    """In this process: `cloudfs user add` would start a process per account."""
    db = open_database(Path(tempfile.gettempdir()), db_url)  # creates the schema
    try:
        tokens = [add_user(db, f"acct{a}") for a in range(accounts)]
        burst_tokens = [add_user(db, f"burst{b}") for b in range(burst)]
    finally:
        db.dispose()
    return tokens, burst_tokens


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 devices and short phases (a sanity run)")
    parser.add_argument("--replicas", default="1,2,3", help="replica counts to run, in order (default 1,2,3)")
    parser.add_argument("--devices", type=int, help="simulated devices (default 10,000; --quick 2,000)")
    parser.add_argument("--db", metavar="URL", help="PostgreSQL admin URL (default: scripts/postgres.sh's)")
    args = parser.parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes()
    if args.devices:
        sizes = replace(sizes, devices=args.devices)
    counts = [int(x) for x in args.replicas.split(",")]
    limit = raise_fd_limit(20_000)
    if sizes.devices + 2000 > limit:
        print(f"bench_cluster: {sizes.devices} devices need {sizes.devices + 2000} open files here; the limit is "
              f"{limit}", file=sys.stderr)
        return 2
    admin = args.db or os.environ.get("CLOUDFS_TEST_PG")
    if not admin:
        import subprocess

        admin = subprocess.run(["bash", str(REPO / "scripts" / "postgres.sh")], capture_output=True, text=True,
                               check=True).stdout.strip().splitlines()[-1]
    accounts = sizes.devices // sizes.per_account
    balancers = 1 if sizes.devices < 4000 else 1 + sizes.devices // 9000
    print(f"cloudfs cluster benchmark: {sizes.devices} devices ({accounts} accounts x {sizes.per_account}), replicas "
          f"{counts}, {balancers} HAProxy; {os.cpu_count()} cores; open files {limit}; load average {load_average()}",
          flush=True)
    results: list[Result] = []
    broken = False
    with moto_server() as moto, (contextlib.nullcontext(tempfile.mkdtemp(prefix="cloudfs-bench-cluster-")) if os.environ.get("CLOUDFS_BENCH_KEEP") else tempfile.TemporaryDirectory(prefix="cloudfs-bench-cluster-")) as tmp:
        for n in counts:
            print(f"{n} replica(s); load average {load_average()}", flush=True)
            result = Result(n)
            with postgres_database(admin) as db_url:
                tokens, burst_tokens = make_users(db_url, accounts, sizes.burst_workers)
                store = f"s3://bench-{uuid.uuid4().hex[:8]}?endpoint={moto}&region=us-east-1"
                c = Cluster(Path(tmp) / f"n{n}", db_url, store, n, balancers=balancers, maxconn=sizes.devices + 500,
                            extra_args=["--db-pool", "8"])
                try:
                    trio.run(run_against, c, tokens, burst_tokens, sizes, result)
                except Exception as exc:  # noqa: BLE001 - reported, the next count still runs
                    broken = True
                    print(f"  the run broke: {exc!r}", file=sys.stderr)
                finally:
                    if "Traceback" in c.logs():
                        print(c.logs()[-3000:], file=sys.stderr)
                    c.close()
            result.add("load average after", load_average())
            results.append(result)
    print()
    print(table(results, sizes))
    passed = not broken and all(not r.errors and max(r.rss, default=0) <= RSS_TARGET_MIB for r in results)
    by_n = {r.replicas: r.burst_rate for r in results}
    if 1 in by_n and 2 in by_n:
        passed = passed and by_n[2] >= by_n[1]
    for r in results:
        if r.errors:
            print(f"{r.replicas} replica(s): {len(r.errors)} errors, e.g. {r.errors[:3]}", file=sys.stderr)
    return 2 if broken else (0 if passed else 1)


def table(results: list[Result], sizes: Sizes) -> str:
    names = list(dict.fromkeys(name for r in results for name in r.figures))
    header = ["Measure", *[f"{r.replicas} replica{'s' if r.replicas > 1 else ''}" for r in results]]
    rows = [[name, *[r.figures.get(name, "-") for r in results]] for name in names]
    rows.append(["errors (all phases)", *[str(len(r.errors)) for r in results]])
    rows.append([f"max RSS per replica <= {RSS_TARGET_MIB} MiB",
                 *[("PASS" if max(r.rss, default=0) <= RSS_TARGET_MIB else "FAIL") for r in results]])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(header, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
