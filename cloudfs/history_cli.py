"""`cloudfs versions | restore | trash | undelete`: getting things back, from a path on a
mounted drive.

Each command finds the mount that holds the path (the nearest mount point above it
that answers on its control socket) and asks the server through that mount, with its
token; a restore then waits until the mount shows the result. Errors are one line on
stderr and exit 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

from cloudfs.backend.daily import control
class HistoryError(Exception):
    """A message for the user; the command exits 1."""


def find_mount(path: Path) -> tuple[Path, str]:
    """The mount point holding `path` and the path inside the drive ('/' its root)."""
    absolute = Path(os.path.abspath(path))
    for candidate in (absolute, *absolute.parents):
        if not os.path.ismount(candidate):
            continue
        try:
            control.request(candidate, {"command": "progress"}, timeout=10)  # cheap: no walk over the tree
        except OSError:
            continue
        inside = absolute.relative_to(candidate)
        return candidate, "/" + "/".join(inside.parts)
    raise HistoryError(f"{path} is not on a mounted cloudfs drive")


def api(mountpoint: Path, method: str, route: str, *, params: dict | None = None, body: Any = None) -> dict:
    reply = control.request(mountpoint, {"command": "api", "method": method, "path": route, "params": params,
                                         "json": body}, timeout=600)
    if not reply.get("ok"):
        detail = (reply.get("body") or {}).get("detail") or reply.get("error") or "failed"
        status = reply.get("status")
        raise HistoryError(f"{detail}" + (f" (HTTP {status})" if status else ""))
    return reply["body"]


def parse_time(text: str) -> float:
    """Unix seconds, an absolute date ("2026-12-05 14:00") or a relative one ("2 hours ago")."""
    try:
        return float(text)
    except ValueError:
        pass
    import dateparser

    moment = dateparser.parse(text, settings={"PREFER_DATES_FROM": "past", "RETURN_AS_TIMEZONE_AWARE": True})
    if moment is None:
        raise HistoryError(f"--at {text!r}: not a time (try '2026-12-05 14:00', '2 hours ago' or unix seconds)")
    return moment.timestamp()


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return dt.datetime.fromtimestamp(seconds).astimezone().isoformat(sep=" ", timespec="seconds")


def _wait_applied(mountpoint: Path) -> None:
    reply = control.request(mountpoint, {"command": "sync", "timeout": 120}, timeout=130)
    if not reply.get("ok"):
        print(f"cloudfs: the server has it; {mountpoint} is still catching up", file=sys.stderr)


def _node(mountpoint: Path, inside: str) -> dict:
    return api(mountpoint, "GET", "/history/lookup", params={"path": inside})["node"]


def versions(args: argparse.Namespace) -> int:
    mountpoint, inside = find_mount(args.path)
    node = _node(mountpoint, inside)
    listed = api(mountpoint, "GET", f"/files/{node['id']}/versions")["versions"]
    rows = [{"rev": v["rev"], "size": v["size"], "time": v["created_at"], "device": v["device"],
             "mtime_ns": v["mtime_ns"], "current": v["rev"] == node["rev"] and not node["deleted"]} for v in listed]
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'rev':>5}  {'size':>12}  {'time':25}  device")
    for r in rows:
        print(f"{r['rev']:>5}  {r['size']:>12}  {_when(r['time']):25}  {r['device']}{'  (current)' if r['current'] else ''}")
    return 0


def restore(args: argparse.Namespace) -> int:
    mountpoint, inside = find_mount(args.path)
    if args.rev is not None:
        node = _node(mountpoint, inside)
        done = api(mountpoint, "POST", f"/files/{node['id']}/restore", body={"rev": args.rev})
        print(f"{args.path}: revision {args.rev} is current again (as revision {done['version']['rev']})")
    else:
        at = parse_time(args.at)
        with _progress(f"putting {args.path} back as it was at {_when(at)}"):
            report = api(mountpoint, "POST", "/restore", body={"path": inside, "at": at})
            _wait_applied(mountpoint)
        print(f"{args.path} is as it was at {_when(at)}: {report['reverted']} file(s) reverted, "
              f"{report['undeleted']} brought back, {report['moved']} moved back, {report['trashed']} made since "
              f"moved to the trash (undo: cloudfs restore {args.path} --at '{_when(_now())}')")
        return 0
    _wait_applied(mountpoint)
    return 0


def trash(args: argparse.Namespace) -> int:
    words = list(args.words)
    if words and words[0] == "empty":
        mountpoint, inside = find_mount(Path(words[1]) if len(words) > 1 else Path.cwd())
        purged = api(mountpoint, "DELETE", "/trash", params={"path": inside})["purged"]
        print(f"purged {purged} deleted node(s) below {inside}; their space is reclaimed by the next collection")
        return 0
    if len(words) > 1:
        raise HistoryError("usage: cloudfs trash [DIR] [--json] | cloudfs trash empty [DIR]")
    mountpoint, inside = find_mount(Path(words[0]) if words else Path.cwd())
    entries = api(mountpoint, "GET", "/trash", params={"path": inside})["entries"]
    rows = [{"path": e["path"], "deleted_at": e["deleted_at"], "device": e["device"], "kind": e["node"]["kind"],
             "size": e["node"]["size"], "inside": e["inside"]} for e in entries]
    if args.json:
        print(json.dumps(rows))
        return 0
    for r in rows:
        extra = f" (and {r['inside']} inside)" if r["inside"] else ""
        print(f"{_when(r['deleted_at']):25}  {r['device'] or '-':16}  {r['path']}{'/' if r['kind'] == 'dir' else ''}{extra}")
    if not rows:
        print(f"nothing deleted below {inside}")
    return 0


def undelete(args: argparse.Namespace) -> int:
    failed = 0
    mountpoint = None
    for path in args.paths:
        try:
            mountpoint, inside = find_mount(path)
            node = _node(mountpoint, inside)
            if not node["deleted"]:
                raise HistoryError(f"{path} is not deleted")
            back = api(mountpoint, "POST", f"/trash/{node['id']}/undelete")["node"]
            where = "" if back["name"] == node["name"] else f" as {back['name']!r} (the name is taken)"
            print(f"{path}: brought back{where}")
        except HistoryError as exc:
            print(f"cloudfs undelete: {path}: {exc}", file=sys.stderr)
            failed += 1
    if mountpoint is not None:
        _wait_applied(mountpoint)
    return 1 if failed else 0


def deletes(args: argparse.Namespace) -> int:
    mountpoint, _ = find_mount(args.path)
    reply = control.request(mountpoint, {"command": "deletes", "action": args.action, "timeout": 600}, timeout=610)
    if not reply.get("ok"):
        raise HistoryError(reply.get("error") or "did not finish")
    if args.action == "confirm":
        print(f"{reply['released']} held delete(s) go to the other devices now")
    else:
        print(f"{reply['restored']} deleted node(s) brought back from the server; the deletes will not be sent")
    return 0


def _now() -> float:
    import time

    return time.time()


class _progress:
    """A spinner on a terminal (rich); nothing in a pipe."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.status = None

    def __enter__(self) -> "_progress":
        if sys.stdout.isatty():
            from rich.console import Console

            self.status = Console().status(self.what + " ...")
            self.status.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.status is not None:
            self.status.__exit__(*exc)


def add_parsers(verbs: argparse._SubParsersAction) -> None:
    v = verbs.add_parser("versions", help="list a file's versions (rev, size, time, device)")
    v.add_argument("path", type=Path, metavar="PATH")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=_guarded(versions))

    r = verbs.add_parser("restore", help="make an old version current, or put a directory back as it was")
    r.add_argument("path", type=Path, metavar="PATH")
    which = r.add_mutually_exclusive_group(required=True)
    which.add_argument("--rev", type=int, metavar="N", help="this revision of a file becomes current (a new version)")
    which.add_argument("--at", metavar="TIME", help="as it was then: '2026-12-05 14:00', '2 hours ago', unix seconds")
    r.set_defaults(func=_guarded(restore))

    t = verbs.add_parser("trash", help="list what was deleted below DIR; `cloudfs trash empty [DIR]` purges it")
    t.add_argument("words", nargs="*", metavar="DIR")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=_guarded(trash))

    u = verbs.add_parser("undelete", help="bring deleted files or directories back where they were")
    u.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    u.set_defaults(func=_guarded(undelete))

    d = verbs.add_parser("deletes", help="a mass delete held back by the guard: send it (confirm) or bring the "
                                         "files back here (undo)")
    d.add_argument("action", choices=["confirm", "undo"])
    d.add_argument("path", nargs="?", type=Path, default=Path.cwd(), metavar="PATH", help="the drive (default: .)")
    d.set_defaults(func=_guarded(deletes))


def _guarded(command):  # noqa: ANN001, ANN202
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except HistoryError as exc:
            print(f"cloudfs {args.verb}: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"cloudfs {args.verb}: no cloudfs mount answers ({exc})", file=sys.stderr)
            return 1
    return run
