"""An attribute change (chmod, an extended attribute) on one device that reaches the
server after another device deleted the node. A directory goes (what is below it with
local work stays, as always); a file is kept with its new attributes, as the follower
keeps a file with changes the server has not seen (follower._with_local_work), on both
devices. Either way quietly: the syncer's PATCH answered 404 was dropped with an ERROR
(found by the soak, seed 80031: an xattr set on a directory that another device removed
with rm -r, the setting device killed and mounted again)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import pytest

from tests.sync.conftest import (a_behind_a_proxy, hold_the_change_feed, wait_for_cursor, wait_until_held,
                                 wait_until_lost)
from tests.sync.test_conflicts import settle, snapshot, wait_until_pushed


def xattr_on_dir(root: Path) -> None:
    os.setxattr(root / "d", "user.colour", b"blue")


def chmod_file(root: Path) -> None:
    (root / "d" / "x.txt").chmod(0o600)


def xattr_on_file(root: Path) -> None:
    os.setxattr(root / "d" / "x.txt", "user.colour", b"blue")


CHANGES: dict[str, tuple[Callable[[Path], None], Callable[[Path], None]]] = {
    "xattr on a directory removed": (xattr_on_dir, lambda root: shutil.rmtree(root / "d")),
    "chmod of a file removed": (chmod_file, lambda root: (root / "d" / "x.txt").unlink()),
    "xattr on a file removed": (xattr_on_file, lambda root: (root / "d" / "x.txt").unlink()),
}


@pytest.mark.parametrize("case", list(CHANGES))
def test_an_attribute_change_arriving_after_a_delete_elsewhere_goes_with_the_node(sync_server, tmp_path, case):
    change, delete = CHANGES[case]
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        (a.path / "d").mkdir()
        (a.path / "d" / "x.txt").write_text("x\n")
        settle(d)
        proxy.hold(rb"^PATCH /nodes/")
        change(a.path)
        wait_until_held(proxy, "a's attribute change")
        delete(b.path)
        b.sync(timeout=60)
        proxy.release()
        settle(d)
        wait_for_cursor(a, b.status()["cursor"])
        expected = {} if case.startswith("xattr on a directory") else {"d": None, "d/x.txt": b"x\n"}
        assert (snapshot(a.path), snapshot(b.path)) == (expected, expected), a.log()[-4000:]
        assert a.status()["conflicts"] == 0
        if case == "chmod of a file removed":
            assert os.stat(b.path / "d" / "x.txt").st_mode & 0o777 == 0o600
        elif case == "xattr on a file removed":
            assert os.getxattr(b.path / "d" / "x.txt", "user.colour") == b"blue"
        for m in (a, b):
            assert " ERROR " not in m.log() and "Traceback" not in m.log(), m.log()[-3000:]


@pytest.mark.parametrize("answer", ["answered", "answer lost"])
def test_a_move_here_keeps_the_attributes_set_elsewhere_meanwhile(sync_server, tmp_path, answer):
    """b sets an xattr on photos/ and chmods it while a renames it to album/; a's
    change feed is held until a's move is on the server. The move's answer carries b's
    attributes, which a has not applied yet: taken as the server's without being taken
    here, a's old ones looked like a change of a's, and a's next PATCH put them back
    over b's. With the answer lost, the retry's answer is the journal's head, past a's
    own move entry, and b's older entries, applied then, took photos/ back to its old
    name on a alone (found by the soak, seed 470199)."""
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        (a.path / "photos").mkdir()
        (a.path / "photos" / "cat.jpg").write_bytes(b"cat\n")
        settle(d)
        hold_the_change_feed(proxy)
        os.setxattr(b.path / "photos", "user.colour", b"blue")
        (b.path / "photos").chmod(0o700)
        b.sync(timeout=60)
        expected = {"album": None, "album/cat.jpg": b"cat\n"}
        if answer == "answer lost":
            proxy.lose_answers(rb"^POST /nodes/\d+/move ", then_fail=True)
        (a.path / "photos").rename(a.path / "album")
        if answer == "answer lost":
            wait_until_lost(proxy, then_refused=True)
            (b.path / "later.txt").write_text("the journal moves on\n")
            b.sync(timeout=60)
            expected["later.txt"] = b"the journal moves on\n"
            proxy.stop_failing()
        wait_until_pushed(a)
        assert proxy.holding, "a's change feed should still be held back"
        proxy.release()
        settle(d, first="b")
        for m in (a, b):
            assert snapshot(m.path) == expected, (m.device, m.log()[-4000:])
            assert os.getxattr(m.path / "album", "user.colour") == b"blue", m.device
            assert os.stat(m.path / "album").st_mode & 0o777 == 0o700, m.device
