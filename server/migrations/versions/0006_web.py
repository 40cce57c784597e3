"""The drive in a web browser (issue 17): account passwords, tokens that know their
device, when they were last seen and whether they were revoked (a browser's sign-in
is a token of kind 'session'), failed sign-ins counted per account and per address,
and share links.

Tokens made before this revision are device tokens without a label; nothing is
rewritten.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("password_hash", sa.Text, nullable=True))
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("kind", sa.String(8), nullable=False, server_default="device"))
        batch.add_column(sa.Column("label", sa.String(64), nullable=True))
        batch.add_column(sa.Column("last_seen_at", sa.Float, nullable=True))
        batch.add_column(sa.Column("last_device", sa.String(64), nullable=True))
        batch.add_column(sa.Column("revoked_at", sa.Float, nullable=True))
        batch.add_column(sa.Column("expires_at", sa.Float, nullable=True))
    op.create_index("tokens_user", "tokens", ["user_id"])
    op.create_table(
        "auth_failures",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("last_at", sa.Float, nullable=False),
    )
    op.create_table(
        "share_links",
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
    op.create_index("share_links_owner", "share_links", ["owner_id", "created_at"])
