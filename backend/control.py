"""The control channel between `cloudfs status|sync|umount` and a running mount.

A unix socket whose path is derived from the mountpoint alone (so the CLI finds it
from the path the user typed), speaking one JSON object per line each way. Nothing
appears in the user's tree.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Awaitable, Callable

import platformdirs
import trio

log = logging.getLogger("cloudfs.control")
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


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
    """Blocking client used by the CLI. Raises OSError when no mount answers."""
    path = socket_path(mountpoint)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(json.dumps(payload).encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError(f"the mount at {mountpoint} closed the control connection")
            buf += data
    return json.loads(buf.split(b"\n", 1)[0])
