"""Two devices: two mounts with separate caches, one account, one server."""

from __future__ import annotations

import contextlib
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.harness import (MountProcess, RestartableServer, ServerProcess, cloudfs_mount, cloudfs_server,
                           spawn_mount, unmount)
from tests.proxy import HeldAnswer, Proxy


@dataclass
class Devices:
    a: MountProcess
    b: MountProcess


@pytest.fixture(scope="module")
def sync_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with cloudfs_server(tmp_path_factory.mktemp("sync-server")) as srv:
        yield srv


@contextlib.contextmanager
def two_devices(server: ServerProcess, token: str, tmp: Path) -> Iterator[Devices]:
    with cloudfs_mount(server, token, tmp / "a", tmp / "cache-a", device="dev-a") as a, \
            cloudfs_mount(server, token, tmp / "b", tmp / "cache-b", device="dev-b") as b:
        yield Devices(a, b)
        for m in (a, b):
            assert "Traceback" not in m.log(), m.log()[-5000:]


@pytest.fixture
def devices(sync_server: ServerProcess, tmp_path: Path) -> Iterator[Devices]:
    token = sync_server.add_user(f"u-{uuid.uuid4().hex[:10]}")
    with two_devices(sync_server, token, tmp_path) as d:
        yield d


@pytest.fixture
def restartable(tmp_path: Path) -> Iterator[RestartableServer]:
    srv = RestartableServer(tmp_path / "server")
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def offline_devices(restartable: RestartableServer, tmp_path: Path) -> Iterator[Devices]:
    token = restartable.server.add_user("owner")
    with two_devices(restartable.server, token, tmp_path) as d:
        yield d


@contextlib.contextmanager
def a_behind_a_proxy(server: ServerProcess, tmp_path: Path) -> Iterator[tuple[Devices, Proxy]]:
    """Two devices of a fresh user; a talks to the server through a proxy the test can
    hang, so that b's changes land first while a's wait."""
    token = server.add_user(f"u-{uuid.uuid4().hex[:10]}")
    proxy = Proxy(int(server.url.rsplit(":", 1)[1]))
    proxied = proxy.front(server)
    try:
        with cloudfs_mount(proxied, token, tmp_path / "a", tmp_path / "cache-a", device="dev-a") as a, \
                cloudfs_mount(server, token, tmp_path / "b", tmp_path / "cache-b", device="dev-b") as b:
            yield Devices(a, b), proxy
    finally:
        proxy.close()


class KillableA:
    """Device a behind a proxy, which a test kills (-9) and mounts again on its cache,
    and device b, straight to the server."""

    def __init__(self, server: ServerProcess, proxy: Proxy, token: str, tmp_path: Path) -> None:
        self.token, self.tmp = token, tmp_path
        self.proxied = proxy.front(server)
        self.a = self._spawn()
        self.b: MountProcess | None = None

    def _spawn(self) -> MountProcess:
        return spawn_mount(self.proxied, self.token, self.tmp / "a", self.tmp / "cache-a", device="dev-a")

    def kill_a(self) -> None:
        self.a.proc.send_signal(signal.SIGKILL)
        self.a.proc.wait(10)
        unmount(self.a.path, self.a.proc)

    def mount_a_again(self) -> MountProcess:
        self.a = self._spawn()
        return self.a


@contextlib.contextmanager
def a_killable_behind_a_proxy(server: ServerProcess, tmp_path: Path) -> Iterator[tuple[KillableA, Proxy]]:
    """As `a_behind_a_proxy`, with a mount of a that `KillableA.kill_a` kills."""
    token = server.add_user(f"u-{uuid.uuid4().hex[:10]}")
    proxy = Proxy(int(server.url.rsplit(":", 1)[1]))
    devices = KillableA(server, proxy, token, tmp_path)
    try:
        with cloudfs_mount(server, token, tmp_path / "b", tmp_path / "cache-b", device="dev-b") as b:
            devices.b = b
            yield devices, proxy
    finally:
        unmount(devices.a.path, devices.a.proc)
        proxy.close()


def wait_until_held(proxy: Proxy, what: str = "a request") -> None:
    deadline = time.monotonic() + 30
    while not proxy.holding:
        assert time.monotonic() < deadline, f"{what} should be held by the proxy"
        time.sleep(0.02)


def hold_the_change_feed(proxy: Proxy) -> None:
    """From now on the proxied device's change feed waits at `proxy` until `release`:
    the long-poll in flight goes (its connection dropped), its successor is held."""
    proxy.hold(rb"^POST /sync ")
    proxy.set_faults(proxy.faults)
    wait_until_held(proxy, "the change feed")


def wait_until_lost(proxy: Proxy, *, then_refused: bool = False) -> None:
    """Until a's request has been carried out by the server and its answer lost (and,
    `then_refused`, a request after it refused by the proxy: the check whether it landed)."""
    deadline = time.monotonic() + 30
    while not (proxy.lost and (proxy.failed or not then_refused)):
        assert time.monotonic() < deadline, "the answer should be lost" + (", the check refused" if then_refused else "")
        time.sleep(0.02)


def wait_for_answers(proxy: Proxy, count: int) -> list[HeldAnswer]:
    """Until `count` answers are held (`Proxy.hold_answers`): the server has acted on them."""
    deadline = time.monotonic() + 30
    while len(proxy.answers_held) < count or not all(h.answered.is_set() for h in proxy.answers_held[:count]):
        assert time.monotonic() < deadline, f"{count} answers should be held, got {len(proxy.answers_held)}"
        time.sleep(0.02)
    return proxy.answers_held


def wait_for_cursor(mount: MountProcess, cursor: int, timeout: float = 30) -> None:
    """Until `mount`'s follower has applied the journal up to `cursor`."""
    deadline = time.monotonic() + timeout
    while mount.status()["cursor"] < cursor:
        assert time.monotonic() < deadline, f"{mount.device} did not reach cursor {cursor} in {timeout}s"
        time.sleep(0.05)
