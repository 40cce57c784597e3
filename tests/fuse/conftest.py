"""Fixtures for real FUSE mounts: one server per module, one fresh user and mount per test."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Iterator

import pytest

from tests.harness import MountProcess, ServerProcess, cloudfs_mount, cloudfs_server


@pytest.fixture(scope="module")
def fuse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with cloudfs_server(tmp_path_factory.mktemp("fuse-server")) as srv:
        yield srv


@pytest.fixture
def account(fuse_server: ServerProcess) -> str:
    return fuse_server.add_user(f"u-{uuid.uuid4().hex[:10]}")


@pytest.fixture
def mount(fuse_server: ServerProcess, account: str, tmp_path: Path) -> Iterator[MountProcess]:
    with cloudfs_mount(fuse_server, account, tmp_path / "mnt", tmp_path / "cache") as m:
        yield m
        assert "Traceback" not in m.log(), m.log()[-5000:]
