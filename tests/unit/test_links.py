"""Hard links in the device cache (backend/model/links.py): alias records, directory entries
that carry them, promotion of the oldest alias, and a format-2 cache read as format 3."""

from __future__ import annotations

from pathlib import Path

from cloudfs.backend.local import cache_format

from cloudfs.backend.model import links
from cloudfs.backend.local.cache import ROOT_INO, Cache, Inode


def fresh(path: Path) -> Cache:
    cache = Cache(path)
    with cache.write() as txn:
        cache.put(txn, Inode(ino=ROOT_INO, parent=0, name="", kind="dir", mode=0o755), create=True)
    return cache


def new_file(cache: Cache, parent: int, name: str) -> Inode:
    with cache.write() as txn:
        node = Inode(ino=cache.new_ino(txn), parent=parent, name=name, kind="file", mode=0o644)
        cache.put(txn, node, create=True)
        cache.link(txn, parent, name, node.ino)
    return node


def test_a_format_2_cache_is_read_as_format_3(tmp_path: Path) -> None:
    cache = fresh(tmp_path)
    f = new_file(cache, ROOT_INO, "old")
    with cache.write() as txn:
        cache.set_meta(txn, "format", "2")
    assert cache_format.upgrade(cache) == (2, cache_format.FORMAT)
    assert cache.get_meta("format") == str(cache_format.FORMAT)
    # Entries of format 2 name the inode only: the inode is the name's record.
    assert cache.lookup(ROOT_INO, "old") == cache.record_at(ROOT_INO, "old") == f.ino
    assert cache.children(ROOT_INO) == cache.entries(ROOT_INO) == [("old", f.ino)]
    cache.close()


def test_aliases_name_the_inode_and_carry_their_record(tmp_path: Path) -> None:
    cache = fresh(tmp_path)
    d = Inode(ino=50, parent=ROOT_INO, name="d", kind="dir", mode=0o755)
    with cache.write() as txn:
        cache.put(txn, d, create=True)
        cache.link(txn, ROOT_INO, "d", d.ino)
    f = new_file(cache, ROOT_INO, "f")
    assert links.nlink(f) == 1
    with cache.write() as txn:
        first = links.add_alias(cache, txn, f, d.ino, "first")
        second = links.add_alias(cache, txn, f, ROOT_INO, "second", node_id=77)
    assert links.aliases(f) == [first.ino, second.ino] and links.nlink(f) == 3
    assert cache.lookup(d.ino, "first") == f.ino and cache.record_at(d.ino, "first") == first.ino
    assert cache.children(ROOT_INO) == [("d", d.ino), ("f", f.ino), ("second", f.ino)]
    assert cache.entries(ROOT_INO) == [("d", d.ino), ("f", f.ino), ("second", second.ino)]
    assert cache.ino_for_node(77) == second.ino and (second.srv_parent, second.srv_name) == (ROOT_INO, "second")
    assert first.attrs_pending() == {} and links.kernel_ino(first) == f.ino

    # The inode's own name goes: it takes the oldest alias's place, that record goes.
    with cache.write() as txn:
        cache.unlink(txn, ROOT_INO, "f")
        gone = links.promote(cache, txn, f)
    assert gone is not None and gone.ino == first.ino and cache.get(first.ino) is None
    assert (f.parent, f.name) == (d.ino, "first") and links.aliases(f) == [second.ino]
    assert cache.record_at(d.ino, "first") == f.ino and cache.lookup(ROOT_INO, "f") is None

    # The file gets a new inode: its other names follow.
    with cache.write() as txn:
        g = Inode(ino=cache.new_ino(txn), parent=d.ino, name="first", kind="file", mode=0o644)
        cache.put(txn, g, create=True)
        moved = links.move_aliases(cache, txn, f, g)
        cache.drop(txn, f)
        cache.link(txn, d.ino, "first", g.ino)
    assert [a.ino for a in moved] == [second.ino] and links.aliases(g) == [second.ino]
    assert cache.lookup(ROOT_INO, "second") == g.ino and cache.record_at(ROOT_INO, "second") == second.ino
    assert cache.get(second.ino).extra["target"] == g.ino

    # An extra name goes alone.
    with cache.write() as txn:
        target = links.drop_alias(cache, txn, cache.get(second.ino))
    assert target is g and links.aliases(g) == [] and links.nlink(g) == 1
    assert cache.lookup(ROOT_INO, "second") is None and cache.ino_for_node(77) is None
    cache.close()


def test_repoint_moves_one_alias_between_inodes(tmp_path: Path) -> None:
    cache = fresh(tmp_path)
    a, b = new_file(cache, ROOT_INO, "a"), new_file(cache, ROOT_INO, "b")
    with cache.write() as txn:
        alias = links.add_alias(cache, txn, a, ROOT_INO, "alias")
        links.repoint(cache, txn, alias, b)
    assert links.aliases(a) == [] and links.aliases(b) == [alias.ino]
    assert cache.lookup(ROOT_INO, "alias") == b.ino and cache.record_at(ROOT_INO, "alias") == alias.ino
    cache.close()
