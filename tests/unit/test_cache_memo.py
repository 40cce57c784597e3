"""One object per inode, also across a failed write transaction: a task that holds an
inode across an await (the syncer, while its request is out) and the FUSE operations
that change it meanwhile must see and store the same inode, or whichever is stored last
undoes the other (an xattr set while a PATCH of the file was out, put back as pending by
the syncer's older copy with nothing queued to send it)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from cloudfs.backend.local.cache import ROOT_INO, Cache, Inode


class Boom(Exception):
    pass


def test_an_inode_held_across_a_failed_write_is_the_one_served_after_it() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cache = Cache(Path(tmp))
        with cache.write() as txn:
            cache.put(txn, Inode(ino=ROOT_INO, parent=0, name="", kind="dir", mode=0o755), create=True)
            cache.put(txn, Inode(ino=2, parent=ROOT_INO, name="x.txt", kind="file", mode=0o644), create=True)
            cache.link(txn, ROOT_INO, "x.txt", 2)
        held = cache.get(2)  # the syncer's copy, its request out
        other = cache.get(ROOT_INO)
        with pytest.raises(Boom), cache.write() as txn:  # some other change fails half-way
            other.mode = 0o700
            cache.put(txn, other)
            raise Boom()
        assert cache.get(ROOT_INO).mode == 0o755  # what the failed write changed in place is undone
        assert cache.get(ROOT_INO) is other
        served = cache.get(2)  # a FUSE operation: setxattr
        assert served is held
        with cache.write() as txn:
            served.xattrs = {"user.k0": "dg=="}
            cache.put(txn, served)
        with cache.write() as txn:  # the syncer records the answer to its request
            held.srv_mode = held.mode
            cache.put(txn, held)
        with pytest.raises(Boom), cache.write():  # read back from LMDB after another failed write
            raise Boom()
        assert cache.get(2).xattrs == {"user.k0": "dg=="}
        cache.close()
