"""tar, cp -a and rsync -aH keep hard links: a tree whose files have several names goes
into the mount and back out, also from a second device's copy of the server's tree,
and every name of a file still shares one inode (st_ino) with the right link count."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

from tests.fuse.test_tools import run, server_view
from tests.harness import MountProcess


def make_linked_tree(root: Path) -> None:
    rnd = random.Random(11)
    for d in ("a", "b", "a/deep"):
        (root / d).mkdir(parents=True)
    (root / "a" / "one").write_bytes(rnd.randbytes(5000))
    os.link(root / "a" / "one", root / "b" / "one-again")
    os.link(root / "a" / "one", root / "top")
    (root / "a" / "deep" / "big").write_bytes(rnd.randbytes(300 * 1024 + 5))  # spans three blocks
    os.link(root / "a" / "deep" / "big", root / "b" / "big-again")
    (root / "a" / "two").write_bytes(b"two")
    os.link(root / "a" / "two", root / "a" / "two-again")
    (root / "single").write_bytes(b"one name only")
    (root / "empty").write_bytes(b"")
    os.link(root / "empty", root / "b" / "empty-again")
    os.symlink("a/one", root / "sym")
    os.link(root / "sym", root / "b" / "sym-again", follow_symlinks=False)
    os.mkfifo(root / "fifo", 0o640)
    os.link(root / "fifo", root / "b" / "fifo-again")
    os.chmod(root / "a" / "two", 0o600)
    for path in (root / "a" / "one", root / "a" / "deep" / "big", root / "a" / "two", root / "single", root / "empty"):
        os.utime(path, ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))


def listing(root: Path) -> dict[str, tuple]:
    """Per path: mode, size, content (file) or target (symlink), mtime in seconds, the
    other names of its inode, and st_nlink."""
    names: dict[int, list[str]] = {}
    stats: dict[str, os.stat_result] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            stats[rel] = st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                names.setdefault(st.st_ino, []).append(rel)
    out = {}
    for rel, st in stats.items():
        if stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            continue
        content = (root / rel).read_bytes() if stat.S_ISREG(st.st_mode) else \
            os.readlink(root / rel) if stat.S_ISLNK(st.st_mode) else None
        out[rel] = (stat.filemode(st.st_mode), st.st_size, content,
                    st.st_mtime_ns // 10**9 if not stat.S_ISLNK(st.st_mode) else None,
                    sorted(names[st.st_ino]), st.st_nlink)
    return out


def test_tar_cp_a_and_rsync_keep_hard_links(mount: MountProcess, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_linked_tree(src)
    expected = listing(src)
    assert expected["top"][4:] == (["a/one", "b/one-again", "top"], 3)

    run("tar", "cf", tmp_path / "src.tar", "--numeric-owner", "-C", src, ".")
    (tmp_path / "untarred").mkdir()  # GNU tar keeps no hard links of FIFOs: what it makes locally is the reference
    run("tar", "xpf", tmp_path / "src.tar", "-C", tmp_path / "untarred")
    untarred = listing(tmp_path / "untarred")
    assert untarred["top"] == expected["top"]
    (mount.path / "tar").mkdir()
    run("tar", "xpf", tmp_path / "src.tar", "-C", mount.path / "tar")
    run("cp", "-a", src, mount.path / "cp")
    run("rsync", "-aH", f"{src}/", f"{mount.path / 'rsync'}/")
    want = {"tar": untarred, "cp": expected, "rsync": expected}
    for how in ("tar", "cp", "rsync"):
        assert listing(mount.path / how) == want[how], how
    assert run("rsync", "-aH", "--dry-run", "--itemize-changes", f"{src}/", f"{mount.path / 'rsync'}/") == ""

    with server_view(mount, tmp_path) as fresh:
        for how in ("tar", "cp", "rsync"):
            assert listing(fresh.path / how) == want[how], how
        # and back out of the second device's copy
        run("tar", "cf", tmp_path / "back.tar", "--numeric-owner", "-C", fresh.path / "tar", ".")
        (tmp_path / "from-tar").mkdir()
        run("tar", "xpf", tmp_path / "back.tar", "-C", tmp_path / "from-tar")
        run("cp", "-a", fresh.path / "cp", tmp_path / "from-cp")
        run("rsync", "-aH", f"{fresh.path / 'rsync'}/", f"{tmp_path / 'from-rsync'}/")
        for out, how in (("from-tar", "tar"), ("from-cp", "cp"), ("from-rsync", "rsync")):
            assert listing(tmp_path / out) == want[how], out
