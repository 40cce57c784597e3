"""Schema upgrades keep data: a database of the release before migrations, and one of
each engine at the first revision, are upgraded in place and served."""

from __future__ import annotations

import contextlib
import subprocess
import tarfile
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import sqlalchemy as sa

from cloudfs.server.db import Database
from cloudfs.server.migrations import head, upgrade
from tests.harness import CLOUDFS, cloudfs_server, postgres_database

FIXTURE = Path(__file__).resolve().parent.parent / "data" / "pre-posix.tar.gz"


@contextlib.contextmanager
def empty_database(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Database]:
    """A fresh database of `engine` ("sqlite" or "postgres"), with no tables yet."""
    with postgres_database(request.getfixturevalue("pg_admin_url")) if engine == "postgres" \
            else contextlib.nullcontext() as pg:
        db = Database(pg or str(tmp_path / "db.sqlite3"))
        try:
            yield db
        finally:
            db.dispose()


def unpack_fixture(to: Path) -> tuple[Path, str]:
    """The pre-POSIX release's server data dir and alice's token (tests/data/README.md)."""
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(to, filter="data")
    return to / "server", (to / "token").read_text().strip()


def test_upgrade_command_migrates_a_database_of_the_previous_release_in_place(tmp_path: Path) -> None:
    data, token = unpack_fixture(tmp_path)
    first = subprocess.run([*CLOUDFS, "server", "--upgrade", "--data", str(data)], capture_output=True, text=True,
                           timeout=60)
    assert first.returncode == 0, first.stderr
    assert f"at revision {head()} (was 0001)" in first.stdout
    again = subprocess.run([*CLOUDFS, "server", "--upgrade", "--data", str(data)], capture_output=True, text=True,
                           timeout=60)
    assert again.returncode == 0 and "already the newest" in again.stdout

    with cloudfs_server(data) as srv:
        auth = {"Authorization": f"Bearer {token}"}
        notes = httpx.get(f"{srv.url}/resolve", params={"path": "/docs/notes.txt"}, headers=auth).json()["node"]
        assert (notes["mode"], notes["size"], notes["uid"], notes["gid"], notes["xattrs"]) == (0o600, 27, -1, -1, {})
        big = httpx.get(f"{srv.url}/resolve", params={"path": "/docs/big.bin"}, headers=auth).json()["node"]
        info = httpx.get(f"{srv.url}/files/{big['id']}", headers=auth).json()
        assert sum(c["length"] for c in info["chunks"]) == 3 << 20
        first_chunk = info["chunks"][0]
        body = httpx.request(first_chunk["download"]["method"], first_chunk["download"]["url"],
                             headers=first_chunk["download"]["headers"])
        assert body.status_code == 200 and len(body.content) > 0
        link = httpx.get(f"{srv.url}/resolve", params={"path": "/link"}, headers=auth).json()["node"]
        assert (link["kind"], link["target"]) == ("symlink", "docs/notes.txt")
        changes = httpx.get(f"{srv.url}/changes", params={"cursor": 0}, headers=auth).json()["changes"]
        assert [c["node"]["uid"] for c in changes] == [-1] * len(changes)  # old journal rows read with defaults
        assert [c["node"]["link_to"] for c in changes] == [None] * len(changes)
        # A file of the previous release gets a second name, and keeps it when its first goes.
        alias = httpx.post(f"{srv.url}/links", json={"parent_id": notes["parent_id"], "name": "again.txt",
                                                     "node_id": notes["id"]}, headers=auth)
        assert alias.status_code == 201 and alias.json()["node"]["link_to"] == notes["id"], alias.text
        assert httpx.delete(f"{srv.url}/nodes/{notes['id']}", headers=auth).json()["node"]["name"] == "again.txt"


def test_the_server_upgrades_on_start(tmp_path: Path) -> None:
    data, token = unpack_fixture(tmp_path)
    with cloudfs_server(data) as srv:
        me = httpx.get(f"{srv.url}/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200 and me.json()["name"] == "alice"
    db = Database(str(data / "cloudfs.sqlite3"))
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == head()
    db.dispose()


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_rows_written_at_the_first_revision_survive_the_upgrade(engine: str, tmp_path: Path,
                                                                request: pytest.FixtureRequest) -> None:
    with empty_database(engine, tmp_path, request) as db:
        assert upgrade(db.engine, to="0001") == (None, "0001")
        with db.engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO users (name, root_id, journal_floor, created_at) "
                                 "VALUES ('bob', 1, 0, 0)"))
            conn.execute(sa.text("INSERT INTO nodes (owner_id, parent_id, name, kind, mode, mtime_ns, size, rev, "
                                 "deleted) VALUES (1, NULL, '', 'dir', 493, 5, 0, 1, false)"))
        assert upgrade(db.engine) == ("0001", head())
        with db.engine.connect() as conn:
            row = conn.execute(sa.text("SELECT name, mode, uid, gid, rdev, atime_ns, xattrs FROM nodes")).one()
        assert tuple(row) == ("", 493, -1, -1, 0, 0, None)



@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_rows_written_at_revision_0002_survive_the_links_migration(engine: str, tmp_path: Path,
                                                                   request: pytest.FixtureRequest) -> None:
    """0003 (history) and 0004 add deletion stamps and `link_to` (NULL: no alias) to nodes and journal, and the index that finds
    a node's aliases, without touching what is there."""
    with empty_database(engine, tmp_path, request) as db:
        assert upgrade(db.engine, to="0002") == (None, "0002")
        with db.engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO users (name, root_id, journal_floor, created_at) "
                                 "VALUES ('carol', 1, 0, 0)"))
            conn.execute(sa.text("INSERT INTO nodes (owner_id, parent_id, name, kind, mode, mtime_ns, size, rev, "
                                 "deleted, uid) VALUES (1, NULL, 'f', 'file', 420, 5, 3, 2, false, 2101)"))
            conn.execute(sa.text("INSERT INTO journal (owner_id, node_id, op, rev, kind, name, mode, mtime_ns, "
                                 "size, device, created_at) VALUES (1, 1, 'create', 1, 'file', 'f', 420, 5, 3, "
                                 "'d', 0)"))
        assert upgrade(db.engine) == ("0002", head())
        with db.engine.connect() as conn:
            node = conn.execute(sa.text("SELECT name, size, rev, uid, link_to FROM nodes")).one()
            entry = conn.execute(sa.text("SELECT op, name, link_to FROM journal")).one()
            indexes = {ix["name"] for ix in sa.inspect(conn).get_indexes("nodes")}
        assert tuple(node) == ("f", 3, 2, 2101, None)
        assert tuple(entry) == ("create", "f", None)
        assert {"nodes_link_to", "nodes_live_name"} <= indexes


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_deletes_of_revision_0004_are_found_by_a_restore_after_0005(engine: str, tmp_path: Path,
                                                                     request: pytest.FixtureRequest) -> None:
    """0005 fills `deleted_with` from the one stamp each tombstone had: what a directory's
    delete took before the upgrade is still what a restore past it brings back."""
    with empty_database(engine, tmp_path, request) as db:
        assert upgrade(db.engine, to="0004") == (None, "0004")
        with db.engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO users (name, root_id, journal_floor, created_at) "
                                 "VALUES ('dave', 1, 0, 0)"))
            for node_id, parent, name, seq in ((1, None, "", None), (2, 1, "d", 7), (3, 2, "f", 7)):
                conn.execute(sa.text(
                    "INSERT INTO nodes (id, owner_id, parent_id, name, kind, mode, mtime_ns, size, rev, deleted, "
                    "delete_seq) VALUES (:id, 1, :parent, :name, 'dir', 493, 5, 0, 1, :deleted, :seq)"),
                    dict(id=node_id, parent=parent, name=name, deleted=seq is not None, seq=seq))
        assert upgrade(db.engine) == ("0004", head())
        with db.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT delete_seq, node_id FROM deleted_with ORDER BY node_id")).all()
        assert [tuple(r) for r in rows] == [(7, 2), (7, 3)]


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_accounts_and_tokens_of_revision_0005_survive_the_web_migration(engine: str, tmp_path: Path,
                                                                        request: pytest.FixtureRequest) -> None:
    """0006 (issue 17) gives accounts an optional password and tokens a kind, label, last-seen and
    revocation stamps: a device token of 0005 stays a working, unrevoked device token without a label,
    an account keeps having no password until one is set, and the sign-in brake and share-link tables
    exist empty."""
    with empty_database(engine, tmp_path, request) as db:
        assert upgrade(db.engine, to="0005") == (None, "0005")
        with db.engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO users (name, root_id, journal_floor, created_at) "
                                 "VALUES ('dave', 1, 0, 0)"))
            conn.execute(sa.text("INSERT INTO tokens (token_hash, user_id, created_at) VALUES ('ab12', 1, 7)"))
        assert upgrade(db.engine, to="0006") == ("0005", "0006")
        with db.engine.connect() as conn:
            user = conn.execute(sa.text("SELECT name, password_hash FROM users")).one()
            token = conn.execute(sa.text("SELECT token_hash, user_id, created_at, kind, label, last_seen_at, "
                                         "revoked_at, expires_at FROM tokens")).one()
            inspector = sa.inspect(conn)
            tables = set(inspector.get_table_names())
            indexes = {ix["name"] for ix in inspector.get_indexes("tokens")}
            empty = [conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar()
                     for t in ("auth_failures", "share_links")]
        assert tuple(user) == ("dave", None)
        assert tuple(token) == ("ab12", 1, 7, "device", None, None, None, None)
        assert {"auth_failures", "share_links"} <= tables and "tokens_user" in indexes
        assert empty == [0, 0]


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_accounts_of_revision_0006_become_root_namespaces(engine: str, tmp_path: Path,
                                                          request: pytest.FixtureRequest) -> None:
    """0007 makes each account's tree its root namespace, with the account's id and its
    journal floor; node and chunk rows stay as they are (their owner is now a namespace,
    same number), every index comes back as it was, and a new account or shared folder
    takes an id no account had."""
    with empty_database(engine, tmp_path, request) as db:
        assert upgrade(db.engine, to="0006") == (None, "0006")
        with db.engine.begin() as conn:
            for name, root in (("dora", 1), ("emil", 3)):
                conn.execute(sa.text("INSERT INTO users (name, root_id, journal_floor, created_at) "
                                     "VALUES (:n, :r, 7, 5)").bindparams(n=name, r=root))
            conn.execute(sa.text("INSERT INTO nodes (owner_id, parent_id, name, kind, mode, mtime_ns, size, rev, "
                                 "deleted) VALUES (1, NULL, '', 'dir', 493, 5, 0, 1, false), "
                                 "(1, 1, 'f', 'file', 420, 5, 3, 1, false), (2, NULL, '', 'dir', 493, 5, 0, 1, false)"))
            conn.execute(sa.text("INSERT INTO versions (node_id, rev, size, mtime_ns, device, created_at) "
                                 "VALUES (2, 1, 3, 5, 'd', 0)"))
            conn.execute(sa.text("INSERT INTO chunks (owner_id, fingerprint, length, stored_length, stored_sha256, "
                                 "compression, state, created_at) VALUES (1, :fp, 3, 3, :fp, 'none', 'verified', 0)"
                                 ).bindparams(fp="ab" * 32))
            conn.execute(sa.text("INSERT INTO journal (owner_id, node_id, op, rev, kind, name, mode, mtime_ns, "
                                 "size, device, created_at) VALUES (1, 2, 'create', 1, 'file', 'f', 420, 5, 3, 'd', 0)"))
        assert upgrade(db.engine) == ("0006", head())
        with db.engine.connect() as conn:
            spaces = conn.execute(sa.text("SELECT id, kind, owner_id, root_id, journal_floor, created_at "
                                          "FROM namespaces ORDER BY id")).all()
            chunk = conn.execute(sa.text("SELECT owner_id, state, store_ns FROM chunks")).one()
            entry = conn.execute(sa.text("SELECT owner_id, other_ns, user_id FROM journal")).one()
            indexes = {ix["name"] for ix in sa.inspect(conn).get_indexes("nodes")}
            keys = {(fk["referred_table"], tuple(fk["constrained_columns"]))
                    for fk in sa.inspect(conn).get_foreign_keys("nodes")}
        assert [tuple(r) for r in spaces] == [(1, "root", 1, 1, 7, 5.0), (2, "root", 2, 3, 7, 5.0)]
        assert tuple(chunk) == (1, "verified", None) and tuple(entry) == (1, None, None)
        assert {"nodes_live_name", "nodes_owner_id", "nodes_delete_seq", "nodes_link_to"} <= indexes
        assert ("namespaces", ("owner_id",)) in keys
        from cloudfs.server import users as accounts
        accounts.add_user(db, "fred")
        with db.engine.connect() as conn:
            fred = conn.execute(sa.text("SELECT id FROM users WHERE name = 'fred'")).scalar()
            assert fred > 2 and conn.execute(sa.text("SELECT kind FROM namespaces WHERE id = :i")
                                             .bindparams(i=fred)).scalar() == "root"
        if engine == "sqlite":
            with db.engine.connect() as conn:
                live = conn.execute(sa.text("SELECT sql FROM sqlite_master WHERE name = 'nodes_live_name'")).scalar()
            assert "WHERE deleted = 0" in live  # the partial index, as 0001 made it
