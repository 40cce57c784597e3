"""`cloudfs login | logout`, and how `cloudfs mount` finds its server, token and
defaults when the command line does not give them (config.py holds the files).

`login SERVER_URL NAME` trades the account's password for a new device token (the web
page's sign-in route); `login SERVER_URL --token T` takes a token an administrator
printed. Either is checked before anything is saved: the server must answer (`GET
/health`) and accept the token (`GET /me`); a wrong password or token, or a server that
does not answer, is one line and exit 1, with nothing written.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path
from typing import Callable

from cloudfs.backend.errors import UserError

from . import config, validate
from .errors import UsageError


def _url(text: str, what: str = "SERVER_URL") -> str:
    try:
        return validate.server_url(text)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"{what}: {exc}") from None


def resolve_mount(args: argparse.Namespace, default_device: Callable[[], str]) -> None:
    """Fill args.server_url, args.mountpoint, args.token and every default a mount needs:
    the command line first, then config.toml (the mount's section, then [defaults]),
    then the credentials of `cloudfs login`, then the built-in defaults."""
    where = list(args.where)
    if len(where) > 2:
        raise UsageError(f"too many arguments ({' '.join(where[2:])}): give [SERVER_URL] MOUNTPOINT")
    if len(where) == 1 and "://" in where[0]:
        raise UsageError(f"no MOUNTPOINT after {where[0]}: give SERVER_URL MOUNTPOINT")
    args.mountpoint = Path(where[-1])
    checks = {"server": validate.server_url, "cache_size": validate.size, "device": validate.device,
              "delete_guard": validate.count}
    defaults = config.mount_defaults(args.mountpoint, checks)
    given_url = _url(where[0]) if len(where) == 2 else None
    login = config.load_login(given_url or defaults.server)
    url = given_url or defaults.server or (login.server_url if login else None)
    if url is None:
        raise UsageError(f"no server for {args.mountpoint}: give SERVER_URL, or sign in once with "
                         f"`cloudfs login SERVER_URL`")
    args.server_url = url
    args.cache = args.cache or defaults.cache
    args.cache_size = args.cache_size or defaults.cache_size or 10 << 30
    args.device = args.device or defaults.device or default_device()
    args.delete_guard = args.delete_guard if args.delete_guard is not None else (
        defaults.delete_guard if defaults.delete_guard is not None else 1000)
    if args.token is None and not os.environ.get("CLOUDFS_TOKEN", "").strip() and login is not None:
        args.token = login.token
        return
    args.token = validate.token(args.token, hint=f"`cloudfs login {url}` saves one")


def login(args: argparse.Namespace) -> int:
    import trio

    from cloudfs.backend.protocol.api_client import ApiClient
    from cloudfs.backend.startup import probe_server

    url = args.server_url
    if args.name is not None and args.token is not None:
        raise UsageError("give a user NAME (and type its password) or --token TOKEN, not both")
    if args.name is not None:
        token = _token_for_password(url, args.name, args.device or _host_device())
    else:
        token = args.token
        if token is None:
            if not sys.stdin.isatty():
                raise UsageError("no token: pass --token TOKEN (`cloudfs user add NAME` prints one) or a user NAME "
                                 "whose password is sent on stdin; without a terminal there is no one to ask")
            token = getpass.getpass(f"token for {url} (`cloudfs user add NAME` printed it): ")
        token = validate.token(token, hint="`cloudfs user add NAME` prints one", where="the token")

    async def probe():  # noqa: ANN202
        async with ApiClient(url, token, device="login") as client:
            return await probe_server(client)

    me = trio.run(probe)  # ServerUnreachableError / UserError: one line, exit 1, nothing saved
    path = config.save_login(config.Login(server_url=url, token=token, user=me.name))
    print(f"logged in to {url} as {me.name}; `cloudfs mount MOUNTPOINT` needs nothing else now "
          f"(credentials in {path})")
    if args.name is not None:
        print(token)  # the new device token, on the last line: for scripts and other machines
    return 0


def _token_for_password(url: str, name: str, device: str) -> str:
    """Trade the account's password (asked on a terminal, else the first line of stdin)
    for a new device token labelled `device` (POST /auth/token, as the web page's
    sign-in does)."""
    import httpx

    if sys.stdin.isatty():
        password = getpass.getpass(f"password of {name} on {url}: ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise UsageError("no password given (type it, or send it on stdin)")
    try:
        r = httpx.post(f"{url.rstrip('/')}/auth/token", timeout=60,
                       json={"name": name, "password": password, "device": device})
    except httpx.HTTPError as exc:
        raise UserError(f"{url} does not answer ({exc})") from None
    if r.status_code != 201:
        try:
            detail = r.json().get("detail") or r.text
        except ValueError:
            detail = r.text
        raise UserError(f"{url} refused the sign-in of {name}: {detail} (HTTP {r.status_code})")
    return r.json()["token"]


def _host_device() -> str:
    import socket

    return validate.device(socket.gethostname() or "device")


def logout(args: argparse.Namespace) -> int:
    url = _url(args.server_url) if args.server_url else None
    forgotten = config.forget_login(url)
    if forgotten is None:
        raise UserError(f"not logged in to {url or 'any server'}: nothing to forget")
    print(f"logged out of {forgotten}: its token is no longer kept on this machine")
    return 0


def add_parsers(verbs: argparse._SubParsersAction) -> None:
    li = verbs.add_parser("login", help="sign in once: a user name and password (or a token) checked with the "
                                        "server and kept, so `cloudfs mount MOUNTPOINT` needs nothing else")
    li.add_argument("server_url", metavar="SERVER_URL", type=validate.server_url)
    li.add_argument("name", nargs="?", type=validate.user_name, metavar="NAME",
                    help="the account; its password is asked on a terminal, else read from stdin, and traded "
                         "for a new device token (printed on the last line)")
    li.add_argument("--token", help="a token instead (`cloudfs user add NAME` prints one); asked for when neither "
                                    "is given on a terminal")
    li.add_argument("--device", type=validate.device, default=None,
                    help="the new token's device name, with NAME (default: the host name)")
    li.set_defaults(func=login)

    lo = verbs.add_parser("logout", help="forget the token kept by `cloudfs login`")
    lo.add_argument("server_url", nargs="?", metavar="SERVER_URL", help="default: the last server logged in to")
    lo.set_defaults(func=logout)
