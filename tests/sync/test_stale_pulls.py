"""What the server says about a node while this device has work on it out must not
leave the mirror believing something the server never heard from it.

The follower pulls a node (GET /nodes/N) when the journal alone cannot tell it what
the server has (after a conflict, for a deferred change). The journal keeps flowing
while that answer is on its way, so a newer change of the same node can be applied
first; the older answer must not undo it. And a commit's answer names where the server
has the file: when another device moved it meanwhile, that is the follower's move to
bring here, not a place this device has already taken."""

from __future__ import annotations

import os

import httpx
import pytest

from tests.harness import MountProcess, ServerProcess
from tests.model import snapshot
from tests.sync.conftest import (a_behind_a_proxy, a_killable_behind_a_proxy, wait_for_answers, wait_for_cursor,
                                 wait_until_held)


def synced_file(server: ServerProcess, a: MountProcess, b: MountProcess, text: str) -> int:
    """x.txt written on a and synced to both; its node id."""
    (a.path / "x.txt").write_text(text)
    for m in (a, b):
        m.sync(timeout=60)
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {a.token}"}) as api:
        return api.get("/resolve", params={"path": "/x.txt"}).json()["node"]["id"]


def test_a_pull_answered_before_a_newer_change_does_not_undo_it(sync_server, tmp_path):
    """a's edit of x.txt loses to b's v2: a keeps its bytes as a conflicted copy and pulls
    x.txt. The server answers v2, and the answer is held while b writes v3 and a's
    follower applies v3 from the journal; then the v2 answer arrives. Applied, it put
    v2 back over v3 for good: nothing newer was coming (soak, seed 400014, where the
    file's name was a hard link)."""
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        node = synced_file(sync_server, a, b, "base\n")
        proxy.fail(rb"^POST /files ")
        (a.path / "x.txt").write_text("a's edit\n")
        (b.path / "x.txt").write_text("b's v2\n")
        b.sync(timeout=60)
        proxy.hold_answers(rb"^GET /nodes/%d " % node)
        proxy.release()
        pulled = wait_for_answers(proxy, 1)[0]  # the server has said v2
        (b.path / "x.txt").write_text("b's v3\n")
        b.sync(timeout=60)
        wait_for_cursor(a, b.status()["cursor"])  # a's follower has had v3
        pulled.go.set()
        for m in (a, b, a, b):
            m.sync(timeout=60)
        assert snapshot(a.path) == snapshot(b.path)
        assert (a.path / "x.txt").read_text() == "b's v3\n"
        assert a.status()["conflicts"] == 1


@pytest.mark.parametrize("moved", ["renamed", "its first name taken"])
def test_a_file_moved_elsewhere_while_its_commit_was_out_moves_here_too(sync_server, tmp_path, moved):
    """a writes d/x.txt (`renamed`: b renames it to d/w.txt) or d/z.md, a hard link of
    d/x.txt (`its first name taken`: b moves another file over d/x.txt, so the server
    moves the file to its other name). a's commit is held until b's change is in. Its
    answer names the new place; recorded as the place the server had from a, it was a
    move made here and never sent, so the follower held b's move back for ever and the
    devices kept different names (soak, seed 330061)."""
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        (a.path / "d").mkdir()
        (a.path / "d" / "x.txt").write_text("v1\n")
        (a.path / "d" / "other").write_text("other\n")
        if moved == "its first name taken":
            os.link(a.path / "d" / "x.txt", a.path / "d" / "z.md")
        for m in (a, b):
            m.sync(timeout=60)
        proxy.hold(rb"^POST /files ")
        written = "x.txt" if moved == "renamed" else "z.md"
        (a.path / "d" / written).write_text("v2 from a\n")
        wait_until_held(proxy, "a's commit")
        if moved == "renamed":
            (b.path / "d" / "x.txt").rename(b.path / "d" / "w.txt")
            expected = {"d": None, "d/other": b"other\n", "d/w.txt": b"v2 from a\n"}
        else:
            (b.path / "d" / "other").rename(b.path / "d" / "x.txt")
            expected = {"d": None, "d/x.txt": b"other\n", "d/z.md": b"v2 from a\n"}
        b.sync(timeout=60)
        wait_for_cursor(a, b.status()["cursor"])  # a's follower has had b's move, and held it
        proxy.release()
        for m in (a, b, a, b):
            m.sync(timeout=60)
        assert snapshot(a.path) == snapshot(b.path) == expected
        assert a.status()["conflicts"] == 0


def test_a_pull_cut_short_by_a_kill_is_made_after_the_remount(sync_server, tmp_path):
    """a removes x.txt while b writes it (and gives it a second name): a's delete is
    refused as stale and a pulls the file back. The mount is killed while that pull is
    out. The node had left the deferred set kept in LMDB before the pull was sent, so
    after the remount nothing pulled it again: a never had the file back, and b's link
    to it waited for it for ever, and so did `cloudfs sync` (soak, seed 370059)."""
    with a_killable_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        node = synced_file(sync_server, a, b, "v1\n")
        proxy.fail(rb"^DELETE /nodes/")
        (a.path / "x.txt").unlink()
        (b.path / "x.txt").write_text("v2 from b\n")
        os.link(b.path / "x.txt", b.path / "z.md")
        b.sync(timeout=60)
        wait_for_cursor(a, b.status()["cursor"])
        proxy.hold_answers(rb"^GET /nodes/%d " % node)
        proxy.release()  # the delete is refused as stale: a pulls x.txt back
        wait_for_answers(proxy, 1)
        d.kill_a()
        proxy.answers_held[0].go.set()
        a = d.mount_a_again()
        for m in (a, b, a, b):
            m.sync(timeout=60)
        expected = {"x.txt": b"v2 from b\n", "z.md": b"v2 from b\n"}
        assert snapshot(a.path) == snapshot(b.path) == expected
        assert os.stat(a.path / "x.txt").st_ino == os.stat(a.path / "z.md").st_ino
