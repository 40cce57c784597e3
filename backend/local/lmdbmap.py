"""Giving the pages of the LMDB map back, so the mount's RSS does not grow with the
bytes it streams.

Every LMDB read goes through the environment's read-only shared map of data.mdb. A
page touched once stays mapped (and counted in the process's RSS) until the kernel
needs the memory, so streaming a 1 GiB file through the chunker leaves 1 GiB of
RssFile behind; on this project's machine (Linux 6.18) a touch maps the page cache's
whole folio, so even stepping a cursor over 128 KiB blocks maps every block.

MADV_DONTNEED on a shared file mapping only drops page-table entries: the pages stay
in the page cache (dirty ones are still written back) and fault back in on the next
access, with the same bytes, so readers in other threads are unaffected. LMDB without
`writemap` never writes through the map. Linux only; elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys

import lmdb

_MADV_DONTNEED = 4
_libc: ctypes.CDLL | None = None


def map_range(env: lmdb.Environment) -> tuple[int, int] | None:
    """(start address, length) of the env's map of data.mdb, from /proc/self/maps
    (py-lmdb's `info()["map_addr"]` is 0 unless the map is fixed)."""
    data_file = os.path.realpath(os.path.join(env.path(), "data.mdb"))
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].rstrip("\n") == data_file and fields[1].startswith("r"):
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    return start, end - start
    except OSError:
        pass
    return None


def release_map_pages(env: lmdb.Environment) -> bool:
    """Unmap every page of the env's data file from this process (see the module
    docstring); True if it was done. Costs one read of /proc/self/maps and a madvise
    over the file's length: call it every few dozen MiB, not per block."""
    global _libc
    if not sys.platform.startswith("linux"):
        return False
    found = map_range(env)
    if found is None:
        return False
    start, length = found
    try:
        used = os.stat(os.path.join(env.path(), "data.mdb")).st_size
    except OSError:
        return False
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    length = min(length, -(-used // 4096) * 4096)
    return _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), _MADV_DONTNEED) == 0
