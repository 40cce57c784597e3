"""A device whose cursor fell out of the retained journal (410) compares its whole
mirror with the server and repairs the drift, keeping its own pending changes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from cloudfs.backend.sync import shared
from cloudfs.backend.local.cache import ROOT_INO, Cache
from tests.harness import cloudfs_mount, cloudfs_server, wait_until


def listing(root: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in filenames:
            out[os.path.relpath(os.path.join(dirpath, f), root)] = Path(dirpath, f).read_bytes()
    return out


def test_expired_cursor_resyncs_without_losing_pending_work(tmp_path):
    with cloudfs_server(tmp_path / "srv", extra_args=["--journal-retain", "3", "--prune-interval", "0.2"]) as srv:
        token = srv.add_user("owner")
        with cloudfs_mount(srv, token, tmp_path / "a", tmp_path / "cache-a", device="dev-a") as a:
            (a.path / "keep.txt").write_text("old\n")
            (a.path / "gone.txt").write_text("to be deleted\n")
            (a.path / "dir").mkdir()
            (a.path / "dir" / "moved.txt").write_text("moves\n")
            a.sync()
            with cloudfs_mount(srv, token, tmp_path / "b", tmp_path / "cache-b", device="dev-b") as b:
                b.sync()
                assert listing(b.path) == listing(a.path)
            # b is away; a changes a lot, and the journal forgets most of it.
            (a.path / "keep.txt").write_text("new\n")
            (a.path / "gone.txt").unlink()
            os.rename(a.path / "dir" / "moved.txt", a.path / "moved.txt")
            shutil.rmtree(a.path / "dir")
            for i in range(10):
                (a.path / f"new{i}.txt").write_text(f"new {i}\n")
            a.sync()
            wait_until(lambda: "pruned" in srv.log(), timeout=10, what="journal pruned")
            expected = listing(a.path)

            with cloudfs_mount(srv, token, tmp_path / "b", tmp_path / "cache-b", device="dev-b") as b:
                # A change of b's own, made before the resync has happened.
                (b.path / "mine.txt").write_text("pending on b\n")
                b.sync()
                assert listing(b.path) == {**expected, "mine.txt": b"pending on b\n"}
                assert "comparing the whole tree" in b.log()
                a.sync()
                assert listing(a.path) == listing(b.path)


def test_sync_full_repairs_a_mirror_that_drifted(sync_server, tmp_path):
    """`cloudfs sync --full` compares the trees even when the journal looks fine: here
    b's mirror lost a file and kept one the server deleted (as a bug or a damaged
    cache would leave it)."""
    token = sync_server.add_user("drift")
    with cloudfs_mount(sync_server, token, tmp_path / "a", tmp_path / "cache-a", device="dev-a") as a:
        (a.path / "x.txt").write_text("x\n")
        (a.path / "y.txt").write_text("y\n")
        a.sync()
        with cloudfs_mount(sync_server, token, tmp_path / "b", tmp_path / "cache-b", device="dev-b") as b:
            b.sync()
        (a.path / "y.txt").unlink()
        a.sync()
        cursor = a.status()["cursor"]
        cache = Cache(tmp_path / "cache-b")
        try:
            with cache.write() as txn:
                x = cache.get(cache.lookup(ROOT_INO, "x.txt"))
                cache.unlink(txn, ROOT_INO, "x.txt")
                cache.drop(txn, x)
                # as if y's delete had been seen
                shared.save_cursors(cache, txn, {int(cache.get_meta("user_id")): cursor})
        finally:
            cache.close()
        with cloudfs_mount(sync_server, token, tmp_path / "b", tmp_path / "cache-b", device="dev-b") as b:
            assert sorted(os.listdir(b.path)) == ["y.txt"]
            done = b.cli("sync", str(b.path), "--full", "--timeout", "60")
            assert done.returncode == 0, done.stderr
            assert "reconciled the mirror" in b.log()
            assert listing(b.path) == listing(a.path) == {"x.txt": b"x\n"}
