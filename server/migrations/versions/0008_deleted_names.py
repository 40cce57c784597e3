"""An index of deleted nodes by where they were (directory and name): a device retrying
a create whose answer it never had asks for the deleted nodes of that name
(GET /nodes/{id}/deleted), and that must not scan the account's whole tree.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    deleted = sa.text("deleted = true") if op.get_bind().dialect.name == "postgresql" else sa.text("deleted = 1")
    op.create_index("nodes_deleted_name", "nodes", ["owner_id", "parent_id", "name"],
                    sqlite_where=deleted, postgresql_where=deleted)
