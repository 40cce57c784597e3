"""A burst's uploads go side by side, so one of them can meet on the server the node
that another, still settling, has just made: the device's own work, never a conflict."""

from __future__ import annotations

import time

from tests.sync.conftest import a_behind_a_proxy, wait_for_answers, wait_until_held


def test_a_rename_over_a_file_whose_create_is_out_makes_no_conflicted_copy(sync_server, tmp_path):
    """Soak seed 210064: `mv y.dat x.dat` while both files' creates were out. x's create
    lands; its answer removes the node again (x is gone here). y's move to x.dat met that
    node first and, not knowing it, made y a conflicted copy."""
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        proxy.hold(rb"^POST /dirs ")  # both uploads queue behind their directory: one group
        (a.path / "d").mkdir()
        (a.path / "d" / "x.dat").write_bytes(b"x" * 300)
        (a.path / "d" / "y.dat").write_bytes(b"y" * 200)
        wait_until_held(proxy, "the directory's create")
        proxy.hold_answers(rb"^POST /files ", count=2)
        proxy.release()
        x, y = sorted(wait_for_answers(proxy, 2), key=lambda h: b'"y.dat"' in h.request)
        assert b'"x.dat"' in x.request and b'"y.dat"' in y.request
        (a.path / "d" / "y.dat").rename(a.path / "d" / "x.dat")  # over x, whose node has landed
        y.go.set()  # y is recorded, then moved to x.dat, where x's node still is
        deadline = time.monotonic() + 30
        while "whose create is still settling" not in a.log() and "conflict on" not in a.log():
            assert time.monotonic() < deadline, "y's move should have met x's node"
            time.sleep(0.05)
        x.go.set()  # x's answer: it is gone here, so its node goes
        a.sync()
        b.sync()
        for mount in (a, b):
            assert sorted(p.name for p in (mount.path / "d").iterdir()) == ["x.dat"], mount.device
            assert (mount.path / "d" / "x.dat").read_bytes() == b"y" * 200, mount.device
        assert "conflict on" not in a.log()
