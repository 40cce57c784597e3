"""A request the server carried out but whose answer never came back (the connection
broke, or the mount was killed, at that moment) is sent again; the retry must see its
own first attempt for what it is, not another device's work: no conflicted copy, no
second node, and the other device sees exactly the change once."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Callable

import httpx
import pytest

from cloudfs.backend.sync.follower import SETTLE_EVERY_S
from tests.model import snapshot
from tests.sync.conftest import (a_behind_a_proxy, a_killable_behind_a_proxy, wait_for_answers, wait_for_cursor,
                                 wait_until_held, wait_until_lost)

A_FILE_CREATE = rb"^POST /files |^GET /nodes/\d+/(deleted|created)\?"
"""A file's create, and the questions of its retries whether an earlier try landed
(uploader._landed_before): a retry that finds its first try sends no POST, so a test
that refuses the retries for a while refuses those too."""


def make_symlink(root: Path) -> None:
    os.symlink("../somewhere/else", root / "l")


def make_link(root: Path) -> None:
    os.link(root / "base.txt", root / "d" / "hard.txt")


def make_dir(root: Path) -> None:
    (root / "new").mkdir()


def make_file(root: Path) -> None:
    (root / "new.txt").write_text("new\n")


def edit_file(root: Path) -> None:
    (root / "base.txt").write_text("edited\n")


def move_file(root: Path) -> None:
    (root / "base.txt").rename(root / "d" / "moved.txt")


def delete_file(root: Path) -> None:
    (root / "base.txt").unlink()


def chmod_file(root: Path) -> None:
    (root / "base.txt").chmod(0o600)


CASES: dict[str, tuple[bytes, Callable[[Path], None]]] = {
    "symlink": (rb"^POST /symlinks ", make_symlink),
    "hard link": (rb"^POST /links ", make_link),
    "mkdir": (rb"^POST /dirs ", make_dir),
    "new file": (rb"^POST /files ", make_file),
    "edit": (rb"^POST /files ", edit_file),
    "move": (rb"^POST /nodes/\d+/move ", move_file),
    "delete": (rb"^DELETE /nodes/", delete_file),
    "chmod": (rb"^PATCH /nodes/", chmod_file),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_request_whose_answer_was_lost_is_retried_as_itself(sync_server, tmp_path, case):
    request, change = CASES[case]
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        (a.path / "d").mkdir()
        (a.path / "base.txt").write_text("base\n")
        for m in (a, b):
            m.sync(timeout=60)
        proxy.lose_answers(request)
        change(a.path)
        expected = snapshot(a.path)
        for m in (a, b, a, b):
            m.sync(timeout=60)
        assert proxy.lost == 1, "the answer should have been lost once"
        assert snapshot(a.path) == expected
        assert snapshot(b.path) == expected
        assert a.status()["conflicts"] == 0
        if case == "chmod":
            assert os.stat(b.path / "base.txt").st_mode & 0o777 == 0o600
        if case == "hard link":
            assert os.stat(b.path / "d" / "hard.txt").st_ino == os.stat(b.path / "base.txt").st_ino
        for m in (a, b):
            assert "Traceback" not in m.log() and " ERROR " not in m.log(), m.log()[-3000:]


@pytest.mark.parametrize("new", [False, True])
def test_a_commit_whose_answer_was_lost_is_built_on_by_the_next(sync_server, tmp_path, new):
    """a's commit of x.txt lands but its answer is lost, and the check whether it landed
    is refused (503) too; a then writes x.txt again. The next commit meets
    a's own lost one on the server (a newer revision, or a file of that name): it is
    built on, not turned into a conflicted copy of a's own older bytes (found by the
    soak, seed 40044: a server that hung, then stopped)."""
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        if not new:
            (a.path / "x.txt").write_text("v1\n")
            for m in (a, b):
                m.sync(timeout=60)
        proxy.lose_answers(rb"^POST /files ")
        proxy.fail(rb"^GET /files/")
        (a.path / "x.txt").write_text("v2, whose answer is lost\n")
        wait_until_lost(proxy, then_refused=True)
        (a.path / "x.txt").write_text("v3\n")
        time.sleep(0.5)  # the upload is tried again with v3 (and refused as stale) meanwhile
        proxy.release()
        for m in (a, b, a, b):
            m.sync(timeout=60)
        assert snapshot(a.path) == {"x.txt": b"v3\n"}
        assert snapshot(b.path) == {"x.txt": b"v3\n"}
        assert a.status()["conflicts"] == 0


def test_a_commit_whose_answer_was_lost_and_that_another_device_overwrote_stays_overwritten(sync_server, tmp_path):
    """a's commit of v2 lands but a never hears so (its answer lost, the check refused);
    b sees v2 and overwrites it with v3. a's retry meets v3: its own v2 is in the
    history, so it landed, and b's v3 stands; v2 must not come back as a conflicted
    copy (found by the soak, seed 70117: a mount killed mid-upload)."""
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        (a.path / "x.txt").write_text("v1\n")
        for m in (a, b):
            m.sync(timeout=60)
        proxy.lose_answers(rb"^POST /files ")
        proxy.fail(rb"^GET /files/")
        (a.path / "x.txt").write_text("v2 from a\n")
        wait_until_lost(proxy, then_refused=True)
        b.sync(timeout=60)
        assert (b.path / "x.txt").read_text() == "v2 from a\n"
        (b.path / "x.txt").write_text("v3 from b\n")
        b.sync(timeout=60)
        proxy.release()
        for m in (a, b, a, b):
            m.sync(timeout=60)
        assert snapshot(a.path) == {"x.txt": b"v3 from b\n"}
        assert snapshot(b.path) == {"x.txt": b"v3 from b\n"}
        assert a.status()["conflicts"] == 0
        assert os.stat(a.path / "x.txt").st_mtime_ns == os.stat(b.path / "x.txt").st_mtime_ns  # b's, untouched
        with httpx.Client(base_url=sync_server.url, headers={"Authorization": f"Bearer {a.token}"}) as api:
            node = api.get("/resolve", params={"path": "/x.txt"}).json()["node"]
            revs = [v["device"] for v in api.get(f"/files/{node['id']}/versions").json()["versions"]]
            assert sorted(revs) == ["dev-a", "dev-a", "dev-b"]  # v1, v2 once, v3


def test_a_file_replaced_here_is_not_taken_for_our_own_lost_create(sync_server, tmp_path):
    """x.txt (node N, made here) is replaced by rename(2) of a new file over it, and the
    delete of N waits (held by the proxy) while the new file's create meets N under the
    name. N is ours, rev 1, unknown to the cache: what a create whose answer was lost
    looks like, but its delete is queued here, so it is the file we replaced, not one we
    lost. Taken for ours, the new bytes became N's rev 2, the delete of N was then
    refused as stale and x.txt ended as a conflicted copy of itself (found by the device
    crash run, kill 44 of seed 43: the write-fsync-rename loop's file was gone). The
    syncer is kept busy (a chmod held by the proxy) until the new file has its final
    name, as a loaded machine did."""
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        (a.path / "x.txt").write_text("v1\n")
        (a.path / "y").write_text("y\n")
        a.sync(timeout=60)
        proxy.hold(rb"^PATCH /nodes/")
        (a.path / "y").chmod(0o600)
        wait_until_held(proxy)
        (a.path / ".x.txt.tmp").write_text("v2\n")
        os.rename(a.path / ".x.txt.tmp", a.path / "x.txt")
        time.sleep(0.5)  # the delete of N is due
        proxy.release()
        proxy.hold(rb"^DELETE /nodes/")
        wait_until_held(proxy)
        time.sleep(2)  # the new file's create meets N meanwhile
        proxy.release()
        for m in (a, b, a, b):
            m.sync(timeout=60)
        assert snapshot(a.path) == {"x.txt": b"v2\n", "y": b"y\n"}
        assert snapshot(b.path) == {"x.txt": b"v2\n", "y": b"y\n"}
        assert a.status()["conflicts"] == 0
        assert "not deleting node" not in a.log(), a.log()[-3000:]
        with httpx.Client(base_url=sync_server.url, headers={"Authorization": f"Bearer {a.token}"}) as api:
            node = api.get("/resolve", params={"path": "/x.txt"}).json()["node"]
            versions = api.get(f"/files/{node['id']}/versions").json()["versions"]
            assert len(versions) == 1, f"x.txt is a new file, not a version of the one it replaced: {versions}"


def test_a_lost_create_overwritten_elsewhere_is_not_brought_back(sync_server, tmp_path):
    """a's create of x.txt lands, its answer is lost, and the client's retries of that
    same request are refused (503) for a while. b sees x.txt and overwrites it. a's
    follower must neither take b's bytes over a's file while a's retry is pending nor
    keep a's bytes as a conflicted copy: b saw them and overwrote them, and they are in
    the history. When the retry meets the node, its first version is a's own: a's file
    is bound to it and b's version is pulled over it. (Found twice by the soak: seed
    100182, a 503 storm with lost answers, took a's version back over b's; seed 130006,
    a mount killed after its create landed, kept a conflicted copy of what b had
    overwritten.)"""
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        proxy.lose_answers(A_FILE_CREATE, 1, then_fail=True)
        (a.path / "x.txt").write_text("a's\n")
        wait_until_lost(proxy)
        b.sync(timeout=60)
        (b.path / "x.txt").write_text("b's, over a's\n")
        b.sync(timeout=60)
        wait_for_cursor(a, b.status()["cursor"])  # a's follower has had b's change
        assert snapshot(a.path) == {"x.txt": b"a's\n"}, "a's file waits for its retry, alone"
        proxy.release()
        for m in (a, b, a, b):
            m.sync(timeout=60)
        expected = {"x.txt": b"b's, over a's\n"}
        assert snapshot(a.path) == expected
        assert snapshot(b.path) == expected
        assert a.status()["conflicts"] == 0


@pytest.mark.parametrize("removed", ["file", "dir", "file, its name taken again"])
@pytest.mark.parametrize("lost", ["commit", "create"])
def test_a_lost_change_deleted_elsewhere_stays_deleted(sync_server, tmp_path, lost: str, removed: str):
    """a's commit of d/x.txt (a new version of it, `commit`; its very first, `create`)
    lands, its answer is lost and the retries are refused for a while. b sees the bytes
    and removes them (`rm d/x.txt`, or `rm -r d`). a's follower must hold the delete for
    the pending retry, and the retry must find its own first try: in the node's history,
    or, for a create, whose name is free again, among the deleted nodes of that name. b
    saw those bytes and removed them, so nothing comes back (soak, seed 160082: a device
    offline 14 ms after a write, the directory removed by another device; seed 200011: a
    mount killed 150 ms after a burst of creates, one of them deleted elsewhere). With
    the name taken again by b's new file, a's follower meets that file where a's own
    still waits for its answer: it waits too, rather than keep a's as a conflicted copy
    of the bytes b removed (seed 350172)."""
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        (a.path / "d").mkdir()
        if lost == "commit":
            (a.path / "d" / "x.txt").write_text("v1\n")
        (a.path / "keep").write_text("k\n")
        for m in (a, b):
            m.sync(timeout=60)
        proxy.lose_answers(A_FILE_CREATE, 1, then_fail=True)
        (a.path / "d" / "x.txt").write_text("from a\n")
        wait_until_lost(proxy)
        b.sync(timeout=60)
        assert (b.path / "d" / "x.txt").read_text() == "from a\n"
        if removed == "dir":
            shutil.rmtree(b.path / "d")
        else:
            (b.path / "d" / "x.txt").unlink()
        if removed == "file, its name taken again":
            b.sync(timeout=60)
            (b.path / "d" / "x.txt").write_text("new from b\n")
        b.sync(timeout=60)
        wait_for_cursor(a, b.status()["cursor"])  # a's follower has had b's change
        proxy.release()
        for m in (a, b, a, b):
            m.sync(timeout=60)
        expected = snapshot(b.path)
        assert expected == {"dir": {"keep": b"k\n"},
                            "file": {"keep": b"k\n", "d": None},
                            "file, its name taken again": {"keep": b"k\n", "d": None, "d/x.txt": b"new from b\n"}}[removed]
        assert snapshot(a.path) == expected
        assert a.status()["conflicts"] == 0


def test_a_lost_create_changed_since_survives_its_directory_deleted_elsewhere(sync_server, tmp_path):
    """As above, but a writes the file again while the retries are refused: b deleted the
    bytes of the first try, not these, so the file stays, and its directory with it."""
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        (a.path / "d").mkdir()
        for m in (a, b):
            m.sync(timeout=60)
        proxy.lose_answers(A_FILE_CREATE, 1, then_fail=True)
        (a.path / "d" / "new.txt").write_text("new from a\n")
        wait_until_lost(proxy)
        (a.path / "d" / "new.txt").write_text("written again on a\n")
        b.sync(timeout=60)
        shutil.rmtree(b.path / "d")
        b.sync(timeout=60)
        wait_for_cursor(a, b.status()["cursor"])
        proxy.release()
        for m in (a, b, a, b):
            m.sync(timeout=60)
        assert snapshot(a.path) == snapshot(b.path) == {"d": None, "d/new.txt": b"written again on a\n"}


@pytest.mark.parametrize("release", ["during the retries", "after they gave up"])
def test_a_lost_hard_link_whose_file_lost_its_first_name_leaves_one_name(sync_server, tmp_path, release: str):
    """`ln d/x.txt d/e/z.md`, whose create lands unanswered, then `rm d/x.txt`: the file's
    only name here is d/e/z.md (the link's record went, the file took its place), and
    the server must end with that one name, not the link row plus the file moved beside
    it as a conflicted copy (soak, seed 230010). The link's retry meets its own first
    try while the record is gone (`during the retries`), or is never sent again because
    the record is gone, and the file's move meets the link row (`after they gave up`)."""
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        (a.path / "d" / "e").mkdir(parents=True)
        (a.path / "d" / "x.txt").write_text("one file\n")
        for m in (a, b):
            m.sync(timeout=60)
        proxy.lose_answers(rb"^POST /links ", 1, then_fail=True)
        os.link(a.path / "d" / "x.txt", a.path / "d" / "e" / "z.md")
        wait_until_lost(proxy, then_refused=True)
        (a.path / "d" / "x.txt").unlink()
        if release == "after they gave up":
            deadline = time.monotonic() + 60
            while "server unreachable" not in a.log():  # the syncer's own retries ended
                assert time.monotonic() < deadline, "the link's retries should give up"
                time.sleep(0.2)
        proxy.release()
        for m in (a, b, a, b):
            m.sync(timeout=60)
        expected = {"d": None, "d/e": None, "d/e/z.md": b"one file\n"}
        assert snapshot(a.path) == expected
        assert snapshot(b.path) == expected
        assert a.status()["conflicts"] == 0


REMOVED_KINDS: dict[str, tuple[bytes, Callable[[Path], None]]] = {
    "file": (A_FILE_CREATE, lambda root: (root / "new").write_text("removed before its retry\n")),
    "symlink": (rb"^POST /symlinks ", lambda root: os.symlink("../nowhere/a31", root / "new")),
    "directory": (rb"^POST /dirs ", lambda root: (root / "new").mkdir()),
    "hard link": (rb"^POST /links ", lambda root: os.link(root / "keep", root / "new")),
    "fifo": (rb"^POST /special ", lambda root: os.mkfifo(root / "new")),
}


def lose_a_create(d, proxy, kind: str) -> None:  # noqa: ANN001
    """Once both devices have synced: `new`, of `kind`, made on a; its create lands with
    its answer lost, and the retries are refused until `proxy.release()`."""
    request, make = REMOVED_KINDS[kind]
    for m in (d.a, d.b):
        m.sync(timeout=60)
    proxy.lose_answers(request, 1, then_fail=True)
    make(d.a.path)
    wait_until_lost(proxy, then_refused=True)


@pytest.mark.parametrize(("kind", "removed"), [(kind, "during the retries") for kind in REMOVED_KINDS]
                         + [("file", "after they gave up"), ("symlink", "after they gave up")])
def test_a_lost_create_removed_here_goes_from_the_server(sync_server, tmp_path, kind: str, removed: str):
    """The create of `new` lands unanswered, and the retries are refused for a while;
    `new` is removed here meanwhile (while the retry is still to come, or after the
    retries gave up, when none is ever sent again). The server must not keep it: nothing
    else tells it, and every other device had what this one removed (soak, seed 600306:
    `ln -s` and `rm` 1 ms apart, the symlink stayed on the two other devices)."""
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        (a.path / "keep").write_text("k\n")
        lose_a_create(d, proxy, kind)
        if removed == "after they gave up":
            deadline = time.monotonic() + 60
            while "server unreachable" not in a.log():  # the syncer's own retries ended
                assert time.monotonic() < deadline, "the create's retries should give up"
                time.sleep(0.2)
        if kind == "directory":
            (a.path / "new").rmdir()
        else:
            (a.path / "new").unlink()
        proxy.release()
        for m in (a, b, a, b):
            m.sync(timeout=60)
        assert snapshot(a.path) == snapshot(b.path) == {"keep": b"k\n"}


@pytest.mark.parametrize(("kind", "onto"), [("symlink", "a file"), ("directory", "a new name"),
                                            ("file", "a file"), ("file", "a new name")])
def test_a_lost_create_moved_here_before_its_retry_leaves_one_node(sync_server, tmp_path, kind: str, onto: str):
    """The create of `new` lands unanswered and the retries are refused for a while; `new`
    is renamed here meanwhile (to a new name, or over a file). The retry creates it where
    it is now; the first try, still at the old name on the server, must go too: every
    other device kept it there (soak, seed 710168: a symlink renamed over a file)."""
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        (a.path / "keep").write_text("k\n")
        (a.path / "x.txt").write_text("replaced\n")
        lose_a_create(d, proxy, kind)
        target = "moved" if onto == "a new name" else "x.txt"
        if kind == "directory" and onto == "a file":
            os.unlink(a.path / "x.txt")  # rename(2) puts a directory over an empty directory only
        os.rename(a.path / "new", a.path / target)
        proxy.release()
        for m in (a, b, a, b):
            m.sync(timeout=60)
        got_a, got_b = snapshot(a.path), snapshot(b.path)
        assert got_a == got_b
        assert sorted(got_a) == sorted({"keep", "x.txt", target}), got_a


@pytest.mark.parametrize("then", ["removes it", "overwrites it", "overwrites it, then removes it"])
def test_a_conflicted_copy_created_unanswered_then_changed_elsewhere_keeps_that_change(sync_server, tmp_path,
                                                                                     then: str):
    """a's edit of x.txt loses to b's, so a keeps its bytes as a conflicted copy; the
    copy's create lands, and a's mount is killed before the answer comes. b removes the
    copy, or overwrites it (and then removes it). Mounted again, a must take b's change
    as built on its own lost create: found among the deleted nodes of that name, as for
    a new file (the copy is created again from the file's old node, which b did not
    delete, and without `first_try` on it the copy came back: soak, seed 340013); or
    found in the node's history, the follower waiting for that instead of keeping a's
    copy as a conflicted copy of itself, which brought back the bytes b overwrote (soak,
    seed 730266: the follower knew only unbound files as lost creates, not a copy that
    still has its old node's id)."""
    with a_killable_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        (a.path / "x.txt").write_text("base\n")
        for m in (a, b):
            m.sync(timeout=60)
        proxy.fail(rb"^POST /files ")
        (a.path / "x.txt").write_text("a's edit\n")
        (b.path / "x.txt").write_text("b's edit\n")
        b.sync(timeout=60)
        proxy.hold_answers(rb"^POST /files ", 2)
        proxy.release()
        wait_for_answers(proxy, 1)[0].go.set()  # the edit's stale_revision: a keeps it as a copy
        wait_for_answers(proxy, 2)  # the copy's create has landed; its answer waits
        d.kill_a()
        proxy.answers_held[1].go.set()
        b.sync(timeout=60)
        copies = [n for n in os.listdir(b.path) if "conflicted copy" in n]
        assert len(copies) == 1, os.listdir(b.path)
        expected = {"x.txt": b"b's edit\n"}
        if then.startswith("overwrites"):
            (b.path / copies[0]).write_text("b's, over a's copy\n")
            expected[copies[0]] = b"b's, over a's copy\n"
            b.sync(timeout=60)
        if then.endswith("removes it"):
            (b.path / copies[0]).unlink()
            expected.pop(copies[0], None)
            b.sync(timeout=60)
        a = d.mount_a_again()
        for m in (a, b, a, b):
            m.sync(timeout=60)
        assert snapshot(a.path) == snapshot(b.path) == expected


def test_a_file_removed_here_before_its_lost_commit_was_found_keeps_what_others_wrote_since(sync_server, tmp_path):
    """a's commit of v2 lands, its answer is lost and the retries are refused for a
    while; b sees v2 and appends to it; a removes the file. a's retry finds its v2
    landed, and as the file is gone here it removes it from the server: guarded by v2,
    as a delete of what a saw. Unguarded, it took b's append, which a never saw (soak,
    seed 460189: a mount killed after its commit landed, the file renamed over)."""
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        (a.path / "x.txt").write_text("v1\n")
        for m in (a, b):
            m.sync(timeout=60)
        proxy.lose_answers(A_FILE_CREATE, 1, then_fail=True)
        (a.path / "x.txt").write_text("v2 from a\n")
        wait_until_lost(proxy)
        b.sync(timeout=60)
        assert (b.path / "x.txt").read_text() == "v2 from a\n"
        with open(b.path / "x.txt", "a") as f:
            f.write("and b's append\n")
        b.sync(timeout=60)
        wait_for_cursor(a, b.status()["cursor"])
        (a.path / "x.txt").unlink()
        proxy.release()
        for m in (a, b, a, b):
            m.sync(timeout=60)
        expected = {"x.txt": b"v2 from a\nand b's append\n"}
        assert snapshot(a.path) == snapshot(b.path) == expected


@pytest.mark.parametrize("elsewhere", ["nothing", "b links it"])
def test_a_lost_create_renamed_after_a_kill_leaves_one_node(sync_server, tmp_path, elsewhere: str):
    """a's create of d/y lands and a is killed before the answer. Mounted again, the retry
    is under way when d/y is renamed to d/e/x.txt, and goes there; the first try stayed at
    d/y on the server, every other device had it, and a never removed it (soak, seed
    820167: the retry after a kill is built anew with the file's name as it is then, so it
    never meets its first try, as an in-memory retry does). With `b links it`, b made a
    hard link to the first try meanwhile: the link keeps the bytes either way."""
    with a_killable_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        (a.path / "d" / "e").mkdir(parents=True)
        for m in (a, b):
            m.sync(timeout=60)
        data = os.urandom(300_000)  # past the inline size: prepare and PUT before the commit
        proxy.hold_answers(rb"^POST /files ", 1)
        (a.path / "d" / "y").write_bytes(data)
        held = wait_for_answers(proxy, 1)
        d.kill_a()
        held[0].go.set()
        if elsewhere == "b links it":
            b.sync(timeout=60)
            os.link(b.path / "d" / "y", b.path / "d" / "e" / "z.md")
            b.sync(timeout=60)
        proxy.hold(rb"^POST /uploads/prepare ")  # the retry stops before its request is built
        a = d.mount_a_again()
        wait_until_held(proxy, "the retry's prepare")
        os.rename(a.path / "d" / "y", a.path / "d" / "e" / "x.txt")
        proxy.release()
        for m in (a, b, a, b):
            m.sync(timeout=60)
        got_a, got_b = snapshot(a.path), snapshot(b.path)
        assert got_a == got_b
        assert got_a["d/e/x.txt"] == data and "d/y" not in got_a, sorted(got_a)
        if elsewhere == "b links it":
            assert got_a["d/e/z.md"] == data


def test_a_lost_create_retried_under_a_name_given_meanwhile_and_lost_again_leaves_one_node(sync_server, tmp_path):
    """As above, and the retry, which went under the name the file was given while its
    chunks were sent (d/x.txt: the directory it was in then, the name it has now), lands
    unanswered too before a second kill: that place was never noted among the tries, so
    the third try's look for earlier ones did not see it."""
    with a_killable_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        (a.path / "d" / "e").mkdir(parents=True)
        for m in (a, b):
            m.sync(timeout=60)
        data = os.urandom(300_000)
        proxy.hold_answers(rb"^POST /files ", 1)
        (a.path / "d" / "y").write_bytes(data)
        held = wait_for_answers(proxy, 1)
        d.kill_a()
        held[0].go.set()
        proxy.hold(rb"^POST /uploads/prepare ")
        a = d.mount_a_again()
        wait_until_held(proxy, "the retry's prepare")
        os.rename(a.path / "d" / "y", a.path / "d" / "e" / "x.txt")
        proxy.answers_held.clear()
        proxy.hold_answers(rb"^POST /files ", 1)
        proxy.release()
        held = wait_for_answers(proxy, 1)
        d.kill_a()
        held[0].go.set()
        a = d.mount_a_again()
        for m in (a, b, a, b):
            m.sync(timeout=60)
        got_a, got_b = snapshot(a.path), snapshot(b.path)
        assert got_a == got_b
        assert got_a == {"d": None, "d/e": None, "d/e/x.txt": data}, sorted(got_a)


def test_a_file_removed_while_its_commit_was_on_its_way_stays_removed_after_a_kill(sync_server, tmp_path):
    """a's append to x.txt is committed; a removes x.txt before the answer comes, and is
    killed. The delete was queued guarded by the revision a showed (v1), and the server
    has a's own v2: mounted again, a took that for another device's change and pulled the
    file back, which a's user had removed (soak, seed 930022: `rm -r` 11 ms after an
    append, the mount killed 0.3 s later)."""
    with a_killable_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        (a.path / "keep").write_text("keep\n")
        (a.path / "x.txt").write_text("v1\n")
        for m in (a, b):
            m.sync(timeout=60)
        proxy.hold_answers(rb"^POST /files ", 1)
        with open(a.path / "x.txt", "a") as f:
            f.write("v2, appended on a\n")
        held = wait_for_answers(proxy, 1)  # v2 is on the server; a has not heard
        (a.path / "x.txt").unlink()
        d.kill_a()
        held[0].go.set()
        a = d.mount_a_again()
        for m in (a, b, a, b):
            m.sync(timeout=60)
        assert snapshot(a.path) == snapshot(b.path) == {"keep": b"keep\n"}


@pytest.mark.parametrize("how", ["a killed", "the answer lost"])
def test_a_lost_create_overwritten_and_moved_elsewhere_is_not_brought_back(sync_server, tmp_path, how: str):
    """a's create of x.txt lands and its answer never reaches a (`a killed` before it; or
    `the answer lost`, the retries refused for a while). b sees a's bytes, writes over
    them and renames the file to d/l. a's retry finds the name free and its first try
    not among the deleted nodes of that name, and makes a second node with the bytes b
    had overwritten (soak run 44, seed 1060113, after a kill: a retried before its
    follower had read the journal, here its change feed is held; with the answer lost,
    a's follower has seen everything and the retry still does it)."""
    if how == "the answer lost":
        with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
            a, b = d.a, d.b
            data = _x_created_unanswered(a, b, proxy)
            _overwritten_and_moved(b, data)
            wait_for_cursor(a, b.status()["cursor"])  # a's follower has had b's change
            proxy.release()
            _nothing_came_back(a, b)
        return
    with a_killable_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        data = _with_a_directory(a, b)
        proxy.hold_answers(rb"^POST /files ", 1)
        (a.path / "x.txt").write_bytes(data)
        held = wait_for_answers(proxy, 1)
        d.kill_a()
        held[0].go.set()
        _overwritten_and_moved(b, data)
        proxy.hold(rb"^POST /sync ")
        a = d.mount_a_again()
        deadline = time.monotonic() + 60
        while a.status()["pending_files"]:  # the retry of the create went (and was answered)
            assert time.monotonic() < deadline, "a's retry should have gone"
            time.sleep(0.1)
        proxy.release()
        _nothing_came_back(a, b)


def _with_a_directory(a, b) -> bytes:  # noqa: ANN001
    """d/ on both devices; the bytes a writes next (past the inline size: prepare and PUT
    before the commit)."""
    (a.path / "d").mkdir()
    for m in (a, b):
        m.sync(timeout=60)
    return os.urandom(300_000)


def _x_created_unanswered(a, b, proxy) -> bytes:  # noqa: ANN001
    """d/ on both devices, then a's create of x.txt lands and its answer is lost, the
    retries refused until `proxy.release()`; returns x.txt's bytes."""
    data = _with_a_directory(a, b)
    proxy.lose_answers(A_FILE_CREATE, 1, then_fail=True)
    (a.path / "x.txt").write_bytes(data)
    wait_until_lost(proxy)
    return data


def _overwritten_and_moved(b, data: bytes) -> None:  # noqa: ANN001
    b.sync(timeout=60)
    assert (b.path / "x.txt").read_bytes() == data
    (b.path / "x.txt").write_bytes(b"b's, over a's\n")
    os.rename(b.path / "x.txt", b.path / "d" / "l")
    b.sync(timeout=60)


def _nothing_came_back(a, b) -> None:  # noqa: ANN001
    for m in (a, b, a, b):
        m.sync(timeout=60)
    expected = {"d": None, "d/l": b"b's, over a's\n"}
    assert snapshot(b.path) == expected
    assert snapshot(a.path) == expected


@pytest.mark.parametrize("removed", ["during the retries", "after they gave up"])
def test_a_lost_create_moved_elsewhere_then_removed_here_goes_from_the_server(sync_server, tmp_path, removed: str):
    """a's create of x.txt lands unanswered (its retries refused for a while); b moves the
    file to d/l, bytes untouched, and a's follower holds that back for the retry; then a
    removes x.txt (while the retry is still to come, or after the retries gave up). Had
    the answer come, a's delete would have removed the node where b put it. The held-back
    move was pulled as soon as x.txt was gone, and d/l came here as b's file; and with no
    retry left, the removal's search for what the create made (syncer._unland, by the name
    alone, which was free) found nothing: d/l stayed on both devices."""
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        _x_created_unanswered(a, b, proxy)
        b.sync(timeout=60)
        os.rename(b.path / "x.txt", b.path / "d" / "l")
        b.sync(timeout=60)
        wait_for_cursor(a, b.status()["cursor"])  # a's follower has b's move, held back
        if removed == "after they gave up":
            deadline = time.monotonic() + 60
            while "server unreachable" not in a.log():  # the syncer's own retries ended
                assert time.monotonic() < deadline, "the create's retries should give up"
                time.sleep(0.2)
        (a.path / "x.txt").unlink()
        time.sleep(20 * SETTLE_EVERY_S)  # the follower's passes over what it held back
        proxy.release()
        for m in (a, b, a, b):
            m.sync(timeout=60)
        assert snapshot(a.path) == snapshot(b.path) == {"d": None}
