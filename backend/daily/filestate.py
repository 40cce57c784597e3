"""What one file (or directory) is doing on this device, for `cloudfs ls`.

Each entry gets one `state`, the first that holds of:

    ignored        an ignore rule keeps it on this device (ignore.py)
    over-quota     its upload was refused for the account's quota; kept here
    conflict       a conflicted copy, or a change from another device waits behind a
                   local change to it
    uploading      its upload is under way (`uploaded_bytes` of `pending_bytes`)
    pending-upload a local change the server has not acknowledged yet
    pinned         kept offline, every byte here      (pinning: not all of them yet)
    cached         every byte here, evictable
    partly-cached  some bytes here
    online-only    nothing here: reading it needs the server
    synced         a directory, symlink or special file in step with the server

and the facts behind it: `size`, `cached_bytes`, `pinned`, `pending_bytes`,
`uploaded_bytes`. Everything is read from the mirror; nothing asks the server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from ..errors import CloudFsError, NotADirectoryError_, NotFoundError, OfflineError, ServerError, UserError
from ..local.cache import ROOT_INO, Inode

if TYPE_CHECKING:
    from ..session import Session

CONFLICT_MARK = " (conflicted copy, "


def resolve(session: "Session", inside: str, shown: str | None = None) -> Inode:
    """The node at a path inside the drive ('/' its root); errors name it as `shown`
    (the path the user typed), else as `inside`."""
    shown = shown or inside
    node = session.cache.get(ROOT_INO)
    for name in [part for part in inside.split("/") if part]:
        if node is None or node.kind != "dir":
            raise NotADirectoryError_(f"{shown}: {name!r} is below something that is not a directory")
        ino = session.cache.lookup(node.ino, name)
        node = session.cache.get(ino) if ino is not None else None
        if node is None:
            raise NotFoundError(f"{shown} is not on the drive (no {name!r} there)")
    if node is None:
        raise NotFoundError("the drive has no root yet")
    return node


def _cached_bytes(session: "Session", node: Inode) -> int:
    """Bytes of the committed version in the chunk cache (dirty blocks come on top), or
    in a settled file's blocks (`Cache.settle`: all of it)."""
    if node.base_len == 0:
        return 0
    if node.ino in session.cache.settled:
        return node.base_len
    held = session.cache.chunklist(node.ino)
    if held is None or held[0] != node.rev:
        return 0
    return sum(min(c.length, node.base_len - c.offset) for c in held[1]
               if c.offset < node.base_len and c.fingerprint in session.chunks)


async def describe(session: "Session", node: Inode, memo: dict[int, bool] | None = None, *,
                   record: Inode | None = None) -> dict[str, Any]:
    """One entry. `record` is the name's own record when it is a hard link's extra name
    (an alias record, links.py): the entry takes its name, and that name's own sync
    (created on the server or not, ignored or not) beside the file's content."""
    record = record or node
    pinned = session.pins.is_pinned(node.ino)
    entry: dict[str, Any] = {"name": record.name if record.ino != ROOT_INO else "/", "kind": node.kind,
                             "size": node.size, "pinned": pinned}
    try:
        ignored = not record.node_id and await session.ignore.ignored(record, memo)
    except (OfflineError, ServerError):
        ignored = False  # its rules cannot be read now: it waits like any other change
    changed = session.follower._changed(node) or (record is not node and session.follower._changed(record))
    if node.kind == "file":
        dirty = session.cache.file_dirty_bytes(node.ino) if node.dirty else 0
        cached = _cached_bytes(session, node)
        entry["cached_bytes"] = min(node.size, cached + dirty)
        if changed and not ignored:
            entry["pending_bytes"] = dirty
            entry["uploaded_bytes"] = session.uploading(node.ino)
    if ignored:
        state = "ignored"
    elif node.ino in session.syncer.quota_blocked or node.ino in session.drive.over_quota:
        state = "over-quota"
    elif CONFLICT_MARK in node.name or (node.node_id and node.node_id in session.follower.deferred):
        state = "conflict"
    elif changed:
        state = "uploading" if entry.get("uploaded_bytes") else "pending-upload"
    elif node.kind != "file":
        state = "pinned" if pinned else "synced"
    elif entry["cached_bytes"] >= node.size:
        state = "pinned" if pinned else "cached"
    elif pinned:
        state = "pinning"
    else:
        state = "partly-cached" if entry["cached_bytes"] else "online-only"
    entry["state"] = state
    return entry


async def listing(session: "Session", inside: str, shown: str | None = None) -> list[dict[str, Any]]:
    """The entries of a directory (sorted by name), or the one entry of a file."""
    node = resolve(session, inside, shown)
    memo: dict[int, bool] = {}
    if node.kind != "dir":
        parts = [part for part in inside.split("/") if part]
        return [await describe(session, node, memo, record=_record(session, node, parts))]
    out = []
    for name, ino in session.cache.children(node.ino):
        child = session.cache.get(ino)
        if child is not None:
            out.append(await describe(session, child, memo, record=_record(session, child, [name], node.ino)))
    return out


def _record(session: "Session", node: Inode, parts: list[str], parent: int = 0) -> Inode | None:
    """The record of the name `parts` ends with: an alias record when that name is one
    of a hard-linked file's extra names, else None (the node itself)."""
    if not parts or node.kind == "dir":
        return None
    if not parent:
        parent_node = resolve(session, "/".join(parts[:-1]))
        parent = parent_node.ino
    ino = session.cache.record_at(parent, parts[-1])
    record = session.cache.get(ino) if ino is not None and ino != node.ino else None
    return record if record is not None and record.kind == "link" else None



COMMANDS = ("ls", "pin", "unpin", "pins_kept", "progress")


async def handle(session: "Session", req: dict[str, Any]) -> dict[str, Any]:
    """The control commands of `cloudfs ls | pin | unpin` (paths are inside the drive).
    A path that is not on the drive, or a pin that does not fit, changes nothing."""
    command = req.get("command")
    try:
        if command == "ls":
            return {"ok": True, "entries": await listing(session, str(req.get("path") or "/"), req.get("shown"))}
        if command == "progress":
            return {"ok": True, **session.progress()}
        if command == "pins_kept":
            with trio.move_on_after(float(req.get("timeout", 600))) as scope:
                await session.pins.kept()
            return {"ok": not scope.cancelled_caught and not session.pins.last_error
                    and not session.pins.missing_bytes, "timed_out": scope.cancelled_caught, **session.pins.status()}
        paths = [str(p) for p in req.get("paths", [])]
        shown = [str(p) for p in req.get("shown") or paths]
        nodes = [resolve(session, path, name) for path, name in zip(paths, shown)]
        if command == "pin":
            return {"ok": True, **session.pins.pin([n.ino for n in nodes])}
        not_pinned = [name for name, n in zip(shown, nodes) if n.ino not in session.pins.inos]
        if not_pinned:
            above = [name for name, n in zip(shown, nodes) if session.pins.is_pinned(n.ino)]
            why = " (it is pinned through a directory above it: unpin that)" if set(not_pinned) & set(above) else ""
            return {"ok": False, "error": f"{not_pinned[0]} is not pinned{why}; nothing was unpinned"}
        return {"ok": True, "unpinned": session.pins.unpin([n.ino for n in nodes])}
    except (UserError, CloudFsError) as exc:
        return {"ok": False, "error": str(exc)}
