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

Round trips (PostgreSQL): inside `Tx.pipelined()` psycopg's pipeline mode sends each
statement at once and waits only when a result is read (`one`, `all`, `scalar`, `run`).
Statements whose result nobody reads (`send`, savepoints) travel with the next one
that is read: a group commit's SAVEPOINT, RELEASE and `pg_notify` cost no round trip
of their own. On SQLite, where there is no network, it changes nothing.
"""

from __future__ import annotations

import contextlib
import functools
import re
from typing import Any, Iterable, Iterator, Mapping

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

    __slots__ = ("_conn", "_cursor", "_pg", "_pipeline", "_pipeline_cm", "_unread", "is_postgresql")

    def __init__(self, dbapi_conn: Any, dialect: str) -> None:
        self._conn = dbapi_conn
        self._cursor = dbapi_conn.cursor()
        self._pg = self.is_postgresql = dialect == "postgresql"
        self._pipeline: Any = None
        self._pipeline_cm: Any = None
        self._unread = False
        """A statement was queued whose result (or error) nobody has waited for yet."""

    @contextlib.contextmanager
    def pipelined(self) -> Iterator[None]:
        """PostgreSQL pipeline mode for the statements run inside (see the module
        docstring); leaving it waits for every queued result and raises the first error."""
        if not self._pg or self._pipeline is not None:
            yield
            return
        self._enter_pipeline()
        try:
            yield
        except BaseException as exc:
            cm, self._pipeline_cm, self._pipeline = self._pipeline_cm, None, None
            if cm is not None:
                with contextlib.suppress(Exception):  # the error on its way out is the one to tell
                    cm.__exit__(type(exc), exc, exc.__traceback__)
            raise
        cm, self._pipeline_cm, self._pipeline = self._pipeline_cm, None, None
        if cm is not None:
            cm.__exit__(None, None, None)

    def _enter_pipeline(self) -> None:
        self._pipeline_cm = self._conn.pipeline()
        self._pipeline = self._pipeline_cm.__enter__()

    @classmethod
    def of(cls, conn: Connection) -> "Tx":
        return cls(conn.connection.driver_connection, conn.dialect.name)

    def _run(self, stmt: Stmt, params: Mapping[str, Any]) -> Any:
        cursor = self._cursor
        cursor.execute(stmt.postgresql if self._pg else stmt.sqlite, params)
        self._unread = False  # the caller reads it, which waits for everything queued before too
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
        cursor = self._run(stmt, params)
        if self._pipeline is not None:
            self._pipeline.sync()  # the row count is known only once the result is in
        return cursor.rowcount

    def send(self, stmt: Stmt, params: Mapping[str, Any]) -> None:
        """Execute a statement whose result nobody reads: pipelined, no round trip of its own."""
        self._cursor.execute(stmt.postgresql if self._pg else stmt.sqlite, params)
        self._unread = self._pipeline is not None

    def settle(self) -> None:
        """Wait for what `send` and `many` queued, so that their errors are raised here
        and now (a job's own, not the next job's); a round trip only when there is any."""
        if self._unread:
            self._unread = False
            self._pipeline.sync()

    def many(self, stmt: Stmt, params: Iterable[Mapping[str, Any]]) -> None:
        self._cursor.executemany(stmt.postgresql if self._pg else stmt.sqlite, params)
        self._unread = self._pipeline is not None

    def savepoint(self) -> None:
        self._cursor.execute("SAVEPOINT job")

    def release(self) -> None:
        self._cursor.execute("RELEASE SAVEPOINT job")

    def rollback_to_savepoint(self) -> None:
        if self._pipeline is None:
            self._cursor.execute("ROLLBACK TO SAVEPOINT job")
            return
        # Out of pipeline mode for the rollback, then back in. psycopg forgets its prepared
        # statements when it sees a ROLLBACK's result and has PostgreSQL deallocate them;
        # inside a pipeline that happened after later statements had been sent as already
        # prepared ("prepared statement _pg3_2 does not exist",
        # tests/cluster/test_replicas_api.py::test_group_commits_on_both_replicas_keep_one_order).
        # Leaving waits for what was queued, the failed job's error included: the
        # savepoint undoes all of it.
        cm, self._pipeline_cm, self._pipeline = self._pipeline_cm, None, None
        with contextlib.suppress(Exception):  # psycopg.Error; this module never imports the driver
            cm.__exit__(None, None, None)
        self._unread = False
        self._cursor.execute("ROLLBACK TO SAVEPOINT job")
        self._enter_pipeline()


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
