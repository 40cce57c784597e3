"""`cloudfs pin | unpin | ls`: files kept offline and what each file is doing.

Like the history commands, each finds the mount that holds the path (history_cli's
`find_mount`) and asks it over the control socket; nothing asks the server. A path
that is not on a mounted drive, or not in it, is one line and exit 1, and nothing
changes: `pin` and `unpin` resolve every path before they change anything, and a pin
that would not fit in the cache pins nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cloudfs.backend.daily import control
from cloudfs.backend.errors import UserError

from . import history_cli, progress


def _find(path: Path) -> tuple[Path, str]:
    try:
        return history_cli.find_mount(path)
    except history_cli.HistoryError as exc:
        raise UserError(f"{exc}: give a path inside a mounted drive (`cloudfs mount` shows where)") from None


def _on_one_mount(paths: list[Path]) -> tuple[Path, list[str]]:
    found = [_find(p) for p in paths]
    mounts = {m for m, _ in found}
    if len(mounts) > 1:
        raise UserError(f"the paths are on {len(mounts)} different drives ({', '.join(sorted(map(str, mounts)))}): "
                        f"give the paths of one drive at a time")
    return found[0][0], [inside for _, inside in found]


def _ask(mountpoint: Path, payload: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    reply = control.request(mountpoint, payload, timeout=timeout)
    if not reply.get("ok"):
        raise UserError(reply.get("error") or f"the mount on {mountpoint} refused it")
    return reply


def pin(args: argparse.Namespace) -> int:
    mountpoint, inside = _on_one_mount(args.paths)
    reply = _ask(mountpoint, {"command": "pin", "paths": inside, "shown": [str(p) for p in args.paths]})
    summary = (f"pinned {len(inside)} path(s) on {mountpoint}: {reply['pinned_bytes']} bytes of pinned files "
               f"kept offline")
    if not (args.wait or progress.on_terminal()):
        print(f"{summary}; fetching in the background (`cloudfs status` shows it)")
        return 0
    kept = progress.run(mountpoint, "pin", lambda: control.request(
        mountpoint, {"command": "pins_kept", "timeout": args.timeout}, timeout=args.timeout + 10), "pin")
    if not kept.get("ok"):
        why = kept.get("pin_error") or (f"not done after {args.timeout:g}s" if kept.get("timed_out") else "")
        raise UserError(f"pinned, but {kept.get('pinned_missing_bytes', 0)} bytes are not here yet"
                        f"{': ' + why if why else ''} (they are fetched as soon as the server answers)")
    print(f"{summary}; every byte is here")
    return 0


def unpin(args: argparse.Namespace) -> int:
    mountpoint, inside = _on_one_mount(args.paths)
    reply = _ask(mountpoint, {"command": "unpin", "paths": inside, "shown": [str(p) for p in args.paths]})
    print(f"unpinned {reply['unpinned']} path(s) on {mountpoint}: their bytes may be evicted again")
    return 0


def _size(n: int) -> str:
    for unit in ("B", "K", "M", "G", "T"):
        if n < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def ls(args: argparse.Namespace) -> int:
    mountpoint, inside = _find(args.path)
    entries = _ask(mountpoint, {"command": "ls", "path": inside, "shown": str(args.path)})["entries"]
    if args.json:
        print(json.dumps(entries))
        return 0
    for e in entries:
        detail = ""
        if "pending_bytes" in e:
            detail = f"  ({_size(e.get('uploaded_bytes', 0))} of {_size(e['pending_bytes'])} sent)" \
                if e.get("uploaded_bytes") else f"  ({_size(e['pending_bytes'])} to send)"
        elif e["kind"] == "file" and e["state"] in ("partly-cached", "pinning"):
            detail = f"  ({_size(e['cached_bytes'])} here)"
        name = e["name"] + ("/" if e["kind"] == "dir" else "")
        print(f"{e['state']:15} {_size(e['size']):>7}  {name}{detail}")
    return 0


def add_parsers(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("pin", help="keep files or directories (and what comes into them) offline on this device")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    p.add_argument("--wait", action="store_true", help="return once every pinned byte is here (a terminal always "
                                                       "waits, with a progress bar)")
    p.add_argument("--timeout", type=float, default=3600, help=argparse.SUPPRESS)
    p.set_defaults(func=pin)

    u = verbs.add_parser("unpin", help="let pinned files be evicted from the cache again")
    u.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    u.set_defaults(func=unpin)

    lp = verbs.add_parser("ls", help="what each file is doing here: online-only, cached, pinned, pending upload ...")
    lp.add_argument("path", nargs="?", type=Path, default=Path("."), metavar="PATH")
    lp.add_argument("--json", action="store_true", help="a JSON list of objects (name, state, size, ...)")
    lp.set_defaults(func=ls)
