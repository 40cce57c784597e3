"""A device cache and a server database made by the release before POSIX attributes
(tests/data/README.md) are upgraded in place: the pending uploads in the old cache
reach the server, nothing is fetched again that the cache had, nothing is lost."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

from cloudfs.backend.local.cache import Cache
from cloudfs.backend.local.cache_format import FORMAT
from tests.harness import cloudfs_mount, cloudfs_server
from tests.server.test_migrations import unpack_fixture


def test_an_old_cache_keeps_its_pending_uploads(tmp_path: Path) -> None:
    data, token = unpack_fixture(tmp_path / "old")
    cache_dir = tmp_path / "old" / "cache"
    big = bytearray(bytes(range(256)) * 4096 * 3)
    big[:6] = b"EDITED"  # written while the server was away, never uploaded
    with cloudfs_server(data) as srv:
        with cloudfs_mount(srv, token, tmp_path / "mnt", cache_dir, device="old-device") as m:
            assert (m.path / "docs" / "pending.txt").read_text() == "written while the server was away\n"
            m.sync()
            assert m.status()["pending_files"] == 0
            assert "Traceback" not in m.log()
        cache = Cache(cache_dir)
        try:
            assert cache.get_meta("format") == str(FORMAT)
        finally:
            cache.close()
        with cloudfs_mount(srv, token, tmp_path / "fresh", tmp_path / "fresh-cache", device="new-device") as fresh:
            docs = fresh.path / "docs"
            assert (docs / "pending.txt").read_text() == "written while the server was away\n"
            assert hashlib.sha256((docs / "big.bin").read_bytes()).digest() == hashlib.sha256(big).digest()
            assert (docs / "notes.txt").read_text() == "hello from the old release\n"
            assert stat.S_IMODE(os.stat(docs / "notes.txt").st_mode) == 0o600
            assert os.readlink(fresh.path / "link") == "docs/notes.txt"


def test_a_cache_from_a_newer_release_is_refused_not_guessed_at(tmp_path: Path) -> None:
    data, token = unpack_fixture(tmp_path / "old")
    cache_dir = tmp_path / "old" / "cache"
    cache = Cache(cache_dir)
    with cache.write() as txn:
        cache.set_meta(txn, "format", str(FORMAT + 1))
    cache.close()
    before = sorted(p.name for p in (cache_dir / "cache.lmdb").iterdir())
    with cloudfs_server(data) as srv:
        import subprocess

        from tests.harness import CLOUDFS
        (tmp_path / "mnt").mkdir()
        out = subprocess.run([*CLOUDFS, "mount", srv.url, str(tmp_path / "mnt"), "--cache", str(cache_dir),
                              "--foreground"], env={**os.environ, "CLOUDFS_TOKEN": token},
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert f"format {FORMAT + 1}" in out.stderr and "Traceback" not in out.stderr + out.stdout
    assert sorted(p.name for p in (cache_dir / "cache.lmdb").iterdir()) == before
    shutil.rmtree(tmp_path / "mnt", ignore_errors=True)
