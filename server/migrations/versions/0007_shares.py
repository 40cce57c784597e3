"""Shared folders: namespaces and their members.

Every node, chunk and journal entry lives in a namespace (the existing `owner_id`
columns). Each account's tree becomes its root namespace, with the account's own id,
so no row moves; a shared folder is a namespace of its own (shares.py). The owner
columns of nodes and chunks now refer to namespaces (SQLite rebuilds those two tables
for it; their indexes are made again as they were). New columns: the namespace a
mount row mounts (nodes; `other_ns` in the journal, which also names where a node
moved to), the account that made a journal entry or a version, and where a
chunk's bytes are when the server gave the chunk to another namespace (store_ns).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
FK_NAMES = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}


def upgrade() -> None:
    bind = op.get_bind()
    pg = bind.dialect.name == "postgresql"
    op.create_table(
        "namespaces",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("owner_id", sa.BigInteger, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("root_id", sa.BigInteger, nullable=True),
        sa.Column("name", sa.Text, nullable=False, server_default=""),
        sa.Column("journal_floor", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("namespaces_owner", "namespaces", ["owner_id"])
    op.execute("INSERT INTO namespaces (id, kind, owner_id, root_id, name, journal_floor, created_at)"
               " SELECT id, 'root', id, root_id, '', journal_floor, created_at FROM users")
    if pg:  # new namespaces (and accounts, which take their id from here) start past every account
        op.execute("SELECT setval(pg_get_serial_sequence('namespaces', 'id'),"
                   " GREATEST((SELECT max(id) FROM users), (SELECT max(id) FROM namespaces), 1))")
    op.create_table(
        "members",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("ns_id", sa.BigInteger, sa.ForeignKey("namespaces.id"), nullable=False),
        sa.Column("user_id", sa.BigInteger, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("mount_id", sa.BigInteger, nullable=True),
        sa.Column("invited_by", sa.BigInteger, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.UniqueConstraint("ns_id", "user_id", name="members_ns_user"),
    )
    op.create_index("members_user", "members", ["user_id", "state"])

    with op.batch_alter_table("journal") as batch:
        batch.add_column(sa.Column("other_ns", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("user_id", sa.BigInteger, nullable=True))
    with op.batch_alter_table("versions") as batch:  # who made a version: two accounts may name a device alike
        batch.add_column(sa.Column("user_id", sa.BigInteger, nullable=True))

    false = sa.text("deleted = false") if pg else sa.text("deleted = 0")
    if not pg:  # rebuilt below: made again afterwards, partial ones with their conditions
        for index, table in (("nodes_live_name", "nodes"), ("nodes_owner_id", "nodes"),
                             ("nodes_delete_seq", "nodes"), ("nodes_link_to", "nodes"), ("chunks_state", "chunks")):
            op.drop_index(index, table_name=table)
    for table in ("nodes", "chunks"):
        if pg:
            op.drop_constraint(f"{table}_owner_id_fkey", table, type_="foreignkey")
            op.create_foreign_key(f"{table}_owner_id_fkey", table, "namespaces", ["owner_id"], ["id"])
            continue
        with op.batch_alter_table(table, recreate="always", naming_convention=FK_NAMES) as batch:
            batch.drop_constraint(f"fk_{table}_owner_id_users", type_="foreignkey")
            batch.create_foreign_key(f"fk_{table}_owner_id_namespaces", "namespaces", ["owner_id"], ["id"])
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("mount_ns", sa.BigInteger, nullable=True))
    with op.batch_alter_table("chunks") as batch:
        batch.add_column(sa.Column("store_ns", sa.BigInteger, nullable=True))
    if not pg:
        op.create_index("nodes_live_name", "nodes", ["owner_id", "parent_id", "name"], unique=True, sqlite_where=false)
        op.create_index("nodes_owner_id", "nodes", ["owner_id", "id"])
        op.create_index("nodes_delete_seq", "nodes", ["owner_id", "delete_seq"])
        op.create_index("nodes_link_to", "nodes", ["link_to"], sqlite_where=sa.text("link_to IS NOT NULL"))
        op.create_index("chunks_state", "chunks", ["owner_id", "state"])
    # The copies of one stored object in several namespaces: the collector asks before deleting it.
    op.create_index("chunks_store", "chunks", ["store_ns", "fingerprint"],
                    sqlite_where=sa.text("store_ns IS NOT NULL"), postgresql_where=sa.text("store_ns IS NOT NULL"))
