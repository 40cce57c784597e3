"""fs/readahead.py: the kernel's read-ahead is a speed-up, never a reason for a mount to fail."""

from __future__ import annotations

from pathlib import Path

from cloudfs.fs.readahead import raise_readahead


def test_a_mount_point_that_cannot_be_asked_leaves_the_window_alone(tmp_path: Path) -> None:
    """The stat of the mount point ran before the guard: a mount unmounted while it was
    starting (ENOTCONN, ENOENT) would have ended the mount's nursery with the error."""
    assert raise_readahead(tmp_path / "gone") is None
