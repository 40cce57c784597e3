"""Names the kernel may still resolve to a file the follower took away from them.

Another device's change puts something else under a name here: its new version of the
file, as a new inode (follower._replace), or another node (a file renamed over it, one
created once it was deleted, or the one that won a name or a conflict against a file
made or edited here, which became a conflicted copy: follower._make_room,
syncer._rename_conflicted). The kernel is told to forget the name, which it does
when pyfuse3's notify worker gets to it; until it looks the name up again, its dentry
stands for the old inode. `rm y` reaches the mount as UNLINK of a name alone, and the
mount removed what had arrived a moment ago, which the program never saw: the other
device's edit went with it (soak, seed 820070: b's append committed, a's follower put it
under y, a's `rm y` 16 ms later had read the old bytes).

Such a removal goes to the server guarded by the revision the kernel showed (revision 0
when it showed another node), so what came since survives it: the server refuses the
delete and the file comes back, as for any delete that crossed an edit made elsewhere.
A name counts as renewed once the kernel looked it up (or a readdirplus handed it the
inode there now), and is no longer tracked once the kernel forgot the old inode.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..local.cache import Inode


@dataclass(frozen=True)
class _Shown:
    old_ino: int
    """The inode the kernel may still show under the name."""
    node_id: int
    rev: int
    """Its node and revision."""
    now_ino: int
    """The inode under the name here now (0: none)."""


class StaleNames:
    def __init__(self) -> None:
        self._names: dict[tuple[int, str], _Shown] = {}
        self._by_old: dict[int, set[tuple[int, str]]] = {}

    def __len__(self) -> int:
        return len(self._names)

    def took(self, parent: int, name: str, *, gone: Inode, known: bool) -> None:
        """The follower took the name from `gone` (`known`: the kernel holds a reference
        to it); nothing is under it until `put`."""
        key = (parent, name)
        shown = self._names.get(key)
        if shown is None:
            if not known or gone.kind != "file":
                return
            shown = _Shown(gone.ino, gone.node_id, gone.rev, 0)
            self._by_old.setdefault(gone.ino, set()).add(key)
        self._names[key] = dataclasses.replace(shown, now_ino=0)  # the kernel still shows the first

    def put(self, parent: int, name: str, ino: int) -> None:
        """The follower put inode `ino` under the name."""
        shown = self._names.get((parent, name))
        if shown is not None:
            self._names[(parent, name)] = dataclasses.replace(shown, now_ino=ino)

    def renewed(self, parent: int, name: str, ino: int) -> None:
        """The kernel was handed `ino` for the name (0: told there is none): it shows
        what is here now."""
        shown = self._names.get((parent, name))
        if shown is not None and shown.now_ino == ino:
            self._drop((parent, name))

    def removed(self, parent: int, name: str) -> None:
        """The name was removed through the kernel, which forgets its dentry with it."""
        self._drop((parent, name))

    def forgotten(self, old_ino: int) -> None:
        """The kernel forgot `old_ino`: no dentry of it is left to act on."""
        for key in self._by_old.pop(old_ino, set()):
            self._names.pop(key, None)

    def shown_rev(self, parent: int, name: str, node: Inode) -> int | None:
        """The revision a removal of `node` through the name is meant for, when the
        kernel may still show something else there: the older version's, or 0 for
        another node (no revision of `node` was shown)."""
        shown = self._names.get((parent, name))
        if shown is None or shown.now_ino != node.ino:
            return None
        return shown.rev if shown.node_id == node.node_id else 0

    def _drop(self, key: tuple[int, str]) -> None:
        shown = self._names.pop(key, None)
        if shown is not None:
            keys = self._by_old.get(shown.old_ino, set())
            keys.discard(key)
            if not keys:
                self._by_old.pop(shown.old_ino, None)
