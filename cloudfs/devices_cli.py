"""`cloudfs devices`: the account's devices from a terminal, through
the same server routes as the web page's Devices view (server/auth_api.py).

- `cloudfs devices [list] [PATH]` lists every device token and browser session of the
  account that mounted PATH (default: the current directory), with when and as what
  each was last seen; `cloudfs devices add LABEL` makes a token for a new device;
  `cloudfs devices revoke ID` revokes one (that device gets 401 from then on and says
  so in `cloudfs status`). They ask through the mount, with its token, as
  history_cli.py does; the mount's own token is marked and is revoked only with --force.
(`cloudfs login SERVER_URL NAME`, in account_cli.py, makes a device token from the
account's password.)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from cloudfs import validate
from cloudfs.history_cli import HistoryError, _guarded, api, find_mount


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return dt.datetime.fromtimestamp(seconds).astimezone().isoformat(sep=" ", timespec="seconds")


def devices(args: argparse.Namespace) -> int:
    words = list(args.words)
    action = words.pop(0) if words and words[0] in ("list", "add", "revoke") else "list"
    if action == "list":
        if len(words) > 1:
            raise HistoryError("usage: cloudfs devices [list] [PATH] [--json]")
        return _list(Path(words[0]) if words else Path.cwd(), as_json=args.json)
    if not words or len(words) > 2:
        raise HistoryError(f"usage: cloudfs devices {action} {'LABEL' if action == 'add' else 'ID'} [PATH]")
    mountpoint, _ = find_mount(Path(words[1]) if len(words) > 1 else Path.cwd())
    if action == "add":
        try:
            label = validate.device(words[0])
        except argparse.ArgumentTypeError as exc:
            raise HistoryError(str(exc)) from None
        made = api(mountpoint, "POST", "/devices", body={"label": label})
        print(f"a token for {label!r} (id {made['id']}); it is shown once. On that device, run:")
        print(f"cloudfs mount SERVER_URL MOUNTPOINT --device {label} --token {made['token']}")
        print(made["token"])
        return 0
    listed = {d["id"]: d for d in api(mountpoint, "GET", "/devices")["devices"]}
    target = listed.get(words[0])
    if target is None:
        raise HistoryError(f"no device or session with id {words[0]!r} (`cloudfs devices` lists them)")
    if target["current"] and not args.force:
        raise HistoryError(f"{words[0]} is the token this mount uses: the mount would be refused from now on "
                           f"(add --force to do it anyway)")
    api(mountpoint, "DELETE", f"/devices/{words[0]}")
    print(f"revoked {target['kind']} {target['label'] or words[0]!r}: the server refuses it from now on")
    return 0


def _list(path: Path, *, as_json: bool) -> int:
    mountpoint, _ = find_mount(path)
    rows = api(mountpoint, "GET", "/devices")["devices"]
    if as_json:
        print(json.dumps(rows))
        return 0
    print(f"{'id':16}  {'kind':7}  {'name':20}  {'last seen':25}  {'as':16}  since")
    for d in rows:
        name = (d["label"] or "(first token)" if d["kind"] == "device" else d["label"] or "browser")
        mark = "  (this mount)" if d["current"] else ""
        print(f"{d['id']:16}  {d['kind']:7}  {name[:20]:20}  {_when(d['last_seen_at']):25}  "
              f"{(d['last_device'] or '-')[:16]:16}  {_when(d['created_at'])}{mark}")
    return 0


def add_parsers(verbs: argparse._SubParsersAction) -> None:
    d = verbs.add_parser("devices", help="the account's devices and browser sessions: list, add LABEL, revoke ID")
    d.add_argument("words", nargs="*", metavar="[list|add LABEL|revoke ID] [PATH]")
    d.add_argument("--json", action="store_true")
    d.add_argument("--force", action="store_true", help="revoke even the token this mount uses")
    d.set_defaults(func=_guarded(devices))
