"""StaleNames: what a removal through a name the kernel has not renewed is meant for
(bug 40; the mount-level race is in tests/sync/test_stale_names.py)."""

from __future__ import annotations

from cloudfs.backend.local.cache import Inode
from cloudfs.backend.model.stale_names import StaleNames


def file(ino: int, node_id: int, rev: int) -> Inode:
    return Inode(ino=ino, parent=1, name="y", kind="file", mode=0o100644, node_id=node_id, rev=rev)


def test_the_first_version_shown_is_what_a_removal_is_for_until_the_kernel_looks_again() -> None:
    stale, v1, v2, v3 = StaleNames(), file(10, 7, 1), file(11, 7, 2), file(12, 7, 3)
    stale.took(1, "y", gone=v1, known=True)
    stale.put(1, "y", v2.ino)
    stale.took(1, "y", gone=v2, known=False)  # replaced again before the kernel looked
    stale.put(1, "y", v3.ino)
    assert stale.shown_rev(1, "y", v3) == 1
    assert stale.shown_rev(1, "y", v2) is None  # not what is there now
    stale.renewed(1, "y", v2.ino)  # a readdirplus of an older listing: still stale
    assert stale.shown_rev(1, "y", v3) == 1
    stale.renewed(1, "y", v3.ino)
    assert stale.shown_rev(1, "y", v3) is None and len(stale) == 0


def test_another_node_under_the_name_is_guarded_by_no_revision() -> None:
    stale, old, other = StaleNames(), file(10, 7, 4), file(20, 9, 2)
    stale.took(1, "y", gone=old, known=True)  # deleted elsewhere
    stale.renewed(1, "y", other.ino)  # nothing there yet: not the kernel's view of `other`
    stale.put(1, "y", other.ino)  # then another file renamed onto the name
    assert stale.shown_rev(1, "y", other) == 0
    stale.renewed(1, "y", 0)  # a lookup that found nothing is not about `other` either
    assert stale.shown_rev(1, "y", other) == 0


def test_names_are_kept_only_while_the_kernel_knows_the_old_inode() -> None:
    stale, v1, v2 = StaleNames(), file(10, 7, 1), file(11, 7, 2)
    stale.took(1, "y", gone=v1, known=False)  # the kernel never had it: nothing to guard
    stale.put(1, "y", v2.ino)
    assert stale.shown_rev(1, "y", v2) is None and len(stale) == 0
    stale.took(1, "y", gone=v1, known=True)
    stale.put(1, "y", v2.ino)
    stale.took(1, "w", gone=v1, known=True)  # its other place, moved away meanwhile
    stale.forgotten(v1.ino)
    assert len(stale) == 0
    stale.took(1, "y", gone=v1, known=True)
    stale.put(1, "y", v2.ino)
    stale.removed(1, "y")  # unlinked through the kernel: its dentry goes with it
    assert len(stale) == 0 and stale.shown_rev(1, "y", v2) is None
