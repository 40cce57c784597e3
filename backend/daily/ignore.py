"""Ignore rules: paths that stay on this device only.

A `.cloudfsignore` file in any directory of the drive holds gitignore patterns
(matched by pathspec's GitIgnoreSpec) for the paths below that directory; a deeper
file's patterns win over a shallower one's, a later line over an earlier one, `!`
re-includes, and nothing below an ignored directory can be re-included (as in git).
Built-in DEFAULTS (editor swap files, OS litter) come first, so any `.cloudfsignore`
overrides them (`!*.swp`). The ignore files themselves are never ignored: they sync,
so every device ignores the same things.

What the rules decide, as .gitignore does for untracked files: a node the server does
not have yet is never sent to it (the syncer asks `ignored` in one place, before it
applies an outbox entry), so it lives in this device's cache only and behaves as any
file on the mount. A node the server already has keeps syncing when a rule starts to
match it. A line pathspec cannot parse is skipped and reported (`problems`, shown by
`cloudfs status`), never fatal.

Reading an ignore file may fetch it (it came from another device): `ignored` is async
and raises OfflineError when that cannot be done now, which the syncer treats as any
transient failure (the entry waits).
"""

from __future__ import annotations

import logging

import pathspec

from ..local.cache import ROOT_INO, Cache, Inode
from ..model.content import Content

log = logging.getLogger("cloudfs.ignore")

IGNORE_FILE = ".cloudfsignore"
MAX_BYTES = 1 << 20
DEFAULTS = (
    # macOS, Windows and desktop litter
    ".DS_Store", "._*", ".Spotlight-V100/", ".Trashes/", ".fseventsd/", "Thumbs.db", "ehthumbs.db", "desktop.ini",
    # editor swap, backup and lock files (vim, emacs, LibreOffice, MS Office)
    "*.swp", "*.swo", "*.swx", "*~", ".#*", "\\#*#", ".~lock.*#", "~$*",
)


def _parse(lines: list[str], where: str) -> tuple[pathspec.GitIgnoreSpec, list[str]]:
    """The spec of the lines that parse; a problem line for each that does not."""
    good, problems = [], []
    for number, line in enumerate(lines, 1):
        try:
            pathspec.GitIgnoreSpec.from_lines([line])
        except Exception as exc:  # noqa: BLE001 - pathspec raises several kinds; every one means "skip it"
            problems.append(f"{where} line {number}: {line.strip()!r} is not a valid pattern ({exc}): skipped")
            continue
        good.append(line)
    return pathspec.GitIgnoreSpec.from_lines(good), problems


_DEFAULT_SPEC, _ = _parse(list(DEFAULTS), "built-in defaults")


class IgnoreRules:
    def __init__(self, cache: Cache, content: Content) -> None:
        self.cache = cache
        self.content = content
        self._specs: dict[int, tuple[tuple[int, int, int, int], pathspec.GitIgnoreSpec]] = {}
        """By directory inode: the parsed ignore file, tagged with its (ino, gen, rev, size)."""
        self._problems: dict[int, list[str]] = {}

    @property
    def problems(self) -> list[str]:
        return [line for lines in self._problems.values() for line in lines]

    async def rules_of(self, dir_ino: int) -> pathspec.GitIgnoreSpec | None:
        ino = self.cache.lookup(dir_ino, IGNORE_FILE)
        node = self.cache.get(ino) if ino is not None else None
        if node is None or node.kind != "file":
            self._specs.pop(dir_ino, None)
            self._problems.pop(dir_ino, None)
            return None
        key = (node.ino, node.gen, node.rev, node.size)
        held = self._specs.get(dir_ino)
        if held is not None and held[0] == key:
            return held[1]
        data = await self.content.read(node, 0, min(node.size, MAX_BYTES))
        where = "/" + "/".join(self.cache.names_to(node.ino))
        spec, problems = _parse(data.decode("utf-8", "replace").splitlines(), where)
        if node.size > MAX_BYTES:
            problems.append(f"{where}: only its first {MAX_BYTES} bytes are read")
        for line in problems:
            log.warning("%s", line)
        self._specs[dir_ino] = (key, spec)
        self._problems[dir_ino] = problems
        return spec

    async def ignored(self, node: Inode, memo: dict[int, bool] | None = None) -> bool:
        """Does a rule keep `node` on this device? `memo` (directory inode -> ignored)
        may be shared by the calls of one walk over many nodes."""
        if node.ino == ROOT_INO:
            return False
        chain: list[Inode] = []  # root's child .. node
        current: Inode | None = node
        for _ in range(4096):
            if current is None or current.ino == ROOT_INO or not current.parent:
                break
            chain.append(current)
            current = self.cache.get(current.parent)
        if current is None or current.ino != ROOT_INO:
            return False  # not in the tree (an orphan): nothing will send it anyway
        chain.reverse()
        memo = memo if memo is not None else {}
        for depth, here in enumerate(chain):
            is_dir = here is not node or node.kind == "dir"
            if here is node and node.name == IGNORE_FILE and not is_dir:
                return False  # the rules themselves always sync (unless their directory is ignored)
            if is_dir and here.ino in memo:
                if memo[here.ino]:
                    return True
                continue
            decision = await self._decide(chain, depth, is_dir)
            if is_dir:
                memo[here.ino] = decision
            if decision:
                return True
        return False

    async def _decide(self, chain: list[Inode], depth: int, is_dir: bool) -> bool:
        """Whether the patterns above chain[depth] (defaults, then each directory's file
        from the root down) ignore it; its ancestors were checked already."""
        names = [n.name for n in chain[:depth + 1]]
        suffix = "/" if is_dir else ""
        result = _DEFAULT_SPEC.check_file("/".join(names) + suffix).include
        directories = [ROOT_INO] + [n.ino for n in chain[:depth]]
        for level, dir_ino in enumerate(directories):
            spec = await self.rules_of(dir_ino)
            if spec is None:
                continue
            include = spec.check_file("/".join(names[level:]) + suffix).include
            if include is not None:
                result = include
        return bool(result)
