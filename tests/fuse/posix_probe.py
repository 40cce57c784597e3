"""Run the same POSIX calls on the mount and on a local directory and record what each
answers, so a test compares the two logs instead of hard-coding what Linux does.

Calls can run as another user: a forked child drops to the uid, gid and groups given
(the mount has `allow_other`, so other uids reach it) and sends back the result or the
errno's name. Stat results are reduced to what a local disk and the mount must agree
on (kind, mode bits, owner, nlink of non-directories, size of files, rdev).
"""

from __future__ import annotations

import ctypes
import errno
import os
import pickle
import stat
from pathlib import Path
from typing import Any, Callable

ALICE, BOB, STAFF, OUTSIDERS = 2101, 2102, 2200, 2300
"""Test identities: two users, a group alice is in, a group nobody here is in."""

UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
_libc = ctypes.CDLL(None, use_errno=True)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def utimensat(path: Path, atime: tuple[int, int], mtime: tuple[int, int], *, follow: bool = True) -> None:
    """utimensat(2) with (sec, nsec) pairs; nsec may be UTIME_NOW or UTIME_OMIT."""
    times = (_Timespec * 2)(_Timespec(*atime), _Timespec(*mtime))
    flags = 0 if follow else AT_SYMLINK_NOFOLLOW
    if _libc.utimensat(AT_FDCWD, os.fsencode(path), times, flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))


def getxattr_sized(path: Path, name: str, size: int) -> int:
    """getxattr(2) into a buffer of `size` bytes (0 asks for the length): ERANGE if short."""
    buf = ctypes.create_string_buffer(max(size, 1))
    n = _libc.getxattr(os.fsencode(path), name.encode(), buf if size else None, ctypes.c_size_t(size))
    if n < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))
    return n


def listxattr_sized(path: Path, size: int) -> int:
    buf = ctypes.create_string_buffer(max(size, 1))
    n = _libc.listxattr(os.fsencode(path), buf if size else None, ctypes.c_size_t(size))
    if n < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))
    return n


def as_user(uid: int, gid: int, groups: list[int], fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    """Run fn(*args) in a child with these credentials: ("ok", value) or ("err", "EACCES")."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(read_end)
            os.setgroups(groups)
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            result = call(fn, *args)
            os.write(write_end, pickle.dumps(result))
        except BaseException:  # noqa: BLE001 - reported as a failed call
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    while True:
        part = os.read(read_end, 65536)
        if not part:
            break
        chunks.append(part)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    if status != 0 or not chunks:
        return ("crash", f"child exited with status {status}")
    return pickle.loads(b"".join(chunks))


def call(fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    try:
        return ("ok", fn(*args))
    except OSError as exc:
        return ("err", errno.errorcode.get(exc.errno, str(exc.errno)))


def brief(st: os.stat_result) -> tuple:
    """What the mount must report exactly as a local disk does."""
    kind = stat.S_IFMT(st.st_mode)
    return (stat.filemode(st.st_mode), st.st_uid, st.st_gid, st.st_nlink,
            st.st_size if kind == stat.S_IFREG else None,
            (os.major(st.st_rdev), os.minor(st.st_rdev)) if kind in (stat.S_IFCHR, stat.S_IFBLK) else None)


class Probe:
    """The log of one run of a scenario, rooted at `base`; paths are logged relative to it."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.log: list[tuple] = []

    def __call__(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        result = call(fn, *args)
        self.log.append((what, self._relative(result)))
        return result[1] if result[0] == "ok" else None

    def as_(self, who: tuple[int, int, list[int]], what: str, fn: Callable[..., Any], *args: Any) -> None:
        self.log.append((what, self._relative(as_user(*who, fn, *args))))

    def stat(self, what: str, path: Path, *, follow: bool = False) -> None:
        self(what, lambda: brief(os.stat(path, follow_symlinks=follow)))

    def _relative(self, result: tuple[str, Any]) -> tuple[str, Any]:
        kind, value = result
        if isinstance(value, (str, Path)) and str(value).startswith(str(self.base)):
            value = os.path.relpath(value, self.base)
        return kind, value


def run_side_by_side(scenario: Callable[[Path, Probe], None], mount_dir: Path, local_dir: Path) -> tuple[list, list]:
    """Run `scenario` in a fresh 0755 directory of each tree; returns both logs."""
    logs = []
    for top in (mount_dir, local_dir):
        base = top / scenario.__name__
        base.mkdir()
        os.chmod(base, 0o755)
        probe = Probe(base)
        scenario(base, probe)
        logs.append(probe.log)
    return logs[0], logs[1]


ALICE_ID = (ALICE, ALICE, [ALICE, STAFF])
BOB_ID = (BOB, BOB, [BOB])


def tree_listing(top: Path) -> dict[str, tuple]:
    """Everything two copies of a tree must agree on, per path: kind and mode, owner,
    rdev, size and mtime to the nanosecond (not of directories: those are the local
    disk's), xattrs, symlink target, content, and which other names share its inode."""
    out: dict[str, tuple] = {}
    by_inode: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = str(path.relative_to(top))
            st = os.lstat(path)
            kind = stat.S_IFMT(st.st_mode)
            if kind != stat.S_IFDIR and st.st_nlink > 1:
                by_inode.setdefault(st.st_ino, []).append(rel)
            readable = kind in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK)
            xattrs = {k: os.getxattr(path, k, follow_symlinks=False)
                      for k in sorted(os.listxattr(path, follow_symlinks=False))} if readable else {}
            out[rel] = (stat.filemode(st.st_mode), st.st_uid, st.st_gid, st.st_rdev,
                        st.st_size if kind != stat.S_IFDIR else None,
                        st.st_mtime_ns if kind != stat.S_IFDIR else None, xattrs,
                        os.readlink(path) if kind == stat.S_IFLNK else None,
                        path.read_bytes() if kind == stat.S_IFREG else None)
    for names in by_inode.values():
        for rel in names:
            out[rel] += (tuple(sorted(names)),)
    return out
