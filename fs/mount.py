"""Running a mount: pyfuse3 + the drive's background tasks in one trio nursery.

`serve` is the foreground process. `spawn` starts it in the background (a new
session, its log in the cache dir, rotated, and its stderr beside it) and waits for the one line it sends
back on a pipe (control.tell_parent): ready (online or offline, with any warning), or
the reason it could not start, which `cloudfs mount` then prints itself.
SIGINT/SIGTERM: upload what can be uploaded within a deadline, then unmount. A plain
`fusermount3 -u` ends `pyfuse3.main()`; whatever was pending stays in LMDB and is
uploaded after the next mount.
"""

from __future__ import annotations

import ctypes
import json
import logging
import logging.handlers
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import pyfuse3
import trio

from cloudfs.backend.daily import control, filestate
from cloudfs.backend.errors import OfflineError, UserError, one_error
from cloudfs.backend.sync.follower import Invalidator
from cloudfs.backend.local.fsck import run_fsck
from cloudfs.backend.session import Session, SessionOptions, open_session
from cloudfs.backend.startup import ServerUnreachableError, probe_server

from .operations import Operations
from .pagecache import ReadAround
from .readahead import raise_readahead

log = logging.getLogger("cloudfs.mount")
FLUSH_ON_SIGNAL_S = 20.0
OFFLINE_GIVE_UP_S = 10.0


@dataclass
class MountOptions:
    session: SessionOptions
    mountpoint: Path


def _invalidator(ready: threading.Event, around: ReadAround) -> Invalidator:
    """Invalidations for the follower. Not before the kernel's INIT has reached the mount
    (`ready`): the kernel then answers them ENOSYS (pyfuse3 logs an ERROR and a traceback
    for each), and it has cached nothing to forget yet. The follower may apply changes
    that early: it starts with the session, before `pyfuse3.main` handles INIT."""

    def inode(ino: int) -> None:
        if not ready.is_set():
            return
        around.invalidated(ino)
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
            return {"ok": True, "mountpoint": str(mountpoint), "server_url": session.options.server_url,
                    **await session.report()}
        if command in filestate.COMMANDS:
            return await filestate.handle(session, req)
        if command in ("sync", "flush"):
            outcome, reason = await _until_done_or_offline(
                session, (lambda: session.sync(full=bool(req.get("full")))) if command == "sync" else session.flush,
                timeout)
            status = session.status()
            reply = {**status, "ok": outcome == "done" and not status["over_quota_files"],
                     "timed_out": outcome == "timeout", "offline": outcome == "offline",
                     "server_url": session.options.server_url}
            if outcome == "offline":
                reply["offline_reason"] = reason
            return reply
        if command == "fsck":
            return await _fsck(session, timeout)
        if command == "deletes":
            if req.get("action") == "confirm":
                return {"ok": True, "released": session.confirm_deletes()}
            if req.get("action") == "undo":
                with trio.move_on_after(timeout) as scope:
                    restored = await session.undo_deletes()
                return {"ok": not scope.cancelled_caught, "restored": 0 if scope.cancelled_caught else restored}
            return {"ok": False, "error": f"unknown action {req.get('action')!r}"}
        if command == "api":
            return await session.call_api(str(req.get("method")), str(req.get("path")), params=req.get("params"),
                                          json=req.get("json"))
        return {"ok": False, "error": f"unknown command {command!r}"}
    return handle


async def _fsck(session: Session, timeout: float) -> dict[str, Any]:
    """run_fsck within `timeout`; a server that does not answer is said at once, not
    after the client's retries."""
    reason = await _why_offline(session) if session.offline else None
    if reason is None:
        try:
            with trio.move_on_after(timeout) as scope:
                report = await run_fsck(session)
        except OfflineError as exc:
            reason = await _why_offline(session) or f"the server did not answer in time ({exc})"
        else:
            if scope.cancelled_caught:
                return {"ok": False, "timed_out": True, "problems": [f"fsck did not finish in {timeout:.0f}s"]}
            return report
    return {"ok": False, "error": f"fsck needs the server, and {reason}"}


async def _until_done_or_offline(session: Session, work: Callable[[], Awaitable[None]],
                                 timeout: float) -> tuple[str, str]:
    """Run `work` (a flush or a sync) for up to `timeout`; 'done', 'timeout', or
    'offline' (with the reason) once the server has not answered for OFFLINE_GIVE_UP_S
    in a row and still does not when asked (waiting longer only makes `umount` or
    `sync` hang on what the user must be told)."""
    outcome, reason = "timeout", ""
    with trio.move_on_after(timeout):
        async with one_error(), trio.open_nursery() as nursery:
            async def run() -> None:
                nonlocal outcome
                await work()
                outcome = "done"
                nursery.cancel_scope.cancel()

            async def watch() -> None:
                nonlocal outcome, reason
                since = session.offline_since if session.offline else None
                while True:
                    await trio.sleep(0.25)
                    since = (since or session.offline_since or trio.current_time()) if session.offline else None
                    if since is None or trio.current_time() - since < OFFLINE_GIVE_UP_S:
                        continue
                    reason = await _why_offline(session)  # asks the server: the flag may be stale
                    if reason is not None:
                        break
                    since = None
                outcome = "offline"
                nursery.cancel_scope.cancel()

            nursery.start_soon(run)
            nursery.start_soon(watch)
    return outcome, reason


async def _why_offline(session: Session) -> str | None:
    """Why the server does not serve us, in a few words ('nothing answers at URL
    (connection refused)'); None when it answers after all."""
    try:
        await probe_server(session.client, timeout=3)
    except ServerUnreachableError as exc:
        return exc.cause
    except UserError as exc:
        return str(exc)
    session.offline_since = None
    return None


async def serve(options: MountOptions) -> None:
    mountpoint = options.mountpoint
    ready = threading.Event()
    around = ReadAround()
    async with open_session(options.session, _invalidator(ready, around), _StillStarting()) as session:
        ops = Operations(session.drive, around=around, on_init=ready.set)
        fuse_options = set(pyfuse3.default_options) | {"fsname=cloudfs", "subtype=cloudfs", "default_permissions"}
        if os.getuid() == 0:
            fuse_options.add("allow_other")
        pyfuse3.init(ops, str(mountpoint), fuse_options)
        unmounted = False
        try:
            async with trio.open_nursery() as nursery:
                await session.start(nursery)
                await nursery.start(around.run, session.drive.peek, lambda ino: session.drive.writers.get(ino, 0))
                await nursery.start(control.serve, control.socket_path(mountpoint),
                                    await _control_handler(session, mountpoint))
                signalled: list[int] = []
                nursery.start_soon(_on_signal, session, signalled)
                nursery.start_soon(_announce, options, session)
                await pyfuse3.main()
                unmounted = not signalled  # main() also returns after terminate(): the mount is still there
                nursery.cancel_scope.cancel()
        finally:
            pyfuse3.close(unmount=not unmounted)


async def _announce(options: MountOptions, session: Session) -> None:
    """Says the mount is ready once the kernel's INIT is answered and its read-ahead
    widened (fs/readahead.py): a file keeps the window it was opened with, so a copy
    started on the word "mounted" would have read 128 KiB at a time to its end."""
    mountpoint = options.mountpoint
    window = await trio.to_thread.run_sync(raise_readahead, mountpoint, abandon_on_cancel=True)
    log.info("mounted %s on %s (cache %s)", options.session.server_url, mountpoint, options.session.cache_dir)
    if window is not None:
        log.info("the kernel reads ahead %d KiB on %s", window, mountpoint)
    for note in session.notes:
        log.warning("%s", note)
    print(f"cloudfs mounted on {mountpoint}", flush=True)
    control.tell_parent({"ok": True, "online": not session.offline, "notes": session.notes})
    _notify_systemd(b"READY=1")


class _StillStarting:
    """Heard after each batch of a long cache migration at the start (cache_format.upgrade,
    about 2 s per GiB cached): every PERIOD seconds at most, tells systemd the start is
    still moving, so a `Type=notify` unit is not killed at its TimeoutStartSec (90 s by
    default) and restarted into the same migration, and says in the log and in
    `systemctl status` how far it got."""

    PERIOD = 10.0
    EXTEND_S = 60
    """Each word buys this long; the next comes well before it runs out."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < self.PERIOD:
            return
        self.last = now
        log.info("migrating the cache to a new format: %d of %d entries done", done, total)
        _notify_systemd(f"EXTEND_TIMEOUT_USEC={self.EXTEND_S * 1_000_000}\n"
                        f"STATUS=migrating the cache: {done} of {total} entries".encode())


def _notify_systemd(message: bytes) -> None:
    """sd_notify(3) for a `Type=notify` unit (cloudfs/service.py): one datagram on the
    socket systemd names in NOTIFY_SOCKET ('@' is the abstract namespace)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, address)
    except OSError as exc:
        log.warning("could not tell systemd we are ready on %s: %s", address, exc)


async def _on_signal(session: Session, signalled: list[int]) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            signalled.append(signum)
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


LOG_MAX_BYTES = 10 << 20
LOG_BACKUPS = 3


def run_foreground(options: MountOptions, *, log_file: Path | None = None) -> int:
    """Serve until unmounted. The log goes to stderr, or, for a mount started in the
    background, to `log_file`, rotated at LOG_MAX_BYTES (CLOUDFS_LOG_MAX_BYTES) with
    LOG_BACKUPS old files kept: a drive mounted for months must not fill the disk."""
    _tune_malloc()
    level = os.environ.get("CLOUDFS_LOG_LEVEL", "INFO").upper()  # DEBUG: every request, timed to the ms
    handler: logging.Handler
    if log_file is not None:
        max_bytes = int(os.environ.get("CLOUDFS_LOG_MAX_BYTES", LOG_MAX_BYTES))
        handler = logging.handlers.RotatingFileHandler(log_file, maxBytes=max_bytes, backupCount=LOG_BACKUPS,
                                                       encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", handlers=[handler])
    if level != "DEBUG":
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request, signed URLs included
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    trio.run(serve, options)  # what fails is reported by the CLI's one handler (cloudfs/errors.py)
    return 0


@dataclass
class Started:
    """What a background mount said once it was up."""

    online: bool
    notes: list[str]
    pid: int


STDERR_MAX_BYTES = 1 << 20


def stderr_path(log_path: Path) -> Path:
    """Where a background mount's own stderr goes (a crash's traceback, anything a library
    prints), beside its rotating log."""
    return log_path.with_name(log_path.stem + "-stderr" + log_path.suffix)


def spawn(argv: list[str], mountpoint: Path, log_path: Path, *, timeout: float = 60.0) -> Started:
    """Start `cloudfs mount ... --foreground` detached and wait for its report. Raises
    UserError with the mount process's own reason when it could not start. Its log goes
    to `log_path` (rotated by the process itself), its stderr beside it (stderr_path;
    the previous one is kept as .1 once it passed STDERR_MAX_BYTES)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    err_path = stderr_path(log_path)
    try:
        if err_path.stat().st_size > STDERR_MAX_BYTES:
            os.replace(err_path, err_path.with_name(err_path.name + ".1"))
    except FileNotFoundError:
        pass
    read_fd, write_fd = os.pipe()
    try:
        with open(err_path, "ab") as err_file:
            err_start = err_file.tell()
            proc = subprocess.Popen([sys.executable, "-m", "cloudfs", *argv, "--foreground", "--log-file", str(log_path)],
                                    stdin=subprocess.DEVNULL, stdout=err_file, stderr=err_file,
                                    start_new_session=True, pass_fds=(write_fd,),
                                    env={**os.environ, control.STATUS_FD_ENV: str(write_fd)})
        os.close(write_fd)
        write_fd = -1
        report = _read_report(read_fd, timeout)
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
    if report is None and proc.poll() is None:
        proc.terminate()
        raise UserError(f"the mount process did not come up within {timeout:.0f}s; stopped it (details in {log_path})")
    if report is None:
        code = _wait(proc)
        said = _last_line(err_path, since=err_start)
        where = err_path if said != "(nothing in the log)" else log_path
        raise UserError(f"the mount process ended (exit {code}) before it was ready: "
                        f"{said if where == err_path else _last_line(log_path)} (details in {where})")
    if not report.get("ok"):
        _wait(proc)
        failed = UserError(str(report.get("error") or "the mount process could not start"))
        failed.exit_code = int(report.get("exit", 1))
        raise failed
    return Started(online=bool(report.get("online")), notes=list(report.get("notes", [])), pid=proc.pid)


def _wait(proc: subprocess.Popen) -> int | None:
    """The exit code of a mount process that is ending; it gets 10 s, then a SIGKILL."""
    try:
        return proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


def _read_report(fd: int, timeout: float) -> dict[str, Any] | None:
    """One JSON line from the mount process; None at end of file (it exited without
    one) or after `timeout`."""
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if ready:
            data = os.read(fd, 65536)
            if not data:
                return None
            buf += data
    try:
        return json.loads(buf.split(b"\n", 1)[0])
    except ValueError:
        return {"ok": False, "error": f"the mount process sent a garbled report: {buf[:200]!r}"}


def _last_line(log_path: Path, *, since: int = 0) -> str:
    try:
        with open(log_path, "rb") as log_file:
            log_file.seek(max(since, os.path.getsize(log_path) - 4096))
            lines = [line.strip() for line in log_file.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1][:300] if lines else "(nothing in the log)"
