"""Hard links: an extra name of a node is an alias row (kind "link") whose `link_to` is
the id of the node it names. The journal carries the column too, because an entry is
the row's whole state after the change. Rows of earlier releases are no aliases (NULL).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    for table in ("nodes", "journal"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("link_to", sa.BigInteger, nullable=True))
    # The live aliases of a node: looked up whenever a file's own name is deleted.
    op.create_index("nodes_link_to", "nodes", ["link_to"], sqlite_where=sa.text("link_to IS NOT NULL"),
                    postgresql_where=sa.text("link_to IS NOT NULL"))
