"""The `cloudfs` command: argument parsing only; each verb hands off to its module."""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import subprocess
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


def parse_size(text: str) -> int:
    """'10G', '512M', '1.5GiB', '4096' -> bytes."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = value[-1:] if value[-1:] in "KMGT" else ""
    try:
        number = float(value[: len(value) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (try 10G or 512M)") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the size must be positive")
    return int(number * units[unit])


def _mount(args: argparse.Namespace) -> int:
    from cloudfs.backend.session import SessionOptions, default_cache_dir

    token = args.token or os.environ.get("CLOUDFS_TOKEN")
    if not token:
        print("cloudfs mount: no token (use --token or set CLOUDFS_TOKEN)", file=sys.stderr)
        return 2
    mountpoint = Path(os.path.abspath(args.mountpoint))
    try:
        os.statvfs(mountpoint)  # not stat(): the kernel answers that from its cache even for a dead mount
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise
        # A mount whose process died (kill -9, crash): clear it; its data is in the cache.
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
    mountpoint = mountpoint.resolve()
    if not mountpoint.is_dir():
        print(f"cloudfs mount: {mountpoint} is not a directory", file=sys.stderr)
        return 2
    if os.path.ismount(mountpoint):
        print(f"cloudfs mount: {mountpoint} is already a mount point", file=sys.stderr)
        return 1
    cache_dir = args.cache or default_cache_dir(Path(platformdirs.user_cache_dir("cloudfs")), args.server_url, mountpoint)
    if not args.foreground:
        from cloudfs.fs.mount import spawn

        argv = ["mount", args.server_url, str(mountpoint), "--cache", str(cache_dir), "--cache-size",
                str(args.cache_size), "--device", args.device]
        os.environ["CLOUDFS_TOKEN"] = token
        return spawn(argv, mountpoint, cache_dir / "mount.log")
    from cloudfs.fs.mount import MountOptions, run_foreground

    session = SessionOptions(server_url=args.server_url, token=token, cache_dir=cache_dir,
                             cache_size=args.cache_size, device=args.device)
    return run_foreground(MountOptions(session=session, mountpoint=mountpoint))


def _control(mountpoint: Path, payload: dict, timeout: float) -> dict | None:
    from cloudfs.backend import control

    try:
        return control.request(mountpoint.resolve(), payload, timeout=timeout)
    except OSError as exc:
        print(f"cloudfs: no cloudfs mount answers at {mountpoint} ({exc})", file=sys.stderr)
        return None


def _status(args: argparse.Namespace) -> int:
    reply = _control(args.mountpoint, {"command": "status"}, 10)
    if reply is None:
        return 1
    reply.pop("ok", None)
    if args.json:
        print(json.dumps(reply))
        return 0
    print(f"{reply['mountpoint']}: {'online' if reply['online'] else 'OFFLINE'}")
    print(f"  pending uploads: {reply['pending_files']} files, {reply['pending_bytes']} bytes")
    print(f"  cursor: {reply['cursor']}   conflicts: {reply['conflicts']}")
    print(f"  cache: {reply['cache_bytes']} of {reply['cache_limit']} bytes")
    if reply.get("last_error") and not reply["online"]:
        print(f"  last error: {reply['last_error']}")
    return 0


def _fsck(args: argparse.Namespace) -> int:
    reply = _control(args.mountpoint, {"command": "fsck", "timeout": args.timeout}, args.timeout + 10)
    if reply is None:
        return 1
    if args.json:
        print(json.dumps(reply))
    else:
        for line in reply.get("repaired", []):
            print(f"repaired: {line}")
        for line in reply.get("problems", []):
            print(f"PROBLEM: {line}")
        device, server = reply.get("device", {}), reply.get("server", {})
        print(f"checked {device.get('cached_chunks', 0)} cached chunks on this device and "
              f"{server.get('checked_chunks', 0)} chunks in the store: "
              f"{'no problem left' if reply.get('ok') else str(len(reply.get('problems', []))) + ' problem(s) left'}")
    return 0 if reply.get("ok") else 1


def _sync(args: argparse.Namespace) -> int:
    reply = _control(args.mountpoint, {"command": "sync", "timeout": args.timeout, "full": args.full},
                     args.timeout + 10)
    if reply is None:
        return 1
    if reply.get("over_quota_files"):
        print(f"cloudfs sync: {reply['over_quota_files']} file(s) go over the account's quota; they are kept "
              f"here and uploaded once room is made", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"cloudfs sync: not done after {args.timeout}s ({reply.get('pending_files')} files pending)",
              file=sys.stderr)
        return 1
    return 0


def _umount(args: argparse.Namespace) -> int:
    mountpoint = args.mountpoint.resolve()
    reply = _control(mountpoint, {"command": "flush", "timeout": args.timeout}, args.timeout + 10)
    if reply is None or not reply.get("ok"):
        print(f"cloudfs umount: pending changes could not be uploaded; {mountpoint} stays mounted", file=sys.stderr)
        return 1
    done = subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"cloudfs umount: {done.stderr.strip()}", file=sys.stderr)
        return 1
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

    mount = verbs.add_parser("mount", help="mount the drive (returns once it answers, unless --foreground)")
    mount.add_argument("server_url", metavar="SERVER_URL")
    mount.add_argument("mountpoint", metavar="MOUNTPOINT", type=Path)
    mount.add_argument("--token", help="bearer token (default: $CLOUDFS_TOKEN)")
    mount.add_argument("--cache", type=Path, help="cache directory (default: one per server + mountpoint)")
    mount.add_argument("--cache-size", type=parse_size, default=10 << 30, metavar="SIZE", help="default 10G")
    mount.add_argument("--device", default=socket.gethostname() or "device", help="this device's name")
    mount.add_argument("--foreground", action="store_true", help="serve until unmounted or SIGINT/SIGTERM")
    mount.set_defaults(func=_mount)

    umount = verbs.add_parser("umount", help="upload everything pending, then unmount")
    umount.add_argument("mountpoint", metavar="MOUNTPOINT", type=Path)
    umount.add_argument("--timeout", type=float, default=600)
    umount.set_defaults(func=_umount)

    status = verbs.add_parser("status", help="online/offline, pending uploads, cursor, cache use")
    status.add_argument("mountpoint", metavar="MOUNTPOINT", type=Path)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_status)

    fsck = verbs.add_parser("fsck", help="check the cache and the server's copy; repair what can be; "
                                         "exit 1 if problems are left")
    fsck.add_argument("mountpoint", metavar="MOUNTPOINT", type=Path)
    fsck.add_argument("--json", action="store_true")
    fsck.add_argument("--timeout", type=float, default=3600)
    fsck.set_defaults(func=_fsck)

    sync = verbs.add_parser("sync", help="wait until local changes are committed and remote ones applied")
    sync.add_argument("mountpoint", metavar="MOUNTPOINT", type=Path)
    sync.add_argument("--timeout", type=float, default=300)
    sync.add_argument("--full", action="store_true",
                      help="also compare the whole local tree with the server's and repair any drift")
    sync.set_defaults(func=_sync)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
