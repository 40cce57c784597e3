"""Fixtures: two or three replicas on one PostgreSQL database and one S3 bucket (moto),
HAProxy in front, devices mounted on different replicas or on the balancer."""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from tests.cluster.harness import Cluster, cluster
from tests.harness import ServerProcess, cloudfs_mount, postgres_database
from tests.sync.conftest import Devices


@pytest.fixture(scope="module")
def two_replicas(pg_admin_url: str, moto_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two replicas, no balancer: each device talks to its own replica."""
    tmp = tmp_path_factory.mktemp("two-replicas")
    with postgres_database(pg_admin_url) as db_url, \
            cluster(tmp, db_url, f"s3://c-{uuid.uuid4().hex[:10]}?endpoint={moto_url}&region=us-east-1", 2,
                    balancer=False) as c:
        yield c
        logs = c.logs()
        assert "Traceback" not in logs, logs


@pytest.fixture
def devices(two_replicas: Cluster, tmp_path: Path) -> Iterator[Devices]:
    """The sync tests' two devices, `a` on replica 1 and `b` on replica 2."""
    token = two_replicas.add_user(f"u-{uuid.uuid4().hex[:10]}")
    first, second = two_replicas.replicas
    with two_devices_on(two_replicas.as_server(first), two_replicas.as_server(second), token, tmp_path) as d:
        yield d


@contextlib.contextmanager
def two_devices_on(server_a: ServerProcess, server_b: ServerProcess, token: str, tmp: Path) -> Iterator[Devices]:
    """tests.sync.conftest.two_devices, with each device on its own server URL."""
    with cloudfs_mount(server_a, token, tmp / "a", tmp / "cache-a", device="dev-a") as a, \
            cloudfs_mount(server_b, token, tmp / "b", tmp / "cache-b", device="dev-b") as b:
        yield Devices(a, b)
        for m in (a, b):
            assert "Traceback" not in m.log(), m.log()[-5000:]
