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

from tests.sync.conftest import a_behind_a_proxy, wait_for_cursor, wait_until_held
from tests.sync.test_conflicts import settle, snapshot


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
