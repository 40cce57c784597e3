"""The first release's schema: users, tokens, nodes, versions, chunks, journal, settings.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("root_id", sa.BigInteger, nullable=True),
        sa.Column("quota_bytes", sa.BigInteger, nullable=True),
        sa.Column("journal_floor", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.BigInteger, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "nodes",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("owner_id", sa.BigInteger, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("parent_id", sa.BigInteger, nullable=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("mode", sa.Integer, nullable=False),
        sa.Column("mtime_ns", sa.BigInteger, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("rev", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("target", sa.Text, nullable=True),
        sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    live = sa.text("deleted = false") if op.get_bind().dialect.name == "postgresql" else sa.text("deleted = 0")
    op.create_index("nodes_live_name", "nodes", ["owner_id", "parent_id", "name"], unique=True,
                    sqlite_where=live, postgresql_where=live)
    op.create_index("nodes_owner_id", "nodes", ["owner_id", "id"])
    op.create_table(
        "versions",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("node_id", sa.BigInteger, sa.ForeignKey("nodes.id"), nullable=False),
        sa.Column("rev", sa.BigInteger, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mtime_ns", sa.BigInteger, nullable=False),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("node_id", "rev", name="versions_node_rev"),
    )
    op.create_table(
        "version_chunks",
        sa.Column("version_id", sa.BigInteger, sa.ForeignKey("versions.id"), primary_key=True),
        sa.Column("idx", sa.Integer, primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("length", sa.Integer, nullable=False),
    )
    op.create_table(
        "chunks",
        sa.Column("owner_id", sa.BigInteger, sa.ForeignKey("users.id"), primary_key=True),
        sa.Column("fingerprint", sa.String(64), primary_key=True),
        sa.Column("length", sa.Integer, nullable=False),
        sa.Column("stored_length", sa.Integer, nullable=False),
        sa.Column("stored_sha256", sa.String(64), nullable=False),
        sa.Column("compression", sa.String(8), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "journal",
        sa.Column("seq", BigId, primary_key=True, autoincrement=True),
        sa.Column("owner_id", sa.BigInteger, nullable=False),
        sa.Column("node_id", sa.BigInteger, nullable=False),
        sa.Column("op", sa.String(8), nullable=False),
        sa.Column("rev", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("parent_id", sa.BigInteger, nullable=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("old_parent_id", sa.BigInteger, nullable=True),
        sa.Column("old_name", sa.Text, nullable=True),
        sa.Column("mode", sa.Integer, nullable=False),
        sa.Column("mtime_ns", sa.BigInteger, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("target", sa.Text, nullable=True),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("journal_owner_seq", "journal", ["owner_id", "seq"])
    op.create_table(
        "settings",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
