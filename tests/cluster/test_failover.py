"""Replicas going away under load, behind HAProxy: one killed with SIGKILL and started
again, then every replica restarted one at a time. Devices (tests/cluster/load.py,
and two real mounts on the balancer) must lose nothing and, for the rolling restart,
see no failed request at all."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import trio

from tests.cluster.harness import Cluster, cluster
from tests.cluster.load import Load, check
from tests.harness import cloudfs_mount, postgres_database, wait_until


@pytest.fixture(scope="module")
def balanced(pg_admin_url: str, moto_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("balanced")
    with postgres_database(pg_admin_url) as db_url, \
            cluster(tmp, db_url, f"s3://f-{uuid.uuid4().hex[:10]}?endpoint={moto_url}&region=us-east-1", 2) as c:
        yield c


def _under_load(c: Cluster, token: str, chaos, *, retry: bool) -> Load:  # noqa: ANN001
    """Run `chaos()` (in a thread) while the load runs; stop the load after it."""
    load = Load(c.url, token, retry=retry)

    async def main() -> None:
        with trio.fail_after(180):
            async with trio.open_nursery() as nursery:
                await nursery.start(load.run)
                await trio.sleep(1.5)
                await trio.to_thread.run_sync(chaos)
                await trio.sleep(1.5)
                load.stop.set()

    trio.run(main)
    return load


def _write_files(path: Path, count: int, stop: threading.Event) -> list[str]:
    written = []
    for i in range(count):
        if stop.is_set():
            break
        (path / f"m{i:04d}.txt").write_text(f"mount file {i}\n")
        written.append(f"m{i:04d}.txt")
        time.sleep(0.02)
    return written


def test_a_replica_killed_under_load_loses_nothing(balanced: Cluster, tmp_path: Path):
    """SIGKILL of replica 1 while four writers commit and three followers long-poll
    through the balancer, and while a mount writes files that another mount follows;
    replica 1 is started again and HAProxy takes it back. Every acknowledged create
    landed exactly once, every follower saw every journal entry once and in order,
    both mounts end with the same files."""
    c = balanced
    token = c.add_user(f"kill-{uuid.uuid4().hex[:8]}")
    victim = c.replicas[0]
    server = c.as_server()
    with cloudfs_mount(server, token, tmp_path / "a", tmp_path / "cache-a", device="dev-a") as a, \
            cloudfs_mount(server, token, tmp_path / "b", tmp_path / "cache-b", device="dev-b") as b:
        stop = threading.Event()
        written: list[str] = []
        writer = threading.Thread(target=lambda: written.extend(_write_files(a.path, 400, stop)))
        writer.start()

        def chaos() -> None:
            c.kill(victim)
            c.wait_up({r.name for r in c.replicas if r is not victim}, timeout=20)
            time.sleep(1.0)
            c.start(victim)
            c.wait_up({r.name for r in c.replicas}, timeout=30)

        try:
            load = _under_load(c, token, chaos, retry=True)
        finally:
            stop.set()
            writer.join(60)
        check(load.tally, c.url, token)
        a.sync()
        b.sync()
        wait_until(lambda: sorted(p for p in os.listdir(b.path) if p.startswith("m")) == sorted(written), timeout=30,
                   what="the mount's files on the other mount")
        for name in written[-5:]:
            assert (b.path / name).read_text() == (a.path / name).read_text()
    assert load.tally.polls > 10


def test_rolling_restart_under_load_fails_no_request(balanced: Cluster):
    """Each replica in turn gets SIGTERM (it says not ready, HAProxy moves on, it
    answers its long-polls and finishes what it has), exits 0 and is started again.
    The writers and followers send every request once, without retrying: none fails."""
    c = balanced
    token = c.add_user(f"roll-{uuid.uuid4().hex[:8]}")

    def chaos() -> None:
        for replica in c.replicas:
            assert c.stop(replica) == 0
            c.start(replica)
            c.wait_up({r.name for r in c.replicas}, timeout=30)

    load = _under_load(c, token, chaos, retry=False)
    check(load.tally, c.url, token)
    assert load.tally.retries == 0
