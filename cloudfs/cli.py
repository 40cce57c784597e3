"""The `cloudfs` command: parses the arguments and hands each verb to its module.

Option values are checked by the parser (validate.py); whatever a verb cannot do is
raised as a UserError and printed as one line by errors.run (see errors.py for the
exit codes).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import platformdirs

from cloudfs.backend.errors import UserError

from . import errors, validate


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("cloudfs"))


def _server(args: argparse.Namespace) -> int:
    from cloudfs.server.main import ServerOptions, run

    if args.upgrade:
        from cloudfs.server.startup import open_db

        db = open_db(args.data, args.db)  # migrates, or says in one line why it cannot
        try:
            before, after = db.schema_upgraded
        finally:
            db.dispose()
        print(f"cloudfs server: database schema at revision {after}"
              + (f" (was {before})" if before != after else " (already the newest)"))
        return 0

    return run(ServerOptions(
        data_dir=args.data, host=args.host, port=args.port, db_url=args.db, store_url=args.store,
        journal_retain=args.journal_retain, prune_interval=args.prune_interval, retain_days=args.retain_days,
        collect_interval=args.collect_interval, clock_offset=args.clock_offset, log_level=args.log_level,
        log_format=args.log_format, drain_s=args.drain, db_pool=args.db_pool, quiet_summary_s=args.quiet_summary,
    ))


def _user_add(args: argparse.Namespace) -> int:
    from cloudfs.server.startup import open_db
    from cloudfs.server.users import UserExistsError, add_user

    password = _read_password(args.name) if args.password else None
    db = open_db(args.data, args.db)
    try:
        token = add_user(db, args.name, quota_bytes=args.quota, retain_days=args.retain_days)
        if password is not None:
            from cloudfs.server.auth import set_password

            set_password(db, args.name, password)
    except UserExistsError as exc:
        raise UserError(f"{exc}: pick another name") from None
    finally:
        db.dispose()
    print(f"created user {args.name!r}; its token (shown once, keep it safe):")
    print(token)
    return 0


def _read_password(name: str) -> str:
    """From the terminal (asked twice), or the first line of stdin when it is not one."""
    from cloudfs.server.auth import password_problem

    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != password:
            raise UserError("the two passwords differ: nothing was changed")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    problem = password_problem(password)
    if problem:
        raise UserError(f"{problem}: nothing was changed")
    return password


def _user_passwd(args: argparse.Namespace) -> int:
    from cloudfs.server.auth import set_password
    from cloudfs.server.startup import open_db

    password = _read_password(args.name)
    db = open_db(args.data, args.db)
    try:
        set_password(db, args.name, password)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    finally:
        db.dispose()
    print(f"password of {args.name!r} set; its browser sessions were signed out")
    return 0


def _mount(args: argparse.Namespace) -> int:
    from cloudfs.backend.session import SessionOptions, default_cache_dir

    from .account_cli import resolve_mount

    resolve_mount(args, _default_device)  # SERVER_URL, token and defaults from config.toml and `cloudfs login`
    token = args.token
    mountpoint = validate.mountpoint(args.mountpoint, allow_non_empty=args.allow_non_empty)
    cache_dir = args.cache or default_cache_dir(Path(platformdirs.user_cache_dir("cloudfs")), args.server_url, mountpoint)
    cache_dir = Path(os.path.abspath(cache_dir))
    if not args.foreground:
        return _mount_in_background(args, token, mountpoint, cache_dir)
    from cloudfs.fs.mount import MountOptions, run_foreground

    session = SessionOptions(server_url=args.server_url, token=token, cache_dir=cache_dir,
                             cache_size=args.cache_size, device=args.device, mountpoint=mountpoint,
                             delete_guard=args.delete_guard, delete_guard_fraction=args.delete_guard_fraction)
    return run_foreground(MountOptions(session=session, mountpoint=mountpoint), log_file=args.log_file)


def _mount_in_background(args: argparse.Namespace, token: str, mountpoint: Path, cache_dir: Path) -> int:
    """The common mistakes are answered here, before anything is started; whatever the
    mount process finds besides is relayed by `spawn`."""
    import trio

    from cloudfs.backend.protocol.api_client import ApiClient
    from cloudfs.backend.startup import ServerUnreachableError, claim_cache, probe_server
    from cloudfs.fs.mount import spawn

    os.close(claim_cache(cache_dir, mountpoint))  # can be created, and no other mount holds it
    errors.send_details_to(cache_dir / "mount.log")

    async def probe() -> None:
        async with ApiClient(args.server_url, token, device=args.device) as client:
            await probe_server(client)

    try:
        trio.run(probe)
    except ServerUnreachableError:
        pass  # fatal to a first mount only: the mount process knows whether its cache is warm
    argv = ["mount", args.server_url, str(mountpoint), "--cache", str(cache_dir), "--cache-size",
            str(args.cache_size), "--device", args.device, "--delete-guard", str(args.delete_guard),
            "--delete-guard-fraction", str(args.delete_guard_fraction)]
    if args.allow_non_empty:
        argv.append("--allow-non-empty")
    os.environ["CLOUDFS_TOKEN"] = token
    started = spawn(argv, mountpoint, cache_dir / "mount.log")
    for note in started.notes:
        print(f"cloudfs mount: {mountpoint}: {note}", file=sys.stderr)
    return 0


def _target(path: Path) -> Path:
    """The mountpoint as the mount keyed its control socket: absolute, symlinks resolved
    (without stat'ing a mount that may be dead)."""
    return Path(os.path.realpath(os.path.abspath(path)))


def _control(mountpoint: Path, payload: dict, timeout: float) -> dict:
    from cloudfs.backend.daily import control
    reply = control.request(mountpoint, payload, timeout=timeout)
    if reply.get("error"):
        raise UserError(f"{mountpoint}: {reply['error']}")
    return reply


def _status(args: argparse.Namespace) -> int:
    mountpoint = _target(args.mountpoint)
    reply = _control(mountpoint, {"command": "status"}, 10)
    reply.pop("ok", None)
    if args.json:
        print(json.dumps(reply))
        return 0
    print(f"{reply['mountpoint']}: {'online' if reply['online'] else 'OFFLINE'}")
    print(f"  pending uploads: {reply['pending_files']} files, {reply['pending_bytes']} bytes")
    print(f"  cursor: {reply['cursor']}   conflicts: {reply['conflicts']}")
    print(f"  cache: {reply['cache_bytes']} of {reply['cache_limit']} bytes")
    if reply.get("quota_bytes") is not None:
        print(f"  quota: {reply['used_bytes']} of {reply['quota_bytes']} bytes used (with the folders this account "
              f"shares; folders shared with it count against their owners)")
    if reply.get("shared_folders"):
        print(f"  shared folders: {reply['shared_folders']} (cloudfs shares lists them)")
    if reply.get("over_quota_files"):
        print(f"  over the account's quota: {reply['over_quota_files']} files")
    if reply.get("held_deletes"):
        print(f"  HELD: {reply['held_deletes']} deletes made here at once are not sent to other devices: "
              f"`cloudfs deletes confirm` sends them, `cloudfs deletes undo` brings the files back")
    if reply.get("token_refused"):
        print(f"  TOKEN REFUSED: {reply['token_refused']} (the server answers 401; nothing syncs until then)")
    if reply.get("last_error") and not reply["online"]:
        print(f"  last error: {reply['last_error']}")
    if reply.get("write_blocked"):
        print(f"  writing stopped: {reply['write_blocked']}")
    if reply.get("pins"):
        missing = reply.get("pinned_missing_bytes", 0)
        print(f"  pinned (kept offline): {', '.join(reply['pins'])}: {reply['pinned_bytes']} bytes"
              + (f", {missing} bytes still to fetch" if missing else ", all here"))
    if reply.get("ignored_files"):
        print(f"  ignored (kept on this device only): {reply['ignored_files']} files")
    for problem in reply.get("ignore_problems", []):
        print(f"  ignore rule skipped: {problem}")
    for t in reply.get("transfers", []):
        eta = f", {t['eta_s']:.0f}s left" if t.get("eta_s") is not None else ""
        print(f"  {'uploading' if t['direction'] == 'up' else 'downloading'} {t['path']}: {t['done_bytes']} of "
              f"{t['total_bytes']} bytes at {t['speed_bps']} bytes/s{eta}")
    return 0


def _fsck(args: argparse.Namespace) -> int:
    from . import progress

    mountpoint = _target(args.mountpoint)
    def check() -> dict:
        return _control(mountpoint, {"command": "fsck", "timeout": args.timeout}, args.timeout + 10)

    reply = check() if args.json else progress.run(mountpoint, "fsck", check, "fsck")
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


def _files(n: int) -> str:
    return f"{n} file{'' if n == 1 else 's'}"


def _unfinished(reply: dict, timeout: float) -> str:
    """Why a sync or flush did not finish: '3 files wait for upload and nothing answers at URL (...)'."""
    waiting = f"{_files(reply.get('pending_files', 0))} wait{'s' if reply.get('pending_files') == 1 else ''} for upload"
    if reply.get("offline"):
        return f"{waiting} and {reply.get('offline_reason')}"
    if reply.get("over_quota_files"):
        return (f"{_files(reply['over_quota_files'])} would go over the account's quota (they are kept here and "
                f"uploaded once room is made)")
    return f"not done after {timeout:g}s: {waiting}"


def _sync(args: argparse.Namespace) -> int:
    from . import progress

    mountpoint = _target(args.mountpoint)
    reply = progress.run(mountpoint, "sync", lambda: _control(
        mountpoint, {"command": "sync", "timeout": args.timeout, "full": args.full}, args.timeout + 10), "sync")
    if not reply.get("ok"):
        raise UserError(f"{_unfinished(reply, args.timeout)}; a later `cloudfs sync` or the mount itself retries")
    return 0


def _umount(args: argparse.Namespace) -> int:
    from cloudfs.backend.daily import control
    mountpoint = _target(args.mountpoint)
    dead = control.is_dead_mount(mountpoint) and control.mount_type(mountpoint) == control.FS_TYPE
    if not args.force:
        if dead:
            raise UserError(control.why_no_mount(mountpoint))
        reply = _control(mountpoint, {"command": "flush", "timeout": args.timeout}, args.timeout + 10)
        if not reply.get("ok"):
            raise UserError(f"{_unfinished(reply, args.timeout)}; {mountpoint} stays mounted: retry later, or "
                            f"`cloudfs umount --force {mountpoint}` unmounts now (the changes stay in the cache "
                            f"and upload after the next mount)")
    elif not dead and control.mount_type(mountpoint) != control.FS_TYPE:
        raise UserError(control.why_no_mount(mountpoint))
    done = subprocess.run(["fusermount3", "-u", *(["-z"] if dead else []), str(mountpoint)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        if "busy" in reason.lower():
            raise UserError(f"{mountpoint} is busy (a program has a file open there, or a shell is in it): "
                            f"close it and retry (`fuser -vm {mountpoint}` lists them)")
        raise UserError(f"fusermount3 could not unmount {mountpoint}: {reason}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = errors.Parser(prog="cloudfs", description="A self-hosted cloud drive as a FUSE filesystem.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")

    server = verbs.add_parser("server", help="run the metadata server in the foreground")
    server.add_argument("--data", type=Path, default=default_data_dir(), help="data directory (default: %(default)s)")
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=validate.port, default=8470, help="0 picks a free port (printed on start)")
    server.add_argument("--db", help="database URL (default: SQLite in DATA); postgresql://user:pw@host/db for PostgreSQL")
    server.add_argument("--store", help="chunk store: a directory (default DATA/chunks) or s3://BUCKET?endpoint=URL&region=R")
    server.add_argument("--journal-retain", type=validate.positive_int, default=1_000_000, metavar="N",
                        help="journal entries kept per user; older cursors get 410 and resync")
    server.add_argument("--prune-interval", type=validate.seconds, default=300.0, metavar="S", help=argparse.SUPPRESS)
    server.add_argument("--retain-days", type=validate.days, default=30.0, metavar="N",
                        help="keep old versions and deleted files this long (default 30; `user add --retain-days` "
                             "sets an account's own), then collect them and their unused chunks")
    server.add_argument("--collect-interval", type=validate.seconds, default=3600.0, metavar="S",
                        help="seconds between two runs of the collector (default 3600)")
    server.add_argument("--clock-offset", type=float, default=0.0, help=argparse.SUPPRESS)
    server.add_argument("--quiet-summary", type=validate.seconds, default=600.0, help=argparse.SUPPRESS)
    server.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info",
                        help="debug also logs each heartbeat and idle long-poll (default info counts them)")
    server.add_argument("--db-pool", type=validate.positive_int, default=12, metavar="N",
                        help="PostgreSQL connections of this server (one more listens); replicas x (N + 1) must fit "
                             "max_connections (default %(default)s)")
    server.add_argument("--drain", type=validate.seconds, default=0.0, metavar="S",
                        help="on SIGTERM, keep serving S seconds while /ready says 503 (behind a load balancer)")
    server.add_argument("--log-format", choices=["text", "json"], default="text",
                        help="json: one JSON object per line, with the request id (X-Request-Id) of each request")
    server.add_argument("--upgrade", action="store_true",
                        help="migrate the database to this release's schema and exit (the server also does it on start)")
    server.set_defaults(func=_server)

    user = verbs.add_parser("user", help="manage accounts").add_subparsers(dest="user_verb", required=True, metavar="ACTION")
    add = user.add_parser("add", help="create a user and print its token on the last line")
    add.add_argument("name", type=validate.user_name)
    where = add.add_mutually_exclusive_group()
    where.add_argument("--data", type=Path, default=default_data_dir(), help="the server's data directory")
    where.add_argument("--db", help="database URL, as for `cloudfs server --db`")
    add.add_argument("--quota", type=validate.quota, default=None, metavar="BYTES",
                     help="storage quota, in bytes or with a unit (10G; default: none)")
    add.add_argument("--retain-days", type=validate.days, default=None, metavar="N",
                     help="keep this account's history N days (default: the server's --retain-days)")
    add.add_argument("--password", action="store_true",
                     help="also set a password for the web page (read from the terminal, or from stdin)")
    add.set_defaults(func=_user_add)

    passwd = user.add_parser("passwd", help="set the password a user signs in to the web page with")
    passwd.add_argument("name", type=validate.user_name)
    where = passwd.add_mutually_exclusive_group()
    where.add_argument("--data", type=Path, default=default_data_dir(), help="the server's data directory")
    where.add_argument("--db", help="database URL, as for `cloudfs server --db`")
    passwd.set_defaults(func=_user_passwd)

    mount = verbs.add_parser("mount", help="mount the drive (returns once it answers, unless --foreground)")
    mount.add_argument("where", nargs="+", metavar="[SERVER_URL] MOUNTPOINT",
                       help="SERVER_URL defaults to config.toml's, else to the server of `cloudfs login`")
    mount.add_argument("--token", help="bearer token (default: $CLOUDFS_TOKEN, else the one `cloudfs login` saved)")
    mount.add_argument("--cache", type=Path, help="cache directory (default: one per server + mountpoint)")
    mount.add_argument("--cache-size", type=validate.size, default=None, metavar="SIZE", help="default 10G")
    mount.add_argument("--device", type=validate.device, default=None,
                       help="this device's name (default: the host name)")
    mount.add_argument("--log-file", type=Path, default=None, help=argparse.SUPPRESS)
    mount.add_argument("--allow-non-empty", action="store_true",
                       help="mount on a directory that has files in it (they are hidden while mounted)")
    mount.add_argument("--foreground", action="store_true", help="serve until unmounted or SIGINT/SIGTERM")
    mount.add_argument("--delete-guard", type=validate.count, default=None, metavar="N",
                       help="hold a burst of more than N deletes (or of more than --delete-guard-fraction of the "
                            "drive's files) until `cloudfs deletes confirm`; 0 never holds (default 1000)")
    mount.add_argument("--delete-guard-fraction", type=validate.fraction, default=0.25, metavar="F",
                       help="default 0.25")
    mount.set_defaults(func=_mount)

    umount = verbs.add_parser("umount", help="upload everything pending, then unmount")
    umount.add_argument("mountpoint", metavar="MOUNTPOINT", type=Path)
    umount.add_argument("--timeout", type=validate.seconds, default=600)
    umount.add_argument("--force", action="store_true",
                        help="unmount without waiting for uploads (they resume after the next mount); "
                             "also clears a mount whose process died")
    umount.set_defaults(func=_umount)

    status = verbs.add_parser("status", help="online/offline, pending uploads, cursor, cache use")
    status.add_argument("mountpoint", metavar="MOUNTPOINT", type=Path)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_status)

    fsck = verbs.add_parser("fsck", help="check the cache and the server's copy; repair what can be; "
                                         "exit 1 if problems are left")
    fsck.add_argument("mountpoint", metavar="MOUNTPOINT", type=Path)
    fsck.add_argument("--json", action="store_true")
    fsck.add_argument("--timeout", type=validate.seconds, default=3600)
    fsck.set_defaults(func=_fsck)

    sync = verbs.add_parser("sync", help="wait until local changes are committed and remote ones applied")
    sync.add_argument("mountpoint", metavar="MOUNTPOINT", type=Path)
    sync.add_argument("--timeout", type=validate.seconds, default=300)
    sync.add_argument("--full", action="store_true",
                      help="also compare the whole local tree with the server's and repair any drift")
    sync.set_defaults(func=_sync)

    from cloudfs import account_cli, daily_cli, devices_cli, history_cli, service, shares_cli

    history_cli.add_parsers(verbs)
    devices_cli.add_parsers(verbs)
    shares_cli.add_parsers(verbs)
    daily_cli.add_parsers(verbs)
    account_cli.add_parsers(verbs)
    service.add_parsers(verbs)
    return parser


def _default_device() -> str:
    """The host name, when it is a valid device name (else 'device')."""
    name = socket.gethostname()
    return name if validate.DEVICE_RE.match(name or "") else "device"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sub = getattr(args, "user_verb", None) or getattr(args, "service_verb", None)
    verb = args.verb + (f" {sub}" if sub else "")
    return errors.run(verb, args.func, args)
