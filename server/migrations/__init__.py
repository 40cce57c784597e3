"""Schema migrations (Alembic), run by the server on start and by `cloudfs server --upgrade`.

A database made before migrations existed (tables but no `alembic_version`) is the
first release's schema: it is stamped as revision 0001 and upgraded from there, so
nobody's data is rebuilt or wiped. Several replicas starting at once on PostgreSQL take
an advisory lock, so one of them upgrades and the others find it done.
"""

from __future__ import annotations

import logging
from pathlib import Path

logging.getLogger("alembic").setLevel(logging.WARNING)  # before it loads its plugins; ours says what happened

import sqlalchemy as sa  # noqa: E402
from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402
from alembic.migration import MigrationContext  # noqa: E402
from alembic.script import ScriptDirectory  # noqa: E402
from sqlalchemy.engine import Connection, Engine  # noqa: E402

HERE = Path(__file__).resolve().parent
log = logging.getLogger("cloudfs.migrations")
FIRST = "0001"
_UPGRADE_LOCK = 84700001


def _config(conn: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["connection"] = conn
    return config


def head() -> str:
    return ScriptDirectory.from_config(_config(None)).get_current_head()  # type: ignore[arg-type]


def current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, to: str = "head") -> tuple[str | None, str]:
    """Bring the schema to the newest revision (or `to`); returns (revision before, after)."""
    with engine.connect() as conn:
        sqlite = engine.dialect.name == "sqlite"
        if sqlite:
            # A migration that rebuilds a table others refer to (0007 re-points the
            # owner columns at namespaces) must not run with foreign keys enforced: the
            # rebuild drops the old table. SQLite takes this pragma only outside a
            # transaction; the keys are checked before the upgrade commits.
            conn.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
        try:
            with conn.begin():
                if engine.dialect.name == "postgresql":
                    conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({_UPGRADE_LOCK})"))
                before = current(conn)
                if before is None and sa.inspect(conn).has_table("users"):
                    command.stamp(_config(conn), FIRST)  # made by the release before migrations
                    before = FIRST
                command.upgrade(_config(conn), to)
                after = current(conn) or ""
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(f"the upgrade would leave rows pointing nowhere: {broken[:5]}")
        finally:
            if sqlite:
                conn.connection.driver_connection.execute("PRAGMA foreign_keys=ON")
    if before is None:
        log.debug("database schema created at revision %s", after)
    elif before != after:
        log.info("database schema migrated from revision %s to %s", before, after)
    return before, after
