"""Filling and repairing the mirror from server snapshots (the follower's other half).

`bootstrap` mirrors the account's tree into an empty cache, then each shared folder.
`reconcile_namespace` compares one namespace's part of the mirror with its snapshot:
after a 410 for that namespace, when the device starts following it (a folder just
shared with the account, or by it), on `cloudfs sync --full` and periodically. It
leaves pending local work alone (the follower's `apply` defers what has some) and
only looks at that namespace's inodes: the account's own tree down to, not into, the
shared folders mounted in it; a shared folder from its root down.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..local.cache import ROOT_INO, Cache, Inode
from ..model import links
from ..protocol import wire
from ..protocol.api_client import ApiClient
from . import shared

if TYPE_CHECKING:
    from .follower import Follower

log = logging.getLogger("cloudfs.follower")


async def bootstrap(f: Follower) -> None:
    """First mount with an empty cache: mirror the whole tree from a snapshot."""
    if f.cache.get(ROOT_INO) is not None:
        return
    me = await f.client.me()
    f.user_id = me.user_id
    nodes, cursor = await snapshot(f.client)
    with f.cache.write() as txn:
        inos = {me.root_id: ROOT_INO}
        for node in nodes:
            if node.id != me.root_id and node.kind != "link":
                inos[node.id] = f.cache.new_ino(txn)
        for node in nodes:
            if node.kind == "link":
                continue
            ino = inos[node.id]
            parent = inos.get(node.parent_id or 0, 0) if node.id != me.root_id else 0
            local = f._inode_from(node, ino, parent)
            f.cache.put(txn, local, create=True)
            f.cache.bind_node_id(txn, local, node.id)
            if parent:
                f.cache.link(txn, parent, node.name, ino)
        for node in nodes:  # extra names of files, oldest first (the snapshot is in id order)
            parent, target = inos.get(node.parent_id or 0, 0), f.cache.get(inos.get(node.link_to or 0, 0), txn)
            if node.kind == "link" and parent and target is not None:
                links.add_alias(f.cache, txn, target, parent, node.name, node_id=node.id)
        f.cursors = {me.user_id: cursor}
        shared.save_cursors(f.cache, txn, f.cursors)
        f.cache.set_meta(txn, "user_id", str(me.user_id))
    # What `cloudfs sync` waits for (Follower.wait_for). Known only from the change feed's
    # first answer otherwise, which a quiet account's long-poll gives after 25 s: a sync
    # until then waited for nothing and missed what another device had just done.
    f.visible = {int(ns) for ns in me.cursors} | {me.user_id}
    log.info("mirrored %d nodes from the server at cursor %d", len(nodes), cursor)
    for ns in sorted(int(k) for k in me.cursors if int(k) != me.user_id):
        await f._run_reconcile(ns)  # the shared folders: their roots are placed, now what is in them


async def snapshot(client: ApiClient, ns: int | None = None) -> tuple[list[wire.Node], int]:
    nodes: list[wire.Node] = []
    cursor, after = None, 0
    for _ in range(1_000_000):
        snap = await client.snapshot(after, ns=ns)
        cursor = snap.cursor if cursor is None else cursor
        nodes.extend(snap.nodes)
        if snap.next_after_id is None:
            break
        after = snap.next_after_id
    return nodes, cursor or 0


async def reconcile_namespace(f: Follower, ns: int) -> None:
    """Make the mirror of one namespace match its snapshot, leaving pending local work
    alone; then follow it from the snapshot's cursor."""
    own = ns == f.user_id
    nodes, cursor = await snapshot(f.client, None if own else ns)
    by_id = {n.id: n for n in nodes}
    root = f.cache.get(ROOT_INO)
    top = None if own else next((n for n in nodes if n.ns == ns), None)
    if root is None or (not own and top is None):
        log.warning("namespace %d: no place for it in this tree yet", ns)
        return
    top_id = root.node_id if own else top.id  # type: ignore[union-attr]
    children: dict[int, list[wire.Node]] = {}
    for n in nodes:
        if n.parent_id is not None and n.id != top_id:
            children.setdefault(n.parent_id, []).append(n)
    # Parents before children, so every create finds its directory.
    order, stack = ([] if own else [top]), [top_id]
    for _ in range(len(nodes) + 1):
        if not stack:
            break
        node_id = stack.pop()
        for child in children.get(node_id, []):
            order.append(child)
            stack.append(child.id)
    order.sort(key=lambda n: n.kind == "link")  # extra names once the files they name are here
    changed = 0
    for remote in order:
        ino = f.cache.ino_for_node(remote.id)
        local = f.cache.get(ino) if ino else None
        if local is None or differs(f.cache, local, remote):
            f.apply(wire.Change(seq=0, op="modify", node=remote, device="reconcile"))
            changed += 1
    top_ino = ROOT_INO if own else f.cache.ino_for_node(top_id)
    for local in namespace_inodes(f.cache, top_ino) if top_ino else []:
        if local.bound and local.ino != ROOT_INO and local.parent and local.node_id not in by_id:
            current = f.cache.get(local.ino)
            if current is not None and current.parent:
                f._delete_unless_moving(current)
                changed += 1
    await f._flush_invalidations()
    f._save_cursors({ns: cursor})
    f.reconciles += 1
    log.info("reconciled the mirror of namespace %d with the server at cursor %d: %d node(s) repaired",
             ns, cursor, changed)

def namespace_inodes(cache: Cache, top_ino: int) -> list[Inode]:
    """The inodes of one namespace here: `top_ino` and what is below it, not going into
    the shared folders mounted inside (their roots are included: they are placed here)."""
    out: list[Inode] = []
    stack = [top_ino]
    for _ in range(100_000_000):
        if not stack:
            break
        node = cache.get(stack.pop())
        if node is None:
            continue
        out.append(node)
        if node.kind == "dir" and (node.ino == top_ino or not node.extra.get("ns")):
            stack.extend(ino for _, ino in cache.entries(node.ino))
    return out


def differs(cache: Cache, local: Inode, remote: wire.Node) -> bool:
    parent = cache.ino_for_node(remote.parent_id) if remote.parent_id else 0
    if remote.kind == "link":
        return (local.parent, local.name, local.extra.get("target")) != \
            (parent, remote.name, cache.ino_for_node(remote.link_to or 0))
    if (local.parent, local.name, local.mode, local.uid, local.gid, local.xattrs) != \
            (parent, remote.name, remote.mode, remote.uid, remote.gid, remote.xattrs):
        return True
    if (local.extra.get("ns"), local.extra.get("role")) != (remote.ns, remote.role):
        return True
    return local.kind == "file" and (local.rev, local.size) != (remote.rev, remote.size)
