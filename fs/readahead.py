"""The kernel's read-ahead for the mount: 1 MiB READs instead of 128 KiB ones.

A FUSE mount gets the kernel's default read-ahead (128 KiB), so a sequential read reaches
the mount as one 128 KiB READ after another although the connection takes 1 MiB ones
(libfuse asks for max_pages), and each request costs the mount its round trip through
pyfuse3 and trio. The mount's backing device (`/sys/class/bdi/MAJOR:MINOR`, the numbers
of the mount's st_dev) takes a larger window after the kernel's INIT has been answered:
written before, the INIT reply's `min(read-ahead, max_readahead)` takes it back. Only
root may write it; a mount of another user keeps the default (and says so in its log).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("cloudfs.mount")

READ_AHEAD_KB = 1024
"""One READ's worth (the connection's max_pages). A 4 MiB window read as fast (BENCHMARKS.md,
"The kernel's read-ahead") and made every page fault of a program that maps a file read
4 MiB around it."""


def bdi_of(mountpoint: Path) -> Path:
    st = os.stat(mountpoint)
    return Path(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}")


def raise_readahead(mountpoint: Path, kb: int = READ_AHEAD_KB) -> int | None:
    """Set the mount's read-ahead window to `kb` KiB; the window it has afterwards, None
    when it could not be read. Blocks until the mount has answered INIT (its stat
    waits for that), so it must run beside the request loop, never on it."""
    setting: Path | str = "the mount's backing device"
    try:
        setting = bdi_of(mountpoint) / "read_ahead_kb"
        if int(setting.read_text()) < kb:
            setting.write_text(str(kb))
        return int(setting.read_text())
    except (OSError, ValueError) as exc:
        log.info("the kernel's read-ahead for %s stays as it is: %s (%s)", mountpoint, exc, setting)
        return None
