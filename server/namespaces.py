"""Namespaces: which tree a node lives in, and who may see and change it.

Every node, chunk and journal entry belongs to one namespace (their `owner_id`
column). An account's own tree is its *root namespace*, whose id is the account's id;
a shared folder is a namespace of its own, owned by the account that shared it, whose
root node is the folder (parent None). Its members see it through a *mount row* in
their root namespace: a node of kind "mount" at the place they chose, whose `link_to`
is the shared namespace's root node, `mount_ns` the namespace and `target` the
member's role.

Devices never see a mount row as such: it is shown as the shared folder's root node
(kind "dir", the root's id) at the mount's place, with `ns` and `role` set
(`tree.to_wire`). So a device has one tree of node ids, and every request names nodes
by id: the server finds the namespace of each (`locate`), checks that the caller may
see it (404 otherwise, exactly like a node that does not exist) and, for a change,
that the caller is not a viewer there (403). The functions of tree.py, files.py and
commits.py then run in that namespace as they always ran for one account.

Access: an account sees its root namespace and every shared namespace where it is an
*accepted* member. Roles: owner and editor write, viewer reads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from sqlalchemy.engine import Connection

from cloudfs.backend.protocol import wire
from . import tree
from .db import Database
from .errors import Conflict, NotADirectory, NotFound, ReadOnly
from .sql import Row, Stmt, Tx, as_tx

WRITERS = ("owner", "editor")
T = TypeVar("T")

_NS_OF = Stmt("SELECT owner_id FROM nodes WHERE id = :node_id")
_ROLE = Stmt("SELECT role FROM members WHERE ns_id = :ns_id AND user_id = :user_id AND state = 'accepted'")
_NAMESPACE = Stmt("SELECT * FROM namespaces WHERE id = :ns_id")
_VISIBLE = Stmt("""SELECT n.id, n.root_id, n.kind, n.name, n.owner_id, m.role, m.mount_id
                   FROM members m JOIN namespaces n ON n.id = m.ns_id
                   WHERE m.user_id = :user_id AND m.state = 'accepted' ORDER BY n.id""")
_MOUNT = Stmt("""SELECT nd.* FROM members m JOIN nodes nd ON nd.id = m.mount_id
                 WHERE m.ns_id = :ns_id AND m.user_id = :user_id AND m.state = 'accepted'""")
_NEXT_PG = Stmt("SELECT nextval(pg_get_serial_sequence('namespaces', 'id'))")
_NEXT_SQLITE = Stmt("SELECT max(id) FROM (SELECT max(id) AS id FROM namespaces UNION ALL SELECT max(id) FROM users)")
_INSERT = Stmt("""INSERT INTO namespaces (id, kind, owner_id, root_id, name, journal_floor, created_at)
                  VALUES (:id, :kind, :owner_id, :root_id, :name, 0, :created_at)""")


@dataclass(frozen=True)
class Visible:
    """A namespace an account can see, with its role there."""

    id: int
    root_id: int
    role: str
    kind: str


def new_id(conn: Connection | Tx) -> int:
    """A fresh namespace id, also what a new account's id is (its root namespace has the
    same): both come from here, so they never collide. Runs inside a write transaction
    (SQLite: the only writer; PostgreSQL: a sequence)."""
    tx = as_tx(conn)
    if tx.is_postgresql:
        return int(tx.scalar(_NEXT_PG, {}))
    return int(tx.scalar(_NEXT_SQLITE, {}) or 0) + 1


def insert(conn: Connection | Tx, ns_id: int, *, kind: str, owner_id: int, root_id: int | None, name: str = "") -> None:
    as_tx(conn).run(_INSERT, dict(id=ns_id, kind=kind, owner_id=owner_id, root_id=root_id, name=name,
                                  created_at=time.time()))


def get(conn: Connection | Tx, ns_id: int) -> Row | None:
    return as_tx(conn).one(_NAMESPACE, {"ns_id": ns_id})


def ns_of(conn: Connection | Tx, node_id: int) -> int | None:
    """The namespace a node (live or deleted) is in, or None if there is no such node."""
    return as_tx(conn).scalar(_NS_OF, {"node_id": node_id})


def role_in(conn: Connection | Tx, user_id: int, ns_id: int) -> str | None:
    """The account's role in a namespace, or None when it may not see it."""
    if ns_id == user_id:
        return "owner"
    return as_tx(conn).scalar(_ROLE, {"ns_id": ns_id, "user_id": user_id})


def check_role(conn: Connection | Tx, user_id: int, ns_id: int, *, write: bool, what: str = "node",
               field: str | None = "id") -> str:
    """The account's role in `ns_id`: NotFound when it cannot see it, ReadOnly when it
    asks to change something there as a viewer."""
    role = role_in(conn, user_id, ns_id)
    if role is None:
        raise NotFound(f"no {what} here", field=field)
    if write and role not in WRITERS:
        ns = get(conn, ns_id)
        raise ReadOnly(f"you are a viewer of the shared folder {ns['name'] if ns else ns_id!r}: "
                       "only its owner and editors change it", field=field, ns=ns_id)
    return role


def locate(conn: Connection | Tx, user_id: int, node_id: int, *, write: bool = False, field: str = "id") -> int:
    """The namespace of `node_id`, checked: NotFound (as for a node that does not exist)
    unless the account can see it, ReadOnly for a change by a viewer."""
    ns_id = ns_of(conn, node_id)
    if ns_id is None or role_in(conn, user_id, ns_id) is None:
        raise NotFound(f"no node with id {node_id}", field=field)
    check_role(conn, user_id, ns_id, write=write, field=field)
    return ns_id


def visible(conn: Connection | Tx, user_id: int, root_id: int) -> list[Visible]:
    """Every namespace the account can see: its own first, then its shared folders."""
    out = [Visible(user_id, root_id, "owner", "root")]
    out += [Visible(r["id"], r["root_id"], r["role"], r["kind"]) for r in as_tx(conn).all(_VISIBLE, {"user_id": user_id})]
    return out


def mount_of(conn: Connection | Tx, user_id: int, ns_id: int) -> Row | None:
    """The account's mount row of a shared namespace (None if it has not accepted it)."""
    return as_tx(conn).one(_MOUNT, {"ns_id": ns_id, "user_id": user_id})


def as_seen(conn: Connection | Tx, user_id: int, row: Row) -> wire.Node:
    """A node as this account sees it: the root of a shared folder sits where the
    account mounted it (parent and name of its mount row), with `ns` and `role`."""
    if row["parent_id"] is None and row["owner_id"] != user_id:
        mount = mount_of(conn, user_id, row["owner_id"])
        if mount is not None:
            return tree.to_wire(row).model_copy(update={
                "parent_id": mount["parent_id"], "name": mount["name"], "ns": row["owner_id"], "role": mount["target"]})
    return tree.to_wire(row)


def resolve(conn: Connection | Tx, user_id: int, root_id: int, names: list[str]) -> tuple[int, Row]:
    """Walk `names` from the account's root, into shared folders through their mounts.
    Returns the namespace and row of the last name (a shared folder: its root node)."""
    tx = as_tx(conn)
    ns_id, row = user_id, tree.get(tx, user_id, root_id)
    walked = ""
    for name in names:
        if row["kind"] != "dir":
            raise NotADirectory(f"{walked or '/'} is not a directory", field="path")
        found = tree.child(tx, ns_id, row["id"], name)
        walked += "/" + name
        if found is None:
            raise NotFound(f"{walked} does not exist", field="path")
        if found["kind"] == "mount":
            ns_id, found = enter(tx, user_id, found)
        row = found
    return ns_id, row


def enter(conn: Connection | Tx, user_id: int, mount: Row) -> tuple[int, Row]:
    """Through a mount row: the shared namespace and its root node."""
    ns_id = mount["mount_ns"]
    if role_in(conn, user_id, ns_id) is None:
        raise NotFound(f"{mount['name']!r}: no longer shared with you", field="path")
    return ns_id, tree.get(conn, ns_id, mount["link_to"])


def write_in(db: Database, locate: Callable[[Connection], tuple[int, ...]], body: Callable[[Connection], T]) -> tuple[tuple[int, ...], T]:
    """Run `body` in a write transaction that holds the locks of the namespaces it writes.

    `locate` finds them (checking access as it goes); it runs once in a read
    transaction, to know which rows to lock (PostgreSQL locks them when the transaction
    begins, always in the same order, so two requests cannot deadlock), and again
    under the locks: a node moved to another namespace in between makes it start over.
    Returns the namespaces (to wake their long-polls) and what `body` returned."""
    for _ in range(5):
        with db.read() as conn:
            wanted = locate(conn)
        with db.write(*wanted) as conn:
            if locate(conn) != wanted:
                continue
            return wanted, body(conn)
    raise Conflict("the nodes of this request kept moving between shared folders; try again", field="id")


_OWNER = Stmt("SELECT owner_id, kind FROM namespaces WHERE id = :ns_id")


def owner_root(conn: Connection | Tx, ns_id: int) -> int | None:
    """For an account's root namespace its own id; for a shared one, None."""
    row = as_tx(conn).one(_OWNER, {"ns_id": ns_id})
    return ns_id if row is not None and row["kind"] == "root" else None
