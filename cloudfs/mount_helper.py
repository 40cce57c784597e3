"""`mount.fuse.cloudfs`: the helper mount(8) runs for `-t fuse.cloudfs`, so the drive can
be an /etc/fstab line and be mounted at boot (or by `mount MOUNTPOINT`):

    http://127.0.0.1:8470  /home/alice/cloudfs  fuse.cloudfs  _netdev,nofail,device=laptop  0  0

mount(8) calls it as `mount.fuse.cloudfs SOURCE MOUNTPOINT [-o OPTIONS] [-n] [-s] [-f]
[-v]`, the calling convention of mount.fuse3. SOURCE is the server URL, or `cloudfs`
for the server of `cloudfs login` / config.toml. The token is always the one `cloudfs
login` saved for the user that mounts (root, for a line mounted at boot): it never
goes in /etc/fstab, which everyone can read. OPTIONS are mount's generic ones (passed
over) and cloudfs's own: cache=DIR, cache_size=SIZE, device=NAME, delete_guard=N,
allow_non_empty (or nonempty). It runs `cloudfs mount` in the background and returns
once the drive answers, with its one-line errors and exit codes.
"""

from __future__ import annotations

import sys

GENERIC = {"defaults", "rw", "auto", "noauto", "user", "users", "nouser", "owner", "group", "_netdev", "nofail",
           "dev", "nodev", "suid", "nosuid", "exec", "noexec", "async", "atime", "noatime", "relatime",
           "strictatime", "lazytime", "diratime", "nodiratime", "silent", "loud"}
VALUED = {"cache": "--cache", "cache_size": "--cache-size", "device": "--device", "delete_guard": "--delete-guard"}
FLAGS = {"allow_non_empty": "--allow-non-empty", "nonempty": "--allow-non-empty"}


def translate(argv: list[str]) -> list[str] | None:
    """The `cloudfs` command line for a helper's arguments; None for a fake mount (-f)."""
    positional, options, fake = [], [], False
    args = iter(argv)
    for arg in args:
        if arg == "-o":
            options.extend(next(args, "").split(","))
        elif arg.startswith("-o"):
            options.extend(arg[2:].split(","))
        elif arg in ("-n", "-s", "-v"):
            continue  # no mtab, sloppy, verbose: nothing to do for us
        elif arg == "-f":
            fake = True
        elif arg.startswith("-"):
            raise SystemExit(f"mount.fuse.cloudfs: unknown flag {arg!r} (usage: mount.fuse.cloudfs SOURCE "
                             f"MOUNTPOINT [-o OPTIONS])")
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise SystemExit("mount.fuse.cloudfs: usage: mount.fuse.cloudfs SOURCE MOUNTPOINT [-o OPTIONS] "
                         "(SOURCE: the server URL, or `cloudfs` for the one `cloudfs login` saved)")
    source, mountpoint = positional
    out = ["mount", *([] if source in ("cloudfs", "default") else [source]), mountpoint]
    for option in filter(None, options):
        key, _, value = option.partition("=")
        if option in GENERIC or key in ("comment",) or key.startswith("x-"):
            continue
        if option == "ro":
            raise SystemExit("mount.fuse.cloudfs: a cloudfs drive cannot be mounted read-only (option ro)")
        if key in VALUED and value:
            out += [VALUED[key], value]
        elif option in FLAGS:
            out.append(FLAGS[option])
        else:
            raise SystemExit(f"mount.fuse.cloudfs: unknown option {option!r} (cloudfs takes cache=DIR, "
                             f"cache_size=SIZE, device=NAME, delete_guard=N, allow_non_empty)")
    return None if fake else out


def main(argv: list[str] | None = None) -> int:
    from .cli import main as cloudfs

    command = translate(sys.argv[1:] if argv is None else argv)
    return 0 if command is None else cloudfs(command)


if __name__ == "__main__":
    sys.exit(main())
