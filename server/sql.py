"""Hand-written SQL on the driver's own connection, for the statements every commit runs.

Why not SQLAlchemy Core here: even prebuilt with `bindparam`, one Core statement costs
~50-100 µs of CPU (cache key, parameter processing, result wrapping) against ~10 µs for
the same statement through sqlite3, and a commit runs about eight of them. The schema
and the colder queries stay in Core (`db.py`, `tree.py`, `files.py`).

Every statement is written once in the SQL that SQLite (3.35+, for RETURNING) and
PostgreSQL share, with `:name` parameters, and rendered once per driver paramstyle
(`:name` for sqlite3, `%(name)s` for psycopg). So there is one code path for both
engines. Boolean literals are written `{false}`/`{true}` and rendered as each engine's
schema spells them (0/1 on SQLite), because a partial index (`nodes_live_name ...
WHERE deleted = 0`) serves only a query whose condition matches it literally: SQLite
does not see that `deleted = false` implies `deleted = 0` and scans the owner's nodes.
Rows come back as plain dicts; SQLite booleans come back as 0/1.

A `Tx` never begins or ends a transaction itself: it runs inside one that
`Database.write`/`read` opened, so the engine-specific locking stays in `db.py`.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Iterable, Mapping

from sqlalchemy.engine import Connection

Row = dict[str, Any]

_NAMED = re.compile(r"(?<![:\w]):(\w+)")


class Stmt:
    """One SQL statement with `:name` parameters (a literal `%` is fine: psycopg gets `%%`)."""

    __slots__ = ("sqlite", "postgresql")

    def __init__(self, sql: str) -> None:
        sql = " ".join(sql.split())
        self.sqlite = sql.replace("{false}", "0").replace("{true}", "1")
        pg = sql.replace("%", "%%").replace("{false}", "false").replace("{true}", "true")
        self.postgresql = _NAMED.sub(r"%(\1)s", pg)


class Tx:
    """Runs `Stmt`s on the DB-API connection underneath an open SQLAlchemy transaction."""

    __slots__ = ("_cursor", "_pg", "is_postgresql")

    def __init__(self, dbapi_conn: Any, dialect: str) -> None:
        self._cursor = dbapi_conn.cursor()
        self._pg = self.is_postgresql = dialect == "postgresql"

    @classmethod
    def of(cls, conn: Connection) -> "Tx":
        return cls(conn.connection.driver_connection, conn.dialect.name)

    def _run(self, stmt: Stmt, params: Mapping[str, Any]) -> Any:
        cursor = self._cursor
        cursor.execute(stmt.postgresql if self._pg else stmt.sqlite, params)
        return cursor

    def one(self, stmt: Stmt, params: Mapping[str, Any]) -> Row | None:
        cursor = self._run(stmt, params)
        row = cursor.fetchone()
        if row is None:
            return None
        return dict(zip(_names(cursor.description), row))

    def all(self, stmt: Stmt, params: Mapping[str, Any]) -> list[Row]:
        cursor = self._run(stmt, params)
        rows = cursor.fetchall()
        if not rows:
            return []
        names = _names(cursor.description)
        return [dict(zip(names, row)) for row in rows]

    def scalar(self, stmt: Stmt, params: Mapping[str, Any]) -> Any:
        row = self._run(stmt, params).fetchone()
        return None if row is None else row[0]

    def run(self, stmt: Stmt, params: Mapping[str, Any]) -> int:
        """Execute a statement without rows; returns the row count."""
        return self._run(stmt, params).rowcount

    def many(self, stmt: Stmt, params: Iterable[Mapping[str, Any]]) -> None:
        self._cursor.executemany(stmt.postgresql if self._pg else stmt.sqlite, params)

    def savepoint(self) -> None:
        self._cursor.execute("SAVEPOINT job")

    def release(self) -> None:
        self._cursor.execute("RELEASE SAVEPOINT job")

    def rollback_to_savepoint(self) -> None:
        self._cursor.execute("ROLLBACK TO SAVEPOINT job")


def as_tx(conn: Connection | Tx) -> Tx:
    """Lets the shared helpers (`tree.get`, `journal.append` ...) take either."""
    return conn if isinstance(conn, Tx) else Tx.of(conn)


def _names(description: Any) -> tuple[str, ...]:
    return tuple(d[0] for d in description)


@functools.lru_cache(maxsize=256)
def expand(template: str, count: int) -> Stmt:
    """The statement `template` with its `{values}` replaced by `count` parameters
    `:v0, :v1 ...` (an IN list); pass them with `values_params`. One Stmt per length."""
    return Stmt(template.replace("{values}", ", ".join(f":v{i}" for i in range(count))))


def values_params(values: Iterable[Any], **params: Any) -> dict[str, Any]:
    params.update((f"v{i}", v) for i, v in enumerate(values))
    return params
