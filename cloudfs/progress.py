"""Live progress bars for `cloudfs sync | pin | fsck` on a terminal (rich), and
nothing at all in a pipe: scripts read the same quiet, machine-readable output as
before.

The command's own request to the mount blocks until the work is done, so it runs in
a worker thread while the main thread asks the mount for `progress` (a cheap control
command: pending bytes, pinned bytes still to fetch, transfers, fsck's count) every
POLL_S and redraws. Ctrl-C stops the watching; the mount carries on.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any, Callable

from cloudfs.backend.daily import control
POLL_S = 0.2


def on_terminal() -> bool:
    return sys.stdout.isatty()


def _measure(kind: str, reply: dict[str, Any]) -> tuple[float, float | None, str]:
    """(left, total or None, what) from a `progress` reply, for one kind of bar."""
    if kind == "fsck":
        fsck = reply.get("fsck") or {}
        total = fsck.get("total")
        return max(0, (total or 0) - fsck.get("done", 0)), total, fsck.get("phase", "checking")
    downloads = [t for t in reply.get("transfers", []) if t["direction"] == "down"]
    uploads = [t for t in reply.get("transfers", []) if t["direction"] == "up"]
    if kind == "pin":
        return reply.get("pinned_missing_bytes", 0), None, "fetching pinned files"
    left = reply.get("pending_bytes", 0) + reply.get("pinned_missing_bytes", 0)
    busy = uploads[0]["path"] if uploads else downloads[0]["path"] if downloads else "syncing"
    return left, None, busy


def run(mountpoint: Path, kind: str, work: Callable[[], dict[str, Any]], title: str) -> dict[str, Any]:
    """Run `work` (a blocking control request); on a terminal, show a bar meanwhile."""
    if not on_terminal():
        return work()
    from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeRemainingColumn, TransferSpeedColumn)

    outcome: dict[str, Any] = {}

    def worker() -> None:
        try:
            outcome["reply"] = work()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            outcome["error"] = exc

    thread = threading.Thread(target=worker, name=f"cloudfs-{kind}", daemon=True)
    amounts = [MofNCompleteColumn()] if kind == "fsck" else [DownloadColumn(), TransferSpeedColumn()]
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), *amounts, TimeRemainingColumn(),
               TextColumn("{task.fields[what]}")]
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(title, total=None, what="")
        first: float | None = None
        thread.start()
        while thread.is_alive():
            thread.join(POLL_S)
            try:
                reply = control.request(mountpoint, {"command": "progress"}, timeout=5)
            except OSError:
                continue
            left, total, what = _measure(kind, reply)
            if total is None:
                first = max(first or 0, left)  # the work seen at the start (more arrives: it grows)
                total = first
            bar.update(task, total=max(total, 1), completed=max(0, total - left), what=what)
        done_total = bar.tasks[0].total or 1
        bar.update(task, total=done_total, completed=done_total if "reply" in outcome and outcome["reply"].get(
            "ok", True) else bar.tasks[0].completed, what="done" if "reply" in outcome else "")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["reply"]
