"""Running a mount: pyfuse3 + the drive's background tasks in one trio nursery.

`serve` is the foreground process. `spawn` starts it in the background (a new
session, output to a log file in the cache dir) and returns once the mount answers.
SIGINT/SIGTERM: upload what can be uploaded within a deadline, then unmount. A plain
`fusermount3 -u` ends `pyfuse3.main()`; whatever was pending stays in LMDB and is
uploaded after the next mount.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from cloudfs.backend import control
from cloudfs.backend.follower import Invalidator
from cloudfs.backend.fsck import run_fsck
from cloudfs.backend.session import Session, SessionOptions, open_session

from .operations import Operations

log = logging.getLogger("cloudfs.mount")
FLUSH_ON_SIGNAL_S = 20.0


@dataclass
class MountOptions:
    session: SessionOptions
    mountpoint: Path


def _invalidator(ready: threading.Event) -> Invalidator:
    """Invalidations for the follower. Not before the kernel's INIT has reached the mount
    (`ready`): the kernel then answers them ENOSYS (pyfuse3 logs an ERROR and a traceback
    for each), and it has cached nothing to forget yet. The follower may apply changes
    that early: it starts with the session, before `pyfuse3.main` handles INIT."""

    def inode(ino: int) -> None:
        if not ready.is_set():
            return
        try:
            pyfuse3.invalidate_inode(ino)
        except (FileNotFoundError, OSError):
            pass

    def entry(parent: int, name: str) -> None:
        if not ready.is_set():
            return
        try:
            pyfuse3.invalidate_entry_async(parent, os.fsencode(name), ignore_enoent=True)
        except (FileNotFoundError, OSError):
            pass

    return Invalidator(inode=inode, entry=entry)


async def _control_handler(session: Session, mountpoint: Path):  # noqa: ANN202
    async def handle(req: dict[str, Any]) -> dict[str, Any]:
        command = req.get("command")
        timeout = float(req.get("timeout", 60))
        if command == "status":
            return {"ok": True, "mountpoint": str(mountpoint), **session.status()}
        if command in ("sync", "flush"):
            with trio.move_on_after(timeout) as scope:
                await (session.sync(full=bool(req.get("full"))) if command == "sync" else session.flush())
            status = session.status()
            ok = not scope.cancelled_caught and not status["over_quota_files"]
            return {**status, "ok": ok, "timed_out": scope.cancelled_caught}
        if command == "fsck":
            with trio.move_on_after(timeout) as scope:
                report = await run_fsck(session)
            if scope.cancelled_caught:
                return {"ok": False, "timed_out": True, "problems": [f"fsck did not finish in {timeout:.0f}s"]}
            return report
        return {"ok": False, "error": f"unknown command {command!r}"}
    return handle


async def serve(options: MountOptions) -> None:
    mountpoint = options.mountpoint
    ready = threading.Event()
    async with open_session(options.session, _invalidator(ready)) as session:
        ops = Operations(session.drive, on_init=ready.set)
        fuse_options = set(pyfuse3.default_options) | {"fsname=cloudfs", "subtype=cloudfs", "default_permissions"}
        if os.getuid() == 0:
            fuse_options.add("allow_other")
        pyfuse3.init(ops, str(mountpoint), fuse_options)
        unmounted = False
        try:
            async with trio.open_nursery() as nursery:
                await session.start(nursery)
                await nursery.start(control.serve, control.socket_path(mountpoint),
                                    await _control_handler(session, mountpoint))
                nursery.start_soon(_on_signal, session)
                log.info("mounted %s on %s (cache %s)", options.session.server_url, mountpoint,
                         options.session.cache_dir)
                print(f"cloudfs mounted on {mountpoint}", flush=True)
                await pyfuse3.main()
                unmounted = True
                nursery.cancel_scope.cancel()
        finally:
            pyfuse3.close(unmount=not unmounted)


async def _on_signal(session: Session) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("%s: uploading what is pending (up to %ds), then unmounting",
                     signal.Signals(signum).name, FLUSH_ON_SIGNAL_S)
            with trio.move_on_after(FLUSH_ON_SIGNAL_S):
                await session.flush()
            pyfuse3.terminate()
            return


def _tune_malloc() -> None:
    """Each 1 MiB write makes LMDB allocate and free ~1 MiB of pages; glibc would hand
    that back to the kernel every time and fault it in again (146k faults per 256 MiB).
    Raising the mmap/trim thresholds keeps it in the heap: write CPU 1.6 -> 1.1 s/512 MiB."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 8 << 20)   # M_MMAP_THRESHOLD
        libc.mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def run_foreground(options: MountOptions) -> int:
    _tune_malloc()
    level = os.environ.get("CLOUDFS_LOG_LEVEL", "INFO").upper()  # DEBUG: every request, timed to the ms
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    if level != "DEBUG":
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request, signed URLs included
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    try:
        trio.run(serve, options)
    except Exception as exc:  # noqa: BLE001 - one clear line for the user
        log.exception("mount failed")
        print(f"cloudfs mount: {exc}", file=sys.stderr)
        return 1
    return 0


def spawn(argv: list[str], mountpoint: Path, log_path: Path, *, timeout: float = 60.0) -> int:
    """Start `cloudfs mount ... --foreground` detached; return 0 once it answers."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "cloudfs", *argv, "--foreground"], stdin=subprocess.DEVNULL,
                                stdout=log_file, stderr=log_file, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            print(f"cloudfs mount: failed (exit {proc.returncode}); see {log_path}", file=sys.stderr)
            return proc.returncode or 1
        if os.path.ismount(mountpoint):
            try:
                control.request(mountpoint, {"command": "status"}, timeout=2)
                return 0
            except OSError:
                pass
        time.sleep(0.05)
    print(f"cloudfs mount: not answering after {timeout:.0f}s; see {log_path}", file=sys.stderr)
    proc.terminate()
    return 1
