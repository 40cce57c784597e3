"""A name handed from a node to a new directory that the node itself moved into.

`mkdir b; mv a b/; mv b a`: the new directory a cannot be made on the server while the
old a still has the name there, and the old a cannot move to its new place (inside the
new a) before the new a exists. The syncer, creating the new a, met the old a in the
way and pushed the old a's move first; that needed the new a, whose lock the syncer
held, and the mount died (`attempt to re-acquire an already held Lock`: CI, in
tests/fuse/test_posix_local.py). Now the old a steps aside on the server first (a
temporary name where it is), the new a is made, and the old a goes in.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest

from tests.sync.conftest import a_behind_a_proxy
from tests.sync.test_conflicts import settle, snapshot
from tests.sync.test_removed_dirs import hold_the_syncer


def into_new_dir(root: Path) -> None:
    (root / "b").mkdir()
    (root / "a").rename(root / "b" / "a")
    (root / "b").rename(root / "a")


def two_levels_down(root: Path) -> None:
    (root / "b" / "c").mkdir(parents=True)
    (root / "a").rename(root / "b" / "c" / "a")
    (root / "b").rename(root / "a")


CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "into the new one": (into_new_dir, "a/a"),
    "two new levels down": (two_levels_down, "a/c/a"),
}


@pytest.mark.parametrize("kind", ["dir", "file"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_node_moved_into_the_new_directory_that_takes_its_name(sync_server, tmp_path, case, kind):  # noqa: ANN001
    """The changes are queued behind a held request, so the syncer meets them together."""
    change, moved_to = CASES[case]
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        (a.path / "keep.txt").write_bytes(b"keep\n")
        if kind == "dir":
            (a.path / "a").mkdir()
            (a.path / "a" / "x.txt").write_bytes(b"x\n")
        else:
            (a.path / "a").write_bytes(b"a file\n")
        settle(d)
        old = os.stat(b.path / "a").st_ino
        hold_the_syncer(a, proxy)
        change(a.path)
        proxy.release()
        settle(d)
        expected = snapshot(a.path)
        assert moved_to in expected
        if kind == "dir":
            assert expected[f"{moved_to}/x.txt"] == b"x\n"
        else:
            assert expected[moved_to] == b"a file\n"
        assert snapshot(b.path) == expected
        assert os.stat(b.path / moved_to).st_ino == old  # moved, not made again
        for m in (a, b):
            assert "Traceback" not in m.log() and " ERROR " not in m.log(), m.log()[-4000:]
