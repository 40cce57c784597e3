"""The `cloudfs` command: argument parsing only; each verb hands off to its module."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import platformdirs


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("cloudfs"))


def _server(args: argparse.Namespace) -> int:
    from cloudfs.server.main import ServerOptions, run

    return run(ServerOptions(
        data_dir=args.data, host=args.host, port=args.port, db_url=args.db, store_url=args.store,
        journal_retain=args.journal_retain, prune_interval=args.prune_interval,
    ))


def _user_add(args: argparse.Namespace) -> int:
    from cloudfs.server.db import open_database
    from cloudfs.server.users import UserExistsError, add_user

    db = open_database(args.data, args.db)
    try:
        token = add_user(db, args.name, quota_bytes=args.quota)
    except (UserExistsError, ValueError) as exc:
        print(f"cloudfs user add: {exc}", file=sys.stderr)
        return 1
    finally:
        db.dispose()
    print(f"created user {args.name!r}; its token (shown once, keep it safe):")
    print(token)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cloudfs", description="A self-hosted cloud drive as a FUSE filesystem.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")

    server = verbs.add_parser("server", help="run the metadata server in the foreground")
    server.add_argument("--data", type=Path, default=default_data_dir(), help="data directory (default: %(default)s)")
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, default=8470, help="0 picks a free port (printed on start)")
    server.add_argument("--db", help="database URL (default: SQLite in DATA); postgresql://user:pw@host/db for PostgreSQL")
    server.add_argument("--store", help="chunk store: a directory (default DATA/chunks) or s3://BUCKET?endpoint=URL&region=R")
    server.add_argument("--journal-retain", type=int, default=1_000_000, metavar="N",
                        help="journal entries kept per user; older cursors get 410 and resync")
    server.add_argument("--prune-interval", type=float, default=300.0, metavar="S", help=argparse.SUPPRESS)
    server.set_defaults(func=_server)

    user = verbs.add_parser("user", help="manage accounts").add_subparsers(dest="user_verb", required=True, metavar="ACTION")
    add = user.add_parser("add", help="create a user and print its token on the last line")
    add.add_argument("name")
    where = add.add_mutually_exclusive_group()
    where.add_argument("--data", type=Path, default=default_data_dir(), help="the server's data directory")
    where.add_argument("--db", help="database URL, as for `cloudfs server --db`")
    add.add_argument("--quota", type=int, default=None, metavar="BYTES", help="storage quota (default: none)")
    add.set_defaults(func=_user_add)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
