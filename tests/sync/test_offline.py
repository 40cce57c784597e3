"""A device keeps working while the server is away (stopped, or hanging on an open
connection): the mirror answers, writes queue in LMDB, an uncached read fails fast,
and the queue drains by itself once the server answers again."""

from __future__ import annotations

import errno
import os
import time
import uuid
from pathlib import Path

import pytest

from tests.harness import cloudfs_mount, wait_until
from tests.proxy import Proxy


def eventually(check, what: str, timeout: float = 30):  # noqa: ANN001
    return wait_until(check, timeout=timeout, what=what, interval=0.1)


def read_fails_fast(path: Path) -> float:
    start = time.monotonic()
    with pytest.raises(OSError) as caught:
        path.read_bytes()
    took = time.monotonic() - start
    assert caught.value.errno == errno.EIO, caught.value
    assert took < 5, f"an uncached read took {took:.1f}s to fail"
    return took


def offline_session(a_path: Path) -> None:
    """What a user does on a device that lost its server."""
    assert sorted(os.listdir(a_path)) == ["cached.txt", "uncached.bin"]
    assert (a_path / "cached.txt").read_text() == "cached on a\n"
    assert os.stat(a_path / "uncached.bin").st_size == 2 << 20
    read_fails_fast(a_path / "uncached.bin")
    (a_path / "offline").mkdir()
    for i in range(20):
        (a_path / "offline" / f"n{i}.txt").write_text(f"written offline {i}\n")
    os.rename(a_path / "offline" / "n0.txt", a_path / "offline" / "renamed.txt")
    (a_path / "offline" / "n1.txt").unlink()
    with open(a_path / "cached.txt", "a") as f:
        f.write("appended offline\n")


def check_drained(a, b) -> None:  # noqa: ANN001
    """No `cloudfs sync`: the queue drains and the other device follows by itself."""
    eventually(lambda: a.status()["online"] and a.status()["pending_ops"] == 0, "a's queue drains")
    expected = sorted(["renamed.txt"] + [f"n{i}.txt" for i in range(2, 20)])
    eventually(lambda: (b.path / "offline").is_dir() and sorted(os.listdir(b.path / "offline")) == expected,
               "offline work on b")
    assert (b.path / "offline" / "renamed.txt").read_text() == "written offline 0\n"
    eventually(lambda: (b.path / "cached.txt").read_text() == "cached on a\nappended offline\n", "append on b")


def prepare(a, b) -> None:  # noqa: ANN001
    (a.path / "cached.txt").write_text("cached on a\n")
    (b.path / "uncached.bin").write_bytes(os.urandom(2 << 20))
    b.sync()
    a.sync()


def test_server_stopped_and_restarted(restartable, offline_devices):
    a, b = offline_devices.a, offline_devices.b
    prepare(a, b)
    restartable.stop()
    offline_session(a.path)
    eventually(lambda: not a.status()["online"], "a says offline", timeout=10)
    status = a.status()
    assert status["pending_files"] >= 19 and status["pending_ops"] > 0
    restartable.start()
    check_drained(a, b)


def test_connection_that_hangs(fuse_free_server, tmp_path):
    server = fuse_free_server
    token = server.add_user(f"u-{uuid.uuid4().hex[:8]}")
    proxy = Proxy(int(server.url.rsplit(":", 1)[1]))
    try:
        with cloudfs_mount(server, token, tmp_path / "b", tmp_path / "cache-b", device="dev-b") as b:
            proxied = proxy.front(server)
            with cloudfs_mount(proxied, token, tmp_path / "a", tmp_path / "cache-a", device="dev-a") as a:
                prepare(a, b)
                proxy.hang()
                offline_session(a.path)
                eventually(lambda: not a.status()["online"], "a says offline", timeout=10)
                proxy.resume()
                check_drained(a, b)
    finally:
        proxy.close()


@pytest.fixture
def fuse_free_server(sync_server):
    return sync_server
