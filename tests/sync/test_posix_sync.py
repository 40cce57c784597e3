"""Owners, special files, extended attributes and exact times travel to the other
device, both ways, and to a device that mirrors the tree from scratch."""

from __future__ import annotations

import ctypes
import os
import stat
import uuid
from pathlib import Path

from tests.fuse.posix_probe import ALICE, BOB, STAFF, tree_listing as listing, utimensat
from tests.harness import ServerProcess, cloudfs_mount
from tests.sync.conftest import Devices

RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(None, use_errno=True)


def build(top: Path) -> None:
    (top / "team").mkdir()
    os.chown(top / "team", ALICE, STAFF)
    os.chmod(top / "team", 0o2775)
    (top / "team" / "plan.txt").write_bytes(b"the plan")
    os.chown(top / "team" / "plan.txt", BOB, STAFF)
    os.chmod(top / "team" / "plan.txt", 0o640)
    os.setxattr(top / "team" / "plan.txt", "user.tags", b"red,urgent")
    os.setxattr(top / "team" / "plan.txt", "trusted.origin", bytes(range(256)))
    os.setxattr(top / "team", "user.icon", b"folder-blue")
    os.mkfifo(top / "team" / "queue", 0o620)
    os.mknod(top / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(top / "disk", 0o660 | stat.S_IFBLK, os.makedev(8, 17))
    os.symlink("team/plan.txt", top / "plan")
    os.lchown(top / "plan", ALICE, ALICE)
    (top / "mine.txt").write_bytes(b"owned by whoever mounts")
    utimensat(top / "mine.txt", (1_700_000_000, 111_222_333), (1_600_000_000, 444_555_666))


def exchange(a: Path, b: Path) -> None:
    if _libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), RENAME_EXCHANGE) != 0:
        raise OSError(ctypes.get_errno(), "renameat2", str(a))


def test_posix_attributes_arrive_on_the_other_device(devices: Devices, sync_server: ServerProcess,
                                                     tmp_path: Path) -> None:
    a, b = devices.a.path, devices.b.path
    build(a)
    devices.a.sync()
    devices.b.sync()
    expected = listing(a)
    assert expected["team/plan.txt"][1:3] == (BOB, STAFF)
    assert listing(b) == expected

    with cloudfs_mount(sync_server, devices.a.token, tmp_path / "fresh", tmp_path / "fresh-cache",
                       device="dev-fresh") as fresh:
        assert listing(fresh.path) == expected  # mirrored from a snapshot, not the journal

    # Changes made on b come back: chown, chmod, xattrs set and removed, exact times, exchange.
    os.chown(b / "team" / "plan.txt", ALICE, -1)
    os.chmod(b / "team" / "queue", 0o600)
    os.removexattr(b / "team" / "plan.txt", "user.tags")
    os.setxattr(b / "team" / "plan.txt", "user.reviewed", b"yes")
    os.utime(b / "team" / "plan.txt", ns=(5, 6_000_000_007))
    exchange(b / "mine.txt", b / "team" / "plan.txt")
    devices.b.sync()
    devices.a.sync()
    assert listing(a) == listing(b)
    moved = listing(a)["mine.txt"]
    assert moved[1] == ALICE and moved[5] == 6_000_000_007 and moved[6] == {
        "trusted.origin": bytes(range(256)), "user.reviewed": b"yes"}


def test_owners_follow_the_mounting_user_on_each_device(sync_server: ServerProcess, tmp_path: Path) -> None:
    """What the mounting user owns on one device belongs to whoever mounts it elsewhere;
    any other owner is kept as a number. Checked by reading the server's own record."""
    import httpx

    token = sync_server.add_user(f"own-{uuid.uuid4().hex[:8]}")
    with cloudfs_mount(sync_server, token, tmp_path / "m", tmp_path / "c") as m:
        (m.path / "root-made").write_bytes(b"x")
        (m.path / "bob-made").write_bytes(b"y")
        os.chown(m.path / "bob-made", BOB, BOB)
        m.sync()
    auth = {"Authorization": f"Bearer {token}"}
    mine = httpx.get(f"{sync_server.url}/resolve", params={"path": "/root-made"}, headers=auth).json()["node"]
    bobs = httpx.get(f"{sync_server.url}/resolve", params={"path": "/bob-made"}, headers=auth).json()["node"]
    assert (mine["uid"], mine["gid"]) == (-1, -1)
    assert (bobs["uid"], bobs["gid"]) == (BOB, BOB)
