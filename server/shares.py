"""Shared folders: sharing, invitations, accepting, leaving, members and roles.

Sharing a folder of one's own tree makes it a namespace (namespaces.py) in one
transaction: the folder and everything below it (tombstones and versions included)
change namespace, keeping their ids, so every device's mirror stays valid; the new
namespace is given the chunks of their versions (crossing.py: no byte is uploaded
again); and a mount row takes the folder's place in the owner's tree. An invitation is
a member row in state `invited`; accepting it puts a mount row in the member's tree,
at the path they chose. Leaving, or being removed, takes the mount row away: its
journal entry (a `delete` of the shared folder where that member had it) makes their
devices drop the folder, keeping any file they had not uploaded yet as a folder of
their own (follower.py).

Every function takes an open write transaction that holds the locks of the namespaces
it writes: the shared namespace, and the root namespaces of the accounts whose mounts
it adds, moves or takes away (`shares_api.py` takes them).
"""

from __future__ import annotations

import time
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloudfs.backend.protocol import wire_shares
from cloudfs.backend.protocol.names import split_path

from . import crossing, history, journal, namespaces, tree
from .db import members, nodes, users
from .db import namespaces as namespace_table
from .errors import Conflict, Forbidden, Invalid, NameExists, NotADirectory, NotFound, SharedFolderConflict
from .sql import Row, Stmt, as_tx

ROLES = ("editor", "viewer")

_MOUNT = Stmt("""INSERT INTO nodes (owner_id, parent_id, name, kind, mode, mtime_ns, size, rev, target, deleted, uid, gid,
                                    link_to, mount_ns)
                 VALUES (:owner_id, :parent_id, :name, 'mount', :mode, :mtime_ns, 0, 1, :role, {false}, :uid, :gid,
                         :link_to, :mount_ns)
                 RETURNING *""")


class Account(Protocol):
    id: int
    name: str
    root_id: int


class AlreadyMember(Conflict):
    code = "already_member"


class Withdrawn(Conflict):
    code = "withdrawn"


def check_role_name(role: str) -> str:
    if role not in ROLES:
        raise Invalid(f"role {role!r} does not exist: give editor or viewer", field="role")
    return role


def account(conn: Connection, name: str, *, field: str = "user") -> Row:
    row = conn.execute(sa.select(users).where(users.c.name == name)).mappings().first()
    if row is None:
        raise NotFound(f"no account named {name!r}", field=field)
    return dict(row)


def member(conn: Connection, ns_id: int, user_id: int) -> Row | None:
    row = conn.execute(sa.select(members).where(members.c.ns_id == ns_id, members.c.user_id == user_id)).mappings().first()
    return None if row is None else dict(row)


def shared(conn: Connection, ns_id: int, *, field: str = "id") -> Row:
    ns = namespaces.get(conn, ns_id)
    if ns is None or ns["kind"] != "shared":
        raise NotFound(f"no shared folder {ns_id}", field=field)
    return ns


def _owner_only(conn: Connection, user: Account, ns_id: int) -> Row:
    ns = shared(conn, ns_id)
    role = namespaces.role_in(conn, user.id, ns_id)
    if role is None:
        raise NotFound(f"no shared folder {ns_id}", field="id")
    if role != "owner":
        raise Forbidden(f"only the owner of {ns['name']!r} decides who is a member", field="id")
    return ns


# --- sharing ---


def share(conn: Connection, user: Account, ns_id: int, folder: Row, invitee: str, role: str, device: str) -> int:
    """Share `folder` (in namespace `ns_id`, which the caller can see) with `invitee`;
    returns the shared namespace. A folder of the caller's own tree becomes a namespace;
    an already shared folder takes one more member (its owner only)."""
    check_role_name(role)
    target = account(conn, invitee)
    if target["id"] == user.id:
        raise Invalid("a folder cannot be shared with its own owner", field="user")
    if ns_id == user.id:
        if folder["kind"] != "dir":
            raise NotADirectory(f"{folder['name']!r} is a {folder['kind']}: only a folder can be shared", field="path")
        if folder["parent_id"] is None:
            raise Invalid("the drive's root cannot be shared: share a folder in it", field="path")
        ns_id = _make_namespace(conn, user, folder, device)
    else:
        ns = shared(conn, ns_id, field="path")
        if folder["id"] != ns["root_id"]:
            raise SharedFolderConflict(f"{folder['name']!r} is inside the shared folder {ns['name']!r}: a shared folder "
                                       "cannot hold another; share the folder itself", field="path")
        if namespaces.role_in(conn, user.id, ns_id) != "owner":
            raise Forbidden(f"only the owner of {ns['name']!r} invites", field="path")
    invite(conn, ns_id, target, role, user.id)
    return ns_id


def _make_namespace(conn: Connection, user: Account, folder: Row, device: str) -> int:
    try:
        crossing.check_movable(conn, user.id, folder)
    except SharedFolderConflict as exc:
        raise SharedFolderConflict(str(exc).replace("go inside another", "be shared inside another"), field="path",
                                   **exc.extra) from None
    ns_id = namespaces.new_id(conn)
    namespaces.insert(conn, ns_id, kind="shared", owner_id=user.id, root_id=folder["id"], name=folder["name"])
    crossing.move_subtree(conn, user.id, ns_id, folder["id"])
    conn.execute(nodes.update().where(nodes.c.id == folder["id"]).values(parent_id=None))
    mount = insert_mount(conn, user.id, parent_id=folder["parent_id"], name=folder["name"], root=folder, ns_id=ns_id,
                         role="owner")
    now = time.time()
    conn.execute(members.insert().values(ns_id=ns_id, user_id=user.id, role="owner", state="accepted",
                                         mount_id=mount["id"], invited_by=user.id, created_at=now, updated_at=now))
    journal.append(conn, user.id, "create", mount, device=device)
    return ns_id


def insert_mount(conn: Connection, user_id: int, *, parent_id: int, name: str, root: Row, ns_id: int,
                 role: str) -> Row:
    row = as_tx(conn).one(_MOUNT, dict(owner_id=user_id, parent_id=parent_id, name=name, mode=root["mode"],
                                       mtime_ns=root["mtime_ns"], role=role, uid=root["uid"], gid=root["gid"],
                                       link_to=root["id"], mount_ns=ns_id))
    assert row is not None
    return row


def invite(conn: Connection, ns_id: int, target: Row, role: str, by: int) -> None:
    check_role_name(role)
    row = member(conn, ns_id, target["id"])
    now = time.time()
    if row is None:
        conn.execute(members.insert().values(ns_id=ns_id, user_id=target["id"], role=role, state="invited",
                                             invited_by=by, created_at=now, updated_at=now))
        return
    if row["state"] in ("invited", "accepted"):
        raise AlreadyMember(f"{target['name']} is already {row['state']} ({row['role']})", field="user")
    conn.execute(members.update().where(members.c.id == row["id"]).values(
        role=role, state="invited", invited_by=by, mount_id=None, updated_at=now))


# --- the member's side ---


def accept(conn: Connection, user: Account, ns_id: int, path: str | None, device: str) -> None:
    """Mount the shared folder in the caller's tree: at `path`, or /NAME (numbered if taken)."""
    ns = shared(conn, ns_id)
    row = member(conn, ns_id, user.id)
    if row is None:
        raise NotFound(f"no invitation to shared folder {ns_id}", field="id")
    if row["state"] == "accepted":
        raise AlreadyMember(f"you have already accepted {ns['name']!r}", field="id")
    if row["state"] != "invited":
        why = {"removed": "was withdrawn by its owner", "left": "ended when you left the folder",
               "declined": "was declined"}[row["state"]]
        raise Withdrawn(f"the invitation to {ns['name']!r} {why}; ask its owner for a new one", field="id")
    if path is None:
        parent_id, name = user.root_id, free_name(conn, user.id, user.root_id, ns["name"])
    else:
        parent_id, name = place_for(conn, user, path)
    root = tree.get(conn, ns_id, ns["root_id"])
    mount = insert_mount(conn, user.id, parent_id=parent_id, name=name, root=root, ns_id=ns_id, role=row["role"])
    conn.execute(members.update().where(members.c.id == row["id"]).values(
        state="accepted", mount_id=mount["id"], updated_at=time.time()))
    journal.append(conn, user.id, "create", mount, device=device)


def place_for(conn: Connection, user: Account, path: str, *, field: str = "path") -> tuple[int, str]:
    """The parent and name of a new mount: a free name in a directory of the caller's own
    tree (not inside a shared folder)."""
    try:
        names = split_path(path)
    except ValueError as exc:
        raise Invalid(f"path {path!r}: {exc}", field=field) from None
    if not names:
        raise Invalid("the drive's root is taken: give a path inside it", field=field)
    parent_ns, parent = namespaces.resolve(conn, user.id, user.root_id, names[:-1])
    if parent_ns != user.id:
        raise SharedFolderConflict(f"{path} is inside a shared folder: a shared folder cannot hold another", field=field)
    if parent["kind"] != "dir":
        raise NotADirectory(f"/{'/'.join(names[:-1])} is not a directory", field=field)
    taken = tree.child(conn, user.id, parent["id"], names[-1])
    if taken is not None:
        raise NameExists(f"{path} already exists", field=field, node=tree.to_wire(taken).model_dump())
    return parent["id"], names[-1]


def free_name(conn: Connection, ns_id: int, parent_id: int, name: str) -> str:
    """`name`, or `NAME (N)` for the first N from 2 that is free in the directory."""
    if tree.child(conn, ns_id, parent_id, name) is None:
        return name
    for n in range(2, 10_000):
        candidate = f"{name} ({n})".encode()[:255].decode("utf-8", "ignore")
        if tree.child(conn, ns_id, parent_id, candidate) is None:
            return candidate
    raise Invalid(f"no free name for {name!r}", field="path")


def decline(conn: Connection, user: Account, ns_id: int) -> None:
    ns = shared(conn, ns_id)
    row = member(conn, ns_id, user.id)
    if row is None or row["state"] != "invited":
        raise NotFound(f"no open invitation to {ns['name']!r}", field="id")
    conn.execute(members.update().where(members.c.id == row["id"]).values(state="declined", updated_at=time.time()))


def leave(conn: Connection, user: Account, ns_id: int, device: str) -> None:
    """The caller stops being a member: the folder leaves their tree (their devices drop
    it). The owner cannot leave (`delete_root` dissolves a folder nobody else has)."""
    ns = shared(conn, ns_id)
    row = member(conn, ns_id, user.id)
    if row is None or row["state"] not in ("invited", "accepted"):
        raise NotFound(f"you are not a member of {ns['name']!r}", field="id")
    if row["role"] == "owner":
        raise SharedFolderConflict(f"you own {ns['name']!r}: remove its members (or delete the folder) instead of "
                                   "leaving it", field="id")
    conn.execute(members.update().where(members.c.id == row["id"]).values(state="left", mount_id=None,
                                                                          updated_at=time.time()))
    if row["mount_id"] is not None:
        drop_mount(conn, user.id, row["mount_id"], device)


def drop_mount(conn: Connection, user_id: int, mount_id: int, device: str) -> None:
    """Take a mount row out of an account's tree; its `delete` entry makes that account's
    devices drop the folder. The row itself goes (a mount is no history to restore)."""
    mount = tree.get_or_none(conn, user_id, mount_id)
    if mount is None or mount["kind"] != "mount":
        return
    journal.append(conn, user_id, "delete", mount, device=device)
    conn.execute(nodes.delete().where(nodes.c.id == mount_id))


# --- the owner's side ---


def remove(conn: Connection, user: Account, ns_id: int, name: str, device: str) -> None:
    """The owner withdraws an invitation or removes a member."""
    ns = _owner_only(conn, user, ns_id)
    target = account(conn, name)
    row = member(conn, ns_id, target["id"])
    if row is None or row["state"] not in ("invited", "accepted"):
        raise NotFound(f"{name} is not a member of {ns['name']!r}", field="user")
    if row["role"] == "owner":
        raise Invalid(f"{name} owns {ns['name']!r}: the owner is always a member", field="user")
    conn.execute(members.update().where(members.c.id == row["id"]).values(state="removed", mount_id=None,
                                                                          updated_at=time.time()))
    if row["mount_id"] is not None:
        drop_mount(conn, target["id"], row["mount_id"], device)


def set_role(conn: Connection, user: Account, ns_id: int, name: str, role: str, device: str) -> None:
    ns = _owner_only(conn, user, ns_id)
    check_role_name(role)
    target = account(conn, name)
    row = member(conn, ns_id, target["id"])
    if row is None or row["state"] not in ("invited", "accepted"):
        raise NotFound(f"{name} is not a member of {ns['name']!r}", field="user")
    if row["role"] == "owner":
        raise Invalid(f"{name} owns {ns['name']!r}: the owner's role does not change", field="user")
    if row["role"] == role:
        return
    conn.execute(members.update().where(members.c.id == row["id"]).values(role=role, updated_at=time.time()))
    if row["mount_id"] is not None:
        conn.execute(nodes.update().where(nodes.c.id == row["mount_id"]).values(target=role))
        mount = tree.get(conn, target["id"], row["mount_id"])
        journal.append(conn, target["id"], "attr", mount, device=device)


def lock_set(conn: Connection, ns_id: int, *names: str) -> tuple[int, ...]:
    """The namespaces an operation on `ns_id` that touches these accounts writes: the
    shared one and their root namespaces (for their mounts)."""
    ids = [ns_id]
    for name in names:
        row = conn.execute(sa.select(users.c.id).where(users.c.name == name)).scalar()
        if row is not None:
            ids.append(row)
    return tuple(sorted(set(ids)))


# --- a shared folder's root, moved or deleted from a member's tree ---


def move_mount(conn: Connection, user: Account, ns_id: int, req, device: str):  # noqa: ANN001, ANN201
    """A member renames or moves the shared folder in their own tree: its mount moves,
    nothing changes for the others."""
    mount = namespaces.mount_of(conn, user.id, ns_id)
    if mount is None:
        raise NotFound(f"shared folder {ns_id} is not in your tree", field="id")
    if namespaces.ns_of(conn, req.parent_id) != user.id:
        raise SharedFolderConflict("a shared folder cannot go inside another shared folder", field="parent_id",
                                   errno="EXDEV")
    if req.exchange:
        raise SharedFolderConflict("a shared folder cannot be exchanged with another node", field="exchange",
                                   errno="EXDEV")
    return tree.move(conn, user.id, mount["id"], req, device)


def delete_root(conn: Connection, user: Account, ns_id: int, device: str) -> tuple[Row, int]:
    """The shared folder deleted from a member's tree: a member leaves it; its owner, when
    nobody else is a member any more, dissolves the namespace back into their tree and
    deletes the folder there (it goes to their trash, as any folder). Returns the row
    and seq of the delete."""
    ns = shared(conn, ns_id)
    role = namespaces.role_in(conn, user.id, ns_id)
    if role != "owner":
        mount = namespaces.mount_of(conn, user.id, ns_id) or tree.get(conn, ns_id, ns["root_id"])
        leave(conn, user, ns_id, device)
        return {**mount, "deleted": True}, journal.cursor(conn, user.id)
    others = conn.execute(sa.select(sa.func.count()).where(
        members.c.ns_id == ns_id, members.c.user_id != user.id,
        members.c.state.in_(("invited", "accepted")))).scalar() or 0
    if others:
        raise SharedFolderConflict(f"{ns['name']!r} is shared with {others} other account(s): remove them "
                                   "(cloudfs shares remove) before deleting it", field="id")
    root = dissolve(conn, user, ns_id, device)
    seq = tree.tombstone(conn, user.id, root, device)
    return tree.get(conn, user.id, root["id"], allow_deleted=True), seq


def dissolve(conn: Connection, user: Account, ns_id: int, device: str) -> Row:
    """Turn a shared folder nobody else has back into a folder of its owner's tree, where
    the owner's mount was. Returns the folder's row."""
    ns = shared(conn, ns_id)
    mount = namespaces.mount_of(conn, user.id, ns_id)
    if mount is None:
        raise NotFound(f"shared folder {ns_id} is not in your tree", field="id")
    crossing.move_subtree(conn, ns_id, user.id, ns["root_id"])
    conn.execute(nodes.delete().where(nodes.c.id == mount["id"]))
    conn.execute(nodes.update().where(nodes.c.id == ns["root_id"]).values(parent_id=mount["parent_id"],
                                                                          name=mount["name"]))
    conn.execute(members.update().where(members.c.ns_id == ns_id).values(state="left", mount_id=None,
                                                                         updated_at=time.time()))
    conn.execute(namespace_table.update().where(namespace_table.c.id == ns_id).values(kind="gone"))
    root = tree.get(conn, user.id, ns["root_id"])
    journal.append(conn, user.id, "create", root, device=device)  # a folder of theirs again: no longer shared
    return root


def mounts_below(conn: Connection, user_id: int, dir_id: int) -> list[Row]:
    """Live mount rows below a directory of an account's own tree."""
    inside = tree.live_subtree(user_id, dir_id)
    return [dict(r) for r in conn.execute(sa.select(nodes).where(
        nodes.c.id.in_(sa.select(inside.c.id)), nodes.c.kind == "mount", nodes.c.deleted == sa.false())).mappings()]


# --- what an account sees ---


def info(conn: Connection, user: Account, ns_id: int) -> wire_shares.Share:
    ns = shared(conn, ns_id)
    row = member(conn, ns_id, user.id)
    if row is None:
        raise NotFound(f"no shared folder {ns_id}", field="id")
    owner = conn.execute(sa.select(users.c.name).where(users.c.id == ns["owner_id"])).scalar()
    path = None
    if row["state"] == "accepted" and row["mount_id"] is not None:
        mount = tree.get_or_none(conn, user.id, row["mount_id"])
        path = history.path_of(conn, user.id, mount) if mount is not None else None
    listed = []
    if row["state"] == "accepted":
        listed = [wire_shares.Member(user=r["name"], role=r["role"], state=r["state"]) for r in conn.execute(
            sa.select(users.c.name, members.c.role, members.c.state).join(users, users.c.id == members.c.user_id)
            .where(members.c.ns_id == ns_id, members.c.state.in_(("invited", "accepted")))
            .order_by(members.c.id)).mappings()]
    return wire_shares.Share(id=ns_id, name=ns["name"], owner=owner or "?", role=row["role"], state=row["state"],
                             path=path, root_id=ns["root_id"], members=listed)


def listing(conn: Connection, user: Account) -> list[wire_shares.Share]:
    """Every shared folder the account has or is invited to."""
    ids = conn.execute(sa.select(members.c.ns_id).where(
        members.c.user_id == user.id, members.c.state.in_(("invited", "accepted"))).order_by(members.c.ns_id)).scalars()
    return [info(conn, user, ns_id) for ns_id in list(ids)]
