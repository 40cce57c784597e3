"""Accounts and bearer tokens. Tokens are 256-bit random strings; only their SHA-256
is stored, so a leaked database does not leak a usable token."""

from __future__ import annotations

import hashlib
import secrets
import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloudfs.backend.protocol.names import USER_NAME_RE

from . import namespaces, tree
from .db import Database, tokens, users
from .db import namespaces as namespace_table



class UserExistsError(Exception):
    pass


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a user name, or None (also checked by the CLI's parser)."""
    if USER_NAME_RE.fullmatch(name):
        return None
    return f"user name {name!r}: use 1-64 letters, digits, '_', '.', '@' or '-', starting with a letter or digit"


def add_user(db: Database, name: str, *, quota_bytes: int | None = None, retain_days: float | None = None) -> str:
    """Create `name` with its root directory and first token; returns the token.
    `retain_days` overrides the server's retention period for this account."""
    if retain_days is not None and not 0 <= retain_days <= 36_500:
        raise ValueError(f"--retain-days {retain_days}: give a number of days between 0 and 36500")
    problem = name_problem(name)
    if problem:
        raise ValueError(problem)
    token = "cfs_" + secrets.token_urlsafe(32)
    with db.write() as conn:
        if conn.execute(sa.select(users.c.id).where(users.c.name == name)).first() is not None:
            raise UserExistsError(f"user {name!r} already exists")
        user_id = namespaces.new_id(conn)  # the account's id is its root namespace's
        conn.execute(users.insert().values(id=user_id, name=name, quota_bytes=quota_bytes, journal_floor=0,
                                           created_at=time.time(), retain_days=retain_days))
        namespaces.insert(conn, user_id, kind="root", owner_id=user_id, root_id=None)
        root_id = tree.create_root(conn, user_id)
        conn.execute(users.update().where(users.c.id == user_id).values(root_id=root_id))
        conn.execute(namespace_table.update().where(namespace_table.c.id == user_id).values(root_id=root_id))
        conn.execute(tokens.insert().values(token_hash=hash_token(token), user_id=user_id, created_at=time.time()))
    return token


def by_name(conn: Connection, name: str) -> sa.RowMapping | None:
    return conn.execute(sa.select(users).where(users.c.name == name)).mappings().first()


def user_for_token(conn: Connection, token: str) -> sa.RowMapping | None:
    return conn.execute(
        sa.select(users).join(tokens, tokens.c.user_id == users.c.id).where(tokens.c.token_hash == hash_token(token))
    ).mappings().first()
