"""Concurrent changes on two devices: the first commit wins the name, the other
device's bytes survive beside it, and both devices end up with both."""

from __future__ import annotations

import datetime
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.sync.conftest import (Devices, RestartableServer, a_behind_a_proxy, hold_the_change_feed, wait_for_cursor,
                                 wait_until_held)


def copy_name(name: str, device: str) -> str:
    stem, ext = os.path.splitext(name)
    return f"{stem} (conflicted copy, {device}, {datetime.date.today().isoformat()}){ext}"


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under root with its bytes (None for a directory)."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in filenames:
            out[os.path.relpath(os.path.join(dirpath, f), root)] = Path(dirpath, f).read_bytes()
    return out


def one_wins(name: str, by_device: dict[str, bytes]) -> list[dict[str, bytes]]:
    """Both devices retry by themselves once the server is back, so either may win:
    the acceptable end states, one per possible winner."""
    (da, ba), (db, bb) = by_device.items()
    return [{name: ba, copy_name(name, db): bb}, {name: bb, copy_name(name, da): ba}]


def settle(devices: Devices, first: str = "a") -> None:
    """Both devices push and pull until they agree: first `first`, then the other."""
    order = [devices.a, devices.b] if first == "a" else [devices.b, devices.a]
    for m in order + order:
        m.sync(timeout=60)


def offline_edit(restartable: RestartableServer, devices: Devices, on_a, on_b, first: str = "a") -> None:  # noqa: ANN001
    """Make both edits while the server is away, so both start from the same base."""
    restartable.stop()
    on_a(devices.a.path)
    on_b(devices.b.path)
    restartable.start()
    settle(devices, first)


def test_same_file_edited_on_both(restartable, offline_devices):
    d = offline_devices
    (d.a.path / "notes.txt").write_text("base\n")
    settle(d)
    offline_edit(restartable, d,
                 lambda root: (root / "notes.txt").write_text("edited on a\n"),
                 lambda root: (root / "notes.txt").write_text("edited on b, which came second\n"))
    outcomes = one_wins("notes.txt", {"dev-a": b"edited on a\n", "dev-b": b"edited on b, which came second\n"})
    assert snapshot(d.a.path) in outcomes
    assert snapshot(d.b.path) == snapshot(d.a.path)
    loser = d.b if copy_name("notes.txt", "dev-b") in snapshot(d.a.path) else d.a
    winner = d.a if loser is d.b else d.b
    assert (loser.status()["conflicts"], winner.status()["conflicts"]) == (1, 0)


@pytest.mark.parametrize("first", ["a", "b"])
def test_edit_survives_a_delete(restartable, offline_devices, first):
    d = offline_devices
    (d.a.path / "doc.md").write_text("v1\n")
    (d.a.path / "other.md").write_text("untouched\n")
    settle(d)
    offline_edit(restartable, d,
                 lambda root: (root / "doc.md").unlink(),
                 lambda root: (root / "doc.md").write_text("v2 from b\n"), first=first)
    expected = {"doc.md": b"v2 from b\n", "other.md": b"untouched\n"}
    assert snapshot(d.a.path) == expected
    assert snapshot(d.b.path) == expected


def test_create_on_both_with_one_name(restartable, offline_devices):
    d = offline_devices
    offline_edit(restartable, d,
                 lambda root: (root / "todo.txt").write_text("a's list\n"),
                 lambda root: (root / "todo.txt").write_text("b's list\n"))
    assert snapshot(d.a.path) in one_wins("todo.txt", {"dev-a": b"a's list\n", "dev-b": b"b's list\n"})
    assert snapshot(d.b.path) == snapshot(d.a.path)


def test_new_directories_of_one_name_merge(restartable, offline_devices):
    d = offline_devices

    def make(who: str):  # noqa: ANN202
        def run(root: Path) -> None:
            (root / "photos").mkdir()
            (root / "photos" / f"from-{who}.jpg").write_bytes(who.encode() * 1000)
        return run

    offline_edit(restartable, d, make("a"), make("b"))
    expected = {"photos": None, "photos/from-a.jpg": b"a" * 1000, "photos/from-b.jpg": b"b" * 1000}
    assert snapshot(d.a.path) == expected
    assert snapshot(d.b.path) == expected


@pytest.mark.parametrize("first", ["a", "b"])
def test_directory_deleted_while_written_elsewhere(restartable, offline_devices, first):
    d = offline_devices
    (d.a.path / "proj" / "src").mkdir(parents=True)
    (d.a.path / "proj" / "src" / "main.c").write_text("int main;\n")
    (d.a.path / "proj" / "README").write_text("readme\n")
    settle(d)

    def on_b(root: Path) -> None:
        (root / "proj" / "src" / "main.c").write_text("int main(void) { return 0; }\n")
        (root / "proj" / "NEW").write_text("new on b\n")

    offline_edit(restartable, d, lambda root: shutil.rmtree(root / "proj"), on_b, first=first)
    expected = {"proj": None, "proj/src": None, "proj/src/main.c": b"int main(void) { return 0; }\n",
                "proj/NEW": b"new on b\n"}
    assert snapshot(d.b.path) == expected
    assert snapshot(d.a.path) == expected


def test_directory_moved_into_a_directory_deleted_elsewhere(sync_server, tmp_path):
    """a moves photos/ into old/ while b deletes old/, and b's delete lands first: a's
    follower sees the delete with the move still queued. Where photos/ lives is a's
    edit, so photos/ and everything in it survive, in old/ again; old/'s own files go."""
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        (a.path / "old").mkdir()
        (a.path / "old" / "junk.txt").write_text("junk\n")
        (a.path / "photos" / "2026").mkdir(parents=True)
        (a.path / "photos" / "2026" / "cat.jpg").write_bytes(b"cat\n")
        (a.path / "photos" / "dog.jpg").write_bytes(b"dog\n")
        settle(d)
        proxy.hang()
        (a.path / "photos").rename(a.path / "old" / "photos")
        shutil.rmtree(b.path / "old")
        b.sync(timeout=60)
        proxy.resume()
        settle(d)
        expected = {"old": None, "old/photos": None, "old/photos/2026": None,
                    "old/photos/2026/cat.jpg": b"cat\n", "old/photos/dog.jpg": b"dog\n"}
        assert snapshot(a.path) == expected
        assert snapshot(b.path) == expected


def test_directories_moved_into_each_other_on_two_devices_end_as_the_server_took_them(sync_server, tmp_path):
    """a moves e/ into d/ while b moves d/ into e/, and b's move lands first: a's move
    would put e/ below itself, and the server refuses it. a's follower must not apply
    b's move while e/ is inside d/ here (each directory would be inside the other, both
    out of the tree: everything in them was gone from a's view), and a's e/ goes back
    where the server has it, so both devices end with d/ inside e/ (soak, seed 420051:
    the refused move was dropped with an ERROR, and a never saw either again)."""
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        (a.path / "d").mkdir()
        (a.path / "d" / "in-d.txt").write_text("d\n")
        (a.path / "e").mkdir()
        (a.path / "e" / "in-e.txt").write_text("e\n")
        settle(d)
        proxy.fail(rb"^POST /nodes/\d+/move ")
        (a.path / "e").rename(a.path / "d" / "y")
        (b.path / "d").rename(b.path / "e" / "l")
        b.sync(timeout=60)
        wait_for_cursor(a, b.status()["cursor"])  # a's follower has had b's move
        proxy.release()
        settle(d)
        expected = {"e": None, "e/in-e.txt": b"e\n", "e/l": None, "e/l/in-d.txt": b"d\n"}
        assert snapshot(a.path) == expected
        assert snapshot(b.path) == expected
        assert " ERROR " not in a.log(), a.log()[-3000:]


def test_directory_moved_out_of_a_directory_deleted_elsewhere(sync_server, tmp_path):
    """The other way round: a moves old/photos/ out to photos/ while b deletes old/, and
    b's delete lands first. The server deleted photos/ and its files with old/; a's
    move finds them gone and must create all of them again, not just the directory."""
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        (a.path / "old" / "photos" / "2026").mkdir(parents=True)
        (a.path / "old" / "junk.txt").write_text("junk\n")
        (a.path / "old" / "photos" / "2026" / "cat.jpg").write_bytes(b"cat\n")
        (a.path / "old" / "photos" / "dog.jpg").write_bytes(b"dog\n")
        settle(d)
        proxy.hang()
        (a.path / "old" / "photos").rename(a.path / "photos")
        shutil.rmtree(b.path / "old")
        b.sync(timeout=60)
        proxy.resume()
        settle(d)
        expected = {"photos": None, "photos/2026": None, "photos/2026/cat.jpg": b"cat\n",
                    "photos/dog.jpg": b"dog\n"}
        assert snapshot(b.path) == expected
        assert snapshot(a.path) == expected


@pytest.mark.parametrize("how", ["append", "truncate"])
def test_a_file_written_while_deleted_elsewhere_comes_back(devices, how):
    """b has x.txt open (read only: the delete is not held back for it) when a's delete
    arrives; then b writes to or truncates the same file through the handle it holds
    (as a program does through a name the kernel still remembers). Edits survive
    deletes: x.txt is back on both with b's bytes."""
    d = devices
    (d.a.path / "x.txt").write_text("v1\n")
    settle(d)
    with open(d.b.path / "x.txt", "rb") as held:
        (d.a.path / "x.txt").unlink()
        d.a.sync(timeout=60)
        d.b.sync(timeout=60)
        assert "x.txt" not in os.listdir(d.b.path)  # the delete arrived while the file was open
        if how == "append":
            with open(f"/proc/self/fd/{held.fileno()}", "a") as again:
                again.write("b's addition\n")
        else:
            os.truncate(f"/proc/self/fd/{held.fileno()}", 6)
    settle(d)
    expected = b"v1\nb's addition\n" if how == "append" else b"v1\n\0\0\0"
    assert snapshot(d.b.path) == {"x.txt": expected}
    assert snapshot(d.a.path) == {"x.txt": expected}


@pytest.mark.parametrize("write", [False, True])
def test_a_file_open_for_writing_follows_a_delete_unless_written(devices, write):
    """b holds d/e/x.txt open for writing when a removes d: unwritten, it is gone on
    both once b closes it (an open handle is not an edit); written through the handle
    after the delete arrived, it comes back with b's bytes (in d/e again)."""
    d = devices
    (d.a.path / "d" / "e").mkdir(parents=True)
    (d.a.path / "d" / "e" / "x.txt").write_text("v1\n")
    settle(d)
    fd = os.open(d.b.path / "d" / "e" / "x.txt", os.O_RDWR)
    try:
        assert os.pread(fd, 100, 0) == b"v1\n"
        shutil.rmtree(d.a.path / "d")
        d.a.sync(timeout=60)
        d.b.sync(timeout=60)
        assert not (d.b.path / "d").exists()  # the delete arrived while the file was open
        if write:
            os.pwrite(fd, b"b's\n", 3)
    finally:
        os.close(fd)
    settle(d)
    expected = {"d": None, "d/e": None, "d/e/x.txt": b"v1\nb's\n"} if write else {}
    assert snapshot(d.b.path) == expected
    assert snapshot(d.a.path) == expected


def test_a_file_written_through_a_handle_to_a_version_replaced_elsewhere(devices):
    """b has x.txt open (read only: a new version is not held back for it) when a's new
    version arrives; then b appends through the handle it holds, to the version it
    read. Both edits survive: a's under the name, b's as a conflicted copy."""
    d = devices
    (d.a.path / "x.txt").write_text("v1\n")
    settle(d)
    with open(d.b.path / "x.txt", "rb") as held:
        (d.a.path / "x.txt").write_text("a's v2\n")
        d.a.sync(timeout=60)
        d.b.sync(timeout=60)
        assert (d.b.path / "x.txt").read_text() == "a's v2\n"  # the new version arrived while the old was open
        with open(f"/proc/self/fd/{held.fileno()}", "a") as again:
            again.write("b's addition\n")
    settle(d)
    expected = {"x.txt": b"a's v2\n", copy_name("x.txt", "dev-b"): b"v1\nb's addition\n"}
    assert snapshot(d.b.path) == expected
    assert snapshot(d.a.path) == expected


@pytest.mark.parametrize("what", ["tree", "files"])
def test_a_delete_below_a_directory_whose_move_out_is_queued_waits_for_the_move(sync_server, tmp_path, what):
    """a moves old/photos/ out to photos/; its move is held back (only the move: a's
    change feed flows) while b removes old/ with everything in it ("tree", as rm -r
    does: a delete per file, then the directories) or only the files in photos/
    ("files"). b's deletes reach a's follower before a's move reaches the server; the
    files are then below a directory whose move is queued, and their fate is the
    move's: with the whole tree gone on the server, the move brings photos/ back with
    everything in it; with only the files deleted, photos/ arrives where a put it,
    without them (as when the move goes first)."""
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        (a.path / "old" / "photos" / "2026").mkdir(parents=True)
        (a.path / "old" / "junk.txt").write_text("junk\n")
        (a.path / "old" / "photos" / "2026" / "cat.jpg").write_bytes(b"cat\n")
        (a.path / "old" / "photos" / "dog.jpg").write_bytes(b"dog\n")
        settle(d)
        proxy.hold(rb"^POST /nodes/\d+/move ")
        (a.path / "old" / "photos").rename(a.path / "photos")
        if what == "tree":
            shutil.rmtree(b.path / "old")
        else:
            (b.path / "old" / "photos" / "2026" / "cat.jpg").unlink()
            (b.path / "old" / "photos" / "dog.jpg").unlink()
        b.sync(timeout=60)
        wait_for_cursor(a, b.status()["cursor"])
        assert proxy.holding, "a's move should still be held back"
        if what == "tree":  # the deletes arrived first, and took nothing a's move needs
            assert (a.path / "photos" / "dog.jpg").read_bytes() == b"dog\n"
            assert (a.path / "photos" / "2026" / "cat.jpg").read_bytes() == b"cat\n"
        proxy.release()
        settle(d)
        if what == "tree":
            expected = {"photos": None, "photos/2026": None, "photos/2026/cat.jpg": b"cat\n",
                        "photos/dog.jpg": b"dog\n"}
        else:
            expected = {"old": None, "old/junk.txt": b"junk\n", "photos": None, "photos/2026": None}
        assert snapshot(b.path) == expected
        assert snapshot(a.path) == expected


def wait_until_pushed(mount, timeout: float = 30) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while mount.status()["pending_ops"]:
        assert time.monotonic() < deadline, f"{mount.device} still has changes queued after {timeout}s"
        time.sleep(0.05)


@pytest.mark.parametrize("change", ["move", "chmod"])
def test_an_older_change_from_elsewhere_does_not_undo_ours(sync_server, tmp_path, change):
    """b changes photos/ (moves it to pics/, or chmods it), then a changes it otherwise;
    a's follower is held back until its own change is on the server, so it reads b's
    change (older) and its own (newer) in one batch. b's must not undo a's on a: the
    server has a's, and so must both devices (found by the soak, seed 10002: each
    device ended with the other's move of one directory)."""
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        (a.path / "photos").mkdir()
        (a.path / "photos" / "cat.jpg").write_bytes(b"cat\n")
        settle(d)
        hold_the_change_feed(proxy)
        if change == "move":
            (b.path / "photos").rename(b.path / "pics")
        else:
            (b.path / "photos").chmod(0o700)
        b.sync(timeout=60)
        if change == "move":
            (a.path / "photos").rename(a.path / "album")
        else:
            (a.path / "photos").chmod(0o750)
        wait_until_pushed(a)
        assert proxy.holding, "a's change feed should still be held back"
        proxy.release()
        settle(d, first="b")
        if change == "move":
            expected = {"album": None, "album/cat.jpg": b"cat\n"}
            assert snapshot(a.path) == expected
            assert snapshot(b.path) == expected
        else:
            assert os.stat(a.path / "photos").st_mode & 0o777 == 0o750
            assert os.stat(b.path / "photos").st_mode & 0o777 == 0o750


def test_our_own_older_entries_do_not_undo_our_later_change(sync_server, tmp_path):
    """a saves x.txt twice and renames it; all three are on the server before a's
    follower reads them back (held by the proxy). None of them may be applied over the
    later ones: x.txt keeps its inode (it is not replaced by its own first version for a
    moment) and stays where it was moved."""
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        (a.path / "x.txt").write_text("v0\n")
        settle(d)
        hold_the_change_feed(proxy)
        (a.path / "x.txt").write_text("v1\n")
        wait_until_pushed(a)
        (a.path / "x.txt").write_text("v2\n")
        wait_until_pushed(a)
        (a.path / "x.txt").rename(a.path / "y.txt")
        wait_until_pushed(a)
        ino = os.stat(a.path / "y.txt").st_ino
        proxy.release()
        settle(d)
        assert snapshot(a.path) == {"y.txt": b"v2\n"}
        assert snapshot(b.path) == {"y.txt": b"v2\n"}
        assert os.stat(a.path / "y.txt").st_ino == ino


@pytest.mark.parametrize("new", [False, True])
def test_a_file_moved_to_another_directory_while_its_upload_is_under_way(sync_server, tmp_path, new):
    """a saves y (an edit, or a new file) and moves it to e/x.txt while the commit is in
    flight; root has an x.txt of its own. The move that follows the commit goes to e/,
    where the file is now, not to root, whose x.txt would make it a conflicted copy
    (found by the soak, seed 30018)."""
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        (a.path / "e").mkdir()
        (a.path / "x.txt").write_text("root's x\n")
        if not new:
            (a.path / "y").write_text("v1\n")
        settle(d)
        proxy.hold(rb"^POST /files ")
        (a.path / "y").write_text("v2\n")
        wait_until_held(proxy)
        (a.path / "y").rename(a.path / "e" / "x.txt")
        proxy.release()
        settle(d)
        expected = {"e": None, "e/x.txt": b"v2\n", "x.txt": b"root's x\n"}
        assert snapshot(a.path) == expected
        assert snapshot(b.path) == expected
