"""The follower's kernel invalidations wait for the kernel's INIT: before it, the kernel
answers ENOSYS (pyfuse3 logged an ERROR and a traceback for each, seen by the soak on a
mount started while another device's changes waited) and has nothing cached to forget."""

from __future__ import annotations

import threading

from cloudfs.fs import mount
from cloudfs.fs.operations import Operations
from cloudfs.fs.pagecache import ReadAround


def test_no_invalidation_reaches_the_kernel_before_its_init(monkeypatch):
    sent: list[tuple] = []
    monkeypatch.setattr(mount.pyfuse3, "invalidate_entry_async", lambda *a, **k: sent.append(("entry", *a)))
    monkeypatch.setattr(mount.pyfuse3, "invalidate_inode", lambda *a, **k: sent.append(("inode", *a)))
    ready = threading.Event()
    invalidate = mount._invalidator(ready, ReadAround())
    ops = Operations(drive=None, on_init=ready.set)  # type: ignore[arg-type] - the drive is not used here
    invalidate.entry(1, "x.txt")
    invalidate.inode(7)
    assert sent == []
    ops.init()  # what pyfuse3 calls when the kernel's INIT arrives
    invalidate.entry(1, "x.txt")
    invalidate.inode(7)
    assert sent == [("entry", 1, b"x.txt"), ("inode", 7)]
