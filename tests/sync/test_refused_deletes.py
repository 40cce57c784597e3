"""A change this device sends about a node another device changed meanwhile: the
answer (or the refusal) must bring the other device's change here too.

A delete refused as stale brings the server's version back (edits survive deletes),
however the refusal and the follower meet: the refused delete stays in the outbox
until every entry of its run is answered, and a pull of the file made in that time
used to see "a delete of it is queued" and drop the file for good (soak, seed 140054).
An attribute change answered with the node elsewhere brings that move here (soak,
seed 180156)."""

from __future__ import annotations

import os
import time

import httpx

from tests.sync.conftest import a_behind_a_proxy, wait_until_held
from tests.sync.test_conflicts import settle, snapshot
from tests.sync.test_removed_dirs import hold_the_syncer


def node_id(server_url: str, token: str, path: str) -> int:
    with httpx.Client(base_url=server_url, headers={"Authorization": f"Bearer {token}"}) as api:
        return api.get("/resolve", params={"path": path}).json()["node"]["id"]


def test_a_file_whose_delete_is_refused_comes_back_while_its_run_is_still_out(sync_server, tmp_path):
    """a removes w and y while its syncer is busy; b edits y meanwhile and a's follower
    hears of it (a delete of y is queued: not applied). Then a's deletes go out as one
    run: y's is refused as stale at once, while w's is held at the proxy. The pull of y
    made meanwhile must not be the last word: y comes back on a with b's bytes."""
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        (a.path / "keep.txt").write_bytes(b"keep\n")
        (a.path / "w").write_bytes(b"w\n")
        (a.path / "y").write_bytes(b"y v1\n")
        settle(d)
        w = node_id(sync_server.url, b.token, "/w")
        hold_the_syncer(a, proxy)
        (a.path / "w").unlink()
        (a.path / "y").unlink()
        (b.path / "y").write_bytes(b"y v2 from b\n")
        b.sync(timeout=60)
        target, deadline = b.status()["cursor"], time.monotonic() + 15
        while a.status()["cursor"] < target:
            assert time.monotonic() < deadline, "a's follower should hear of b's edit"
            time.sleep(0.05)
        proxy.release()
        proxy.hold(rb"^DELETE /nodes/%d\b" % w)
        deadline = time.monotonic() + 30
        while "not deleting node" not in a.log():
            assert time.monotonic() < deadline, "y's delete should be refused as stale"
            time.sleep(0.05)
        time.sleep(1.0)  # the follower's pulls of deferred nodes run every 0.25 s
        assert proxy.holding, "w's delete should still be held: y's refusal came while its run was out"
        proxy.release()
        settle(d)
        expected = {"keep.txt": b"keep\n", "y": b"y v2 from b\n"}
        assert (snapshot(a.path), snapshot(b.path)) == (expected, expected), a.log()[-4000:]


def test_an_attribute_change_meets_a_move_made_elsewhere(sync_server, tmp_path):
    """a sets an xattr of directory e while b renames e to x, and b's move lands first.
    The answer to a's change shows e at x: a must take that move in, not record x as
    where the server has it while e stays e here (it then looked like a move of a's own
    that nothing ever sent, and the follower held b's move back for ever; found by the
    soak, seed 180156)."""
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        (a.path / "e").mkdir()
        (a.path / "e" / "f").write_bytes(b"f\n")
        settle(d)
        proxy.hold(rb"^PATCH /nodes/")
        os.setxattr(a.path / "e", "user.tag", b"from a")
        wait_until_held(proxy)
        (b.path / "e").rename(b.path / "x")
        b.sync(timeout=60)
        proxy.release()
        settle(d)
        expected = {"x": None, "x/f": b"f\n"}
        assert (snapshot(a.path), snapshot(b.path)) == (expected, expected), a.log()[-4000:]
        assert os.getxattr(b.path / "x", "user.tag") == os.getxattr(a.path / "x", "user.tag") == b"from a"
