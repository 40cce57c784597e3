"""Share links: a file or folder of one account, readable by whoever has the link.

What a link may reach is decided here and nowhere else: the node it was made for and,
for a folder, what is live below it now. Every node a public request names is walked
up to the link's node (`node_below`); anything else is 'not found', exactly as a node
that does not exist, so a link tells nothing about the rest of the drive. A link hands
out no signed chunk URL: its bytes are streamed by the server (content.py), so nothing
outside the shared subtree can be fetched with anything it gives.

A link id is 192 random bits (secrets.token_urlsafe(24)). Revoked or unknown: 404;
past its expiry or its download limit: 410. A password is kept as an argon2id hash and
checked with the sign-in brake (auth.py); once given, the browser holds a cookie valid
for that link only, derived from the hash (a new password ends it).
"""

from __future__ import annotations

import hashlib
import secrets
import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloudfs.backend.protocol import wire
from . import history, tree
from .db import Database, share_links
from .errors import ApiError, NotFound

MAX_LINKS = 10_000
"""Per account: a bound on what one account can make."""
LINK_ID_BYTES = 24
PUBLIC_LIST_MAX = 10_000
"""Entries a shared folder's page lists (a zip has them all)."""


class LinkGone(ApiError):
    status, code = 410, "link_expired"


class LinkExhausted(ApiError):
    status, code = 410, "download_limit_reached"


class PasswordNeeded(ApiError):
    status, code = 401, "password_required"


def new_id() -> str:
    return secrets.token_urlsafe(LINK_ID_BYTES)


def create(db: Database, owner_id: int, node_id: int, *, expires_at: float | None, password_hash: str | None,
           max_downloads: int | None) -> dict:
    with db.write(owner_id) as conn:
        # A hard link's name shares its file: the link follows the file wherever its
        # names go (the file keeps its id when the name it was shared by is deleted).
        node = tree.inode(conn, owner_id, tree.get(conn, owner_id, node_id))
        node_id = node["id"]
        if node["parent_id"] is None:
            raise ApiError("the whole drive cannot be shared: share a folder in it", field="node_id")
        count = conn.execute(sa.select(sa.func.count()).select_from(share_links)
                             .where(share_links.c.owner_id == owner_id)).scalar()
        if count >= MAX_LINKS:
            raise ApiError(f"an account has at most {MAX_LINKS} links: revoke some", field="node_id")
        row = dict(id=new_id(), owner_id=owner_id, node_id=node_id, created_at=time.time(), expires_at=expires_at,
                   password_hash=password_hash, max_downloads=max_downloads, downloads=0, revoked_at=None)
        conn.execute(share_links.insert().values(**row))
        return describe(conn, owner_id, row)


def describe(conn: Connection, owner_id: int, row: dict) -> dict:
    """A link as its owner sees it: what it shares, where, and how much is left."""
    node = tree.get(conn, owner_id, row["node_id"], allow_deleted=True)
    return {"id": row["id"], "node_id": row["node_id"], "name": node["name"], "kind": node["kind"],
            "path": history.path_of(conn, owner_id, node), "node_deleted": bool(node["deleted"]),
            "created_at": row["created_at"], "expires_at": row["expires_at"],
            "has_password": row["password_hash"] is not None, "max_downloads": row["max_downloads"],
            "downloads": row["downloads"], "expired": _expired(row)}


def owned(db: Database, owner_id: int) -> list[dict]:
    with db.read() as conn:
        rows = conn.execute(sa.select(share_links).where(share_links.c.owner_id == owner_id,
                                                         share_links.c.revoked_at.is_(None))
                            .order_by(share_links.c.created_at.desc())).mappings().all()
        return [describe(conn, owner_id, dict(r)) for r in rows]


def revoke(db: Database, owner_id: int, link_id: str) -> None:
    with db.write(owner_id) as conn:
        done = conn.execute(share_links.update().where(share_links.c.id == link_id,
                                                       share_links.c.owner_id == owner_id,
                                                       share_links.c.revoked_at.is_(None))
                            .values(revoked_at=time.time())).rowcount
    if not done:
        raise NotFound(f"no link {link_id!r} of yours", field="id")


def _expired(row: dict) -> bool:
    return row["expires_at"] is not None and row["expires_at"] <= time.time()


def _exhausted(row: dict) -> bool:
    return row["max_downloads"] is not None and row["downloads"] >= row["max_downloads"]


def opened(db: Database, link_id: str) -> dict:
    """The link's row, if it may be used now: 404 revoked or unknown, 410 expired or
    used up (its node deleted since: 404, like any node the link cannot reach)."""
    if not 16 <= len(link_id) <= 64:
        raise NotFound("no such link", field="link")
    with db.read() as conn:
        row = conn.execute(sa.select(share_links).where(share_links.c.id == link_id)).mappings().first()
        if row is None or row["revoked_at"] is not None:
            raise NotFound("no such link (it may have been revoked)", field="link")
        row = dict(row)
        if _expired(row):
            raise LinkGone("this link has expired", field="link")
        if _exhausted(row):
            raise LinkExhausted("this link has been downloaded as often as its owner allowed", field="link")
        try:
            tree.get(conn, row["owner_id"], row["node_id"])
        except NotFound:
            raise NotFound("what this link shared is no longer there", field="link") from None
    return row


def unlock_value(row: dict) -> str:
    """The cookie value that proves the link's password was given."""
    return hashlib.sha256(f"cloudfs-share:{row['id']}:{row['password_hash']}".encode()).hexdigest()


def unlocked(row: dict, cookie: str | None) -> bool:
    return row["password_hash"] is None or (
        cookie is not None and secrets.compare_digest(cookie.encode("ascii", "replace"), unlock_value(row).encode()))


def node_below(db: Database, row: dict, node_id: int | None) -> dict:
    """The live node `node_id` (default: the shared one) if the link reaches it; else
    404 with the same words as for a node that does not exist."""
    owner_id, top_id = row["owner_id"], row["node_id"]
    wanted = top_id if node_id is None else node_id
    with db.read() as conn:
        try:
            node = walk = tree.get(conn, owner_id, wanted)
            for _ in range(tree.MAX_DEPTH):
                if walk["id"] == top_id:
                    return dict(node)
                if walk["parent_id"] is None:
                    break
                walk = tree.get(conn, owner_id, walk["parent_id"])
        except NotFound:
            pass
    raise NotFound("no such file in this link", field="node")


def public_entries(db: Database, row: dict, dir_id: int) -> list[wire.Node]:
    """A shared folder's files and folders as an anonymous viewer sees them: no owner,
    no attributes, and a hard link shown as a file of its own (its name, its file's
    bytes; the file itself may live outside what the link covers: its id stays hidden)."""
    owner_id = row["owner_id"]
    out = []
    with db.read() as conn:
        entries, _ = tree.list_children(conn, owner_id, dir_id, after=None, limit=PUBLIC_LIST_MAX)
        for e in entries:
            if e.kind == "link" and e.link_to is not None:
                try:
                    file = tree.to_wire(tree.get(conn, owner_id, e.link_to))
                except NotFound:
                    continue
                e = file.model_copy(update={"id": e.id, "parent_id": e.parent_id, "name": e.name, "link_to": None})
            if e.kind in ("file", "dir"):
                out.append(e.model_copy(update={"xattrs": {}, "uid": -1, "gid": -1}))
    return out


def file_below(db: Database, row: dict, node_id: int) -> tuple[str, dict]:
    """A file the link reaches, by the name it was asked for (a hard link's own name)."""
    node = node_below(db, row, node_id)
    if node["kind"] != "link":
        return node["name"], node
    with db.read() as conn:
        return node["name"], dict(tree.inode(conn, row["owner_id"], node))


def count_download(db: Database, link_id: str) -> None:
    """One more download; refused (410) when the limit was reached meanwhile."""
    with db.write() as conn:
        done = conn.execute(share_links.update().where(
            share_links.c.id == link_id,
            sa.or_(share_links.c.max_downloads.is_(None), share_links.c.downloads < share_links.c.max_downloads),
        ).values(downloads=share_links.c.downloads + 1)).rowcount
    if not done:
        raise LinkExhausted("this link has been downloaded as often as its owner allowed", field="link")


def path_in_link(db: Database, row: dict, node: dict) -> list[dict]:
    """Breadcrumbs from the shared node down to `node` (the owner's tree above stays hidden)."""
    crumbs = []
    with db.read() as conn:
        walk = node
        for _ in range(tree.MAX_DEPTH):
            crumbs.append({"id": walk["id"], "name": walk["name"]})
            if walk["id"] == row["node_id"] or walk["parent_id"] is None:
                break
            walk = tree.get(conn, row["owner_id"], walk["parent_id"])
    return list(reversed(crumbs))
