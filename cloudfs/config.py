"""The user's own cloudfs settings: credentials saved by `cloudfs login` and the
per-mount defaults of `config.toml`, both in the user's config directory
(`$XDG_CONFIG_HOME/cloudfs`, usually `~/.config/cloudfs`).

`credentials.toml` (0600, in a 0700 directory; written by `cloudfs login`, removed
by `cloudfs logout`):

    default = "http://127.0.0.1:8470"
    [servers."http://127.0.0.1:8470"]
    token = "..."
    user = "alice"

`config.toml` (written by hand; every key optional, the command line wins, then the
mount's own section, then `[defaults]`):

    [defaults]
    server = "http://127.0.0.1:8470"   # else the server of the last `cloudfs login`
    cache_size = "20G"
    device = "laptop"

    [mounts."/home/alice/cloudfs"]
    server = "https://drive.example.com:8470"
    cache = "/var/cache/alice-drive"
    cache_size = "50G"
    device = "laptop"
    delete_guard = 1000

A file that cannot be read or parsed, or a key that means nothing, is one line naming
the file, the key and what is wrong (exit 2).
"""

from __future__ import annotations

import argparse
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import platformdirs
import tomli_w

from .errors import UsageError

CREDENTIALS = "credentials.toml"
CONFIG = "config.toml"
MOUNT_KEYS = ("server", "cache", "cache_size", "device", "delete_guard")


def config_dir() -> Path:
    return Path(platformdirs.user_config_dir("cloudfs"))


def _read(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path} is not valid TOML ({exc}): fix or remove it") from None
    except OSError as exc:
        raise UsageError(f"{path} cannot be read ({exc.strerror}): fix its permissions") from None


def _normal_url(url: str) -> str:
    return url.strip().rstrip("/")


# --- credentials ---

@dataclass
class Login:
    server_url: str
    token: str
    user: str = ""


def load_login(server_url: str | None = None) -> Login | None:
    """The saved credentials for `server_url`, or for the default server when None."""
    path = config_dir() / CREDENTIALS
    data = _read(path)
    servers = data.get("servers", {})
    url = _normal_url(server_url) if server_url else data.get("default")
    if not isinstance(servers, dict) or not url:
        return None
    entry = servers.get(url)
    if not isinstance(entry, dict) or not isinstance(entry.get("token"), str):
        return None
    return Login(server_url=url, token=entry["token"], user=str(entry.get("user", "")))


def save_login(login: Login) -> Path:
    """Add (or replace) these credentials and make their server the default; the file is
    written whole, then renamed over the old one, 0600 from its first byte."""
    directory = config_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / CREDENTIALS
    data = _read(path)
    servers = data.get("servers") if isinstance(data.get("servers"), dict) else {}
    url = _normal_url(login.server_url)
    servers[url] = {"token": login.token, "user": login.user}
    _write_private(path, {"default": url, "servers": servers})
    return path


def forget_login(server_url: str | None) -> str | None:
    """Remove the credentials for `server_url` (the default server when None); the URL
    forgotten, or None when there were none."""
    path = config_dir() / CREDENTIALS
    data = _read(path)
    servers = data.get("servers") if isinstance(data.get("servers"), dict) else {}
    url = _normal_url(server_url) if server_url else data.get("default")
    if not url or url not in servers:
        return None
    del servers[url]
    if data.get("default") == url:
        data.pop("default", None)
        if servers:
            data["default"] = next(iter(servers))
    data["servers"] = servers
    if servers:
        _write_private(path, data)
    else:
        path.unlink()
    return url


def _write_private(path: Path, data: dict[str, Any]) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, tomli_w.dumps(data).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)


# --- per-mount defaults ---

@dataclass
class MountDefaults:
    server: str | None = None
    cache: Path | None = None
    cache_size: int | None = None
    device: str | None = None
    delete_guard: int | None = None


def mount_defaults(mountpoint: Path, checks: dict[str, Callable[[str], Any]]) -> MountDefaults:
    """What config.toml says for a mount on `mountpoint` (its section over [defaults]).
    `checks` are the command line's own validators, so a bad value reads the same."""
    path = config_dir() / CONFIG
    data = _read(path)
    unknown = set(data) - {"defaults", "mounts"}
    if unknown:
        raise UsageError(f"{path}: unknown section {sorted(unknown)[0]!r} (there are [defaults] and "
                         f"[mounts.\"/path\"])")
    merged: dict[str, Any] = {}
    sections = [("defaults", data.get("defaults", {}))]
    mounts = data.get("mounts", {})
    for key, section in (mounts.items() if isinstance(mounts, dict) else []):
        if os.path.abspath(os.path.expanduser(key)) == os.path.abspath(mountpoint):
            sections.append((f"mounts.{key!r}", section))
    for name, section in sections:
        if not isinstance(section, dict):
            raise UsageError(f"{path}: [{name}] must be a table of settings")
        for key, value in section.items():
            if key not in MOUNT_KEYS:
                raise UsageError(f"{path}: [{name}] has unknown setting {key!r} (known: {', '.join(MOUNT_KEYS)})")
            try:
                merged[key] = checks[key](str(value)) if key in checks else value
            except argparse.ArgumentTypeError as exc:
                raise UsageError(f"{path}: [{name}] {key}: {exc}") from None
    if "cache" in merged:
        merged["cache"] = Path(os.path.expanduser(str(merged["cache"])))
    return MountDefaults(**merged)
