"""Names the kernel may still resolve to a file's previous version.

Another device's version of a file comes in as a new inode under the same name
(follower._replace), and the kernel is told to forget the name; until it looks the name
up again, its dentry stands for the old inode. `rm y` then reaches the mount as UNLINK of
a name alone, and the mount would remove the version that arrived a moment ago, one the
program never saw: the other device's edit went with it (soak, seed 820070: b's append
committed, a's follower put it under y, a's `rm y` 16 ms later had read the old bytes).

Such a removal goes to the server guarded by the revision the kernel showed, so the
version committed since survives it: the server refuses the delete and the file comes
back, as for any delete that crossed an edit made elsewhere. A name counts as renewed
once the kernel looked it up (or a readdirplus handed it the new inode), and is no
longer tracked once the kernel forgot the old inode.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class _Shown:
    new_ino: int
    """The inode under the name here now."""
    old_ino: int
    rev: int
    """The revision of the node the kernel may still show under the name."""


class StaleNames:
    def __init__(self) -> None:
        self._names: dict[tuple[int, str], _Shown] = {}
        self._by_old: dict[int, set[tuple[int, str]]] = {}

    def __len__(self) -> int:
        return len(self._names)

    def replaced(self, parent: int, name: str, *, old_ino: int, old_rev: int, new_ino: int, known: bool) -> None:
        """`new_ino` took `old_ino`'s place under the name (the same node, a newer
        version); `known`: the kernel holds a reference to `old_ino`."""
        key = (parent, name)
        shown = self._names.get(key)
        if shown is not None and shown.new_ino == old_ino:  # replaced again before the kernel looked
            self._names[key] = _Shown(new_ino, shown.old_ino, shown.rev)
        elif known:
            self._drop(key)
            self._names[key] = _Shown(new_ino, old_ino, old_rev)
            self._by_old.setdefault(old_ino, set()).add(key)

    def renewed(self, parent: int, name: str, ino: int) -> None:
        """The kernel was handed `ino` for the name: it shows what is here now."""
        shown = self._names.get((parent, name))
        if shown is not None and shown.new_ino == ino:
            self._drop((parent, name))

    def forgotten(self, old_ino: int) -> None:
        """The kernel forgot `old_ino`: no dentry of it is left to act on."""
        for key in self._by_old.pop(old_ino, set()):
            self._names.pop(key, None)

    def shown_rev(self, parent: int, name: str, ino: int) -> int | None:
        """The revision the kernel may still show under the name, if older than `ino`,
        the inode here now."""
        shown = self._names.get((parent, name))
        return shown.rev if shown is not None and shown.new_ino == ino else None

    def _drop(self, key: tuple[int, str]) -> None:
        shown = self._names.pop(key, None)
        if shown is not None:
            keys = self._by_old.get(shown.old_ino, set())
            keys.discard(key)
            if not keys:
                self._by_old.pop(shown.old_ino, None)
