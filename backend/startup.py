"""What a mount checks before it serves anything, shared by `cloudfs mount` (which runs
the checks in the foreground so the common mistakes are answered at once) and the
mount process itself (which runs them again and relays whatever it finds).

- `prepare_cache_dir` / `claim_cache`: the cache directory can be created, and no other
  mount is using it. The claim is an flock held for the mount's life on
  `CACHE_LOCK` in the cache directory, whose content names the holder (pid and
  mountpoint), so the refusal can say which mount owns the cache.
- `probe_server`: GET /health, then GET /me. Nothing answering is not fatal by itself
  (`ServerUnreachableError`: a mount with a warm cache comes up offline); something
  that answers but is not a cloudfs server, or refuses the token, is (`UserError`).
- `check_account`: a warm cache belongs to the account it was filled for.

Every refusal is a `UserError` whose text is one line that names the cause and the fix.
"""

from __future__ import annotations

import fcntl
import json
import os
import ssl
from pathlib import Path
from typing import Iterator

import httpx
import pydantic
import trio

from .errors import UserError
from .local.cache import Cache
from .protocol import wire
from .protocol.api_client import ApiClient

CACHE_LOCK = "mount.lock"
PROBE_TIMEOUT_S = 10.0


class ServerUnreachableError(UserError):
    """Nothing answered at the server URL (refused, no such host, timed out, 5xx).
    `cause` says what happened, `hint` what to check; callers that go on (offline) or
    stop for another reason (a first mount) compose their own line from them."""

    def __init__(self, cause: str, hint: str, *, transient: bool = False) -> None:
        super().__init__(f"{cause}: {hint}")
        self.cause = cause
        self.hint = hint
        self.transient = transient
        """A 5xx or a connection cut short: worth asking again at once (`_get`)."""


def writable_dir(path: Path, role: str, option: str) -> None:
    """Create `path` and write in it, or say why it cannot be and which option picks
    another (`role`: "the cache directory"; `option`: "--cache DIR")."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot use {path} as {role} ({dir_problem(path, exc)}): pick another with {option}") from None


def prepare_cache_dir(cache_dir: Path) -> None:
    writable_dir(cache_dir, "the cache directory", "--cache DIR")


def dir_problem(path: Path, exc: OSError) -> str:
    """Why a directory could not be created or written, in a few words."""
    if path.exists() and not path.is_dir():
        return "it is a file"
    return _os_reason(exc)


def claim_cache(cache_dir: Path, mountpoint: Path | None) -> int:
    """Take the cache directory for this process; returns the lock's fd (closing it
    releases the claim). Raises UserError naming the mount that holds it."""
    prepare_cache_dir(cache_dir)
    path = cache_dir / CACHE_LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise UserError(f"the cache {cache_dir} is in use by {holder}: give this mount its own --cache DIR") from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "mountpoint": str(mountpoint or "")}).encode())
    return fd


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        if info.get("mountpoint"):
            return f"the mount on {info['mountpoint']} (pid {info.get('pid')})"
        return f"another mount (pid {info.get('pid')})"
    except (OSError, ValueError, AttributeError):
        return "another mount"


async def probe_server(client: ApiClient, *, timeout: float = PROBE_TIMEOUT_S) -> wire.Me:
    """Who are we on this server? Raises ServerUnreachableError when nothing answers,
    UserError when something answers that will not serve this token."""
    url = client.base_url
    limit = httpx.Timeout(timeout, connect=min(timeout, 5.0))
    health = await _get(client, "/health", limit)
    try:
        healthy = health.status_code == 200 and health.json() == {"status": "ok"}
    except ValueError:
        healthy = False
    if not healthy:
        kind = health.headers.get("content-type", "no content type").split(";")[0]
        raise UserError(f"{url} answers, but not as a cloudfs server (GET /health: {health.status_code}, {kind}): "
                        f"check the URL")
    me = await _get(client, "/me", limit)
    if me.status_code == 401:
        raise UserError(f"the server at {url} refused the token (401 unauthorized): check --token, "
                        f"CLOUDFS_TOKEN or the one `cloudfs login` saved (`cloudfs user add NAME` prints a new one)")
    if me.status_code != 200:
        raise UserError(f"the server at {url} answered GET /me with {me.status_code}: {_detail(me)}")
    try:
        return wire.Me.model_validate(me.json())
    except (ValueError, pydantic.ValidationError):
        raise UserError(f"{url} answers GET /me with something that is not a cloudfs account "
                        f"(an older or newer server?)") from None


PROBE_ATTEMPTS = 3


async def _get(client: ApiClient, path: str, timeout: httpx.Timeout) -> httpx.Response:
    """One probe request. A 5xx or a connection cut short is tried again twice, quickly
    (a proxy or load balancer hiccup must not fail a first mount); nothing answering,
    a refusal or a timeout is final at once."""
    for attempt in range(PROBE_ATTEMPTS):
        try:
            return await _get_once(client, path, timeout)
        except ServerUnreachableError as exc:
            if attempt == PROBE_ATTEMPTS - 1 or not exc.transient:
                raise
        await trio.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


async def _get_once(client: ApiClient, path: str, timeout: httpx.Timeout) -> httpx.Response:
    url = client.base_url
    try:
        response = await client.http.get(path, timeout=timeout)
    except httpx.TimeoutException:
        client.reachable = False
        raise ServerUnreachableError(f"the server at {url} did not answer within {timeout.read:.0f}s",
                                     "is it overloaded, or is the URL a host that drops connections?") from None
    except httpx.TransportError as exc:
        client.reachable = False
        reason = transport_reason(exc)
        hint = ("does the server speak http:// or https://?" if reason.startswith("TLS")
                else "is `cloudfs server` running there?")
        cut = isinstance(exc, (httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError))
        raise ServerUnreachableError(f"nothing answers at {url} ({reason})", hint, transient=cut) from None
    if response.status_code >= 500:
        client.reachable = False
        raise ServerUnreachableError(f"the server at {url} is not serving (GET {path}: {response.status_code} "
                                     f"{_detail(response)})", "see the server's log", transient=True)
    client.reachable = True
    return response


def check_account(cache: Cache, me: wire.Me) -> None:
    """A cache filled for one account never serves another (its dirty data would be
    uploaded into the wrong drive). Records the account on first use."""
    cached_id = cache.get_meta("user_id")
    cached_name = cache.get_meta("user_name")
    if cached_id is not None and (int(cached_id) != me.user_id or (cached_name or me.name) != me.name):
        owner = f"{cached_name!r} (user {cached_id})" if cached_name else f"user {cached_id}"
        raise UserError(f"the cache {cache.path} belongs to account {owner}, but this token is {me.name!r}'s "
                        f"(user {me.user_id}): give this mount its own --cache DIR")
    if cached_name != me.name:
        with cache.write() as txn:
            cache.set_meta(txn, "user_name", me.name)


def over_quota(me: wire.Me) -> str:
    """A warning when the account is at or past its quota, else ''."""
    if me.quota_bytes is None or me.used_bytes < me.quota_bytes:
        return ""
    return (f"account {me.name!r} is at its quota ({me.used_bytes:,} of {me.quota_bytes:,} bytes): new data stays "
            f"on this device until room is made")


def transport_reason(exc: BaseException) -> str:
    """The root cause of a transport error in a few words ('connection refused')."""
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLError):
            return f"TLS handshake failed: {(cause.reason or cause.strerror or 'unknown').replace('_', ' ').lower()}"
        if isinstance(cause, OSError) and cause.errno:
            return _os_reason(cause)
    return str(exc) or type(exc).__name__


def _os_reason(exc: OSError) -> str:
    if exc.errno in (-2, -3, -5):  # EAI_NONAME, EAI_AGAIN, EAI_NODATA
        return "host name not found"
    if exc.errno and exc.errno > 0:
        return os.strerror(exc.errno).lower()
    return exc.strerror or str(exc)


def _causes(exc: BaseException | None, depth: int = 0) -> Iterator[BaseException]:
    """The exception, its causes and contexts, and the members of exception groups."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and depth < 20:
        seen.add(id(exc))
        yield exc
        if isinstance(exc, BaseExceptionGroup):
            for member in exc.exceptions:
                yield from _causes(member, depth + 1)
        exc = exc.__cause__ or exc.__context__
        depth += 1


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
        return str(body.get("detail") or body.get("error") or body)[:200]
    except (ValueError, AttributeError):
        return response.reason_phrase or response.text[:100]

