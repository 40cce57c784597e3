"""What `cloudfs server` and `cloudfs user add` need before they serve: a data
directory they can write, a database they can open, a store they can reach, a port
they can listen on. Each step that fails raises `UserError` with one line naming the
directory, URL or port and what to do, instead of the driver's traceback.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import sqlalchemy as sa

from cloudfs.backend.errors import UserError
from cloudfs.backend.startup import writable_dir
from cloudfs.backend.stores.store import ObjectStore, open_store

from .db import DEFAULT_POOL, Database, open_database


def check_data_dir(data_dir: Path) -> None:
    writable_dir(data_dir, "the data directory", "--data DIR")


def open_db(data_dir: Path, db_url: str | None, *, pool_size: int = DEFAULT_POOL,
            application_name: str = "cloudfs") -> Database:
    """`open_database`, with a refusal in one line that names the URL (password hidden)."""
    if db_url is None:
        check_data_dir(data_dir)
    shown = redact(db_url) if db_url else str(data_dir / "cloudfs.sqlite3")
    try:
        return open_database(data_dir, db_url, pool_size=pool_size, application_name=application_name)
    except sa.exc.NoSuchModuleError:
        scheme = db_url.split("://", 1)[0] if db_url else "?"
        raise UserError(f"--db {shown}: unknown database kind {scheme!r} (use postgresql://USER:PASSWORD@HOST/DB "
                        f"or a SQLite file path)") from None
    except sa.exc.ArgumentError as exc:
        raise UserError(f"--db {shown}: not a database URL ({exc})") from None
    except (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DatabaseError) as exc:
        reason = str(getattr(exc, "orig", exc) or exc).strip().splitlines()[0]
        raise UserError(f"cannot open the database {shown}: {reason}") from None


def redact(db_url: str) -> str:
    """The URL as typed, its password replaced by ***."""
    parts = urlsplit(db_url)
    if not parts.password:
        return db_url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


def open_checked_store(store_url: str | None, data_dir: Path, secret: bytes) -> ObjectStore:
    """The chunk store, built and (for S3) its bucket made sure of."""
    url = store_url or str(data_dir / "chunks")
    try:
        store = open_store(url, data_dir=data_dir, secret=secret)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"cannot use the store {url} ({_strerror(exc)}): pick another with --store") from None
    inner = getattr(store, "inner", store)  # also under a fault-injecting wrapper
    if hasattr(inner, "ensure_bucket"):
        try:
            inner.ensure_bucket()
        except Exception as exc:  # noqa: BLE001 - boto3 raises many kinds; each is the same refusal here
            raise UserError(f"cannot use the store {url}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                            ) from None
    return store


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, or one line on why not (port taken, address not ours)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise UserError(f"--host {host}: not an address or a host name this machine can resolve") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(4096)  # 10,000 devices reconnecting through a balancer at once (the kernel caps it: somaxconn)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is already in use (another cloudfs server?): pick another "
                            f"with --port, or --port 0 for a free one") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise UserError(f"--host {host}: not an address of this machine") from None
        if exc.errno == errno.EACCES:
            raise UserError(f"port {port} needs privileges: pick one above 1023 with --port") from None
        raise UserError(f"cannot listen on {host}:{port} ({_strerror(exc)})") from None
    sock.set_inheritable(True)
    return sock


def _strerror(exc: OSError) -> str:
    return os.strerror(exc.errno).lower() if exc.errno else str(exc)
