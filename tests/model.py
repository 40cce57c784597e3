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
   (`NAME (conflicted copy, dev-X, DAY[ N]).EXT`).
2. Nothing lost: `live` is the multiset of contents that must exist: the files of the
   previous settle, plus every content produced since, minus every content an operation
   observed and then destroyed (overwrite, append, truncate, unlink, rename over, rm -r).
   Each must be the content of some file, under any name (a conflicted copy counts). A
   device may destroy only what it saw: an edit made on one device survives a delete
   made on another without having seen it, and both sides of an edit/edit conflict
   survive.
3. Nothing resurrected: content destroyed since the last settle that is not live is in
   no file, unless another device moved that file, or a directory it was in (a move is
   local work the product keeps: a moved file whose delete reached the server first is
   created again, and so is what a moved directory held).
4. Exact where the devices did not meet: the paths of each successful operation form a
   group (a rename's two paths are one group); groups are linked when a path of one
   equals or lies under a path of the other. Under the paths of a linked set whose
   groups all come from one device, the settled tree must equal that device's own tree
   just before the settle; paths under no group keep their state from the previous
   settle. Only where devices met are conflicted copies and either outcome allowed.

Convergence (every device shows the same tree, through the kernel's page cache and
straight from the mount process) is checked by the callers, which own the mounts.
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
from typing import Iterator

TAG = re.compile(rb"<([a-z])#(\d+)>")
COPY = re.compile(r"^(.*) \(conflicted copy, dev-[a-z], \d{4}-\d{2}-\d{2}(?: \d+)?\)(\.[^.]*)?$")


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
            except FileNotFoundError:
                continue
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
    device's operations at once)."""

    settled: dict[str, Entry] = field(default_factory=dict)
    live: Counter[bytes] = field(default_factory=Counter)
    produced: set[bytes] = field(default_factory=set)
    targets: set[str] = field(default_factory=set)
    destroyed: dict[bytes, set[str]] = field(default_factory=dict)
    """content -> devices that destroyed it"""
    destroyed_at: dict[bytes, list[tuple[str, str]]] = field(default_factory=dict)
    """content -> (device, path) where it was destroyed"""
    moved: dict[bytes, set[str]] = field(default_factory=dict)
    """content -> devices that renamed its file"""
    moved_dirs: list[tuple[str, str]] = field(default_factory=list)
    """(device, path) of each directory renamed"""
    groups: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    counter: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

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

    def produce(self, dev: str, old: bytes, new: bytes, path: str = "") -> None:
        """A file's bytes went from `old` (observed) to `new` on `dev`."""
        self.destroy(dev, old, path)
        with self.lock:
            if new:
                self.live[new] += 1
            self.produced.add(new)

    def destroy(self, dev: str, old: bytes, path: str = "") -> None:
        if not old:
            return
        with self.lock:
            self.destroyed.setdefault(old, set()).add(dev)
            self.destroyed_at.setdefault(old, []).append((dev, path))
            if self.live[old] > 0:
                self.live[old] -= 1

    def move(self, dev: str, content: bytes) -> None:
        with self.lock:
            self.moved.setdefault(content, set()).add(dev)

    def move_dir(self, dev: str, path: str) -> None:
        with self.lock:
            self.moved_dirs.append((dev, path))

    def touched(self, dev: str, *paths: str) -> None:
        with self.lock:
            self.groups.append((dev, paths))

    # --- the checks ---

    def problems(self, final: dict[str, Entry], before: dict[str, dict[str, Entry]],
                 names: set[str]) -> list[tuple[str, str]]:
        """Rules 1-4 against the settled tree `final` (`before`: each device's own tree
        just before the settle; `names`: the pool). Returns (what, detail) pairs."""
        out: list[tuple[str, str]] = []
        contents = Counter(v for v in final.values() if isinstance(v, bytes) and v)
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
        if alien or bad_names:
            out.append(("content or names nobody made", f"  contents: {alien}\n  names: {bad_names}"))
        wrong, contested = self.inexact(before, final)
        if wrong:
            out.append((f"where only one device acted, the result differs (contested: {sorted(contested)})",
                        "\n".join(wrong)))
        return out

    def _kept_by_a_move(self, content: bytes, destroyers: set[str]) -> bool:
        """A device other than the ones that destroyed `content` moved its file, or a
        directory above where it was destroyed."""
        if self.moved.get(content, set()) - destroyers:
            return True
        return any(dev not in destroyers and (path == moved or path.startswith(moved + "/"))
                   for _, path in self.destroyed_at.get(content, []) for dev, moved in self.moved_dirs)

    def inexact(self, before: dict[str, dict[str, Entry]], final: dict[str, Entry]) -> tuple[list[str], set[str]]:
        """Rule 4: link the groups; single-device components must come out exactly.
        Returns (what differs, the contested paths)."""
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
        seen = set(final) | set(self.settled)
        for view in before.values():
            seen |= set(view)
        for p in sorted(seen):
            if any(under_any(origin, contested) for origin in path_origins(p)):
                continue
            owner = next((dev for dev in before if under_any(p, owned[dev])), None)
            want = before[owner].get(p, "absent") if owner else self.settled.get(p, "absent")
            got = final.get(p, "absent")
            if want != got:
                wrong.append(f"  {p}: {label(got) if got != 'absent' else got}, expected "
                             f"{label(want) if want != 'absent' else want} "
                             f"({'as on dev-' + owner + ' before the settle' if owner else 'untouched'})")
        return wrong, contested

    def roll(self, final: dict[str, Entry]) -> None:
        """The settle passed: `final` is the new starting point."""
        with self.lock:
            self.settled = final
            self.live = Counter(v for v in final.values() if isinstance(v, bytes) and v)
            self.destroyed, self.destroyed_at, self.moved, self.moved_dirs = {}, {}, {}, []
            self.groups = []


