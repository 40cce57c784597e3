"""POSIX semantics through a real mount, with os.* calls: the errno values programs
test for, and the behaviour tools rely on (atomic rename, unlinked-but-open files,
truncation, holes, appends, attributes).

The tests share one mount and each works in its own directory; the few that check
what reaches the server sync and mount the same account again with an empty cache.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import random
import stat
import threading
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

from cloudfs.backend.local.cache import BLOCK_SIZE
from tests.harness import MountProcess, ServerProcess, cloudfs_mount

BLOCK = BLOCK_SIZE  # the cache's block size: edge cases sit around multiples of it
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(None, use_errno=True)


@pytest.fixture(scope="module")
def shared_mount(fuse_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MountProcess]:
    token = fuse_server.add_user(f"posix-{uuid.uuid4().hex[:10]}")
    base = tmp_path_factory.mktemp("posix")
    with cloudfs_mount(fuse_server, token, base / "mnt", base / "cache") as m:
        yield m
        assert "Traceback" not in m.log(), m.log()[-5000:]


@pytest.fixture
def d(shared_mount: MountProcess, request: pytest.FixtureRequest) -> Path:
    """This test's own directory on the shared mount."""
    path = shared_mount.path / request.node.name
    path.mkdir()
    return path


@contextlib.contextmanager
def server_view(m: MountProcess, tmp_path: Path) -> Iterator[MountProcess]:
    """Sync `m`, then mount the same account with an empty cache: it shows the server's copy."""
    m.sync()
    with cloudfs_mount(m.server, m.token, tmp_path / "fresh-mnt", tmp_path / "fresh-cache",
                       device="fresh-dev") as fresh:
        yield fresh
        assert "Traceback" not in fresh.log(), fresh.log()[-5000:]


def fails(fn: Callable[..., object], *args: object, **kwargs: object) -> str:
    """The errno name `fn(*args)` fails with (the assertion then shows a readable name)."""
    try:
        fn(*args, **kwargs)
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    raise AssertionError(f"{getattr(fn, '__name__', fn)}{args} did not fail")


def renameat2(old: Path, new: Path, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(old))


def open_flags(path: Path, flags: int, mode: int = 0o644) -> None:
    os.close(os.open(path, flags, mode))


def read_fd(fd: int, size: int, offset: int = 0) -> bytes:
    out = b""
    while len(out) < size:
        part = os.pread(fd, size - len(out), offset + len(out))
        if not part:
            break
        out += part
    return out


# --- errno ---


def test_enoent(d: Path) -> None:
    missing = d / "missing"
    assert fails(os.stat, missing) == "ENOENT"
    assert fails(os.lstat, missing) == "ENOENT"
    assert fails(os.open, missing, os.O_RDONLY) == "ENOENT"
    assert fails(os.open, missing, os.O_WRONLY) == "ENOENT"
    assert fails(os.open, missing / "child", os.O_WRONLY | os.O_CREAT) == "ENOENT"
    assert fails(os.unlink, missing) == "ENOENT"
    assert fails(os.rmdir, missing) == "ENOENT"
    assert fails(os.listdir, missing) == "ENOENT"
    assert fails(os.readlink, missing) == "ENOENT"
    assert fails(os.chmod, missing, 0o600) == "ENOENT"
    assert fails(os.rename, missing, d / "elsewhere") == "ENOENT"
    assert fails(os.mkdir, missing / "sub") == "ENOENT"
    assert os.listdir(d) == []


def test_eexist(d: Path) -> None:
    (d / "dir").mkdir()
    (d / "file").write_bytes(b"x")
    (d / "link").symlink_to("file")
    assert fails(os.mkdir, d / "dir") == "EEXIST"
    assert fails(os.mkdir, d / "file") == "EEXIST"
    assert fails(open_flags, d / "file", os.O_WRONLY | os.O_CREAT | os.O_EXCL) == "EEXIST"
    assert fails(open_flags, d / "dir", os.O_WRONLY | os.O_CREAT | os.O_EXCL) == "EEXIST"
    assert fails(open_flags, d / "link", os.O_WRONLY | os.O_CREAT | os.O_EXCL) == "EEXIST"
    assert fails(os.symlink, "anything", d / "file") == "EEXIST"
    assert (d / "file").read_bytes() == b"x"


def test_enotdir(d: Path) -> None:
    f = d / "file"
    f.write_bytes(b"x")
    (d / "dir").mkdir()
    assert fails(os.stat, f / "child") == "ENOTDIR"
    assert fails(os.open, f / "child", os.O_WRONLY | os.O_CREAT, 0o644) == "ENOTDIR"
    assert fails(os.mkdir, f / "child") == "ENOTDIR"
    assert fails(os.listdir, f) == "ENOTDIR"
    assert fails(os.open, f, os.O_RDONLY | os.O_DIRECTORY) == "ENOTDIR"
    assert fails(os.rmdir, f) == "ENOTDIR"
    assert fails(os.rename, d / "dir", f) == "ENOTDIR"
    assert f.read_bytes() == b"x"


def test_eisdir(d: Path) -> None:
    (d / "dir").mkdir()
    (d / "dir" / "inside").write_bytes(b"")
    (d / "empty").mkdir()
    (d / "file").write_bytes(b"x")
    assert fails(os.open, d / "dir", os.O_WRONLY) == "EISDIR"
    assert fails(os.open, d / "dir", os.O_RDWR) == "EISDIR"
    assert fails(os.open, d / "dir", os.O_WRONLY | os.O_CREAT, 0o644) == "EISDIR"
    assert fails(os.unlink, d / "dir") == "EISDIR"
    assert fails(os.truncate, d / "dir", 0) == "EISDIR"
    assert fails(os.rename, d / "file", d / "empty") == "EISDIR"
    assert fails(os.rename, d / "file", d / "dir") == "EISDIR"
    assert sorted(os.listdir(d)) == ["dir", "empty", "file"]


def test_enotempty(d: Path) -> None:
    (d / "full" / "sub").mkdir(parents=True)
    assert fails(os.rmdir, d / "full") == "ENOTEMPTY"
    os.rmdir(d / "full" / "sub")
    (d / "full" / "f").write_bytes(b"")
    assert fails(os.rmdir, d / "full") == "ENOTEMPTY"
    os.unlink(d / "full" / "f")
    os.rmdir(d / "full")
    assert os.listdir(d) == []


def test_enametoolong(d: Path) -> None:
    longest = "n" * 255
    (d / longest).write_bytes(b"ok")
    assert os.listdir(d) == [longest]
    os.rename(d / longest, d / ("é" * 127 + "x"))  # 255 bytes of UTF-8
    assert (d / ("é" * 127 + "x")).read_bytes() == b"ok"
    for name in ("n" * 256, "é" * 128):  # 256 bytes
        assert fails(open_flags, d / name, os.O_WRONLY | os.O_CREAT) == "ENAMETOOLONG"
        assert fails(os.mkdir, d / name) == "ENAMETOOLONG"
        assert fails(os.symlink, "target", d / name) == "ENAMETOOLONG"
        assert fails(os.rename, d / ("é" * 127 + "x"), d / name) == "ENAMETOOLONG"
    assert os.listdir(d) == ["é" * 127 + "x"]


def test_enametoolong_on_lookup(d: Path) -> None:
    """stat/open of a name longer than NAME_MAX is ENAMETOOLONG on Linux filesystems."""
    assert fails(os.stat, d / ("n" * 256)) == "ENAMETOOLONG"
    assert fails(os.open, d / ("n" * 256), os.O_RDONLY) == "ENAMETOOLONG"


# --- rename ---


def test_rename_over_existing_file_replaces_it(d: Path) -> None:
    target, source = d / "target", d / "source"
    target.write_bytes(b"old" * 1000)
    source.write_bytes(b"new" * 2000)
    fd = os.open(target, os.O_RDONLY)
    try:
        os.rename(source, target)
        assert target.read_bytes() == b"new" * 2000
        assert read_fd(fd, 10_000) == b"old" * 1000  # an open handle keeps the replaced file
    finally:
        os.close(fd)
    assert os.listdir(d) == ["target"]


def test_rename_over_existing_file_is_atomic(d: Path) -> None:
    """A reader that keeps opening the target never sees it missing or half-written."""
    target = d / "config"
    target.write_bytes(b"v0-" * 5000)
    stop = threading.Event()
    seen: set[bytes] = set()
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                data = target.read_bytes()
            except OSError as exc:
                problems.append(f"read failed: {exc!r}")
                return
            version = data[:3]
            if data != version * 5000:
                problems.append(f"torn read: {len(data)} bytes starting {data[:12]!r}")
                return
            seen.add(version)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(1, 100):
            tmp = d / f".config.{i}"
            tmp.write_bytes(f"v{i % 10}-".encode() * 5000)
            os.rename(tmp, target)
    finally:
        stop.set()
        thread.join(30)
    assert not problems, problems
    assert len(seen) > 1
    assert os.listdir(d) == ["config"]


def test_rename_directories(d: Path) -> None:
    (d / "a" / "deep").mkdir(parents=True)
    (d / "a" / "deep" / "f").write_bytes(b"f")
    (d / "full").mkdir()
    (d / "full" / "g").write_bytes(b"g")
    (d / "empty").mkdir()
    (d / "file").write_bytes(b"")
    assert fails(os.rename, d / "a", d / "full") == "ENOTEMPTY"
    assert fails(os.rename, d / "a", d / "a" / "deep" / "inside") == "EINVAL"
    assert fails(os.rename, d / "a", d / "file") == "ENOTDIR"
    os.rename(d / "a", d / "empty")  # over an empty directory: allowed
    assert (d / "empty" / "deep" / "f").read_bytes() == b"f"
    assert sorted(os.listdir(d)) == ["empty", "file", "full"]
    os.rename(d / "empty", d / "full" / "moved")
    assert (d / "full" / "moved" / "deep" / "f").read_bytes() == b"f"


def test_renameat2_noreplace_and_exchange(d: Path) -> None:
    (d / "a").write_bytes(b"a")
    (d / "b").write_bytes(b"b")
    assert fails(renameat2, d / "a", d / "b", RENAME_NOREPLACE) == "EEXIST"
    assert fails(renameat2, d / "a", d / "b", RENAME_EXCHANGE | RENAME_NOREPLACE) == "EINVAL"
    assert (d / "a").read_bytes() == b"a" and (d / "b").read_bytes() == b"b"
    renameat2(d / "a", d / "b", RENAME_EXCHANGE)
    assert (d / "a").read_bytes() == b"b" and (d / "b").read_bytes() == b"a"
    renameat2(d / "a", d / "c", RENAME_NOREPLACE)  # nothing in the way: fine
    assert sorted(os.listdir(d)) == ["b", "c"]
    assert (d / "c").read_bytes() == b"b"


def test_removed_directory_still_answers_stat_while_it_is_the_cwd(d: Path) -> None:
    (d / "sub").mkdir()
    old = os.getcwd()
    os.chdir(d / "sub")
    try:
        os.rmdir(d / "sub")
        assert os.stat(".").st_nlink in (0, 1)  # a local filesystem answers with nlink 0
    finally:
        os.chdir(old)


# --- files ---


def test_unlinked_open_file_stays_readable_until_closed(d: Path) -> None:
    f = d / "doomed"
    data = os.urandom(3 * BLOCK + 11)
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.unlink(f)
        assert fails(os.stat, f) == "ENOENT"
        assert os.listdir(d) == []
        assert os.fstat(fd).st_size == len(data)
        assert read_fd(fd, len(data) + 10) == data
        os.pwrite(fd, b"still writable", 5)  # and still writable
        assert read_fd(fd, 19) == data[:5] + b"still writable"
        f.write_bytes(b"a new file under the old name")
        assert read_fd(fd, 5) == data[:5]
    finally:
        os.close(fd)
    assert f.read_bytes() == b"a new file under the old name"
    assert os.listdir(d) == ["doomed"]


def test_unlinked_committed_file_stays_readable(shared_mount: MountProcess, d: Path) -> None:
    """Same, for a file whose bytes are already on the server."""
    f = d / "committed"
    data = os.urandom(2 * BLOCK + 3)
    f.write_bytes(data)
    shared_mount.sync()
    fd = os.open(f, os.O_RDONLY)
    try:
        os.unlink(f)
        shared_mount.sync()  # the server's delete must not take the bytes from under us
        assert read_fd(fd, len(data)) == data
    finally:
        os.close(fd)
    assert os.listdir(d) == []


@pytest.mark.parametrize("committed", [False, True], ids=["dirty", "committed"])
def test_truncate(shared_mount: MountProcess, d: Path, committed: bool) -> None:
    f = d / "t"
    data = bytes(random.Random(5).randbytes(3 * BLOCK + 100))
    f.write_bytes(data)
    if committed:
        shared_mount.sync()
    os.truncate(f, BLOCK + 10)  # shrink, mid-block
    assert os.stat(f).st_size == BLOCK + 10
    assert f.read_bytes() == data[:BLOCK + 10]
    os.truncate(f, 3 * BLOCK + 100)  # grow again: zeros, never the old bytes
    assert f.read_bytes() == data[:BLOCK + 10] + bytes(2 * BLOCK + 90)
    fd = os.open(f, os.O_RDWR)
    try:
        os.ftruncate(fd, 5)
        os.ftruncate(fd, 4 * BLOCK)
        assert read_fd(fd, 5 * BLOCK) == data[:5] + bytes(4 * BLOCK - 5)
        os.pwrite(fd, b"tail", 2 * BLOCK)
        os.ftruncate(fd, 0)
        assert os.fstat(fd).st_size == 0
        os.ftruncate(fd, 100)
        assert read_fd(fd, 1000) == bytes(100)
    finally:
        os.close(fd)
    assert f.read_bytes() == bytes(100)
    open_flags(f, os.O_WRONLY | os.O_TRUNC)
    assert os.stat(f).st_size == 0


def test_sparse_writes(d: Path) -> None:
    f = d / "sparse"
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"head")
        os.lseek(fd, 5 * BLOCK + 1000, os.SEEK_SET)
        os.write(fd, b"tail")
        os.pwrite(fd, b"mid", 2 * BLOCK - 1)  # straddles a block boundary inside the hole
        assert os.fstat(fd).st_size == 5 * BLOCK + 1004
    finally:
        os.close(fd)
    expected = bytearray(5 * BLOCK + 1004)
    expected[0:4] = b"head"
    expected[2 * BLOCK - 1:2 * BLOCK + 2] = b"mid"
    expected[-4:] = b"tail"
    assert f.read_bytes() == bytes(expected)
    with open(f, "rb") as fh:
        fh.seek(3 * BLOCK)
        assert fh.read(BLOCK) == bytes(BLOCK)


def _random_writes(mounted: Path, reference: Path, seed: int, ops: int = 150) -> None:
    rnd = random.Random(seed)
    fd_m = os.open(mounted, os.O_RDWR | os.O_CREAT, 0o644)
    fd_r = os.open(reference, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for i in range(ops):
            if i % 37 == 36:
                length = rnd.randrange(0, 6 * BLOCK)
                os.ftruncate(fd_m, length)
                os.ftruncate(fd_r, length)
                continue
            off = rnd.choice([rnd.randrange(0, 6 * BLOCK), rnd.randrange(0, 6) * BLOCK - rnd.randrange(0, 3)])
            data = rnd.randbytes(rnd.choice([1, 7, 4096, rnd.randrange(1, 2 * BLOCK)]))
            assert os.pwrite(fd_m, data, max(off, 0)) == len(data)
            os.pwrite(fd_r, data, max(off, 0))
            if i % 10 == 0:
                probe = rnd.randrange(0, 6 * BLOCK)
                assert os.pread(fd_m, 5000, probe) == os.pread(fd_r, 5000, probe), f"op {i}"
        size = os.fstat(fd_r).st_size
        assert os.fstat(fd_m).st_size == size
        assert read_fd(fd_m, size + 1) == read_fd(fd_r, size + 1)
    finally:
        os.close(fd_m)
        os.close(fd_r)
    assert mounted.read_bytes() == reference.read_bytes()


def test_random_offset_writes_match_a_local_file(shared_mount: MountProcess, d: Path, tmp_path: Path) -> None:
    _random_writes(d / "random", tmp_path / "random", seed=6)
    shared_mount.sync()  # now the same against a committed base version
    _random_writes(d / "random", tmp_path / "random", seed=7)


def test_o_append(d: Path) -> None:
    f = d / "log"
    f.write_bytes(b"start\n")
    fd = os.open(f, os.O_WRONLY | os.O_APPEND)
    other = os.open(f, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"one\n")
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"two\n")  # O_APPEND ignores the seek
        os.write(other, b"three\n")  # another handle appends after the first one's writes
        os.write(fd, b"four\n")
    finally:
        os.close(fd)
        os.close(other)
    assert f.read_bytes() == b"start\none\ntwo\nthree\nfour\n"
    with open(f, "ab") as fh:
        fh.write(b"x" * (BLOCK + 1))
    assert os.stat(f).st_size == len(b"start\none\ntwo\nthree\nfour\n") + BLOCK + 1


def test_fsync_file_and_directory(d: Path) -> None:
    fd = os.open(d / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"durable")
        os.fsync(fd)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    dir_fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    root_fd = os.open(d.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(root_fd)
    finally:
        os.close(root_fd)


# --- attributes and links ---


MTIME_NS = 1_234_567_890_123_456_789


def test_chmod_and_utime_survive_a_fresh_cache(shared_mount: MountProcess, d: Path, tmp_path: Path) -> None:
    (d / "f").write_bytes(b"content")
    (d / "x").write_bytes(b"#!/bin/sh\n")
    (d / "sub").mkdir()
    shared_mount.sync()  # also attributes changed on committed nodes, not only new ones
    (d / "new").write_bytes(b"never synced before")
    os.chmod(d / "f", 0o600)
    os.chmod(d / "x", 0o755)
    os.chmod(d / "sub", 0o750)
    os.chmod(d / "new", 0o640)
    os.utime(d / "f", ns=(MTIME_NS, MTIME_NS))
    os.utime(d / "new", ns=(MTIME_NS + 1, MTIME_NS + 1))
    os.utime(d / "sub", ns=(MTIME_NS + 2, MTIME_NS + 2))
    expected = {"f": (0o600, MTIME_NS), "x": (0o755, None), "sub": (0o750, MTIME_NS + 2), "new": (0o640, MTIME_NS + 1)}

    def check(root: Path) -> None:
        for name, (mode, mtime_ns) in expected.items():
            st = os.stat(root / name)
            assert stat.S_IMODE(st.st_mode) == mode, name
            if mtime_ns is not None:
                assert st.st_mtime_ns == mtime_ns, name

    check(d)
    with server_view(shared_mount, tmp_path) as fresh:
        check(fresh.path / d.name)
        assert (fresh.path / d.name / "f").read_bytes() == b"content"
        assert (fresh.path / d.name / "new").read_bytes() == b"never synced before"


def test_symlink_and_readlink(d: Path) -> None:
    (d / "target").write_bytes(b"pointed at")
    os.symlink("target", d / "rel")
    os.symlink("/definitely/not/here", d / "dangling")
    os.symlink("ü" * 300, d / "long-target")  # targets are not names: longer than 255 bytes is fine
    assert os.readlink(d / "rel") == "target"
    assert os.readlink(d / "dangling") == "/definitely/not/here"
    assert os.readlink(d / "long-target") == "ü" * 300
    st = os.lstat(d / "rel")
    assert stat.S_ISLNK(st.st_mode) and st.st_size == len("target")
    assert (d / "rel").read_bytes() == b"pointed at"
    assert fails(os.stat, d / "dangling") == "ENOENT"
    assert fails(os.readlink, d / "target") == "EINVAL"
    os.rename(d / "rel", d / "renamed")
    assert os.readlink(d / "renamed") == "target"
    os.unlink(d / "renamed")
    assert (d / "target").read_bytes() == b"pointed at"


def test_symlink_mtime_survives_a_fresh_cache(shared_mount: MountProcess, d: Path, tmp_path: Path) -> None:
    os.symlink("somewhere", d / "link")
    os.utime(d / "link", ns=(MTIME_NS, MTIME_NS), follow_symlinks=False)  # what tar, rsync -a and cp -a do
    assert os.lstat(d / "link").st_mtime_ns == MTIME_NS
    with server_view(shared_mount, tmp_path) as fresh:
        assert os.readlink(fresh.path / d.name / "link") == "somewhere"
        assert os.lstat(fresh.path / d.name / "link").st_mtime_ns == MTIME_NS


def test_content_edits_survive_a_fresh_cache(shared_mount: MountProcess, d: Path, tmp_path: Path) -> None:
    """Truncation, holes and overwrites of committed files, as the server stores them."""
    rnd = random.Random(8)
    base = rnd.randbytes(4 * BLOCK + 5)
    for name in ("shrunk-grown", "holes", "patched"):
        (d / name).write_bytes(base)
    os.symlink("patched", d / "link")
    shared_mount.sync()
    os.truncate(d / "shrunk-grown", 100)
    os.truncate(d / "shrunk-grown", 2 * BLOCK)
    with open(d / "holes", "r+b") as f:
        f.seek(8 * BLOCK)
        f.write(b"far")
    with open(d / "patched", "r+b") as f:
        f.seek(BLOCK - 2)
        f.write(b"PATCH")
    expected = {
        "shrunk-grown": base[:100] + bytes(2 * BLOCK - 100),
        "holes": base + bytes(8 * BLOCK - len(base)) + b"far",
        "patched": base[:BLOCK - 2] + b"PATCH" + base[BLOCK + 3:],
    }
    with server_view(shared_mount, tmp_path) as fresh:
        for name, data in expected.items():
            assert (fresh.path / d.name / name).read_bytes() == data, name
        assert os.readlink(fresh.path / d.name / "link") == "patched"


def test_statfs(d: Path) -> None:
    st = os.statvfs(d)
    assert st.f_bsize > 0 and st.f_frsize > 0
    assert st.f_blocks > 0 and 0 <= st.f_bfree <= st.f_blocks and 0 <= st.f_bavail <= st.f_blocks
    assert st.f_files > 0 and 0 <= st.f_ffree <= st.f_files
    assert st.f_namemax == 255

