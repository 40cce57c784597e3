"""A directory's count of subdirectories (its st_nlink - 2) is kept as entries come and
go, not counted again after each one; whatever the sequence of links, unlinks,
renames over names and aborted transactions, it equals a fresh count."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings, strategies as st

from cloudfs.backend.local.cache import ROOT_INO, Cache, Inode

TOP = 1_000_000
"""A directory whose inode number no new inode takes."""
NAMES = st.sampled_from(["a", "b", "c", "d"])
STEPS = st.lists(st.tuples(st.sampled_from(["mkdir", "create", "unlink", "rename", "abort", "ask"]),
                           st.sampled_from([ROOT_INO, TOP]), NAMES, NAMES), max_size=40)


def fresh_count(cache: Cache, ino: int) -> int:
    return sum(1 for _, child in cache.children(ino) if (node := cache.get(child)) is not None and node.kind == "dir")


@settings(max_examples=150, deadline=None)
@given(STEPS)
def test_the_kept_count_is_a_fresh_count(steps: list[tuple[str, int, str, str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cache = Cache(Path(tmp))
        with cache.write() as txn:
            cache.put(txn, Inode(ino=ROOT_INO, parent=0, name="", kind="dir", mode=0o755), create=True)
            cache.put(txn, Inode(ino=TOP, parent=ROOT_INO, name="top", kind="dir", mode=0o755), create=True)
            cache.link(txn, ROOT_INO, "top", TOP)
        for op, parent, name, other in steps:
            cache.subdir_count(parent)  # known before the change, as after a getattr
            try:
                with cache.write() as txn:
                    here = cache.lookup(parent, name)
                    if op in ("mkdir", "create") and here is None:
                        node = Inode(ino=cache.new_ino(txn), parent=parent, name=name,
                                     kind="dir" if op == "mkdir" else "file", mode=0o755)
                        cache.put(txn, node, create=True)
                        cache.link(txn, parent, name, node.ino)
                    elif op == "unlink" and here is not None and here != TOP:
                        cache.unlink(txn, parent, name)
                    elif op == "rename" and here is not None and here != TOP and name != other:
                        cache.unlink(txn, parent, name)
                        cache.link(txn, parent, other, here)  # over whatever `other` named
                    elif op == "abort":
                        cache.link(txn, parent, name, TOP if parent == ROOT_INO else ROOT_INO)
                        raise RuntimeError("aborted")
            except RuntimeError:
                pass
            for ino in (ROOT_INO, TOP):
                assert cache.subdir_count(ino) == fresh_count(cache, ino), (op, parent, name, other)
        cache.close()
