"""The `cloudfs` command as a user runs it: the real executable as a subprocess, a
real server, real background mounts. Each run gets its own cache, log and runtime
directories (XDG_*), so nothing lands in the home directory."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.harness import CLOUDFS, ServerProcess, cloudfs_server, is_mounted, unmount


@dataclass
class Cli:
    """Runs `cloudfs` with a private environment and checks how it fails."""

    env: dict[str, str]
    log_dir: Path

    def run(self, *args: object, env: dict[str, str] | None = None, timeout: float = 60,
            drop: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        full = {k: v for k, v in {**self.env, **(env or {})}.items() if k not in drop}
        return subprocess.run([*CLOUDFS, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=full)

    def ok(self, *args: object, **kw: object) -> subprocess.CompletedProcess:
        done = self.run(*args, **kw)
        assert done.returncode == 0, f"cloudfs {args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stdout + done.stderr, done.stderr
        return done

    def fails(self, *args: object, cause: str | list[str], code: int | None = None,
              **kw: object) -> subprocess.CompletedProcess:
        """Non-zero exit (`code` if given), no traceback, one line on stderr that names
        every part of `cause`, nothing on stdout."""
        done = self.run(*args, **kw)
        out = done.stdout + done.stderr
        assert done.returncode != 0, f"cloudfs {args} succeeded:\n{out}"
        if code is not None:
            assert done.returncode == code, f"cloudfs {args}: exit {done.returncode}, not {code}:\n{out}"
        assert "Traceback" not in out, out
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, f"cloudfs {args}: not one line:\n{done.stderr}"
        assert done.stdout == "", f"cloudfs {args} printed on stdout:\n{done.stdout}"
        for part in [cause] if isinstance(cause, str) else cause:
            assert part in lines[0], f"cloudfs {args}: {part!r} not in:\n{lines[0]}"
        return done


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    home = tmp_path_factory.mktemp("cli-home")
    env = {**os.environ, "XDG_CACHE_HOME": str(home / "cache"), "XDG_STATE_HOME": str(home / "state"),
           "XDG_DATA_HOME": str(home / "data"), "XDG_RUNTIME_DIR": str(home / "run")}
    (home / "run").mkdir(mode=0o700)
    for name in ("CLOUDFS_TOKEN", "CLOUDFS_LOG_LEVEL"):
        env.pop(name, None)
    return Cli(env=env, log_dir=home / "state" / "cloudfs" / "log")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with cloudfs_server(tmp_path_factory.mktemp("cli-server")) as srv:
        yield srv
        assert "Traceback" not in srv.log(), srv.log()[-5000:]


def mount_pid(cache_dir: Path) -> int | None:
    """The pid of the mount process holding `cache_dir` (it writes it in its lock file)."""
    try:
        return int(json.loads((cache_dir / "mount.lock").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # a zombie of ours would count as alive
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


@contextlib.contextmanager
def cleanup_mount(path: Path, cache_dir: Path) -> Iterator[None]:
    """Whatever a test did with a background mount on `path`, it ends unmounted and
    with its process gone."""
    try:
        yield
    finally:
        pid = mount_pid(cache_dir)
        unmount(path, None)
        if pid is not None:
            deadline = time.monotonic() + 20
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        assert not is_mounted(path)
