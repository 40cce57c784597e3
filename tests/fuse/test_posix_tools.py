"""`cp -a`, `tar --xattrs -xpf` and `rsync -aHAX` into the mount and back out, as root,
of a tree with several owners, a setgid directory, special files and extended
attributes: the copies are identical to the source (kinds, modes, owners, device
numbers, nanosecond mtimes, xattrs, links, bytes), also as another device sees them."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from tests.fuse.posix_probe import ALICE, BOB, STAFF, tree_listing, utimensat
from tests.harness import MountProcess, ServerProcess, cloudfs_mount


def build_source(top: Path) -> None:
    """What `tar x` of a system backup or `cp -a` of a build tree brings along."""
    (top / "home" / "alice").mkdir(parents=True)
    os.chown(top / "home" / "alice", ALICE, ALICE)
    os.chmod(top / "home" / "alice", 0o750)
    notes = top / "home" / "alice" / "notes.txt"
    notes.write_bytes(b"alice's notes\n" * 100)
    os.chown(notes, ALICE, ALICE)
    os.chmod(notes, 0o600)
    os.setxattr(notes, "user.xdg.tags", b"work,draft")
    os.setxattr(notes, "user.checksum", os.urandom(32))
    (top / "srv").mkdir()
    os.chown(top / "srv", 0, STAFF)
    os.chmod(top / "srv", 0o2775)
    tool = top / "srv" / "tool"
    tool.write_bytes(b"#!/bin/sh\necho hi\n")
    os.chown(tool, BOB, STAFF)
    os.chmod(tool, 0o4755)
    os.setxattr(tool, "security.capability", b"\x01\x00\x00\x02" + b"\x00" * 16)
    os.setxattr(tool, "trusted.build", b"1234")
    os.mkfifo(top / "srv" / "control", 0o660)
    os.mknod(top / "srv" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(top / "srv" / "disk", 0o640 | stat.S_IFBLK, os.makedev(8, 0))
    os.symlink("../home/alice/notes.txt", top / "srv" / "notes")
    os.lchown(top / "srv" / "notes", ALICE, STAFF)
    (top / "big.bin").write_bytes(os.urandom(3 << 20))
    utimensat(top / "big.bin", (1_650_000_000, 1), (1_600_000_000, 999_999_999))
    (top / "empty-dir").mkdir()
    os.setxattr(top / "empty-dir", "user.icon", b"folder")


@pytest.fixture(scope="module")
def drive(fuse_server: ServerProcess) -> Iterator[tuple[MountProcess, Path, Path]]:
    top = Path(tempfile.mkdtemp(prefix="cloudfs-tools-", dir="/tmp"))
    src = top / "src"
    src.mkdir()
    build_source(src)
    token = fuse_server.add_user(f"posix-tools-{uuid.uuid4().hex[:8]}")
    try:
        with cloudfs_mount(fuse_server, token, top / "mnt", top / "cache") as m:
            yield m, src, top
            assert "Traceback" not in m.log(), m.log()[-5000:]
    finally:
        shutil.rmtree(top, ignore_errors=True)


def run(*args: object, cwd: Path | None = None) -> None:
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"


TAR = ["tar", "--format=posix", "--xattrs", "--xattrs-include=*", "--numeric-owner", "--acls"]


@pytest.mark.parametrize("tool", ["cp -a", "tar", "rsync -aHAX"])
def test_copies_in_and_out_keep_everything(drive: tuple[MountProcess, Path, Path], tool: str) -> None:
    m, src, top = drive
    expected = tree_listing(src)
    slug = tool.split()[0]
    into, back = m.path / slug, top / f"back-{slug}"
    if tool == "cp -a":
        run("cp", "-a", src, into)
        run("cp", "-a", into, back)
    elif tool == "tar":
        into.mkdir()
        back.mkdir()
        run(*TAR, "-cpf", top / "in.tar", "-C", src, ".")
        run(*TAR, "-xpf", top / "in.tar", "-C", into)
        run(*TAR, "-cpf", top / "out.tar", "-C", into, ".")
        run(*TAR, "-xpf", top / "out.tar", "-C", back)
    else:
        run("rsync", "-aHAX", f"{src}/", f"{into}/")
        run("rsync", "-aHAX", f"{into}/", f"{back}/")
    assert tree_listing(into) == expected
    assert tree_listing(back) == expected


def test_another_device_sees_the_same_copy(drive: tuple[MountProcess, Path, Path], tmp_path: Path) -> None:
    m, src, _ = drive
    run("cp", "-a", src, m.path / "for-b")
    m.sync()
    with cloudfs_mount(m.server, m.token, tmp_path / "b", tmp_path / "cache-b", device="dev-b") as b:
        assert tree_listing(b.path / "for-b") == tree_listing(src)
