"""Passwords, browser sessions, device tokens and the brake on guessing.

Why it is shaped like this:

- A password is kept as an argon2id hash (argon2-cffi's defaults: 64 MiB, 3 passes), so
  a stolen database costs an attacker real memory per guess. Hashing is slow on
  purpose; it runs in a worker thread, at most `HASHING` at once, so a burst of sign-ins
  cannot take the server's memory or every worker.
- A browser's sign-in is a token like a device's, of kind 'session', carried in an
  HttpOnly cookie instead of a header. One table and one lookup serve both, so a
  device page can list and revoke either, and a revoked session is refused like a
  revoked device. A session token is never accepted as a bearer token, nor a device
  token as a cookie.
- A request authenticated by the cookie must carry `X-CSRF-Token`, a one-way function of
  the cookie's value: another site can make the browser send the cookie but cannot
  read it, so it cannot compute the header (and a custom header cannot be sent across
  origins without a CORS preflight the server never grants).
- Failed sign-ins are counted per account and per address in the database (every
  replica sees them). Past FREE_FAILURES, the next attempt must wait twice as long as
  the one before (up to MAX_LOCK_S), and is refused with 429 and Retry-After without
  looking at the password, so guessing is slow and a lock cannot be probed.
  Counts decay after FORGET_S without a failure. Share-link passwords use the same brake.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable

import anyio
import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy.engine import Connection

from .db import Database, auth_failures, tokens, users
from .errors import ApiError, Invalid, NotFound, Unauthorized
from .users import hash_token

if TYPE_CHECKING:
    from .app import ServerContext

SESSION_COOKIE = "cloudfs_session"
CSRF_HEADER = "X-CSRF-Token"
SESSION_DAYS = 14
FREE_FAILURES = 5
MAX_LOCK_S = 900.0
FORGET_S = 3600.0
TOUCH_EVERY_S = 60.0
"""A token's `last_seen_at` is written at most this often (one small write, not one per request)."""
PASSWORD_MIN = 8
PASSWORD_MAX = 1024
HASHING = anyio.CapacityLimiter(2)

_hasher = PasswordHasher()


class TokenRevoked(ApiError):
    status, code = 401, "token_revoked"


class TooManyAttempts(ApiError):
    status, code = 429, "too_many_attempts"


def password_problem(password: str) -> str | None:
    """Why this cannot be a password, or None (the CLI asks the same)."""
    if len(password) < PASSWORD_MIN:
        return f"a password has at least {PASSWORD_MIN} characters"
    if len(password) > PASSWORD_MAX:
        return f"a password has at most {PASSWORD_MAX} characters"
    return None


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """False for a wrong password and for an account without one; with no hash to check
    the same work is done against a dummy, so the answer's timing says nothing."""
    try:
        return _hasher.verify(stored or _dummy_hash(), password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


@functools.cache
def _dummy_hash() -> str:
    """Made on first use, not at import: hashing costs a third of a second of CPU, and
    every `cloudfs` command that imports this module would pay it."""
    return _hasher.hash("no password is set for this account")


async def check_password(stored: str | None, password: str) -> bool:
    return await anyio.to_thread.run_sync(verify_password, stored, password, limiter=HASHING)


async def make_password_hash(password: str) -> str:
    problem = password_problem(password)
    if problem:
        raise Invalid(problem, field="password")
    return await anyio.to_thread.run_sync(hash_password, password, limiter=HASHING)


def set_password(db: Database, name: str, password: str) -> None:
    """`cloudfs user add --password` / `cloudfs user passwd`: raises ValueError naming
    what is wrong (no such user, a password too short)."""
    problem = password_problem(password)
    if problem:
        raise ValueError(problem)
    hashed = hash_password(password)
    with db.write() as conn:
        done = conn.execute(users.update().where(users.c.name == name).values(password_hash=hashed)).rowcount
        if done:  # a new password ends every browser session of the account
            user_id = conn.execute(sa.select(users.c.id).where(users.c.name == name)).scalar()
            conn.execute(tokens.update().where(tokens.c.user_id == user_id, tokens.c.kind == "session",
                                               tokens.c.revoked_at.is_(None)).values(revoked_at=time.time()))
    if not done:
        raise ValueError(f"no user named {name!r} (`cloudfs user add {name}` creates it)")


def account(conn: Connection, name: str) -> sa.RowMapping | None:
    return conn.execute(sa.select(users).where(users.c.name == name)).mappings().first()


# --- the brake on guessing ---


def throttle_keys(account_key: str, address: str) -> list[str]:
    return [f"acct:{account_key}"[:200], f"addr:{address}"[:200]]


def wait_needed(db: Database, keys: list[str], now: float | None = None) -> float:
    """Seconds until another attempt on these keys is allowed (0: now)."""
    now = time.time() if now is None else now
    with db.read() as conn:
        rows = conn.execute(sa.select(auth_failures).where(auth_failures.c.key.in_(keys))).mappings().all()
    wait = 0.0
    for row in rows:
        if row["failures"] < FREE_FAILURES or now - row["last_at"] > FORGET_S:
            continue
        lock = min(2.0 ** (row["failures"] - FREE_FAILURES), MAX_LOCK_S)
        wait = max(wait, row["last_at"] + lock - now)
    return wait


def record_failure(db: Database, keys: list[str]) -> None:
    now = time.time()
    with db.write() as conn:
        for key in keys:
            row = conn.execute(sa.select(auth_failures).where(auth_failures.c.key == key)).mappings().first()
            if row is None:
                conn.execute(auth_failures.insert().values(key=key, failures=1, last_at=now))
            else:
                failures = 1 if now - row["last_at"] > FORGET_S else row["failures"] + 1
                conn.execute(auth_failures.update().where(auth_failures.c.key == key)
                             .values(failures=failures, last_at=now))


def clear_failures(db: Database, keys: list[str]) -> None:
    with db.write() as conn:
        conn.execute(auth_failures.delete().where(auth_failures.c.key.in_(keys)))


async def guarded(ctx: "ServerContext", keys: list[str], attempt: Callable[[], Awaitable[bool]]) -> bool:
    """Run `attempt` (a password check) unless the keys are locked, and count its
    outcome. Raises TooManyAttempts (429, with `retry_after`) while locked."""
    wait = await ctx.run_db(wait_needed, ctx.db, keys)
    if wait > 0:
        raise TooManyAttempts(f"too many failed attempts: try again in {int(wait) + 1} s", field="password",
                              retry_after=int(wait) + 1)
    ok = await attempt()
    await ctx.run_db(clear_failures if ok else record_failure, ctx.db, keys)
    return ok


# --- tokens and sessions ---


@dataclass(frozen=True)
class TokenRow:
    user_id: int
    name: str
    root_id: int
    quota_bytes: int | None
    kind: str


def public_id(token_hash: str) -> str:
    """How pages and the API name a token: a prefix of its hash, never the token."""
    return token_hash[:16]


def new_token(db: Database, user_id: int, *, kind: str, label: str | None, days: float | None = None) -> str:
    prefix = "cfs_" if kind == "device" else "cfs_s_"
    token = prefix + secrets.token_urlsafe(32)
    now = time.time()
    with db.write() as conn:
        conn.execute(tokens.insert().values(token_hash=hash_token(token), user_id=user_id, created_at=now, kind=kind,
                                            label=label, expires_at=now + days * 86400 if days else None))
    return token


def lookup_token(db: Database, token: str, kind: str, device: str | None) -> TokenRow | None:
    """The account a token of `kind` belongs to, or None. Raises TokenRevoked for a
    revoked (or expired) one, so the device can say so instead of 'unknown token'.
    Writes `last_seen_at` now and then."""
    digest = hash_token(token)
    with db.read() as conn:
        row = conn.execute(
            sa.select(users.c.id, users.c.name, users.c.root_id, users.c.quota_bytes, tokens.c.kind,
                      tokens.c.revoked_at, tokens.c.expires_at, tokens.c.last_seen_at, tokens.c.last_device)
            .join(tokens, tokens.c.user_id == users.c.id).where(tokens.c.token_hash == digest)
        ).mappings().first()
    if row is None or row["kind"] != kind:
        return None
    now = time.time()
    if row["revoked_at"] is not None:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(row["revoked_at"]))
        raise TokenRevoked(f"this {'device token' if kind == 'device' else 'session'} was revoked on {when}: "
                           f"{'sign in again' if kind == 'session' else 'mount with a new token'}",
                           field="Authorization")
    if row["expires_at"] is not None and row["expires_at"] < now:
        raise TokenRevoked("this session has expired: sign in again", field="Authorization")
    seen = row["last_seen_at"]
    if seen is None or now - seen > TOUCH_EVERY_S or (device and device != row["last_device"]):
        with db.write() as conn:
            values: dict = {"last_seen_at": now}
            if device:
                values["last_device"] = device[:64]
            conn.execute(tokens.update().where(tokens.c.token_hash == digest).values(**values))
    return TokenRow(row["id"], row["name"], row["root_id"], row["quota_bytes"], row["kind"])


def list_tokens(db: Database, user_id: int) -> list[dict]:
    with db.read() as conn:
        rows = conn.execute(sa.select(tokens).where(tokens.c.user_id == user_id, tokens.c.revoked_at.is_(None))
                            .order_by(tokens.c.created_at)).mappings().all()
    now = time.time()
    return [{"id": public_id(r["token_hash"]), "kind": r["kind"], "label": r["label"], "created_at": r["created_at"],
             "last_seen_at": r["last_seen_at"], "last_device": r["last_device"], "expires_at": r["expires_at"],
             "_hash": r["token_hash"]}
            for r in rows if r["expires_at"] is None or r["expires_at"] > now]


def revoke(db: Database, user_id: int, token_id: str) -> int:
    """Revoke one of the account's tokens by its public id; NotFound if none matches."""
    if not (len(token_id) == 16 and all(c in "0123456789abcdef" for c in token_id)):
        raise NotFound(f"no device or session with id {token_id!r}", field="id")
    with db.write() as conn:
        done = conn.execute(tokens.update().where(tokens.c.user_id == user_id,
                                                  tokens.c.token_hash.like(token_id + "%"),
                                                  tokens.c.revoked_at.is_(None)).values(revoked_at=time.time())).rowcount
    if not done:
        raise NotFound(f"no device or session with id {token_id!r}", field="id")
    return done


def revoke_token(db: Database, token: str) -> None:
    """Sign-out: this session's token is revoked."""
    with db.write() as conn:
        conn.execute(tokens.update().where(tokens.c.token_hash == hash_token(token)).values(revoked_at=time.time()))


def csrf_for(session_token: str) -> str:
    """The header value that goes with a session cookie (see the module docstring)."""
    return hashlib.sha256(b"cloudfs-csrf:" + session_token.encode("ascii", "replace")).hexdigest()[:40]


def csrf_ok(session_token: str, header: str | None) -> bool:
    return header is not None and secrets.compare_digest(header.encode("ascii", "replace"),
                                                         csrf_for(session_token).encode())


def no_account() -> Unauthorized:
    """One answer for an unknown name and a wrong password."""
    return Unauthorized("wrong user name or password", field="password")
