"""What the `cloudfs` command prints when something goes wrong: in one place.

Every failure is one line on stderr, `cloudfs VERB: CAUSE: FIX`, and an exit code:

    0  done
    1  it could not be done here and now: a path, a mount, a server, a token, a cache
       directory or a port is not as it must be (the line names which, and what to do)
    2  the command line is wrong: an option's value, a missing argument or token
    3  a bug: the line gives the error's type and the log that holds its traceback
       (CLOUDFS_LOG_LEVEL=DEBUG lets the traceback through instead)

Whatever refuses raises `UserError` (backend/errors.py; `UsageError` here for the
command line); `run` catches it once. A mount process started in the background also
sends its line to the `cloudfs mount` that is waiting for it (control.tell_parent).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import stat
import sys
import traceback
from pathlib import Path
from typing import Callable, NoReturn

import platformdirs
import trio

from cloudfs.backend.daily import control
from cloudfs.backend.errors import UserError

USAGE = 2
BUG = 3
_details: Path | None = None


class UsageError(UserError):
    """The command line is wrong (exit 2)."""

    exit_code = USAGE


def details_log() -> Path:
    """Where the traceback of an unexpected error goes: the mount's log for `mount`
    (set with `send_details_to`), else cloudfs.log in the user's log directory."""
    return _details or Path(platformdirs.user_log_dir("cloudfs")) / "cloudfs.log"


def send_details_to(path: Path) -> None:
    global _details
    _details = path


def debugging() -> bool:
    return os.environ.get("CLOUDFS_LOG_LEVEL", "").upper() == "DEBUG"


def run(verb: str, func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run one verb; turn whatever it raises into one line and an exit code."""
    try:
        return func(args)
    except KeyboardInterrupt:
        print(f"cloudfs {verb}: interrupted", file=sys.stderr)
        return 130
    except Exception as raised:  # noqa: BLE001 - the one place that answers for every verb
        exc = _single(raised)
        if isinstance(exc, UserError):
            return fail(verb, str(exc), exc.exit_code)
        if debugging():
            raise
        where = _write_traceback(verb, raised)
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        return fail(verb, f"unexpected error {type(exc).__name__}{': ' + first if first else ''} "
                          f"(a bug; the traceback is in {where})", BUG)


def _logs_elsewhere() -> bool:
    """Whether the process logs somewhere other than the stderr the line was printed on
    (a background mount's log file). A server logs to stderr itself: the line once."""
    streams = (sys.stderr, sys.__stderr__)
    return any(not (isinstance(h, logging.StreamHandler) and h.stream in streams) for h in logging.getLogger().handlers)


def fail(verb: str, line: str, code: int) -> int:
    print(f"cloudfs {verb}: {line}", file=sys.stderr, flush=True)
    if _logs_elsewhere():  # a mount process logging to its own file: the log keeps the reason too
        logging.getLogger("cloudfs").error("cloudfs %s: %s", verb, line)
    control.tell_parent({"ok": False, "error": line, "exit": code})
    return code


def _single(exc: BaseException) -> BaseException:
    """trio wraps what a task raised in an ExceptionGroup; one error is that error."""
    while isinstance(exc, BaseExceptionGroup):
        leaves = [e for e in exc.exceptions if not isinstance(e, trio.Cancelled)]
        if len(leaves) != 1:
            return exc
        exc = leaves[0]
    return exc


def _write_traceback(verb: str, exc: BaseException) -> Path:
    """Append the traceback to this process's log: its stderr when that is a file (a
    server or mount started with its output in a log), else `details_log()`."""
    text = "".join(traceback.format_exception(exc))
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    entry = f"{stamp} cloudfs {verb} (pid {os.getpid()}, argv {sys.argv[1:]}):\n{text}\n"
    stderr_file = _stderr_file()
    if stderr_file is not None:
        sys.stderr.write(entry)
        sys.stderr.flush()
        return stderr_file
    for path in (details_log(), Path(f"/tmp/cloudfs-{os.getuid()}.log")):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as log:
                log.write(entry)
            return path
        except OSError:
            continue
    return Path("(nowhere: no log could be written)")


def _stderr_file() -> Path | None:
    try:
        if stat.S_ISREG(os.fstat(sys.stderr.fileno()).st_mode):
            return Path(os.readlink(f"/proc/self/fd/{sys.stderr.fileno()}"))
    except (OSError, ValueError, AttributeError):
        pass
    return None


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line that names the option (exit 2), not the
    whole usage text."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(USAGE)
