"""Every node each delete took, kept apart from `nodes.delete_seq` (which names only the
latest): a node deleted, brought back and deleted again is still found by a restore
that walks back past its first delete. Filled from `delete_seq` for what earlier
releases deleted.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.create_table(
        "deleted_with",
        sa.Column("delete_seq", sa.BigInteger, primary_key=True),
        sa.Column("node_id", sa.BigInteger, primary_key=True),
    )
    op.create_index("deleted_with_node", "deleted_with", ["node_id"])
    op.execute("INSERT INTO deleted_with (delete_seq, node_id) "
               "SELECT delete_seq, id FROM nodes WHERE delete_seq IS NOT NULL")
