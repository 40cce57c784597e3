"""Owners as wide as uid_t: uid and gid up to 2^32 - 2 (what the API takes) did not fit
PostgreSQL's 32-bit integer columns, and a chown to such an id answered 500 (found by
schemathesis: uid 4294967293). SQLite's INTEGER is 64-bit already.

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in ("nodes", "journal"):
        op.execute(f"ALTER TABLE {table} ALTER COLUMN uid TYPE BIGINT, ALTER COLUMN gid TYPE BIGINT")
