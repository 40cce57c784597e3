"""History: when, by which device and by which journal entry each node was deleted
(a deleted directory comes back with what went with it); a retention period per
account.

Tombstones from before this revision keep NULLs: they can still be restored one by
one, and the collector treats them as deleted at the upgrade.

Revision ID: 0003
Revises: 0002
"""

import time

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("deleted_at", sa.Float, nullable=True))
        batch.add_column(sa.Column("deleted_by", sa.String(64), nullable=True))
        batch.add_column(sa.Column("delete_seq", sa.BigInteger, nullable=True))
    op.create_index("nodes_delete_seq", "nodes", ["owner_id", "delete_seq"])
    op.create_index("version_chunks_fingerprint", "version_chunks", ["fingerprint"])  # the collector asks by chunk
    op.create_index("chunks_state", "chunks", ["owner_id", "state"])  # ... and by state
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("retain_days", sa.Float, nullable=True))
    op.execute(sa.text("UPDATE nodes SET deleted_at = :now WHERE deleted = :yes").bindparams(now=time.time(), yes=True))
