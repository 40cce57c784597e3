"""POSIX attributes: owners, device numbers, access times and extended attributes.

uid/gid -1 mean "the drive's owner" (whoever mounts it, on each device), which is what
every node of the first release belonged to. The journal carries the same columns,
because an entry is the node's whole state after the change.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"

COLUMNS = (
    ("uid", sa.Integer, "-1"),
    ("gid", sa.Integer, "-1"),
    ("rdev", sa.BigInteger, "0"),
    ("atime_ns", sa.BigInteger, "0"),
)


def upgrade() -> None:
    for table in ("nodes", "journal"):
        with op.batch_alter_table(table) as batch:
            for name, type_, default in COLUMNS:
                batch.add_column(sa.Column(name, type_, nullable=False, server_default=default))
            batch.add_column(sa.Column("xattrs", sa.Text, nullable=True))
