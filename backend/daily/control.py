"""The control channel between `cloudfs status|sync|umount` and a running mount.

A unix socket whose path is derived from the mountpoint alone (so the CLI finds it
from the path the user typed), speaking one JSON object per line each way. Nothing
appears in the user's tree. When no mount answers, `request` says why in words the
user can act on (no such path, nothing mounted, another filesystem, a mount whose
process died), from the path and /proc/self/mounts.

A mount started in the background also tells the `cloudfs mount` that started it how
its start went (`tell_parent`): one JSON line on a pipe whose fd is in
CLOUDFS_STATUS_FD, so the reason a mount could not start is printed by the command
the user typed, not left in a log.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Any, Awaitable, Callable

import platformdirs
import trio

from ..errors import UserError

log = logging.getLogger("cloudfs.control")
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
FS_TYPE = "fuse.cloudfs"
STATUS_FD_ENV = "CLOUDFS_STATUS_FD"


class NoMountError(UserError, OSError):
    """No cloudfs mount answers at a path; the message says why."""


def mount_type(path: Path) -> str | None:
    """The type of the filesystem mounted exactly on `path` (the topmost one), or None.
    From /proc/self/mounts, so a mount whose process died (stat fails) is seen too."""
    target = os.path.abspath(path)
    found = None
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) >= 3 and _unescape(fields[1]) == target:
                    found = fields[2]
    except OSError:
        return None
    return found


def _unescape(field: str) -> str:
    """/proc/self/mounts writes space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def is_dead_mount(path: Path) -> bool:
    """A FUSE mount whose process is gone: every request answers ENOTCONN. Asked with
    statfs, which always reaches the filesystem (stat may be answered by the kernel
    from attributes it cached)."""
    try:
        os.statvfs(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def why_no_mount(mountpoint: Path) -> str:
    """Why no cloudfs mount answers at `mountpoint`, and what to do about it."""
    try:
        os.statvfs(mountpoint)
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            return (f"the cloudfs mount on {mountpoint} has lost its process (killed or crashed): "
                    f"`cloudfs umount --force {mountpoint}` clears it; mounting again uploads what was pending")
        if exc.errno == errno.ENOENT:
            return f"{mountpoint} does not exist"
        return f"{mountpoint}: {exc.strerror}"
    if not os.path.isdir(mountpoint):
        return f"{mountpoint} is not a directory, so not a cloudfs mount"
    kind = mount_type(mountpoint)
    if kind is None:
        return f"{mountpoint} is not a cloudfs mount (nothing is mounted there)"
    if kind != FS_TYPE:
        return f"{mountpoint} is not a cloudfs mount (it is a {kind} mount)"
    return (f"the cloudfs mount on {mountpoint} does not answer on {socket_path(mountpoint)} "
            f"(mounted by another user, or with another XDG_RUNTIME_DIR?)")


def socket_path(mountpoint: Path) -> Path:
    if os.environ.get("XDG_RUNTIME_DIR"):
        runtime = Path(platformdirs.user_runtime_dir("cloudfs"))
    else:
        runtime = Path(tempfile.gettempdir()) / f"cloudfs-{os.getuid()}"
    runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
    # abspath, never resolve(): inside the mount process a stat of the mountpoint would
    # wait for our own FUSE loop and deadlock. Callers pass a resolved path.
    digest = hashlib.sha256(os.path.abspath(mountpoint).encode()).hexdigest()[:16]
    return runtime / f"{digest}.sock"


async def serve(path: Path, handler: Handler, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Answer control requests until cancelled; each connection gets its own task."""
    if path.exists():
        path.unlink()
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(16)
    task_status.started()
    try:
        async with trio.open_nursery() as nursery:
            while True:
                conn, _ = await listener.accept()
                nursery.start_soon(_answer, trio.SocketStream(conn), handler)
    finally:
        listener.close()
        try:
            path.unlink()
        except FileNotFoundError:
            pass


async def _answer(stream: trio.SocketStream, handler: Handler) -> None:
    async with stream:
        buf = b""
        while b"\n" not in buf:
            data = await stream.receive_some(65536)
            if not data:
                return
            buf += data
            if len(buf) > 1 << 20:
                return
        try:
            request = json.loads(buf.split(b"\n", 1)[0])
            reply = await handler(request)
        except Exception as exc:  # noqa: BLE001 - reported to the CLI, not fatal to the mount
            log.exception("control request failed")
            reply = {"ok": False, "error": str(exc)}
        try:
            await stream.send_all(json.dumps(reply).encode() + b"\n")
        except trio.BrokenResourceError:
            pass


def request(mountpoint: Path, payload: dict[str, Any], *, timeout: float) -> dict[str, Any]:
    """Blocking client used by the CLI. Raises NoMountError (an OSError) saying why
    when no mount answers, or when the one that does stops answering."""
    path = socket_path(mountpoint)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise NoMountError(why_no_mount(mountpoint)) from exc
        buf = b""
        try:
            sock.sendall(json.dumps(payload).encode() + b"\n")
            while b"\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    raise NoMountError(f"the cloudfs mount on {mountpoint} closed the control connection "
                                       f"before it answered (did its process just end?)")
                buf += data
        except TimeoutError as exc:
            raise NoMountError(f"the cloudfs mount on {mountpoint} did not answer within {timeout:.0f}s") from exc
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise NoMountError(f"the cloudfs mount on {mountpoint} dropped the control connection") from exc
    return json.loads(buf.split(b"\n", 1)[0])


def tell_parent(report: dict[str, Any]) -> None:
    """Tell the `cloudfs mount` that started this process in the background how the
    start went (`{"ok": true, "online": ...}` or `{"ok": false, "error": LINE}`).
    Once: the fd is closed and forgotten; without a parent waiting, nothing happens."""
    fd = os.environ.pop(STATUS_FD_ENV, None)
    if fd is None:
        return
    try:
        os.write(int(fd), json.dumps(report).encode() + b"\n")
        os.close(int(fd))
    except (OSError, ValueError):
        pass  # the parent gave up waiting; the log has the story
