"""Random operations on two mounts of one account (devices dev-a and dev-b), settled
every few operations; after each settle both mounts must agree and no written byte may
be lost.

The model. Live sync runs while the operations run, so an operation on one device may
or may not see the other device's earlier changes: the test cannot predict outcomes and
records what actually happened. Every write makes unique bytes (a tag naming the device
and a counter, then random bytes). Every operation that replaces or removes a file first
opens it for writing and reads it through that descriptor ("observes" it); the follower
never replaces a file open for writing, so the bytes read are the bytes the operation
destroys. An example starts from a settled tree (directories d, d/e, e and a few files),
then runs rounds: one to eight operations, each on a device chosen at random, on paths
from a small pool (or on whatever exists, conflicted copies included) so they collide;
then a settle, `a.sync(); b.sync(); a.sync(); b.sync()`. After it:

1. Convergence: both mounts show the same tree with the same bytes, read through the
   kernel's page cache and again straight from the mount process (page cache dropped).
2. Nothing invented: every file holds bytes that some operation produced; every name is
   from the pool or a conflicted copy of one (`NAME (conflicted copy, dev-X, DAY[ N]).EXT`).
3. Nothing lost: `live` is the multiset of contents that must exist: the files of the
   previous settle, plus every content produced in the round, minus every content an
   operation observed and then destroyed (overwrite, append, truncate, unlink, rename
   over, rm -r). Each must be the content of some file, under any name (a conflicted
   copy counts). A device may destroy only what it saw: an edit made on one device
   survives a delete (of the file or of a directory above it) made on the other without
   having seen it, and both sides of an edit/edit conflict survive. A device that did see
   the other's content (live sync brought it over) may delete or overwrite it.
4. Nothing resurrected: content destroyed in the round that is not live is in no file,
   unless the other device renamed that file in the round (a move is local work that the
   product keeps: a moved file whose delete reached the server first is created again)
   or gave it another name (a hard link keeps the file, with whatever is written into it
   meanwhile, when its first name goes).
5. Exact where the devices did not meet: the paths of each successful operation form a
   group (a rename's two paths are one group); groups are linked when a path of one
   equals or lies under a path of the other. Under the paths of a linked set whose groups
   all come from one device, the settled tree must equal that device's own tree just
   before the settle (no conflicted copy, no lost delete or move); paths under no group
   keep their state from the previous settle. Only where both devices met are
   conflicted copies and either outcome allowed, within rules 1-4.

Hard links: `link` gives a file another name. Contents are counted per inode, not per
name (rule 3: a write through one name changes one file), both mounts must group the
same names into inodes (rule 1), an operation touches every name of the file it acts
on as the device sees them then (rule 5: a write through one name changes them all),
and removing one name of several destroys nothing for sure: whether the file lives on
depends on what the other device did with its other names (rules 3 and 4 leave it to
rule 5).

Deterministic in CI: the same few programs every run (`derandomize`), no shrinking
(every example mounts twice). CLOUDFS_HYPOTHESIS_EXAMPLES=N explores N random programs;
CLOUDFS_MODEL_TRACE=1 prints every example's operations; `pytest -s` prints counts
(rounds, rounds where the devices met, conflicted copies). A failure prints the
operations with their outcomes, the warnings of both mount logs, and keeps the
example's mounts' logs and caches under pytest's tmp dir.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import errno
import itertools
import os
import random
import re
import shutil
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from tests.harness import MountProcess, ServerProcess
from tests.sync.conftest import two_devices

EXPLORE = int(os.environ.get("CLOUDFS_HYPOTHESIS_EXAMPLES", "0"))
EXAMPLES = EXPLORE or 6
ROUNDS = 7  # settled rounds per example, after the start
pytestmark = pytest.mark.timeout(300 if not EXPLORE else 120 + 90 * EXPLORE)

NAMES = ("x.txt", "y", "d", "e")
FILE_POOL = ("x.txt", "y", "d/x.txt", "d/y", "d/e/x.txt", "e/x.txt", "e/d/y")
DIR_POOL = ("d", "e", "d/e", "e/d")
POOL = FILE_POOL + DIR_POOL


@dataclass(frozen=True)
class Pick:
    """The `index`-th path of `kind` that exists on the device when the operation runs
    (conflicted copies included)."""

    kind: str
    index: int


def picks(kind: str) -> st.SearchStrategy[Pick]:
    return st.builds(Pick, st.just(kind), st.integers(0, 40))


DEVICES = st.sampled_from("ab")
FILES = st.one_of(st.sampled_from(FILE_POOL), picks("file"))
DIRS = st.one_of(st.sampled_from(DIR_POOL), picks("dir"))
ANY = st.one_of(st.sampled_from(POOL), picks("file"), picks("dir"))
SIZES = st.one_of(st.integers(1, 3000), st.integers(1, 3000), st.integers(1, 3000), st.integers(100_000, 400_000))
SEEDS = st.integers(0, 2**32 - 1)
OPS = st.one_of(
    *[st.tuples(st.just("write"), DEVICES, FILES, SIZES, SEEDS)] * 3,
    *[st.tuples(st.just("append"), DEVICES, FILES, st.integers(1, 2000), SEEDS)] * 2,
    st.tuples(st.just("truncate"), DEVICES, FILES, st.integers(0, 4000)),
    st.tuples(st.just("unlink"), DEVICES, FILES),
    st.tuples(st.just("mkdir"), DEVICES, DIRS),
    st.tuples(st.just("rm_r"), DEVICES, st.one_of(DIRS, FILES)),
    *[st.tuples(st.just("rename"), DEVICES, ANY, ANY)] * 2,
    *[st.tuples(st.just("link"), DEVICES, FILES, st.sampled_from(FILE_POOL))] * 4,
)
ALLOWED_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOTEMPTY, errno.EINVAL}
TAG = re.compile(rb"<([ab])#(\d+)>")
COPY = re.compile(r"^(.*) \(conflicted copy, (?:[\w.@-]+ on )?dev-[ab], \d{4}-\d{2}-\d{2}(?: \d+)?\)(\.[^.]*)?$")

_libc = ctypes.CDLL(None, use_errno=True)


def _ino(path: str) -> int:
    try:
        return os.lstat(path).st_ino
    except OSError:
        return -1


def rename_noreplace(src: Path, dst: Path) -> None:
    if _libc.renameat2(-100, os.fsencode(src), -100, os.fsencode(dst), 1) != 0:  # AT_FDCWD, RENAME_NOREPLACE
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(dst))


def read_all(fd: int) -> bytes:
    parts, off = [], 0
    for _ in range(10_000):
        part = os.pread(fd, 1 << 20, off)
        if not part:
            break
        parts.append(part)
        off += len(part)
    return b"".join(parts)


def snapshot(root: Path, *, uncached: bool = False) -> dict[str, bytes | None]:
    """Every path under root with its bytes (None for a directory); tolerates entries
    that vanish while it walks (live sync may be moving things). `uncached` drops each
    file's page cache first, so the bytes come from the mount process, not the kernel."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in filenames:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
                try:
                    if uncached:
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    out[os.path.relpath(os.path.join(dirpath, f), root)] = read_all(fd)
                finally:
                    os.close(fd)
    return out


def inodes(root: Path) -> tuple[Counter[bytes], set[frozenset[str]]]:
    """The contents of the files, counted once per inode, and the names of every inode
    that has several. Tolerates entries that vanish while it walks."""
    names: dict[int, list[str]] = {}
    content: dict[int, bytes] = {}
    for dirpath, _, filenames in os.walk(root):
        for f in filenames:
            path = os.path.join(dirpath, f)
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                ino = os.lstat(path).st_ino
                names.setdefault(ino, []).append(os.path.relpath(path, root))
                if ino not in content:
                    content[ino] = Path(path).read_bytes()
    return (Counter(c for c in content.values() if c),
            {frozenset(n) for n in names.values() if len(n) > 1})


def label(content: bytes | None) -> str:
    if content is None:
        return "dir"
    tags = "+".join(f"{d.decode()}{n.decode()}" for d, n in TAG.findall(content)) or "untagged"
    return f"<{tags}:{len(content)}B>"


def name_origins(name: str) -> list[str]:
    """`name`, then each name it is a conflicted copy of, down to the pool name."""
    out = [name]
    for _ in range(20):
        m = COPY.match(out[-1])
        if not m:
            break
        out.append(m.group(1) + (m.group(2) or ""))
    return out


def base_path(path: str) -> str:
    return "/".join(name_origins(part)[-1] for part in path.split("/"))


def path_origins(path: str) -> list[str]:
    """Every path `path` may be a conflicted copy of (itself included)."""
    return ["/".join(parts) for parts in itertools.product(*(name_origins(p) for p in path.split("/")))]


def related(p: str, q: str) -> bool:
    return p == q or p.startswith(q + "/") or q.startswith(p + "/")


def under_any(path: str, roots: set[str]) -> bool:
    return any(path == r or path.startswith(r + "/") for r in roots)


class TwoDevices(RuleBasedStateMachine):
    server: ServerProcess
    base_dir: Path
    names_allowed = NAMES
    stats: Counter[str] = Counter()  # over the whole run, printed at the end (pytest -s)

    def __init__(self) -> None:
        super().__init__()
        self.tmp = self.base_dir / uuid.uuid4().hex[:8]
        self.stack = contextlib.ExitStack()
        try:
            self.mounts = self.open_mounts()
        except BaseException:
            self.stack.close()
            raise
        self.history: list[str] = [f"example in {self.tmp}"]
        self.settled: dict[str, bytes | None] = {}
        self.live: Counter[bytes] = Counter()
        self.produced: set[bytes] = set()
        self.destroyed: dict[bytes, set[str]] = {}  # content -> devices that destroyed it
        self.moved: dict[bytes, set[str]] = {}  # content -> devices that renamed or linked its file
        self.spared: set[bytes] = set()  # contents that lost one name of several: may live on
        self.destroyed_at: dict[bytes, set[str]] = {}  # content -> the paths where it was destroyed
        self.linked_from: dict[str, set[str]] = {}  # path -> devices that gave its file another name
        self.groups: list[tuple[str, tuple[str, ...]]] = []
        self.counter = 0
        self.ops = 0
        self.rounds = 0
        self.busy = False  # a rule is running: if teardown sees it set, that rule failed
        self.stats["examples"] += 1

    def open_mounts(self) -> dict[str, MountProcess]:
        """Two devices of one account (the shared-folder mode: of two accounts)."""
        token = self.server.add_user(f"m2-{uuid.uuid4().hex[:10]}")
        d = self.stack.enter_context(two_devices(self.server, token, self.tmp))
        return {"a": d.a, "b": d.b}

    # --- bookkeeping ---

    def note(self, dev: str, text: str) -> None:
        """One line of the story, stamped like the mount logs (local time, ms)."""
        now = datetime.datetime.now()
        self.history.append(f"{now:%H:%M:%S},{now.microsecond // 1000:03d} {dev}: {text}")

    def new_content(self, dev: str, size: int, seed: int) -> bytes:
        self.counter += 1
        return f"<{dev}#{self.counter}>".encode() + random.Random(seed).randbytes(size)

    def produce(self, dev: str, old: bytes, new: bytes, path: str = "") -> None:
        """A file's bytes went from `old` (observed) to `new` on `dev`."""
        self.destroy(dev, old, path=path)
        if new:
            self.live[new] += 1
        self.produced.add(new)

    def destroy(self, dev: str, old: bytes, nlink: int = 1, path: str = "") -> None:
        """`old` lost a name (`path`) on `dev`; with other names left (`nlink` > 1 as `dev`
        saw it) it may live on, depending on what the other device did with those."""
        if old and nlink > 1:
            self.spared.add(old)
        if old and path:
            self.destroyed_at.setdefault(old, set()).add(self.view(dev, path))
        if old:
            self.destroyed.setdefault(old, set()).add(dev)
            if self.live[old] > 0:
                self.live[old] -= 1

    def touched(self, dev: str, *paths: str) -> None:
        self.groups.append((dev, tuple(self.view(dev, p) for p in paths)))

    # --- what is compared: overridden by the shared-folder mode (test_model_shared.py) ---

    def view(self, dev: str, path: str) -> str:
        """Where a device's path is in the compared tree (one tree here: the path)."""
        return path

    def compared(self, raw: dict[str, dict[str, bytes | None]]) -> tuple[dict, dict]:
        """The trees that must agree after a settle, from each device's snapshot."""
        return raw["a"], raw["b"]

    def counted(self) -> tuple[tuple[Counter[bytes], set], tuple[Counter[bytes], set]]:
        """(contents, hard-linked names) of the whole drive, as each device sees it."""
        return inodes(self.mounts["a"].path), inodes(self.mounts["b"].path)

    def bare(self, path: str) -> str:
        """The path without where it is (a device's own tree, in the shared-folder mode)."""
        return path

    def names(self, dev: str, path: str) -> list[str]:
        """`path` and every other name of its file on `dev` now (hard links)."""
        root = self.mounts[dev].path
        try:
            st = os.lstat(root / path)
        except OSError:
            return [path]
        if st.st_nlink < 2 or not os.path.isfile(root / path):
            return [path]
        return sorted({path} | {os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root)
                                for f in files if _ino(os.path.join(d, f)) == st.st_ino})

    def resolve(self, dev: str, path: str | Pick) -> str:
        if isinstance(path, str):
            return path
        root = self.mounts[dev].path
        existing = sorted(os.path.relpath(os.path.join(d, n), root)
                          for d, dirs, files in os.walk(root) for n in (dirs if path.kind == "dir" else files))
        pool = DIR_POOL if path.kind == "dir" else FILE_POOL
        return existing[path.index % len(existing)] if existing else pool[path.index % len(pool)]

    @contextlib.contextmanager
    def op(self, dev: str, what: str, also: frozenset[int] = frozenset()):  # noqa: ANN201
        """Run one operation: an expected errno (the tree moved under it, or one of
        `also`) is an outcome, anything else fails the test."""
        self.ops += 1
        outcome = ["ok"]
        try:
            yield outcome
        except OSError as exc:
            if exc.errno not in ALLOWED_ERRNOS | also:
                self.note(dev, f"{what} -> {exc!r}")
                raise AssertionError(f"{what} on {dev}: {exc!r}\n" + self.story()) from exc
            outcome[0] = errno.errorcode[exc.errno]
        self.stats["ops ok" if outcome[0].startswith("ok") else "ops failed (errno)"] += 1
        self.note(dev, f"{what} -> {outcome[0]}")

    def observe_open(self, root: Path, path: str, flags: int = 0) -> tuple[int, bytes]:
        fd = os.open(root / path, os.O_RDWR | flags, 0o644)
        try:
            return fd, read_all(fd)
        except BaseException:
            os.close(fd)
            raise

    # --- the tree every example starts from, settled: both devices then edit one base ---

    @initialize(dev=DEVICES, files=st.lists(st.sampled_from(FILE_POOL[:6]), min_size=3, unique=True), seed=SEEDS)
    def start(self, dev: str, files: list[str], seed: int) -> None:
        self.busy = True
        root = self.mounts[dev].path
        for d in ("d", "d/e", "e"):
            os.mkdir(root / d)
            self.touched(dev, d)
        for i, path in enumerate(files):
            data = self.new_content(dev, 200 + 100 * i, seed + i)
            (root / path).write_bytes(data)
            self.produce(dev, b"", data)
            self.touched(dev, path)
        self.note(dev, f"start: directories d, d/e, e; files {', '.join(files)}")
        self.ops += 1
        self.check_round()
        self.busy = False

    # --- operations ---

    @rule(ops=st.lists(OPS, min_size=1, max_size=8))
    def round(self, ops: list[tuple]) -> None:
        """A few operations on either device while live sync runs, then a settle."""
        self.busy = True
        for kind, dev, *args in ops:
            getattr(self, kind)(dev, *args)
        self.check_round()
        self.busy = False

    def write(self, dev: str, path: str | Pick, size: int, seed: int) -> None:
        path, root = self.resolve(dev, path), self.mounts[dev].path
        new = self.new_content(dev, size, seed)
        with self.op(dev, f"write {path} {label(new)}") as outcome:
            fd, old = self.observe_open(root, path, os.O_CREAT)
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, new, 0)
            finally:
                os.close(fd)
            self.produce(dev, old, new, path)
            self.touched(dev, *self.names(dev, path))
            outcome[0] = f"ok, was {label(old)}"

    def append(self, dev: str, path: str | Pick, size: int, seed: int) -> None:
        path, root = self.resolve(dev, path), self.mounts[dev].path
        extra = self.new_content(dev, size, seed)
        with self.op(dev, f"append {path} {label(extra)}") as outcome:
            fd, old = self.observe_open(root, path)
            try:
                os.pwrite(fd, extra, len(old))
            finally:
                os.close(fd)
            self.produce(dev, old, old + extra, path)
            self.touched(dev, *self.names(dev, path))
            outcome[0] = f"ok, now {label(old + extra)}"

    def truncate(self, dev: str, path: str | Pick, size: int) -> None:
        path, root = self.resolve(dev, path), self.mounts[dev].path
        with self.op(dev, f"truncate {path} to {size}") as outcome:
            fd, old = self.observe_open(root, path)
            try:
                os.ftruncate(fd, size)
            finally:
                os.close(fd)
            new = old[:size] + b"\0" * max(0, size - len(old))
            if new != old:
                self.produce(dev, old, new, path)
                self.touched(dev, *self.names(dev, path))
            outcome[0] = f"ok, {label(old)} -> {label(new)}"

    def mkdir(self, dev: str, path: str | Pick) -> None:
        path = self.resolve(dev, path)
        with self.op(dev, f"mkdir {path}"):
            os.mkdir(self.mounts[dev].path / path)
            self.touched(dev, path)

    def unlink(self, dev: str, path: str | Pick) -> None:
        path, root = self.resolve(dev, path), self.mounts[dev].path
        with self.op(dev, f"unlink {path}") as outcome:
            fd, old = self.observe_open(root, path)
            names = self.names(dev, path)
            try:
                nlink = os.fstat(fd).st_nlink
                os.unlink(root / path)
            finally:
                os.close(fd)
            self.destroy(dev, old, nlink, path)
            self.touched(dev, *names)
            outcome[0] = f"ok, was {label(old)}"

    def rename(self, dev: str, src: str | Pick, dst: str | Pick) -> None:
        src, dst, root = self.resolve(dev, src), self.resolve(dev, dst), self.mounts[dev].path
        with self.op(dev, f"rename {src} -> {dst}") as outcome:
            if src == dst:
                outcome[0] = "same path, skipped"
                return
            try:
                src_fd, moving = self.observe_open(root, src)  # a file: which bytes move
            except OSError:
                src_fd, moving = None, None  # a directory, or nothing (the rename says which)
            names = self.names(dev, src) + self.names(dev, dst)
            try:
                try:
                    fd, old = self.observe_open(root, dst)
                except (FileNotFoundError, NotADirectoryError):
                    rename_noreplace(root / src, root / dst)
                except IsADirectoryError:
                    os.rename(root / src, root / dst)  # over an empty directory, or fails
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
                        self.destroy(dev, old, nlink, dst)
                        outcome[0] = f"ok, over {label(old)}"
            finally:
                if src_fd is not None:
                    os.close(src_fd)
            if moving:
                self.moved.setdefault(moving, set()).add(dev)
            self.touched(dev, *names)

    def link(self, dev: str, src: str | Pick, dst: str | Pick) -> None:
        """ln: another name for a file (EPERM for a directory, EEXIST for a taken name)."""
        src, dst, root = self.resolve(dev, src), self.resolve(dev, dst), self.mounts[dev].path
        with self.op(dev, f"link {src} -> {dst}", also=frozenset({errno.EPERM})) as outcome:
            if src == dst:
                outcome[0] = "same path, skipped"
                return
            fd, content = self.observe_open(root, src)  # EISDIR for a directory
            names = self.names(dev, src)
            try:
                os.link(root / src, root / dst)
            finally:
                os.close(fd)
            self.moved.setdefault(content, set()).add(dev)  # another name keeps it where one goes,
            for name in names:  # with whatever the other device writes into it meanwhile
                self.linked_from.setdefault(self.view(dev, name), set()).add(dev)
            self.touched(dev, *self.names(dev, dst))
            outcome[0] = f"ok, {label(content)}"

    def rm_r(self, dev: str, path: str | Pick) -> None:
        path, root = self.resolve(dev, path), self.mounts[dev].path
        with self.op(dev, f"rm -r {path}") as outcome:
            gone: list[str] = []
            try:
                os.rmdir(root / path)  # empty, or not a directory: the walk below handles it
                gone.append("dir")
            except OSError as exc:
                if exc.errno == errno.ENOTDIR:
                    fd, old = self.observe_open(root, path)
                    self.touched(dev, *self.names(dev, path))
                    try:
                        nlink = os.fstat(fd).st_nlink
                        os.unlink(root / path)
                    finally:
                        os.close(fd)
                    self.destroy(dev, old, nlink, path)
                    gone.append(label(old))
                elif exc.errno != errno.ENOTEMPTY:
                    raise
                else:
                    gone += self._rm_tree(dev, root, path)
            self.touched(dev, path)
            outcome[0] = f"ok, removed {' '.join(gone)}"

    def _rm_tree(self, dev: str, root: Path, path: str) -> list[str]:
        """rm -r with every file observed; whatever arrives meanwhile stays (ENOTEMPTY)."""
        gone: list[str] = []
        for dirpath, _, filenames in os.walk(root / path, topdown=False):
            for f in filenames:
                rel = os.path.relpath(os.path.join(dirpath, f), root)
                try:
                    fd, old = self.observe_open(root, rel)
                except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                    continue
                self.touched(dev, *self.names(dev, rel))
                try:
                    nlink = os.fstat(fd).st_nlink
                    os.unlink(root / rel)
                    self.destroy(dev, old, nlink, rel)
                    gone.append(f"{rel}={label(old)}")
                except FileNotFoundError:
                    pass
                finally:
                    os.close(fd)
            try:
                os.rmdir(dirpath)
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY):
                    raise
                gone.append(f"(rmdir {os.path.relpath(dirpath, root)}: {errno.errorcode[exc.errno]})")
        return gone

    # --- settling and the checks ---

    def check_round(self) -> None:
        self.rounds += 1
        self.note("--", f"settle {self.rounds}")
        before = {dev: {self.view(dev, p): v for p, v in snapshot(m.path).items()} for dev, m in self.mounts.items()}
        a, b = self.mounts["a"], self.mounts["b"]
        for m in (a, b, a, b):
            m.sync(timeout=60)
        raw = {"a": snapshot(a.path), "b": snapshot(b.path)}
        final, other = self.compared(raw)
        for dev, seen in raw.items():
            served = snapshot(self.mounts[dev].path, uncached=True)
            if served != seen:
                self._fail(f"dev-{dev}: the kernel's page cache and the mount process disagree",
                           self.diff(seen, served, "page cache", "mount process"))
        if final != other:
            later = "never"
            for attempt in range(3):
                a.sync(timeout=60)
                b.sync(timeout=60)
                again = self.compared({"a": snapshot(a.path), "b": snapshot(b.path)})
                if again[0] == again[1]:
                    later = f"after {attempt + 1} more a/b syncs"
                    break
            self._fail("the mounts differ after a, b, a, b sync (converged: " + later + ")",
                      self.diff(final, other, "a", "b"))

        (contents, linked), (other_contents, other_linked) = self.counted()
        if linked != other_linked or contents != other_contents:
            self._fail("the mounts group names into files differently (hard links)",
                       f"  a: {sorted(map(sorted, linked))}\n  b: {sorted(map(sorted, other_linked))}")
        lost = [c for c, n in self.live.items() if n > contents[c]]
        if lost:
            self._fail("written content lost", "\n".join(
                f"  {label(c)}: must be in {self.live[c]} file(s), is in {contents[c]}" for c in lost))
        # A file moved on one device while the other deleted it may come back: a move is
        # local work, and the syncer creates a moved file again if its delete came first.
        back = [c for c, by in self.destroyed.items()
                if self.live[c] == 0 and contents[c] and not self.moved.get(c, set()) - by and c not in self.spared
                and not any(self.linked_from.get(p, set()) - by for p in self.destroyed_at.get(c, ()))]
        if back:
            self._fail("destroyed content came back", "\n".join(
                f"  {label(c)} at {[p for p, v in final.items() if v == c]}" for c in back))
        alien = {p: label(v) for p, v in final.items() if v is not None and v not in self.produced}
        bad_names = [p for p in final if any(part not in self.names_allowed for part in base_path(self.bare(p)).split("/"))]
        if alien or bad_names:
            self._fail("content or names nobody made", f"  contents: {alien}\n  names: {bad_names}")
        self.check_exact(before, final)

        self.stats["rounds"] += 1
        self.stats["conflicted copies"] += sum(1 for p in final if base_path(self.bare(p)) != self.bare(p)
                                               and p not in self.settled)
        self.settled = final
        self.live = contents
        self.destroyed, self.moved, self.spared, self.destroyed_at, self.linked_from = {}, {}, set(), {}, {}
        self.groups = []
        self.ops = 0

    def check_exact(self, before: dict[str, dict[str, bytes | None]], final: dict[str, bytes | None]) -> None:
        """Rule 5: link the groups; single-device components must come out exactly."""
        n = len(self.groups)
        comp = list(range(n))

        def find(i: int) -> int:
            while comp[i] != i:
                comp[i] = comp[comp[i]]
                i = comp[i]
            return i

        for i in range(n):
            for j in range(i + 1, n):
                if any(related(p, q) for p in self.groups[i][1] for q in self.groups[j][1]):
                    comp[find(i)] = find(j)
        devices: dict[int, set[str]] = {}
        for i, (dev, _) in enumerate(self.groups):
            devices.setdefault(find(i), set()).add(dev)
        contested: set[str] = set()
        owned: dict[str, set[str]] = {"a": set(), "b": set()}
        for i, (dev, paths) in enumerate(self.groups):
            (contested if len(devices[find(i)]) > 1 else owned[dev]).update(paths)
        self.stats["rounds where the devices met"] += bool(contested)
        wrong = []
        for p in sorted(set(final) | set(self.settled) | set(before["a"]) | set(before["b"])):
            if any(under_any(origin, contested) for origin in path_origins(p)):
                continue
            owner = next((dev for dev in "ab" if under_any(p, owned[dev])), None)
            want = before[owner].get(p, "absent") if owner else self.settled.get(p, "absent")
            got = final.get(p, "absent")
            if want != got:
                wrong.append(f"  {p}: {label(got) if got != 'absent' else got}, expected "
                             f"{label(want) if want != 'absent' else want} "
                             f"({'as on dev-' + owner + ' before the settle' if owner else 'untouched'})")
        if wrong:
            self._fail(f"where only one device acted, the result differs (contested: {sorted(contested)})",
                      "\n".join(wrong))

    def diff(self, x: dict, y: dict, nx: str, ny: str) -> str:
        return "\n".join(f"  {p}: {nx} {label(x[p]) if p in x else 'absent'}, {ny} {label(y[p]) if p in y else 'absent'}"
                         for p in sorted(set(x) | set(y)) if x.get(p, 0) != y.get(p, 0))

    def story(self) -> str:
        logs = []
        for dev, m in self.mounts.items():
            lines = [ln for ln in m.log().splitlines() if " WARNING " in ln or " ERROR " in ln]
            logs.append(f"dev-{dev} log ({m.log_path}), warnings and errors:\n  " + "\n  ".join(lines[-30:]))
        return "operations:\n  " + "\n  ".join(self.history) + "\n" + "\n".join(logs)

    def _fail(self, what: str, detail: str) -> None:
        raise AssertionError(f"{what}\n{detail}\nsettled before: "
                             f"{ {p: label(v) for p, v in self.settled.items()} }\n{self.story()}")

    def teardown(self) -> None:
        if os.environ.get("CLOUDFS_MODEL_TRACE"):
            print("\n".join(self.history), flush=True)
        try:
            if not self.busy:
                if self.ops:
                    self.check_round()
                for dev, m in self.mounts.items():
                    errors = [ln for ln in m.log().splitlines() if " ERROR " in ln or "Traceback" in ln]
                    assert not errors, f"dev-{dev} logged errors:\n" + "\n".join(errors[:20]) + "\n" + self.story()
        finally:
            self.stack.close()
        if not self.busy:
            shutil.rmtree(self.tmp, ignore_errors=True)


def test_two_devices_random_operations(sync_server, tmp_path):
    TwoDevices.server = sync_server
    TwoDevices.base_dir = tmp_path
    # Deterministic in CI (the same programs every run); CLOUDFS_HYPOTHESIS_EXAMPLES=N
    # explores N random ones instead. No shrinking: every example mounts two devices.
    phases = [Phase.explicit, Phase.reuse, Phase.generate]
    if os.environ.get("CLOUDFS_HYPOTHESIS_SHRINK"):
        phases.append(Phase.shrink)
    runner = settings(max_examples=EXAMPLES, stateful_step_count=ROUNDS + 1, deadline=None, derandomize=not EXPLORE,
                      database=None, phases=phases, suppress_health_check=list(HealthCheck),
                      print_blob=False)(TwoDevices).TestCase
    TwoDevices.stats.clear()
    runner().runTest()
    print(f"two-device model: {dict(TwoDevices.stats)}")
    assert "Traceback" not in sync_server.log(), sync_server.log()[-5000:]
