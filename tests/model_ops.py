"""The operations of the random multi-device programs (tests/model.py has the model):
`Actor` runs them on the devices' mounts and books what they did in a `Ledger`.
OPERATIONS is a table, name -> function: a new kind is a function and a row, and the
generators (the model test's strategies, the soak's table) pick it up by name. Symlinks
are never followed (O_NOFOLLOW): an operation on a file never reaches through a link
into another file, which the books could not tell apart. Hard links are: an operation
on a file touches every name the file has on that device at that moment (`names`).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import errno
import os
import random
import stat
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from tests.model import Ledger, label, read_all, under_any, walk

ALLOWED_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOTEMPTY, errno.EINVAL, errno.ELOOP}
"""What an operation may meet because the tree moved under it (live sync): an outcome."""

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Pick:
    """The `index`-th path of `kind` ("file", "dir" or "link") that exists on the device
    when the operation runs (conflicted copies included)."""

    kind: str
    index: int



def rename_noreplace(src: Path, dst: Path) -> None:
    if _libc.renameat2(-100, os.fsencode(src), -100, os.fsencode(dst), 1) != 0:  # AT_FDCWD, RENAME_NOREPLACE
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(dst))



class Unexpected(Exception):
    """An operation failed in a way live sync does not explain (a bug, or a dead mount)."""


@dataclass
class Actor:
    """Runs operations on the devices' mounts and books them in `ledger`. `note` gets
    one line per operation; `excused(dev, since)` says whether an EIO is explained (a
    fault kept the device from the server since `since`, so uncached bytes could not
    be read). `also`: more errnos that are outcomes (EXDEV, where a hard link may not
    cross into a shared folder); `fixed`: paths a Pick never resolves to (a shared
    folder's root); `pools`: kind -> the paths a Pick falls back on when nothing of
    that kind exists (FILE_POOL, DIR_POOL, LINK_POOL unless given)."""

    ledger: Ledger
    roots: dict[str, Path]
    note: Callable[[str, str], None]
    excused: Callable[[str, float], bool] = lambda dev, since: False
    outcomes: Counter[str] = field(default_factory=Counter)
    succeeded: Counter[str] = field(default_factory=Counter)
    """operation kind -> how many ended "ok" (the figures say what the runs exercised)"""
    also: frozenset[int] = frozenset()
    fixed: frozenset[str] = frozenset()
    pools: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {"file": FILE_POOL, "dir": DIR_POOL, "link": LINK_POOL})

    def run(self, kind: str, dev: str, *args: object) -> str:
        """One operation of OPERATIONS; returns its outcome ("ok..." or an errno name)."""
        outcome = OPERATIONS[kind](self, dev, *args)
        if outcome.startswith("ok"):
            self.succeeded[kind] += 1
        return outcome

    def resolve(self, dev: str, path: str | Pick) -> str:
        if isinstance(path, str):
            return path
        existing = sorted(p for p, kind in walk(self.roots[dev]) if kind == path.kind and p not in self.fixed)
        pool = self.pools[path.kind]
        return existing[path.index % len(existing)] if existing else pool[path.index % len(pool)]

    def names(self, dev: str, path: str) -> list[str]:
        """`path` and every other name of its file on `dev` now (hard links)."""
        root = self.roots[dev]
        try:
            st = os.lstat(root / path)
        except OSError:
            return [path]
        if st.st_nlink < 2 or not stat.S_ISREG(st.st_mode):
            return [path]
        found = set()
        for rel, kind in walk(root):
            if kind == "file":
                with contextlib.suppress(OSError):
                    if os.lstat(root / rel).st_ino == st.st_ino:
                        found.add(rel)
        return sorted(found | {path})

    @contextlib.contextmanager
    def op(self, dev: str, what: str, also: frozenset[int] = frozenset()) -> Iterator[list[str]]:
        """Run one operation: an expected errno (the tree moved under it, or one of
        `also`) is an outcome, anything else raises Unexpected."""
        outcome = ["ok"]
        since = time.monotonic()
        try:
            yield outcome
        except OSError as exc:
            if exc.errno not in ALLOWED_ERRNOS | self.also | also and not (exc.errno == errno.EIO and self.excused(dev, since)):
                self.note(dev, f"{what} -> {exc!r}")
                raise Unexpected(f"{what} on dev-{dev}: {exc!r}") from exc
            outcome[0] = errno.errorcode[exc.errno]
        self.outcomes["ok" if outcome[0].startswith("ok") else outcome[0]] += 1
        self.note(dev, f"{what} -> {outcome[0]}")

    def observe_open(self, dev: str, path: str, flags: int = 0) -> tuple[int, bytes]:
        """An open file and the bytes in it, still under `path` once read: live sync may
        put another device's version there (a new inode) while a large file is read, and
        an unlink or rename by path would then take bytes the model never saw go (soak
        seed 440144: `rm -r y` counted as removing the old bytes, while the new ones
        went). Read again then, a few times; the window left is a stat long."""
        for attempt in range(5):
            fd = os.open(self.roots[dev] / path, os.O_RDWR | os.O_NOFOLLOW | flags, 0o644)
            try:
                content = read_all(fd)
                if attempt == 4 or os.stat(self.roots[dev] / path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                    return fd, content
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        raise AssertionError("unreachable: the last attempt returns")


def _write(a: Actor, dev: str, path: str | Pick, size: int, seed: int) -> str:
    path = a.resolve(dev, path)
    new = a.ledger.new_content(dev, size, seed)
    with a.op(dev, f"write {path} {label(new)}") as outcome:
        fd, old = a.observe_open(dev, path, os.O_CREAT)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, new, 0)
        finally:
            os.close(fd)
        a.ledger.produce(dev, old, new, path)
        a.ledger.touched(dev, *a.names(dev, path))
        outcome[0] = f"ok, was {label(old)}"
    return outcome[0]


def _create(a: Actor, dev: str, path: str | Pick, size: int, seed: int) -> str:
    """O_CREAT | O_EXCL: a new file or EEXIST, never a replace."""
    path = a.resolve(dev, path)
    new = a.ledger.new_content(dev, size, seed)
    with a.op(dev, f"create {path} {label(new)}") as outcome:
        fd = os.open(a.roots[dev] / path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            os.pwrite(fd, new, 0)
        finally:
            os.close(fd)
        a.ledger.produce(dev, b"", new, path)
        a.ledger.touched(dev, path)
    return outcome[0]


def _append(a: Actor, dev: str, path: str | Pick, size: int, seed: int) -> str:
    path = a.resolve(dev, path)
    extra = a.ledger.new_content(dev, size, seed)
    with a.op(dev, f"append {path} {label(extra)}") as outcome:
        fd, old = a.observe_open(dev, path)
        try:
            os.pwrite(fd, extra, len(old))
        finally:
            os.close(fd)
        a.ledger.produce(dev, old, old + extra, path)
        a.ledger.touched(dev, *a.names(dev, path))
        outcome[0] = f"ok, now {label(old + extra)}"
    return outcome[0]


def _truncate(a: Actor, dev: str, path: str | Pick, size: int) -> str:
    path = a.resolve(dev, path)
    with a.op(dev, f"truncate {path} to {size}") as outcome:
        fd, old = a.observe_open(dev, path)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        new = old[:size] + b"\0" * max(0, size - len(old))
        if new != old:
            a.ledger.produce(dev, old, new, path)
            a.ledger.touched(dev, *a.names(dev, path))
        outcome[0] = f"ok, {label(old)} -> {label(new)}"
    return outcome[0]


def _burst(a: Actor, dev: str, path: str | Pick, n: int, seed: int) -> str:
    """Many small new files in one directory at once (tar x, cp -r): for the other
    devices a batch of changes to apply, which a kill can land in."""
    path, root = a.resolve(dev, path), a.roots[dev]
    r = random.Random(seed)
    with a.op(dev, f"burst of {n} files in {path}") as outcome:
        made = 0
        for i in range(n):
            rel = f"{path}/{BURST_NAME.format(i)}"
            new = a.ledger.new_content(dev, r.randint(1, 3000), r.randrange(2**32))
            try:
                fd = os.open(root / rel, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            except FileExistsError:
                continue
            try:
                os.pwrite(fd, new, 0)
            finally:
                os.close(fd)
            a.ledger.produce(dev, b"", new, rel)
            a.ledger.touched(dev, rel)
            made += 1
        outcome[0] = f"ok, {made} made"
    return outcome[0]


def _mkdir(a: Actor, dev: str, path: str | Pick) -> str:
    path = a.resolve(dev, path)
    with a.op(dev, f"mkdir {path}") as outcome:
        os.mkdir(a.roots[dev] / path)
        a.ledger.touched(dev, path)
    return outcome[0]


def _rmdir(a: Actor, dev: str, path: str | Pick) -> str:
    path = a.resolve(dev, path)
    with a.op(dev, f"rmdir {path}") as outcome:
        os.rmdir(a.roots[dev] / path)
        a.ledger.touched(dev, path)
    return outcome[0]


def _symlink(a: Actor, dev: str, path: str | Pick) -> str:
    path = a.resolve(dev, path)
    target = a.ledger.new_target(dev)
    with a.op(dev, f"symlink {path} -> {target}") as outcome:
        os.symlink(target, a.roots[dev] / path)
        a.ledger.touched(dev, path)
    return outcome[0]


def _unlink(a: Actor, dev: str, path: str | Pick) -> str:
    path, root = a.resolve(dev, path), a.roots[dev]
    with a.op(dev, f"unlink {path}") as outcome:
        if os.path.islink(root / path):
            os.unlink(root / path)  # a symlink holds no bytes: nothing to observe
            a.ledger.touched(dev, path)
            outcome[0] = "ok, a symlink"
        else:
            fd, old = a.observe_open(dev, path)
            names = a.names(dev, path)
            try:
                nlink = os.fstat(fd).st_nlink
                os.unlink(root / path)
            finally:
                os.close(fd)
            a.ledger.destroy(dev, old, path, nlink)
            a.ledger.touched(dev, *names)
            outcome[0] = f"ok, was {label(old)}"
    return outcome[0]


def _rename(a: Actor, dev: str, src: str | Pick, dst: str | Pick) -> str:
    """rename(2), observing which bytes move and which are replaced. A symlink is never
    replaced (it cannot be held open, so what it was replaced with could not be told)."""
    src, dst, root = a.resolve(dev, src), a.resolve(dev, dst), a.roots[dev]
    with a.op(dev, f"rename {src} -> {dst}") as outcome:
        if src == dst:
            outcome[0] = "same path, skipped"
            return outcome[0]
        try:
            src_fd, moving = a.observe_open(dev, src)  # a file: which bytes move
        except OSError as exc:
            if exc.errno == errno.EIO:
                raise
            src_fd, moving = None, None  # a directory, a symlink, or nothing (the rename says which)
        moving_dir = moving is None and os.path.isdir(root / src) and not os.path.islink(root / src)
        names = a.names(dev, src) + a.names(dev, dst)
        if moving_dir:  # the files below move too: their names elsewhere are touched with them
            names += [n for rel, kind in walk(root / src) if kind == "file"
                      for n in a.names(dev, f"{src}/{rel}") if not under_any(n, {src})]
        try:
            try:
                fd, old = a.observe_open(dev, dst)
            except IsADirectoryError:
                os.rename(root / src, root / dst)  # over an empty directory, or fails
            except (FileNotFoundError, NotADirectoryError):
                rename_noreplace(root / src, root / dst)
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    raise
                rename_noreplace(root / src, root / dst)  # a symlink there: EEXIST
            else:
                try:
                    same_file = src_fd is not None and os.fstat(fd).st_ino == os.fstat(src_fd).st_ino
                    nlink = os.fstat(fd).st_nlink
                    os.rename(root / src, root / dst)
                finally:
                    os.close(fd)
                if same_file:
                    outcome[0] = "ok, two names of one file: nothing happens"
                else:
                    a.ledger.destroy(dev, old, dst, nlink)
                    outcome[0] = f"ok, over {label(old)}"
        finally:
            if src_fd is not None:
                os.close(src_fd)
        if moving is not None:  # empty as this device saw it, maybe: the file still moved
            a.ledger.move(dev, moving, src)
        if moving_dir:
            a.ledger.move_dir(dev, src)
        a.ledger.touched(dev, *names)
    return outcome[0]


def _link(a: Actor, dev: str, src: str | Pick, dst: str | Pick) -> str:
    """ln: another name for a file (EISDIR/EPERM for a directory, ELOOP for a symlink,
    EEXIST for a taken name)."""
    src, dst, root = a.resolve(dev, src), a.resolve(dev, dst), a.roots[dev]
    with a.op(dev, f"link {src} -> {dst}", also=frozenset({errno.EPERM})) as outcome:
        if src == dst:
            outcome[0] = "same path, skipped"
            return outcome[0]
        fd, content = a.observe_open(dev, src)
        names = a.names(dev, src)
        try:
            os.link(root / src, root / dst, follow_symlinks=False)
        finally:
            os.close(fd)
        a.ledger.link(dev, content, names)
        a.ledger.touched(dev, *a.names(dev, dst))
        outcome[0] = f"ok, {label(content)}"
    return outcome[0]


def _xattr(a: Actor, dev: str, path: str | Pick, key: int, size: int, seed: int) -> str:
    """setxattr user.kKEY (a value of `size` bytes), or removexattr when `size` is 0, on
    a file (through a descriptor: it is observed, like a write) or a directory (ELOOP
    for a symlink: no user.* names there; ENODATA for removing what is not there). The
    attributes are the inode's: every name is touched. A file whose attributes changed
    here is kept where another device deletes it, like a moved one (README: "Several
    devices"), so the change books it as a move."""
    path, root = a.resolve(dev, path), a.roots[dev]
    name = f"user.k{key}"
    value = a.ledger.new_xattr(dev, size, seed) if size else b""
    what = f"setxattr {path} {name}={label(value)}" if size else f"removexattr {path} {name}"
    with a.op(dev, what, also=frozenset({errno.EPERM, errno.ENODATA})) as outcome:
        try:
            fd, content = a.observe_open(dev, path)
        except IsADirectoryError:
            fd, content = None, None
        try:
            if fd is not None:
                os.setxattr(fd, name, value) if size else os.removexattr(fd, name)
            elif size:
                os.setxattr(root / path, name, value, follow_symlinks=False)
            else:
                os.removexattr(root / path, name, follow_symlinks=False)
        finally:
            if fd is not None:
                os.close(fd)
        if content is not None:
            a.ledger.move(dev, content)
        a.ledger.touched(dev, *a.names(dev, path))
    return outcome[0]


def _rm_r(a: Actor, dev: str, path: str | Pick) -> str:
    path, root = a.resolve(dev, path), a.roots[dev]
    with a.op(dev, f"rm -r {path}") as outcome:
        # Touched before anything goes: an EIO on the way (bytes not fetched during an
        # outage) ends the operation with what it removed so far removed.
        a.ledger.touched(dev, path)
        gone: list[str] = []
        try:
            os.rmdir(root / path)  # empty, or not a directory: the walk below handles it
            gone.append("dir")
        except OSError as exc:
            if exc.errno == errno.ENOTDIR:
                if os.path.islink(root / path):
                    os.unlink(root / path)
                    gone.append("symlink")
                else:
                    fd, old = a.observe_open(dev, path)
                    a.ledger.touched(dev, *a.names(dev, path))
                    try:
                        nlink = os.fstat(fd).st_nlink
                        os.unlink(root / path)
                    finally:
                        os.close(fd)
                    a.ledger.destroy(dev, old, path, nlink)
                    gone.append(label(old))
            elif exc.errno != errno.ENOTEMPTY:
                raise
            else:
                gone += _rm_tree(a, dev, path)
        outcome[0] = f"ok, removed {' '.join(gone)}"
    return outcome[0]


def _rm_tree(a: Actor, dev: str, path: str) -> list[str]:
    """rm -r with every file observed; whatever arrives meanwhile stays (ENOTEMPTY)."""
    root = a.roots[dev]
    gone: list[str] = []
    entries = [(path + "/" + p, kind) for p, kind in walk(root / path)]
    for rel, kind in sorted(entries, key=lambda e: -e[0].count("/")) + [(path, "dir")]:
        if kind == "dir":
            try:
                os.rmdir(root / rel)
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY):
                    raise
                gone.append(f"(rmdir {rel}: {errno.errorcode[exc.errno]})")
            continue
        if kind == "link":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(root / rel)
                gone.append(f"{rel}=symlink")
            continue
        try:
            fd, old = a.observe_open(dev, rel)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            continue
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            continue  # a symlink now: someone else's
        a.ledger.touched(dev, *a.names(dev, rel))
        try:
            nlink = os.fstat(fd).st_nlink
            os.unlink(root / rel)
            a.ledger.destroy(dev, old, rel, nlink)
            gone.append(f"{rel}={label(old)}")
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)
    return gone


OPERATIONS: dict[str, Callable[..., str]] = {
    "write": _write,
    "create": _create,
    "append": _append,
    "truncate": _truncate,
    "mkdir": _mkdir,
    "rmdir": _rmdir,
    "symlink": _symlink,
    "unlink": _unlink,
    "rename": _rename,
    "rm_r": _rm_r,
    "burst": _burst,
    "link": _link,
    "xattr": _xattr,
}
"""Operation kinds by name: f(actor, device, *args) -> outcome. A new kind is a function
here and a row in the generators' tables."""

BURST_NAME = "b{}.dat"
NAMES = {"x.txt", "y", "z.md", "d", "e", "f", "l"} | {BURST_NAME.format(i) for i in range(64)}
FILE_POOL = ("x.txt", "y", "d/x.txt", "d/y", "d/e/x.txt", "e/x.txt", "e/d/y")
DIR_POOL = ("d", "e", "d/e", "e/d")
LINK_POOL = ("l", "d/l", "e/l")
NEW_NAMES = ("z.md", "d/z.md", "e/z.md", "d/e/z.md")
"""Names no start file has: where a hard link (`link`) is likely to succeed."""


def now_stamp() -> str:
    """Local time with ms, as the mount logs stamp their lines."""
    now = datetime.datetime.now()
    return f"{now:%H:%M:%S},{now.microsecond // 1000:03d}"
