#!/usr/bin/env python
"""Benchmark a cluster: 10,000 simulated devices against 1, 2 and 3 `cloudfs server`
replicas behind HAProxy, on one PostgreSQL database and one S3 bucket (moto server).

Each device is one account's device holding a long-poll (`POST /sync` with its
namespace's cursor and `wait` 25, what the device's follower asks for) on a keep-alive connection through the balancer, and
taking the next one as soon as it is answered: 1,000 accounts of 10 devices. They
connect within ~20 s, then sit idle for `idle_s` (each long-poll times out at least
once: what idle devices cost). Then, for `steady_s` seconds, a steady rate of small
commits lands in random accounts (each wakes that account's 10 devices) and a steady
rate of downloads fetches a file's signed URLs and then the chunk from S3. Then, for
`burst_s` seconds, 16 writers commit as fast as they can into accounts of their own
(commits/s with the idle devices still held).

Reported per replica count: devices held, re-polls and journal reads per second while
idle, commits/s (steady and burst), commit latency seen here and inside the replicas
(their /metrics histograms), fan-out latency from a commit sent to each of its 10
devices' answers (p50/p99), PostgreSQL notification lag, errors (any failed request,
broken connection, or wake-up a device never got within `late_s`), RSS and CPU per
replica, with the CPU of HAProxy, PostgreSQL, moto, this generator and the whole
machine beside it. `--profile DIR` samples the replicas with py-spy in the idle, steady
and burst phases and prints where their CPU went. One process generates everything (trio,
a raw HTTP/1.1 client for the long-polls, httpx for the rest); the machine's cores
are shared by all of it.

    .venv/bin/python scripts/bench_cluster.py [--quick] [--replicas 1,2,3] [--devices N] [--profile DIR]

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
from tests.cluster import measure  # noqa: E402
from tests.cluster.harness import Cluster, raise_fd_limit  # noqa: E402
from tests.cluster.measure import CpuMeter, Histogram, ms, percentile, rss_mib  # noqa: E402
from tests.harness import moto_server, postgres_database  # noqa: E402

RSS_TARGET_MIB = 512


@dataclass(frozen=True)
class Sizes:
    devices: int = 10_000
    per_account: int = 10
    commit_rate: float = 10.0      # steady commits per second, into the devices' accounts
    download_rate: float = 2.0     # steady downloads per second (metadata + chunk from S3)
    idle_s: float = 30.0           # devices only: more than one whole long-poll each
    steady_s: float = 30.0
    burst_s: float = 15.0
    burst_workers: int = 16
    wait_s: int = 25               # each long-poll's wait: what the device's follower asks for
    connect_batch: int = 250       # long-polls opened together, then wait for them to be sent
    late_s: float = 30.0           # how long a wake-up may come after the steady phase

    @classmethod
    def quick(cls) -> "Sizes":
        return cls(devices=2000, idle_s=10.0, steady_s=10.0, burst_s=6.0)


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

    def __init__(self, host: str, port: int, token: str, ns: int, cursor: int, name: str) -> None:
        self.host, self.port, self.ns, self.cursor = host, port, ns, cursor
        self.head = (f"Host: {host}:{port}\r\nAuthorization: Bearer {token}\r\nX-Cloudfs-Device: {name}\r\n"
                     f"Content-Type: application/json\r\n").encode()
        self.stream: trio.SocketStream | None = None

    async def run(self, stats: Stats, wait_s: int, sent: trio.Event) -> None:
        first = True
        while True:
            try:
                if self.stream is None:
                    self.stream = await trio.open_tcp_stream(self.host, self.port)
                body = json.dumps({"cursors": {str(self.ns): self.cursor}, "wait": wait_s}).encode()
                await self.stream.send_all(b"POST /sync HTTP/1.1\r\n" + self.head
                                           + b"Content-Length: %d\r\n\r\n" % len(body) + body)
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
                self.cursor = page["cursors"][str(self.ns)]
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
    broken: str = ""

    def add(self, name: str, value: str) -> None:
        self.figures[name] = value
        print(f"  {name}: {value}", flush=True)


async def scrape(c: Cluster) -> list[str]:
    async with httpx.AsyncClient(trust_env=False) as client:
        return await measure.scrape(client, [r.url for r in c.replicas])


def held_each(texts: list[str]) -> list[int]:
    """Long-polls parked on each replica."""
    return [int(measure.sample(text, "cloudfs_long_polls_held")) for text in texts]


def cores_text(cores: dict[str, float], names: tuple[str, ...]) -> str:
    return " / ".join(f"{cores[n]:.2f}" for n in names)


CPU_GROUPS = ("replicas", "haproxy", "postgres", "moto", "generator", "machine")
CPU_LABEL = "(cores): " + " / ".join(CPU_GROUPS)


async def run_against(c: Cluster, tokens: list[str], burst_tokens: list[str], sizes: Sizes, result: Result,
                      profile_dir: Path | None) -> None:
    stats = Stats()
    host, port = "127.0.0.1", c.balancer_port
    accounts = len(tokens)
    api = httpx.AsyncClient(base_url=c.url, trust_env=False, timeout=httpx.Timeout(60, connect=10),
                            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))
    blobs = httpx.AsyncClient(trust_env=False, timeout=60)
    replica_pids = [r.pid for r in c.replicas]

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
        cursors: list[tuple[int, int]] = []  # (namespace: the account's own tree, cursor)
        for a in range(accounts):
            me = (await api.get("/me", headers=auth(tokens[a]))).json()
            cursors.append((me["user_id"], me["cursor"]))

        # --- the devices connect, then sit idle ---------------------------------------------
        print(f"  opening {sizes.devices} long-polls ...", flush=True)
        t0 = time.monotonic()
        for start in range(0, sizes.devices, sizes.connect_batch):
            events = []
            for d in range(start, min(start + sizes.connect_batch, sizes.devices)):
                a = d % accounts
                sent = trio.Event()
                events.append(sent)
                nursery.start_soon(Device(host, port, tokens[a], *cursors[a], f"dev{d}").run, stats, sizes.wait_s, sent)
            with trio.fail_after(120):
                for sent in events:
                    await sent.wait()
        with trio.fail_after(300):
            while (held := sum(held_each(await scrape(c)))) < sizes.devices * 0.995:
                await trio.sleep(1)
        result.held = held
        result.add("devices held (long-polls parked, from /metrics)", f"{held} of {sizes.devices}, "
                   f"opened in {time.monotonic() - t0:.0f} s")
        groups = {"replicas": replica_pids, "haproxy": [p.pid for p in c.balancer_procs],
                  "postgres": measure.pg_backends(c.db_url), "moto": [measure.child_named("moto_server")]}
        print(f"  devices idle for {sizes.idle_s:.0f} s ...", flush=True)
        before = await scrape(c)
        answers0, meter = stats.answers, CpuMeter(groups)
        profiles = measure.start_profiles(replica_pids, sizes.idle_s, profile_dir, f"{len(c.replicas)}-idle") \
            if profile_dir else []
        await trio.sleep(sizes.idle_s)
        cores, seconds = meter.cores(), sizes.idle_s
        after = await scrape(c)
        result.rss = [rss_mib(pid) for pid in replica_pids]
        result.add("idle long-polls per replica (from /metrics)", " / ".join(str(n) for n in held_each(after)))
        result.add("RSS per replica, devices idle", " / ".join(f"{m:.0f} MiB" for m in result.rss))
        reads = sum(measure.sample(t, "cloudfs_changes_reads_total") for t in after) \
            - sum(measure.sample(t, "cloudfs_changes_reads_total") for t in before)
        result.add("idle: long-polls answered empty (re-polls) / journal reads, per s",
                   f"{(stats.answers - answers0) / seconds:.0f} / {reads / seconds:.0f}")
        result.add(f"CPU, devices idle {CPU_LABEL}", cores_text(cores, CPU_GROUPS))
        result.add("CPU per replica, devices idle (cores)", " / ".join(f"{x:.2f}" for x in meter.each("replicas")))
        if profiles:
            print("  profile of the replicas, idle:\n" + measure.summarise_profile(measure.finish_profiles(profiles)),
                  flush=True)

        # --- steady: commits into the devices' accounts, and downloads ----------------------
        print(f"  steady load for {sizes.steady_s:.0f} s ...", flush=True)
        stats.record = True
        errors_before = len(stats.errors)
        commits_ok, downloads_ok, commit_lat = 0, 0, []
        before = await scrape(c)
        meter = CpuMeter(groups)
        profiles = measure.start_profiles(replica_pids, sizes.steady_s, profile_dir, f"{len(c.replicas)}-steady") \
            if profile_dir else []
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
        cores, each = meter.cores(), meter.each("replicas")
        after = await scrape(c)
        # Wake-ups still on their way: wait for them (bounded), then count what never came.
        expected = {seq: _devices_of(stats.account_of[seq], sizes.devices, accounts) for seq in stats.sent}
        late_deadline = time.monotonic() + sizes.late_s
        while time.monotonic() < late_deadline and any(len(stats.arrivals.get(s, ())) < n for s, n in expected.items()):
            await trio.sleep(0.5)
        stats.record = False
        fanout: list[float] = []
        missing = 0
        for seq, sent in stats.sent.items():
            arrivals = stats.arrivals.get(seq, [])
            fanout += [t - sent for t in arrivals]
            missing += max(0, expected[seq] - len(arrivals))
        if missing:
            stats.error(f"{missing} wake-ups never arrived (waited {sizes.late_s:.0f} s)")
        result.add("steady commits/s (target rate) / downloads/s",
                   f"{commits_ok / seconds:.1f} ({sizes.commit_rate:g}) / {downloads_ok / seconds:.1f}")
        result.add("steady commit latency p50 / p99 (generator)", f"{percentile(commit_lat, 50) * 1000:.0f} / "
                   f"{percentile(commit_lat, 99) * 1000:.0f} ms")
        inside = Histogram(after, "cloudfs_http_request_seconds", 'route="/files"', 'method="POST"') \
            .minus(Histogram(before, "cloudfs_http_request_seconds", 'route="/files"', 'method="POST"'))
        result.add("steady commit latency p50 / p99 inside the replicas (bucket bound)",
                   f"{measure.ms(inside.bound(50))} / {measure.ms(inside.bound(99))} ms")
        result.add("fan-out, commit sent -> each of its account's devices: p50 / p99",
                   f"{percentile(fanout, 50) * 1000:.0f} / {percentile(fanout, 99) * 1000:.0f} ms "
                   f"({len(fanout)} wake-ups)")
        lag = Histogram(after, "cloudfs_journal_notify_lag_seconds") \
            .minus(Histogram(before, "cloudfs_journal_notify_lag_seconds"))
        result.add("PostgreSQL notification, commit -> each replica: p50 / p99 (bucket bound)",
                   f"{measure.ms(lag.bound(50))} / {measure.ms(lag.bound(99))} ms ({lag.count} notifications)")
        result.add(f"CPU, steady {CPU_LABEL}", cores_text(cores, CPU_GROUPS))
        result.add("CPU per replica, steady (cores)", " / ".join(f"{x:.2f}" for x in each))
        result.add("errors, steady", f"{len(stats.errors) - errors_before}")
        if profiles:
            print("  profile of the replicas, steady:\n" + measure.summarise_profile(measure.finish_profiles(profiles)),
                  flush=True)

        # --- burst: as many commits as 16 writers get through, into accounts without devices
        print(f"  burst for {sizes.burst_s:.0f} s ...", flush=True)
        errors_before = len(stats.errors)
        burst_ok, burst_lat = 0, []
        before = await scrape(c)
        meter = CpuMeter(groups)
        profiles = measure.start_profiles(replica_pids, sizes.burst_s, profile_dir, f"{len(c.replicas)}-burst") \
            if profile_dir else []
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
        cores, each = meter.cores(), meter.each("replicas")
        after = await scrape(c)
        result.burst_rate = burst_ok / seconds
        result.add(f"burst commits/s ({sizes.burst_workers} writers, devices still held)", f"{result.burst_rate:.0f}")
        result.add("burst commit latency p50 / p99 (generator)", f"{percentile(burst_lat, 50) * 1000:.0f} / "
                   f"{percentile(burst_lat, 99) * 1000:.0f} ms")
        inside = Histogram(after, "cloudfs_http_request_seconds", 'route="/files"', 'method="POST"') \
            .minus(Histogram(before, "cloudfs_http_request_seconds", 'route="/files"', 'method="POST"'))
        result.add("burst commit latency p50 / p99 inside the replicas (bucket bound)",
                   f"{measure.ms(inside.bound(50))} / {measure.ms(inside.bound(99))} ms")
        batches = sum(measure.sample(t, "cloudfs_commit_batches_total") for t in after) \
            - sum(measure.sample(t, "cloudfs_commit_batches_total") for t in before)
        jobs = sum(measure.sample(t, "cloudfs_commit_jobs_total") for t in after) \
            - sum(measure.sample(t, "cloudfs_commit_jobs_total") for t in before)
        result.add("burst: commits per group-commit transaction", f"{jobs / batches:.1f}" if batches else "-")
        result.add(f"CPU, burst {CPU_LABEL}", cores_text(cores, CPU_GROUPS))
        result.add("CPU per replica, burst (cores)", " / ".join(f"{x:.2f}" for x in each))
        result.add("errors, burst", f"{len(stats.errors) - errors_before}")
        if profiles:
            print("  profile of the replicas, burst:\n" + measure.summarise_profile(measure.finish_profiles(profiles)),
                  flush=True)
        result.add("RSS per replica at the end", " / ".join(f"{rss_mib(pid):.0f} MiB" for pid in replica_pids))
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
    parser.add_argument("--profile", metavar="DIR", type=Path,
                        help="sample the replicas with py-spy during the idle, steady and burst phases (raw stacks in DIR)")
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
    keep = os.environ.get("CLOUDFS_BENCH_KEEP")  # keep the replicas' logs
    with moto_server() as moto, (contextlib.nullcontext(tempfile.mkdtemp(prefix="cloudfs-bench-cluster-")) if keep
                                 else tempfile.TemporaryDirectory(prefix="cloudfs-bench-cluster-")) as tmp:
        for n in counts:
            print(f"{n} replica(s); load average {load_average()}", flush=True)
            result = Result(n)
            with postgres_database(admin) as db_url:
                tokens, burst_tokens = make_users(db_url, accounts, sizes.burst_workers)
                store = f"s3://bench-{uuid.uuid4().hex[:8]}?endpoint={moto}&region=us-east-1"
                c = Cluster(Path(tmp) / f"n{n}", db_url, store, n, balancers=balancers, maxconn=sizes.devices + 500,
                            extra_args=["--db-pool", "8"])
                try:
                    trio.run(run_against, c, tokens, burst_tokens, sizes, result, args.profile)
                except Exception as exc:  # noqa: BLE001 - reported, the next count still runs
                    broken = True
                    result.broken = repr(exc)[:200]
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
    rows.append(["errors (all phases)", *[f"run broke: {r.broken}" if r.broken else str(len(r.errors))
                                          for r in results]])
    rows.append([f"max RSS per replica <= {RSS_TARGET_MIB} MiB",
                 *[("-" if not r.rss else "PASS" if max(r.rss) <= RSS_TARGET_MIB else "FAIL") for r in results]])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(header, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
