"""`cloudfs service install | uninstall MOUNTPOINT`: the drive comes back with the user's
session (a systemd user unit), and the fstab helper for `mount -t fuse.cloudfs`.

The unit runs `cloudfs mount MOUNTPOINT --foreground` with the server resolved at
install time and the token read at each start from the credentials `cloudfs login`
saved (never written into the unit). It is `Type=notify`: the mount tells systemd it
is ready once it answers (fs/mount.py, READY=1 on NOTIFY_SOCKET), so units ordered
after it find the drive mounted. `systemctl --user stop` sends SIGTERM: the mount
uploads what is pending for up to 20 s, then unmounts and exits 0. The unit is
written to `$XDG_CONFIG_HOME/systemd/user` (~/.config/systemd/user); `--now` also
runs `systemctl --user daemon-reload` and `enable --now`. For a drive mounted at boot
before anyone logs in: `loginctl enable-linger USER`, or an /etc/fstab line
(README, "Start with the machine").
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import platformdirs

from cloudfs.backend.errors import UserError

from . import validate


def unit_dir() -> Path:
    return Path(platformdirs.user_config_dir("systemd")) / "user"


def escape_path(path: Path) -> str:
    """`systemd-escape --path`: /home/alice/my drive -> home-alice-my\\x20drive."""
    text = str(path).strip("/")
    if not text:
        return "-"  # the root
    out = []
    for i, byte in enumerate(text.encode()):
        char = chr(byte)
        if char == "/":
            out.append("-")
        elif char.isascii() and (char.isalnum() or char in "_:" or (char == "." and i > 0)):
            out.append(char)
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


def unit_name(mountpoint: Path) -> str:
    return f"cloudfs-{escape_path(mountpoint)}.service"


def _quote(arg: str) -> str:
    """One word of an ExecStart= line (systemd.service(5), "Command lines")."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if arg and not any(c in arg for c in ' \t"\'\\;'):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unit_text(mountpoint: Path, server_url: str) -> str:
    command = [sys.executable, "-m", "cloudfs", "mount", server_url, str(mountpoint), "--foreground"]
    return f"""[Unit]
Description=cloudfs drive on {str(mountpoint).replace('%', '%%')}

[Service]
Type=notify
ExecStart={' '.join(_quote(a) for a in command)}
Restart=on-failure
RestartSec=10
TimeoutStopSec=60

[Install]
WantedBy=default.target
"""


def _systemctl(*args: str) -> None:
    if shutil.which("systemctl") is None:
        raise UserError("systemctl is not installed here: start the drive with `cloudfs mount` instead")
    done = subprocess.run(["systemctl", "--user", *args], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        raise UserError(f"systemctl --user {' '.join(args)} failed: {reason} (is there a user session with "
                        f"systemd? the unit file is in place: enable it later)")


def install(args: argparse.Namespace) -> int:
    from . import config
    from .account_cli import _url

    mountpoint = Path(os.path.abspath(os.path.expanduser(args.mountpoint)))
    defaults = config.mount_defaults(mountpoint, {"server": validate.server_url})
    url = _url(args.server_url) if args.server_url else defaults.server
    login = config.load_login(url)
    if login is None:
        raise UserError(f"no saved sign-in for {url or 'any server'}: run `cloudfs login "
                        f"{url or 'SERVER_URL'}` first (the service reads the token from there at each start)")
    if not mountpoint.is_dir():
        raise UserError(f"{mountpoint} is not a directory: create it first (mkdir -p {mountpoint})")
    path = unit_dir() / unit_name(mountpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(unit_text(mountpoint, login.server_url))
    name = path.name
    if args.now:
        _systemctl("daemon-reload")
        _systemctl("enable", "--now", name)
        print(f"{name} is enabled and started: {mountpoint} is mounted now and with every session")
    else:
        print(f"wrote {path}; start it now and with every session: systemctl --user daemon-reload && "
              f"systemctl --user enable --now {name}")
    return 0


def uninstall(args: argparse.Namespace) -> int:
    mountpoint = Path(os.path.abspath(os.path.expanduser(args.mountpoint)))
    path = unit_dir() / unit_name(mountpoint)
    if not path.exists():
        raise UserError(f"no cloudfs service for {mountpoint} ({path} does not exist)")
    if args.now:
        _systemctl("disable", "--now", path.name)
    path.unlink()
    print(f"removed {path}" + ("" if args.now else f" (if it was enabled: systemctl --user disable {path.name})"))
    return 0


def add_parsers(verbs: argparse._SubParsersAction) -> None:
    service = verbs.add_parser("service", help="mount the drive with every session (systemd user unit)")
    actions = service.add_subparsers(dest="service_verb", required=True, metavar="ACTION")
    add = actions.add_parser("install", help="write a systemd user unit that mounts MOUNTPOINT")
    add.add_argument("mountpoint", metavar="MOUNTPOINT", type=Path)
    add.add_argument("--server-url", metavar="SERVER_URL", help="default: config.toml's, else the last login's")
    add.add_argument("--now", action="store_true", help="also enable and start it (systemctl --user)")
    add.set_defaults(func=install)
    remove = actions.add_parser("uninstall", help="remove the unit of MOUNTPOINT")
    remove.add_argument("mountpoint", metavar="MOUNTPOINT", type=Path)
    remove.add_argument("--now", action="store_true", help="also stop and disable it first")
    remove.set_defaults(func=uninstall)
