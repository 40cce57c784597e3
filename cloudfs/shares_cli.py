"""`cloudfs share` and `cloudfs shares`: sharing folders with other accounts, from a path
on a mounted drive.

    cloudfs share PATH USER [--viewer]        invite USER to the folder at PATH (editor by default)
    cloudfs shares [--json]                   the shared folders of this account, and invitations
    cloudfs shares accept ID [--at PATH]      the folder appears at PATH (default: /NAME in the drive)
    cloudfs shares decline ID
    cloudfs shares leave PATH                 a member's folder leaves their drive
    cloudfs shares remove PATH USER           the owner withdraws an invitation or removes a member
    cloudfs shares role PATH USER ROLE        the owner makes a member an editor or a viewer

Like the history commands (history_cli.py), each finds the mount holding the path (for
the commands without one: the current directory's, or the only cloudfs mount there
is) and asks the server through it, then waits until the mount shows the result.
Errors are one line on stderr, exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from cloudfs.history_cli import HistoryError, _guarded, _wait_applied, api, find_mount


def _any_mount() -> Path:
    """The current directory's mount, or the only cloudfs mount of this machine."""
    try:
        return find_mount(Path.cwd())[0]
    except HistoryError:
        pass
    with open("/proc/self/mounts") as table:
        mounts = [Path(line.split()[1].replace("\\040", " ")) for line in table if line.split()[2] == "fuse.cloudfs"]
    if len(mounts) == 1:
        return find_mount(mounts[0])[0]
    if not mounts:
        raise HistoryError("no cloudfs drive is mounted here")
    raise HistoryError(f"{len(mounts)} cloudfs drives are mounted: run this inside the one you mean")


def _folder(path: Path) -> tuple[Path, dict]:
    """The mount and the shared folder whose root is at `path`."""
    mountpoint, inside = find_mount(path)
    node = api(mountpoint, "GET", "/resolve", params={"path": inside})["node"]
    if node.get("ns") is None:
        raise HistoryError(f"{path} is not a shared folder (give the shared folder itself, not a path inside it)")
    return mountpoint, node


def _local(mountpoint: Path, drive_path: str | None) -> str | None:
    return None if drive_path is None else os.path.join(str(mountpoint), drive_path.lstrip("/"))


def share(args: argparse.Namespace) -> int:
    mountpoint, inside = find_mount(args.path)
    role = "viewer" if args.viewer else "editor"
    shared = api(mountpoint, "POST", "/shares", body={"path": inside, "user": args.user, "role": role})
    _wait_applied(mountpoint)
    print(f"{args.path} is shared with {args.user} as {role} (shared folder {shared['id']}; they accept it with "
          f"`cloudfs shares accept {shared['id']}`)")
    return 0


def shares(args: argparse.Namespace) -> int:
    action = getattr(args, "share_verb", None)
    if action is not None:
        return ACTIONS[action](args)
    mountpoint = _any_mount()
    listed = api(mountpoint, "GET", "/shares")["shares"]
    rows = [{"id": s["id"], "name": s["name"], "path": _local(mountpoint, s["path"]), "owner": s["owner"],
             "role": s["role"], "state": s["state"], "members": s["members"]} for s in listed]
    if args.json:
        print(json.dumps(rows))
        return 0
    for r in rows:
        where = r["path"] if r["path"] else f"(invited: cloudfs shares accept {r['id']})"
        others = ", ".join(f"{m['user']} ({m['role']}{', invited' if m['state'] == 'invited' else ''})"
                           for m in r["members"] if m["user"] != r["owner"])
        print(f"{r['id']:>6}  {r['name']:24}  {r['owner']:16}  {r['role']:7}  {where}" + (f"  with {others}" if others else ""))
    if not rows:
        print("no shared folders and no invitations")
    return 0


def accept(args: argparse.Namespace) -> int:
    if args.at is not None:
        mountpoint, inside = find_mount(args.at)
        body = {"path": inside}
    else:
        mountpoint, body = _any_mount(), {}
    done = api(mountpoint, "POST", f"/shares/{args.id}/accept", body=body)
    _wait_applied(mountpoint)
    print(f"{done['name']} (shared by {done['owner']}, you are {done['role']}) is at {_local(mountpoint, done['path'])}")
    return 0


def decline(args: argparse.Namespace) -> int:
    done = api(_any_mount(), "POST", f"/shares/{args.id}/decline")
    print(f"declined {done['name']} (shared by {done['owner']})")
    return 0


def leave(args: argparse.Namespace) -> int:
    mountpoint, node = _folder(args.path)
    api(mountpoint, "POST", f"/shares/{node['ns']}/leave")
    _wait_applied(mountpoint)
    print(f"left {args.path}: it is no longer in this drive")
    return 0


def remove(args: argparse.Namespace) -> int:
    mountpoint, node = _folder(args.path)
    api(mountpoint, "DELETE", f"/shares/{node['ns']}/members/{args.user}")
    print(f"{args.user} is no longer a member of {args.path}")
    return 0


def role(args: argparse.Namespace) -> int:
    mountpoint, node = _folder(args.path)
    api(mountpoint, "PATCH", f"/shares/{node['ns']}/members/{args.user}", body={"role": args.role})
    print(f"{args.user} is now {args.role} of {args.path}")
    return 0


ACTIONS = {"accept": accept, "decline": decline, "leave": leave, "remove": remove, "role": role}


def _share_id(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 2**63:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shared folder id (the number `cloudfs shares` shows)")
    return int(text)


def add_parsers(verbs: argparse._SubParsersAction) -> None:
    s = verbs.add_parser("share", help="share a folder with another account (editor, or --viewer)")
    s.add_argument("path", type=Path, metavar="PATH")
    s.add_argument("user", metavar="USER")
    s.add_argument("--viewer", action="store_true", help="they may read, not change")
    s.set_defaults(func=_guarded(share))

    p = verbs.add_parser("shares", help="shared folders and invitations; accept, decline, leave, remove, role")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_guarded(shares))
    actions = p.add_subparsers(dest="share_verb", required=False, metavar="ACTION")
    a = actions.add_parser("accept", help="accept an invitation: the folder appears in this drive")
    a.add_argument("id", type=_share_id, metavar="ID")
    a.add_argument("--at", type=Path, metavar="PATH", help="where in the drive (default: /NAME)")
    d = actions.add_parser("decline", help="decline an invitation")
    d.add_argument("id", type=_share_id, metavar="ID")
    lv = actions.add_parser("leave", help="leave a shared folder: it leaves this drive")
    lv.add_argument("path", type=Path, metavar="PATH")
    r = actions.add_parser("remove", help="(owner) withdraw an invitation or remove a member")
    r.add_argument("path", type=Path, metavar="PATH")
    r.add_argument("user", metavar="USER")
    ro = actions.add_parser("role", help="(owner) make a member an editor or a viewer")
    ro.add_argument("path", type=Path, metavar="PATH")
    ro.add_argument("user", metavar="USER")
    ro.add_argument("role", choices=["editor", "viewer"])
