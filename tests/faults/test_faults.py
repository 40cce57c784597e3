"""Faults on the network and in the store cost retries, never bytes: resets part-way
through a transfer, 503s and slow answers between the device and the server (or S3),
and a store that fails on the server's side. Every upload ends up committed intact."""

from __future__ import annotations

import errno
import filecmp
import time
import uuid
from pathlib import Path


from tests.harness import cloudfs_mount, cloudfs_server
from tests.proxy import Faults, Proxy


def write_sample(root: Path, src: Path) -> None:
    """The same files in a plain directory (the reference) and in the drive."""
    for target in (src, root):
        (target / "docs").mkdir(parents=True, exist_ok=True)
    rnd = __import__("random").Random(7)
    for i in range(25):
        data = rnd.randbytes(rnd.randrange(1, 40_000))
        (src / "docs" / f"f{i}.bin").write_bytes(data)
        (root / "docs" / f"f{i}.bin").write_bytes(data)
    big = rnd.randbytes(12 << 20)
    (src / "big.bin").write_bytes(big)
    (root / "big.bin").write_bytes(big)


def read_retrying(path: Path, attempts: int = 20) -> bytes:
    """A read through a faulty network may fail (EIO, after a retry); it must never
    return wrong bytes. Retry the way a user would."""
    for _ in range(attempts):
        try:
            return path.read_bytes()
        except OSError as exc:
            assert exc.errno == errno.EIO, exc
            time.sleep(0.2)
    raise AssertionError(f"{path}: still failing after {attempts} attempts")


def check_same(src: Path, root: Path) -> None:
    for path in src.rglob("*"):
        if path.is_file():
            assert read_retrying(root / path.relative_to(src)) == path.read_bytes(), path



FAULTS = Faults(error=0.15, reset=0.15, slow=0.1, slow_s=0.3, seed=11)


def test_faulty_network_between_device_and_server(tmp_path, monkeypatch):
    monkeypatch.setenv("CLOUDFS_CHUNK_AVG_MIB", "1")  # the big file as a dozen chunks: more transfers to fault
    with cloudfs_server(tmp_path / "srv") as srv:
        token = srv.add_user("owner")
        proxy = Proxy(int(srv.url.rsplit(":", 1)[1]), FAULTS)
        try:
            with cloudfs_mount(proxy.front(srv), token, tmp_path / "a", tmp_path / "cache-a") as a:
                write_sample(a.path, tmp_path / "src")
                a.sync(timeout=300)
                assert a.status()["pending_ops"] == 0
                # Read back through the same faults, from an empty cache.
            with cloudfs_mount(proxy.front(srv), token, tmp_path / "a", tmp_path / "cache-a2") as a2:
                check_same(tmp_path / "src", a2.path)
            assert sum(proxy.injected.values()) > 10, proxy.injected
        finally:
            proxy.close()
        with cloudfs_mount(srv, token, tmp_path / "b", tmp_path / "cache-b", device="dev-b") as b:
            for path in (tmp_path / "src").rglob("*"):
                if path.is_file():
                    assert filecmp.cmp(path, b.path / path.relative_to(tmp_path / "src"), shallow=False)
        assert "Traceback" not in srv.log()


def test_faulty_s3_between_everyone_and_the_store(tmp_path, request):
    pg = request.getfixturevalue("pg_admin_url")
    moto = request.getfixturevalue("moto_url")
    from tests.harness import postgres_database

    proxy = Proxy(int(moto.rsplit(":", 1)[1]), Faults(error=0.1, reset=0.1, slow=0.1, slow_s=0.3, seed=5))
    try:
        with postgres_database(pg) as db_url, cloudfs_server(
                tmp_path / "srv", db_url=db_url,
                store_url=f"s3://f-{uuid.uuid4().hex[:10]}?endpoint={proxy.url}&region=us-east-1") as srv:
            token = srv.add_user("owner")
            with cloudfs_mount(srv, token, tmp_path / "a", tmp_path / "cache-a") as a:
                write_sample(a.path, tmp_path / "src")
                a.sync(timeout=300)
            with cloudfs_mount(srv, token, tmp_path / "b", tmp_path / "cache-b", device="dev-b") as b:
                check_same(tmp_path / "src", b.path)
            assert sum(proxy.injected.values()) > 5, proxy.injected
    finally:
        proxy.close()


def test_store_that_fails_on_the_server_side(tmp_path, moto_url):
    """S3, whose chunks the server checks with a HEAD before each commit, behind a
    wrapper that fails 30% of the server's store calls: commits answer 503, devices retry."""
    bucket = f"f-{uuid.uuid4().hex[:10]}"
    store = f"fault+s3://{bucket}?endpoint={moto_url}&region=us-east-1&fault_rate=0.3&fault_seed=3"
    with cloudfs_server(tmp_path / "srv", store_url=store) as srv:
        token = srv.add_user("owner")
        with cloudfs_mount(srv, token, tmp_path / "a", tmp_path / "cache-a") as a:
            write_sample(a.path, tmp_path / "src")
            a.sync(timeout=300)
            assert a.status()["pending_ops"] == 0
        assert "store_unavailable" in srv.log() or " 503 " in srv.log()
        with cloudfs_mount(srv, token, tmp_path / "b", tmp_path / "cache-b", device="dev-b") as b:
            check_same(tmp_path / "src", b.path)
