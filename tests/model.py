"""The reference model of random multi-device programs, shared by the two-device model
test (tests/sync/test_model_two.py) and the soak (tests/soak, scripts/soak.py).

Outcomes cannot be predicted while live sync runs (an operation on one device may or may
not see another device's earlier changes), so the model records what actually happened.
Every write makes unique bytes (a tag naming the device and a counter, then random
bytes). Every operation that replaces or removes a file first opens it for writing and
reads it through that descriptor ("observes" it); the follower never replaces a file open
for writing, so the bytes read are the bytes the operation destroys. `Ledger` keeps the
books (model_ops.py runs the operations and books them); `Ledger.problems` checks a
settled tree against the books:

1. Nothing invented: every file holds bytes some operation produced, every symlink a
   target some operation made; every name is from the pool or a conflicted copy of one
   (`NAME (conflicted copy, dev-X, DAY[ N]).EXT`; in a shared folder the device is
   `ACCOUNT on dev-X`).
2. Nothing lost: `live` is the multiset of contents that must exist: the files of the
   previous settle, plus every content produced since, minus every content an operation
   observed and then destroyed (overwrite, append, truncate, unlink, rename over, rm -r).
   Each must be the content of some file, under any name (a conflicted copy counts). A
   device may destroy only what it saw: an edit made on one device survives a delete
   made on another without having seen it, and both sides of an edit/edit conflict
   survive.
3. Nothing resurrected: content destroyed since the last settle that is not live is in
   no file, unless another device moved that file, or a directory it was in, or changed
   the file's attributes (local work the product keeps: a moved file whose delete
   reached the server first is created again, and so is what a moved directory held).
4. Exact where the devices did not meet: the paths of each successful operation form a
   group (a rename's two paths are one group); groups are linked when a path of one
   equals or lies under a path of the other. Under the paths of a linked set whose
   groups all come from one device, the settled tree must equal that device's own tree
   just before the settle (bytes, the other names of each file, extended attributes);
   paths under no group keep their state from the previous settle. Only where devices
   met are conflicted copies and either outcome allowed.

Hard links: `link` gives a file another name. Contents are counted per inode, not per
name (rule 2: a write through one name changes one file), every device must group the
same names into inodes, an operation touches every name of the file it acts on as the
device sees them then (rule 4: a write through one name changes them all), and removing
one name of several destroys nothing for sure: whether the file lives on depends on what
the other devices did with its other names (rules 2 and 3 leave it to rule 4). Giving a
file another name keeps it, like a move (rule 3), with whatever is written into it
meanwhile.

Extended attributes (`user.*`): every value is made unique like file contents; a value
nobody set is invented (rule 1), and rule 4 holds for them as for the tree (where only
one device acted, a node's attributes are that device's; untouched, the last settle's).

Convergence (every device shows the same tree, with the same names grouped into the
same files and the same extended attributes, through the kernel's page cache and
straight from the mount process) is checked by the callers, which own the mounts
(`View.differences`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import re
import stat
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

TAG = re.compile(rb"<([a-z])#(\d+)>")
COPY = re.compile(r"^(.*) \(conflicted copy, (?:[\w.@-]+ on )?dev-[a-z], \d{4}-\d{2}-\d{2}(?: \d+)?\)(\.[^.]*)?$")


@dataclass(frozen=True)
class Link:
    """A symlink in a snapshot: its target."""

    target: str


Entry = bytes | None | Link
"""A snapshot's value: a file's bytes, None for a directory, or a symlink."""


def read_all(fd: int) -> bytes:
    parts, off = [], 0
    for _ in range(100_000):
        part = os.pread(fd, 1 << 20, off)
        if not part:
            break
        parts.append(part)
        off += len(part)
    return b"".join(parts)


def walk(root: Path) -> Iterator[tuple[str, str]]:
    """(relative path, "file" | "dir" | "link") of everything under root, parents first,
    never following a symlink; tolerates entries that vanish meanwhile (live sync)."""
    stack = [""]
    for _ in range(1_000_000):
        if not stack:
            return
        rel = stack.pop()
        try:
            entries = sorted(os.scandir(root / rel if rel else root), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            path = f"{rel}/{entry.name}" if rel else entry.name
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except (FileNotFoundError, NotADirectoryError):
                continue  # gone, or its directory became a file meanwhile (soak, seed 300115)
            kind = "dir" if stat.S_ISDIR(mode) else "link" if stat.S_ISLNK(mode) else "file"
            yield path, kind
            if kind == "dir":
                stack.append(path)


def snapshot(root: Path, *, uncached: bool = False) -> dict[str, Entry]:
    """Every path under root with its bytes (None for a directory, Link for a symlink).
    `uncached` drops each file's page cache first, so the bytes come from the mount
    process, not the kernel."""
    out: dict[str, Entry] = {}
    for path, kind in walk(root):
        if kind == "dir":
            out[path] = None
            continue
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            if kind == "link":
                out[path] = Link(os.readlink(root / path))
                continue
            fd = os.open(root / path, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                if uncached:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                out[path] = read_all(fd)
            finally:
                os.close(fd)
    return out


Xattrs = dict[str, dict[str, bytes]]
"""path -> the node's user.* extended attributes (only nodes that have some)."""


@dataclass
class View:
    """A device's tree as the books see it: every path (`tree`), the contents counted
    once per inode (`contents`: names of one file are one content), the names of every
    file that has several (`linked`), and the extended attributes (`xattrs`)."""

    tree: dict[str, Entry]
    contents: Counter[bytes]
    linked: set[frozenset[str]]
    xattrs: Xattrs

    def differences(self, other: "View", me: str, them: str) -> list[str]:
        """What differs between two devices' views, one line per difference."""
        out = [diff(self.tree, other.tree, me, them)] if self.tree != other.tree else []
        if self.linked != other.linked:
            out.append(f"  names of one file: {me} {sorted(map(sorted, self.linked))}, "
                       f"{them} {sorted(map(sorted, other.linked))}")
        if self.xattrs != other.xattrs:
            out += [f"  {p} xattrs: {me} {xlabel(self.xattrs.get(p))}, {them} {xlabel(other.xattrs.get(p))}"
                    for p in sorted(set(self.xattrs) | set(other.xattrs)) if self.xattrs.get(p) != other.xattrs.get(p)]
        return out

    def mapped(self, place: Callable[[str], str | None]) -> "View":
        """This view with every path moved to `place(path)`, the paths placed at None
        left out: a part of a device's tree, or a tree put beside others in a compared
        tree (shared folders: each account's own tree beside the folder). The contents
        are counted again per file: a file is one path, or one group of `linked` names
        (a group split by `place` counts once in each part it lands in)."""
        tree = {q: v for p, v in self.tree.items() if (q := place(p)) is not None}
        contents: Counter[bytes] = Counter()
        linked: set[frozenset[str]] = set()
        grouped: set[str] = set()
        for group in self.linked:
            kept = frozenset(q for p in group if (q := place(p)) is not None)
            if kept:
                grouped |= kept
                contents[tree[next(iter(kept))]] += 1  # type: ignore[index]
            if len(kept) > 1:
                linked.add(kept)
        contents.update(v for p, v in tree.items() if isinstance(v, bytes) and p not in grouped)
        xattrs = {q: v for p, v in self.xattrs.items() if (q := place(p)) is not None}
        return View(tree, Counter({c: n for c, n in contents.items() if c}), linked, xattrs)


def merged(*views: View) -> View:
    """Views of trees with no path in common as one view (see View.mapped)."""
    return View({p: v for one in views for p, v in one.tree.items()}, sum((one.contents for one in views), Counter()),
                set().union(*(one.linked for one in views)), {p: v for one in views for p, v in one.xattrs.items()})


def _xattrs_of(path: Path) -> dict[str, bytes]:
    """The user.* attributes of a file or directory (never through a symlink)."""
    out = {}
    for name in os.listxattr(path, follow_symlinks=False):
        if name.startswith("user."):
            with contextlib.suppress(OSError):
                out[name] = os.getxattr(path, name, follow_symlinks=False)
    return out


def view(root: Path) -> View:
    """The View of the tree under root; tolerates entries that vanish while it walks."""
    tree: dict[str, Entry] = {}
    names: dict[int, list[str]] = {}
    content: dict[int, bytes] = {}
    xattrs: Xattrs = {}
    for path, kind in walk(root):
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            if kind == "link":
                tree[path] = Link(os.readlink(root / path))
                continue
            if kind == "dir":
                tree[path] = None
            else:
                fd = os.open(root / path, os.O_RDONLY | os.O_NOFOLLOW)
                try:
                    ino = os.fstat(fd).st_ino
                    tree[path] = content[ino] = read_all(fd)
                finally:
                    os.close(fd)
                names.setdefault(ino, []).append(path)
            found = _xattrs_of(root / path)
            if found:
                xattrs[path] = found
    return View(tree, Counter(c for c in content.values() if c),
                {frozenset(n) for n in names.values() if len(n) > 1}, xattrs)


def xlabel(attrs: dict[str, bytes] | None) -> str:
    if not attrs:
        return "{}"
    return "{" + ", ".join(f"{k}={label(v)}" for k, v in sorted(attrs.items())) + "}"


def label(content: Entry) -> str:
    if content is None:
        return "dir"
    if isinstance(content, Link):
        return f"-> {content.target}"
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


def diff(x: dict[str, Entry], y: dict[str, Entry], nx: str, ny: str) -> str:
    return "\n".join(f"  {p}: {nx} {label(x[p]) if p in x else 'absent'}, {ny} {label(y[p]) if p in y else 'absent'}"
                     for p in sorted(set(x) | set(y)) if x.get(p, 0) != y.get(p, 0))


@dataclass
class Ledger:
    """What the operations since the last settle did; thread-safe (the soak runs every
    device's operations at once). `place(dev, path)` is where a device's path lies in
    the compared tree, the tree the books keep: the path itself where every device shows
    one tree; with a shared folder, each account's own tree has a place of its own."""

    settled: dict[str, Entry] = field(default_factory=dict)
    live: Counter[bytes] = field(default_factory=Counter)
    produced: set[bytes] = field(default_factory=set)
    targets: set[str] = field(default_factory=set)
    destroyed: dict[bytes, set[str]] = field(default_factory=dict)
    """content -> devices that destroyed it"""
    destroyed_at: dict[bytes, list[tuple[str, str]]] = field(default_factory=dict)
    """content -> (device, path) where it was destroyed"""
    moved: dict[bytes, set[str]] = field(default_factory=dict)
    """content -> devices that renamed its file or gave it another name"""
    spared: set[bytes] = field(default_factory=set)
    """contents that lost one name of several: they may live on"""
    rewritten: dict[bytes, set[str]] = field(default_factory=dict)
    """content -> devices that wrote its file again with the same bytes (a truncate to
    its own size): a new version all the same, which a concurrent change elsewhere does
    not destroy (it ends as a conflicted copy beside it)"""
    linked_from: dict[str, set[str]] = field(default_factory=dict)
    """path -> devices that gave the file there another name"""
    xattr_values: set[bytes] = field(default_factory=set)
    settled_xattrs: Xattrs = field(default_factory=dict)
    settled_linked: set[frozenset[str]] = field(default_factory=set)
    moved_dirs: list[tuple[str, str]] = field(default_factory=list)
    """(device, path) of each directory renamed"""
    moved_from: list[tuple[str, str]] = field(default_factory=list)
    """(device, path) of each file renamed (or given an attribute) there: it keeps the
    file, with whatever content reaches it, even content that device never saw"""
    groups: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    counter: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    place: Callable[[str, str], str] = lambda dev, path: path

    def new_content(self, dev: str, size: int, seed: int) -> bytes:
        with self.lock:
            self.counter += 1
            n = self.counter
        return f"<{dev}#{n}>".encode() + random.Random(seed).randbytes(size)

    def new_target(self, dev: str) -> str:
        with self.lock:
            self.counter += 1
            target = f"../nowhere/{dev}{self.counter}"
            self.targets.add(target)
        return target

    def new_xattr(self, dev: str, size: int, seed: int) -> bytes:
        value = self.new_content(dev, size, seed)
        with self.lock:
            self.xattr_values.add(value)
        return value

    def produce(self, dev: str, old: bytes, new: bytes, path: str = "") -> None:
        """A file's bytes went from `old` (observed) to `new` on `dev`."""
        if old and new == old:
            with self.lock:
                self.rewritten.setdefault(old, set()).add(dev)
            return
        self.destroy(dev, old, path)
        with self.lock:
            if new:
                self.live[new] += 1
            self.produced.add(new)

    def destroy(self, dev: str, old: bytes, path: str = "", nlink: int = 1) -> None:
        """`old` lost a name (`path`) on `dev`; with other names left (`nlink` > 1 as
        `dev` saw it) it may live on, depending on what the other devices did with them."""
        if not old:
            return
        with self.lock:
            if nlink > 1:
                self.spared.add(old)
            self.destroyed.setdefault(old, set()).add(dev)
            self.destroyed_at.setdefault(old, []).append((dev, self.place(dev, path)))
            if self.live[old] > 0:
                self.live[old] -= 1

    def move(self, dev: str, content: bytes, path: str = "") -> None:
        with self.lock:
            self.moved.setdefault(content, set()).add(dev)
            if path:
                self.moved_from.append((dev, self.place(dev, path)))

    def link(self, dev: str, content: bytes, names: list[str]) -> None:
        """`dev` gave the file with `content`, known by `names`, another name: like a
        move, that keeps it (with what is written into it meanwhile) where a name goes."""
        with self.lock:
            self.moved.setdefault(content, set()).add(dev)
            for name in names:
                self.linked_from.setdefault(self.place(dev, name), set()).add(dev)

    def move_dir(self, dev: str, path: str) -> None:
        with self.lock:
            self.moved_dirs.append((dev, self.place(dev, path)))

    def touched(self, dev: str, *paths: str) -> None:
        with self.lock:
            self.groups.append((dev, tuple(self.place(dev, p) for p in paths)))

    # --- the checks ---

    def problems(self, settled: View, before: dict[str, View], names: set[str]) -> list[tuple[str, str]]:
        """Rules 1-4 against the settled view (`before`: each device's own view just
        before the settle; `names`: the pool). Returns (what, detail) pairs."""
        out: list[tuple[str, str]] = []
        final, contents = settled.tree, settled.contents
        lost = [c for c, n in self.live.items() if n > contents[c]]
        if lost:
            out.append(("written content lost", "\n".join(
                f"  {label(c)}: must be in {self.live[c]} file(s), is in {contents[c]}" for c in lost)))
        back = [c for c, by in self.destroyed.items()
                if self.live[c] == 0 and contents[c] and not self._kept_by_a_move(c, by)]
        if back:
            out.append(("destroyed content came back", "\n".join(
                f"  {label(c)} at {[p for p, v in final.items() if v == c]}, destroyed at {self.destroyed_at[c]}"
                for c in back)))
        alien = {p: label(v) for p, v in final.items()
                 if isinstance(v, bytes) and v not in self.produced or isinstance(v, Link) and v.target not in self.targets}
        bad_names = [p for p in final if any(part not in names for part in base_path(p).split("/"))]
        alien_x = {f"{p} {k}": label(v) for p, attrs in settled.xattrs.items() for k, v in attrs.items()
                   if v not in self.xattr_values}
        if alien or bad_names or alien_x:
            out.append(("content or names nobody made",
                        f"  contents: {alien}\n  names: {bad_names}\n  xattrs: {alien_x}"))
        wrong, contested = self.inexact(before, settled)
        if wrong:
            out.append((f"where only one device acted, the result differs (contested: {sorted(contested)})",
                        "\n".join(wrong)))
        return out

    def _kept_by_a_move(self, content: bytes, destroyers: set[str]) -> bool:
        """A device other than the ones that destroyed `content` moved its file (or wrote
        it again with the same bytes), or a directory above where it was destroyed."""
        if self.moved.get(content, set()) - destroyers or self.rewritten.get(content, set()) - destroyers \
                or content in self.spared:
            return True
        if any(self.linked_from.get(path, set()) - destroyers for _, path in self.destroyed_at.get(content, [])):
            return True
        if any(dev not in destroyers and path == moved
               for _, path in self.destroyed_at.get(content, []) for dev, moved in self.moved_from):
            return True  # the file was moved from where it was destroyed, before its content reached the mover
        return any(dev not in destroyers and (path == moved or path.startswith(moved + "/"))
                   for _, path in self.destroyed_at.get(content, []) for dev, moved in self.moved_dirs)

    def inexact(self, before: dict[str, View], settled: View) -> tuple[list[str], set[str]]:
        """Rule 4: link the groups; single-device components must come out exactly
        (contents and extended attributes). Returns (what differs, the contested paths)."""
        final = settled.tree
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
        owned: dict[str, set[str]] = {dev: set() for dev in before}
        for i, (dev, paths) in enumerate(self.groups):
            (contested if len(devices[find(i)]) > 1 else owned[dev]).update(paths)
        wrong = []

        def unsettled(q: str) -> bool:
            return any(under_any(origin, contested) for origin in path_origins(q))

        def partners(linked: set[frozenset[str]], p: str) -> list[str]:
            """The other names of p's file that no two devices fought over."""
            return sorted(q for group in linked if p in group for q in group if q != p and not unsettled(q))

        seen = set(final) | set(self.settled)
        for seen_there in before.values():
            seen |= set(seen_there.tree)
        for p in sorted(seen):
            if unsettled(p):
                continue
            owner = next((dev for dev in before if under_any(p, owned[dev])), None)
            want = before[owner].tree.get(p, "absent") if owner else self.settled.get(p, "absent")
            got = final.get(p, "absent")
            why = f"({'as on dev-' + owner + ' before the settle' if owner else 'untouched'})"
            if want != got:
                wrong.append(f"  {p}: {label(got) if got != 'absent' else got}, expected "
                             f"{label(want) if want != 'absent' else want} {why}")
                continue
            if got == "absent":
                continue
            want_x = before[owner].xattrs.get(p) if owner else self.settled_xattrs.get(p)
            if want_x != settled.xattrs.get(p):
                wrong.append(f"  {p} xattrs: {xlabel(settled.xattrs.get(p))}, expected {xlabel(want_x)} {why}")
            want_names = partners(before[owner].linked if owner else self.settled_linked, p)
            if want_names != partners(settled.linked, p):
                wrong.append(f"  {p} other names of its file: {partners(settled.linked, p)}, expected {want_names} {why}")
        return wrong, contested

    def roll(self, settled: View) -> None:
        """The settle passed: `settled` is the new starting point."""
        with self.lock:
            self.settled, self.settled_xattrs, self.settled_linked = settled.tree, settled.xattrs, settled.linked
            self.live = Counter(settled.contents)
            self.destroyed, self.destroyed_at, self.moved, self.moved_dirs, self.moved_from = {}, {}, {}, [], []
            self.spared, self.linked_from, self.rewritten = set(), {}, {}
            self.groups = []


