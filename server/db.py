"""The metadata schema and the one way to open a transaction on SQLite or PostgreSQL.

Both engines run the same statements: SQLAlchemy Core, and for the few that every
commit runs, plain SQL on the driver's connection (sql.py). The engine-specific part is
only how a *write* transaction serialises: SQLite takes the database write lock up
front (BEGIN IMMEDIATE, so a read-then-write transaction can never fail half way with
SQLITE_BUSY), PostgreSQL locks the namespaces' rows (SELECT ... FOR UPDATE). Either way
one namespace's writes commit in journal order, which is what makes a cursor safe to
resume from. An "owner" throughout the server is a namespace: an account's own tree
(the namespace with the account's id) or a shared folder (shares.py).
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

metadata = sa.MetaData()
"""The schema at the newest migration (migrations/versions): what the code reads and writes."""


def posix_columns() -> list[sa.Column]:
    """Owner, device number, access time and xattrs: on nodes, and on the journal, whose
    entries carry a node's whole state (migration 0002). uid/gid -1: the drive's owner."""
    return [
        sa.Column("uid", sa.BigInteger, nullable=False, server_default="-1"),  # uid_t is unsigned 32-bit (0009)
        sa.Column("gid", sa.BigInteger, nullable=False, server_default="-1"),
        sa.Column("rdev", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("atime_ns", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("xattrs", sa.Text, nullable=True),
    ]


users = sa.Table(
    "users", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("root_id", sa.BigInteger, nullable=True),
    sa.Column("quota_bytes", sa.BigInteger, nullable=True),
    sa.Column("journal_floor", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("retain_days", sa.Float, nullable=True),
    sa.Column("password_hash", sa.Text, nullable=True),  # argon2id (auth.py), migration 0006
)

namespaces = sa.Table(
    "namespaces", metadata,
    # An account's own tree is its root namespace, with the account's id (migration 0007);
    # a shared folder is a namespace of its own. Ids come from this table alone
    # (`shares.new_namespace_id`), so a new account and a new shared folder never collide.
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(8), nullable=False),  # root | shared
    sa.Column("owner_id", sa.BigInteger, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("root_id", sa.BigInteger, nullable=True),
    sa.Column("name", sa.Text, nullable=False, server_default=""),
    sa.Column("journal_floor", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("created_at", sa.Float, nullable=False),
)
sa.Index("namespaces_owner", namespaces.c.owner_id)

members = sa.Table(
    "members", metadata,
    # Who may see a shared namespace: role owner | editor | viewer; state invited |
    # accepted | declined | left | removed. `mount_id`: the member's mount node (kind
    # "mount", in the member's root namespace) while accepted.
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("ns_id", sa.BigInteger, sa.ForeignKey("namespaces.id"), nullable=False),
    sa.Column("user_id", sa.BigInteger, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("role", sa.String(8), nullable=False),
    sa.Column("state", sa.String(8), nullable=False),
    sa.Column("mount_id", sa.BigInteger, nullable=True),
    sa.Column("invited_by", sa.BigInteger, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.UniqueConstraint("ns_id", "user_id", name="members_ns_user"),
)
sa.Index("members_user", members.c.user_id, members.c.state)

tokens = sa.Table(
    "tokens", metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.BigInteger, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    # Migration 0006: a device's token or a browser's session (auth.py).
    sa.Column("kind", sa.String(8), nullable=False, server_default="device"),
    sa.Column("label", sa.String(64), nullable=True),
    sa.Column("last_seen_at", sa.Float, nullable=True),
    sa.Column("last_device", sa.String(64), nullable=True),
    sa.Column("revoked_at", sa.Float, nullable=True),
    sa.Column("expires_at", sa.Float, nullable=True),
)
sa.Index("tokens_user", tokens.c.user_id)

auth_failures = sa.Table(
    "auth_failures", metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("last_at", sa.Float, nullable=False),
)

share_links = sa.Table(
    "share_links", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("owner_id", sa.BigInteger, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("node_id", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=True),
    sa.Column("password_hash", sa.Text, nullable=True),
    sa.Column("max_downloads", sa.Integer, nullable=True),
    sa.Column("downloads", sa.Integer, nullable=False, server_default="0"),
    sa.Column("revoked_at", sa.Float, nullable=True),
)
sa.Index("share_links_owner", share_links.c.owner_id, share_links.c.created_at)

nodes = sa.Table(
    "nodes", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("owner_id", sa.BigInteger, sa.ForeignKey("namespaces.id"), nullable=False),  # the namespace
    sa.Column("parent_id", sa.BigInteger, nullable=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("mode", sa.Integer, nullable=False),
    sa.Column("mtime_ns", sa.BigInteger, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("rev", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("target", sa.Text, nullable=True),
    sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false()),
    *posix_columns(),
    sa.Column("deleted_at", sa.Float, nullable=True),
    sa.Column("deleted_by", sa.String(64), nullable=True),
    # The journal entry of the delete that took this node: a directory's own, for
    # everything that went with it (migration 0003).
    sa.Column("delete_seq", sa.BigInteger, nullable=True),
    sa.Column("link_to", sa.BigInteger, nullable=True),  # an alias row: the node this name stands for (0004)
    # A mount row (kind "mount", 0007): a shared namespace's place in a member's tree;
    # `link_to` is the namespace's root node, `target` the member's role.
    sa.Column("mount_ns", sa.BigInteger, nullable=True),
)
sa.Index(
    "nodes_live_name", nodes.c.owner_id, nodes.c.parent_id, nodes.c.name, unique=True,
    sqlite_where=nodes.c.deleted == sa.false(), postgresql_where=nodes.c.deleted == sa.false(),
)
sa.Index(  # what a device retrying a create asks (GET /nodes/{id}/deleted, 0008)
    "nodes_deleted_name", nodes.c.owner_id, nodes.c.parent_id, nodes.c.name,
    sqlite_where=nodes.c.deleted == sa.true(), postgresql_where=nodes.c.deleted == sa.true(),
)
sa.Index("nodes_owner_id", nodes.c.owner_id, nodes.c.id)
sa.Index("nodes_delete_seq", nodes.c.owner_id, nodes.c.delete_seq)
sa.Index("nodes_link_to", nodes.c.link_to, sqlite_where=nodes.c.link_to.isnot(None),
         postgresql_where=nodes.c.link_to.isnot(None))

versions = sa.Table(
    "versions", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("node_id", sa.BigInteger, sa.ForeignKey("nodes.id"), nullable=False),
    sa.Column("rev", sa.BigInteger, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("mtime_ns", sa.BigInteger, nullable=False),
    sa.Column("device", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("user_id", sa.BigInteger, nullable=True),  # 0007: the account that made it (None: before 0007)
    sa.UniqueConstraint("node_id", "rev", name="versions_node_rev"),
)

version_chunks = sa.Table(
    "version_chunks", metadata,
    sa.Column("version_id", sa.BigInteger, sa.ForeignKey("versions.id"), primary_key=True),
    sa.Column("idx", sa.Integer, primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("length", sa.Integer, nullable=False),
)
sa.Index("version_chunks_fingerprint", version_chunks.c.fingerprint)

chunks = sa.Table(
    "chunks", metadata,
    sa.Column("owner_id", sa.BigInteger, sa.ForeignKey("namespaces.id"), primary_key=True),  # the namespace
    sa.Column("fingerprint", sa.String(64), primary_key=True),
    sa.Column("length", sa.Integer, nullable=False),
    sa.Column("stored_length", sa.Integer, nullable=False),
    sa.Column("stored_sha256", sa.String(64), nullable=False),
    sa.Column("compression", sa.String(8), nullable=False),
    sa.Column("state", sa.String(8), nullable=False),  # pending | verified | bad | purging (retention.py)
    sa.Column("created_at", sa.Float, nullable=False),
    # Where the bytes are: the namespace whose store key holds them, when it is not this
    # row's own (a chunk given to a shared folder by the server, 0007; shares.py).
    sa.Column("store_ns", sa.BigInteger, nullable=True),
)
sa.Index("chunks_state", chunks.c.owner_id, chunks.c.state)
sa.Index("chunks_store", chunks.c.store_ns, chunks.c.fingerprint, sqlite_where=chunks.c.store_ns.isnot(None),
         postgresql_where=chunks.c.store_ns.isnot(None))

journal = sa.Table(
    "journal", metadata,
    sa.Column("seq", BigId, primary_key=True, autoincrement=True),
    sa.Column("owner_id", sa.BigInteger, nullable=False),
    sa.Column("node_id", sa.BigInteger, nullable=False),
    sa.Column("op", sa.String(8), nullable=False),
    sa.Column("rev", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("parent_id", sa.BigInteger, nullable=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("old_parent_id", sa.BigInteger, nullable=True),
    sa.Column("old_name", sa.Text, nullable=True),
    sa.Column("mode", sa.Integer, nullable=False),
    sa.Column("mtime_ns", sa.BigInteger, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("target", sa.Text, nullable=True),
    sa.Column("device", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    *posix_columns(),
    sa.Column("link_to", sa.BigInteger, nullable=True),
    # 0007: the namespace a mount entry mounts, or the one a node left this namespace for
    # (a `delete` entry whose node lives on there).
    sa.Column("other_ns", sa.BigInteger, nullable=True),
    sa.Column("user_id", sa.BigInteger, nullable=True),  # 0007: the account that made the change
)
sa.Index("journal_owner_seq", journal.c.owner_id, journal.c.seq)

# Every node each delete took (its journal entry's seq), kept for as long as the node:
# `nodes.delete_seq` names only the latest, and a node deleted, brought back and deleted
# again must still be found by a restore that walks back past the first delete (0005).
deleted_with = sa.Table(
    "deleted_with", metadata,
    sa.Column("delete_seq", sa.BigInteger, primary_key=True),
    sa.Column("node_id", sa.BigInteger, primary_key=True),
)
sa.Index("deleted_with_node", deleted_with.c.node_id)

settings = sa.Table(
    "settings", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)


_LOCK_OWNERS = (sa.select(namespaces.c.id).where(namespaces.c.id.in_(sa.bindparam("owner_ids", expanding=True)))
                .order_by(namespaces.c.id).with_for_update())
"""One round trip for a batch's namespaces; rows are locked in the order they are returned."""
DEFAULT_POOL = 12


def normalise_url(url: str) -> str:
    """Accept the URLs people type (postgresql://, a bare path) for the drivers we ship."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if "://" not in url:
        return f"sqlite:///{url}"
    return url


class Database:
    """An engine plus the transaction discipline described in the module docstring."""

    def __init__(self, url: str, *, pool_size: int = DEFAULT_POOL, application_name: str = "cloudfs") -> None:
        """`pool_size` bounds the connections this process opens to PostgreSQL (the LISTEN
        relay takes one more): with R replicas, R x (pool_size + 1) must fit the server's
        max_connections. A thread that finds the pool empty waits up to 30 s.
        `application_name` is what pg_stat_activity shows for them ("cloudfs server" for
        a replica, "cloudfs" for the command line), so a DBA can tell them apart."""
        self.url = normalise_url(url)
        self.pool_size = pool_size
        self.is_sqlite = self.url.startswith("sqlite")
        if self.is_sqlite:
            self.engine: Engine = sa.create_engine(
                self.url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=8, max_overflow=8,
            )
            event.listen(self.engine, "connect", _sqlite_on_connect)
            event.listen(self.engine, "begin", _sqlite_on_begin)
            self._sqlite_writer: contextlib.AbstractContextManager = threading.Lock()
        else:
            self.engine = sa.create_engine(self.url, pool_size=pool_size, max_overflow=0, pool_timeout=30,
                                           pool_pre_ping=True, connect_args={"application_name": application_name})
            self._sqlite_writer = contextlib.nullcontext()

    schema_upgraded: tuple[str | None, str] | None = None
    """(revision before, after) when `open_database` migrated the schema."""

    def upgrade_schema(self) -> tuple[str | None, str]:
        """Create or migrate the schema to the newest revision (migrations/)."""
        from .migrations import upgrade

        return upgrade(self.engine)

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn.info["write"] = False
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def write(self, *owner_ids: int) -> Iterator[Connection]:
        """A write transaction, serialised per owner (all writers on SQLite).

        On SQLite the writers of this process also queue on a lock: SQLite's own busy
        handler waits by sleeping (1, 2, 5 ... 100 ms), which turns contention between
        worker threads into tens of milliseconds of latency. On PostgreSQL a batch of
        commits (writer.py) locks all its owners, always in ascending order, so two
        batches on two replicas cannot deadlock."""
        with self._sqlite_writer, self.engine.connect() as conn:
            conn.info["write"] = True
            with conn.begin():
                if not self.is_sqlite and owner_ids:
                    conn.execute(_LOCK_OWNERS, {"owner_ids": sorted(set(owner_ids))})
                yield conn

    def setting(self, key: str, make: Callable[[], str]) -> str:
        """Read a server-wide setting, creating it once (shared by every replica)."""
        with self.write() as conn:
            value = conn.execute(sa.select(settings.c.value).where(settings.c.key == key)).scalar()
            if value is None:
                value = make()
                conn.execute(settings.insert().values(key=key, value=value))
        return value

    def signing_secret(self) -> bytes:
        return bytes.fromhex(self.setting("signing_secret", lambda: secrets.token_hex(32)))

    def dispose(self) -> None:
        self.engine.dispose()


def default_db_url(data_dir: Path) -> str:
    """The embedded database: a SQLite file in the data directory (created if need be)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return str(data_dir / "cloudfs.sqlite3")


def open_database(data_dir: Path, db_url: str | None, *, pool_size: int = DEFAULT_POOL,
                  application_name: str = "cloudfs") -> Database:
    """The server's database, migrated to the newest schema: `db_url`, or the embedded
    SQLite file in `data_dir`."""
    db = Database(db_url or default_db_url(data_dir), pool_size=pool_size, application_name=application_name)
    db.schema_upgraded = db.upgrade_schema()
    return db


def _sqlite_on_connect(dbapi_conn, _record) -> None:  # noqa: ANN001 - DB-API objects
    dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, see _sqlite_on_begin
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")  # an acknowledged commit lets a device drop its only copy
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _sqlite_on_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("write", True) else "BEGIN")


def now() -> float:
    return time.time()
