"""A directory one device removes stays removed, even when what was in it left it first
by a change the server never saw: a file moved out of it (or made to leave it by the
removal of its own name while it had another, a hard link) and then removed too. Both
changes are queued before the syncer gets to them, so the move is skipped (the file is
gone here) and the file's delete comes after the directory's in the outbox: the server
still has the file in the directory when the directory's delete arrives, and answers
not_empty. That must not bring the directory back (found by the two-device model test,
tests/sync/test_model_two.py: `rm -r` of a directory holding both names of a file left
it and its subdirectory on both devices, empty). A not_empty caused by another device's
file still brings the directory back, with the file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import httpx
import pytest

from tests.harness import MountProcess
from tests.proxy import Proxy
from tests.sync.conftest import a_behind_a_proxy, wait_for_cursor, wait_until_held
from tests.sync.test_conflicts import settle, snapshot


def moved_out_then_removed(root: Path) -> None:
    (root / "d" / "e" / "x.txt").rename(root / "d" / "x.txt")
    os.rmdir(root / "d" / "e")
    (root / "d" / "x.txt").unlink()
    os.rmdir(root / "d")


def own_name_removed_first(root: Path) -> None:
    """As the model's rm -r (deepest first): x.txt's own name goes while z.md is another
    name of it, so the file takes z.md's place in d/ (links.promote), out of d/e."""
    (root / "d" / "e" / "x.txt").unlink()
    os.rmdir(root / "d" / "e")
    (root / "d" / "z.md").unlink()
    os.rmdir(root / "d")


CASES: dict[str, tuple[bool, Callable[[Path], None]]] = {
    "a file moved out, then removed": (False, moved_out_then_removed),
    "a hard link's own name removed first": (True, own_name_removed_first),
}


def make_tree(root: Path, *, link: bool) -> dict[str, bytes | None]:
    """d/e/x.txt, and with `link` d/z.md as another name of it; returns the snapshot."""
    (root / "d" / "e").mkdir(parents=True)
    (root / "d" / "e" / "x.txt").write_bytes(b"x\n")
    if link:
        os.link(root / "d" / "e" / "x.txt", root / "d" / "z.md")
    (root / "keep.txt").write_bytes(b"keep\n")
    return {"keep.txt": b"keep\n", "d": None, "d/e": None, "d/e/x.txt": b"x\n",
            **({"d/z.md": b"x\n"} if link else {})}


def hold_the_syncer(mount: MountProcess, proxy: Proxy) -> None:
    """Keep `mount`'s syncer busy until `proxy.release()`: a chmod of keep.txt, whose
    PATCH the proxy holds; the outbox entries made meanwhile wait behind it."""
    proxy.hold(rb"^PATCH /nodes/")
    (mount.path / "keep.txt").chmod(0o600)
    wait_until_held(proxy, f"{mount.device}'s chmod")


@pytest.mark.parametrize("case", list(CASES))
def test_a_directory_removed_on_one_device_stays_removed(sync_server, tmp_path, case):
    """a's syncer is kept busy (an attribute change of another file held at the proxy)
    while the changes are made, so all of them are queued before it gets to them."""
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        link, remove = CASES[case]
        tree = make_tree(a.path, link=link)
        settle(d)
        assert snapshot(b.path) == tree
        hold_the_syncer(a, proxy)
        remove(a.path)
        proxy.release()
        settle(d)
        kept = {"keep.txt": b"keep\n"}
        assert (snapshot(a.path), snapshot(b.path)) == (kept, kept), a.log()[-4000:]
        for m in (a, b):
            assert "not deleting" not in m.log(), m.log()[-4000:]
            assert " ERROR " not in m.log() and "Traceback" not in m.log(), m.log()[-3000:]


def test_a_directory_another_device_put_a_file_in_comes_back(sync_server, tmp_path):
    """The same removal on a, but b puts a file of its own into d/e first: the server's
    not_empty is then about b's file, and d/e comes back on a with it (d too)."""
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        make_tree(a.path, link=True)
        settle(d)
        hold_the_syncer(a, proxy)
        own_name_removed_first(a.path)
        (b.path / "d" / "e" / "new.txt").write_bytes(b"b's\n")
        b.sync(timeout=60)
        proxy.release()
        settle(d)
        expected = {"keep.txt": b"keep\n", "d": None, "d/e": None, "d/e/new.txt": b"b's\n"}
        assert (snapshot(a.path), snapshot(b.path)) == (expected, expected), a.log()[-4000:]


def test_a_directory_moved_here_and_removed_elsewhere_comes_back_with_a_changed_file(sync_server, tmp_path):
    """a sets an attribute of e/d/y and then moves e/d to d/l, with its syncer busy; b
    removes e/d meanwhile. a's follower leaves e/d's delete to the queued move, and
    keeps y (local work). When a's syncer gets to y's attribute change, y and its
    directory are gone from the server: the move must go first and create the
    directory again at d/l, or the attribute change waits for it for ever (found by
    the soak, seed 150062: `cloudfs sync` never returned)."""
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        (a.path / "keep.txt").write_bytes(b"keep\n")
        (a.path / "e" / "d").mkdir(parents=True)
        (a.path / "e" / "d" / "y").write_bytes(b"y\n")
        (a.path / "d").mkdir()
        settle(d)
        hold_the_syncer(a, proxy)
        os.setxattr(a.path / "e" / "d" / "y", "user.tag", b"kept")
        (a.path / "e" / "d").rename(a.path / "d" / "l")
        shutil.rmtree(b.path / "e" / "d")
        b.sync(timeout=60)
        proxy.release()
        settle(d)
        expected = {"keep.txt": b"keep\n", "e": None, "d": None, "d/l": None, "d/l/y": b"y\n"}
        assert (snapshot(a.path), snapshot(b.path)) == (expected, expected), a.log()[-4000:]
        assert os.getxattr(b.path / "d" / "l" / "y", "user.tag") == b"kept"


def test_nothing_is_made_in_a_directory_removed_elsewhere_while_held_open_here(devices):
    """b removes d while a program on a holds d open: a's follower removes d here too, but
    the kernel still has it, and a create through the open descriptor reached the mount.
    The new file sat in a directory no retry could bring back, never uploaded and seen
    nowhere (soak, seed 360060). As on a local disk it is refused (ENOENT)."""
    a, b = devices.a, devices.b
    (a.path / "d").mkdir()
    a.sync(timeout=60)
    b.sync(timeout=60)
    fd = os.open(a.path / "d", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rmdir(b.path / "d")
        b.sync(timeout=60)
        wait_for_cursor(a, b.status()["cursor"])
        with pytest.raises(FileNotFoundError):
            os.close(os.open("x.txt", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
        with pytest.raises(FileNotFoundError):
            os.mkdir("sub", dir_fd=fd)
    finally:
        os.close(fd)
    for m in (a, b):
        m.sync(timeout=60)
    assert snapshot(a.path) == snapshot(b.path) == {}


def test_a_directory_removed_and_made_again_here_stays_a_new_one(sync_server, tmp_path):
    """a removes d/e and makes a new d/e, with its syncer busy; b sets an xattr on the
    old d/e meanwhile, and a's follower sees that change at the name the new d/e has.
    The old one is being deleted here: it must not be taken for the new one (as two new
    directories of one name are merged). Merged, the new d/e was bound to the old node,
    went with a's delete of it on the server, and stayed on a alone (found by the soak,
    seed 520025)."""
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        (a.path / "keep.txt").write_bytes(b"keep\n")
        (a.path / "d" / "e").mkdir(parents=True)
        settle(d)
        hold_the_syncer(a, proxy)
        os.rmdir(a.path / "d" / "e")
        (a.path / "d" / "e").mkdir()
        os.setxattr(b.path / "d" / "e", "user.k0", b"on the old one")
        b.sync(timeout=60)
        wait_for_cursor(a, b.status()["cursor"])
        proxy.release()
        settle(d)
        expected = {"keep.txt": b"keep\n", "d": None, "d/e": None}
        assert (snapshot(a.path), snapshot(b.path)) == (expected, expected), a.log()[-4000:]
        for m in (a, b):
            assert os.listxattr(m.path / "d" / "e") == [], m.device


def test_a_file_kept_open_here_follows_its_move_into_a_directory_removed_here(sync_server, tmp_path):
    """a removes the empty d (its delete waits) while a program holds e/x.txt open; b
    moves e/x.txt into d and removes e. a's follower holds the move back (d is going
    here), then applies e's delete: x.txt, open, stays as an orphan. The server refuses
    a's delete of d (b's file is in it) and a pulls d back, and x.txt with it: the
    orphan, unlinked and unwritten, is no local work to wait for. Taken for x.txt's
    inode here, its place "differed" from the server's, and x.txt was held back for
    good: a had d without it (found by the soak, seed 570330)."""
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        (a.path / "keep.txt").write_bytes(b"keep\n")
        (a.path / "d").mkdir()
        (a.path / "e").mkdir()
        (a.path / "e" / "x.txt").write_bytes(b"x\n")
        settle(d)
        fd = os.open(a.path / "e" / "x.txt", os.O_RDONLY)
        try:
            hold_the_syncer(a, proxy)
            os.rmdir(a.path / "d")
            (b.path / "e" / "x.txt").rename(b.path / "d" / "x.txt")
            os.rmdir(b.path / "e")
            b.sync(timeout=60)
            wait_for_cursor(a, b.status()["cursor"])
            proxy.release()
            settle(d)
            expected = {"keep.txt": b"keep\n", "d": None, "d/x.txt": b"x\n"}
            assert (snapshot(a.path), snapshot(b.path)) == (expected, expected), a.log()[-4000:]
        finally:
            os.close(fd)


def test_what_a_kept_directory_loses_is_gone_from_the_kernel_too(sync_server, tmp_path):
    """d is removed elsewhere while a has an edit queued in d/e/x.txt: a's follower keeps d and d/e
    for the edit and drops d/x.txt. The kernel had d/x.txt looked up (entries live 300 s,
    as the mount invalidates what changes), and nothing told it: a path lookup still found
    the dropped file, and a truncate through it brought its old bytes back as an edit of
    a's (the shared-folder model test, seed 110: another account moved the folder's
    directory out of it)."""
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        (a.path / "keep.txt").write_bytes(b"keep\n")
        (a.path / "d" / "e").mkdir(parents=True)
        (a.path / "d" / "e" / "x.txt").write_bytes(b"x\n")
        (a.path / "d" / "x.txt").write_bytes(b"dropped\n")
        settle(d)
        assert (a.path / "d" / "x.txt").read_bytes() == b"dropped\n"  # the kernel has the entry
        hold_the_syncer(a, proxy)
        with open(a.path / "d" / "e" / "x.txt", "ab") as f:
            f.write(b"a's edit\n")
        with httpx.Client(base_url=sync_server.url, headers={"Authorization": f"Bearer {b.token}"}) as api:
            d_id = api.get("/resolve", params={"path": "/d"}).json()["node"]["id"]
            # In one request, as the web page removes a folder: one journal entry for d and all in it.
            api.delete(f"/nodes/{d_id}", params={"recursive": "true"}).raise_for_status()
        b.sync(timeout=60)
        wait_for_cursor(a, b.status()["cursor"])
        assert not (a.path / "d" / "x.txt").exists()
        proxy.release()
        settle(d)
        expected = {"keep.txt": b"keep\n", "d": None, "d/e": None, "d/e/x.txt": b"x\na's edit\n"}
        assert (snapshot(a.path), snapshot(b.path)) == (expected, expected), a.log()[-4000:]
