"""Real processes for tests and benchmarks: a cloudfs server, a moto S3 server and a
fresh PostgreSQL database, each started, waited for, and always stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx

from cloudfs.backend.daily import control

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CLOUDFS = [str(BIN / "cloudfs")] if (BIN / "cloudfs").exists() else [sys.executable, "-m", "cloudfs"]
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dropped_from_page_cache(path: Path) -> Path:
    """So the next read of `path` reaches the filesystem, not the kernel's copy."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return path


def wait_until(check, *, timeout: float, what: str, proc: subprocess.Popen | None = None, interval: float = 0.05):  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode} before it was ready")
        try:
            result = check()
            if result:
                return result
        except Exception:  # noqa: BLE001 - not ready yet
            pass
        time.sleep(interval)
    raise TimeoutError(f"{what}: not ready after {timeout}s")


def stop(proc: subprocess.Popen, *, timeout: float = 15) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **S3_ENV})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(url + "/moto-api/", timeout=1).status_code < 500, timeout=20, what="moto", proc=proc)
        yield url
    finally:
        stop(proc)


@contextlib.contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A new, empty database on the test PostgreSQL server, dropped afterwards."""
    import psycopg

    name = f"cloudfs_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class ServerProcess:
    url: str
    data_dir: Path
    db_url: str | None
    store_url: str | None
    proc: subprocess.Popen
    log_path: Path
    tokens: dict[str, str] = field(default_factory=dict)

    def add_user(self, name: str, *, quota: str | None = None) -> str:
        """What `cloudfs user add` does (tests/cli tests the command itself), in this
        process: a CLI process costs a second of CPU in imports, and most tests add one."""
        from cloudfs import validate
        from cloudfs.server.startup import open_db
        from cloudfs.server.users import add_user

        db = open_db(self.data_dir, self.db_url, pool_size=1)
        try:
            self.tokens[name] = add_user(db, name, quota_bytes=validate.quota(quota) if quota is not None else None)
        finally:
            db.dispose()
        return self.tokens[name]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def cloudfs_server(data_dir: Path, *, db_url: str | None = None, store_url: str | None = None,
                   extra_args: list[str] = (), env: dict[str, str] | None = None,
                   port: int = 0) -> Iterator[ServerProcess]:
    """`port` 0 picks a free one; a test that restarts a server passes the old port so
    its mounts find it again."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "server.log"
    args = [*CLOUDFS, "server", "--data", str(data_dir), "--port", str(port), *extra_args]
    if db_url:
        args += ["--db", db_url]
    if store_url:
        args += ["--store", store_url]
    log_file = open(log_path, "a")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log_file, text=True,
                            env={**os.environ, **S3_ENV, **(env or {})})
    try:
        line = wait_until(lambda: _listening_line(proc), timeout=60, what="cloudfs server", proc=proc, interval=0)
        url = line.split("listening on ", 1)[1].strip()
        wait_until(lambda: httpx.get(url + "/health", timeout=2).status_code == 200, timeout=30, what="health", proc=proc)
        yield ServerProcess(url=url, data_dir=data_dir, db_url=db_url, store_url=store_url, proc=proc, log_path=log_path)
    finally:
        stop(proc)
        log_file.close()


def _listening_line(proc: subprocess.Popen) -> str | None:
    line = proc.stdout.readline()
    return line if "listening on" in line else None


@dataclass
class MountProcess:
    path: Path
    cache_dir: Path
    proc: subprocess.Popen
    log_path: Path
    server: ServerProcess
    token: str
    device: str

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*CLOUDFS, *args], capture_output=True, text=True, timeout=timeout)

    def sync(self, timeout: float = 120) -> None:
        """What `cloudfs sync` asks the mount (tests/cli tests the command itself), from
        this process: a CLI process costs a fifth of a second of CPU, and tests sync often."""
        reply = self.ask({"command": "sync", "timeout": timeout, "full": False}, timeout + 10)
        if not reply.get("ok"):
            raise AssertionError(f"cloudfs sync failed: {reply}\n{self.log()[-3000:]}")

    def status(self) -> dict:
        """What `cloudfs status --json` prints."""
        reply = self.ask({"command": "status"}, 10)
        reply.pop("ok", None)
        return reply

    def ask(self, payload: dict, timeout: float) -> dict:
        """One request on the mount's control socket, as the CLI sends it."""
        reply = control.request(self.path.resolve(), payload, timeout=timeout)
        assert not reply.get("error"), f"{self.path}: {reply['error']}"
        return reply

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def is_mounted(path: Path) -> bool:
    """From /proc/self/mounts: true for a dead FUSE mount too, where stat() fails."""
    target = os.path.abspath(path)
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1].replace("\\040", " ") == target for line in mounts)


def unmount(path: Path, proc: subprocess.Popen | None, *, timeout: float = 30) -> None:
    """fusermount3 -u; if that fails, lazy unmount and kill. Never leaves a mount behind."""
    if is_mounted(path):
        subprocess.run(["fusermount3", "-u", str(path)], capture_output=True, timeout=timeout)
    if proc is not None:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    if is_mounted(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True, timeout=timeout)
    assert not is_mounted(path), f"{path} is still mounted"


def spawn_mount(server: ServerProcess, token: str, path: Path, cache_dir: Path, *, device: str = "dev-a",
                extra_args: list[str] = (), timeout: float = 60) -> MountProcess:
    """Start a `cloudfs mount --foreground` subprocess and wait until the mount answers.
    The caller unmounts it (`unmount(m.path, m.proc)`); a start that fails is killed
    and unmounted here. The log (appended to, so a remount on the same cache keeps the
    story) is `CACHE_DIR-mount.log` beside the cache. A mount point left dead by a
    killed mount is cleared by `cloudfs mount` itself."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        if not is_mounted(path):  # a dead mount: stat answers ENOTCONN
            raise
    cache_dir.mkdir(parents=True, exist_ok=True)
    log_path = cache_dir.parent / f"{cache_dir.name}-mount.log"
    told = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            [*CLOUDFS, "mount", server.url, str(path), "--cache", str(cache_dir), "--device", device, "--foreground",
             *extra_args],
            stdout=log_file, stderr=log_file, env={**os.environ, "CLOUDFS_TOKEN": token})
    mount = MountProcess(path, cache_dir, proc, log_path, server, token, device)
    try:
        wait_until(lambda: os.path.ismount(path) and _answers(path) and _announced(log_path, told), timeout=timeout,
                   what=f"mount at {path}", proc=proc, interval=0.1)
    except BaseException:
        unmount(path, proc)
        raise
    return mount


def _announced(log_path: Path, since: int) -> bool:
    """The process said "mounted" (fs/mount.py `_announce`): the kernel's read-ahead is
    set by then, which a file opened earlier does not get."""
    with open(log_path, "rb") as f:
        f.seek(since)
        return b"cloudfs mounted on" in f.read()


def _answers(path: Path) -> bool:
    try:
        return not control.request(path.resolve(), {"command": "status"}, timeout=10).get("error")
    except OSError:
        return False


@contextlib.contextmanager
def cloudfs_mount(server: ServerProcess, token: str, path: Path, cache_dir: Path, *, device: str = "dev-a",
                  extra_args: list[str] = ()) -> Iterator[MountProcess]:
    """A `cloudfs mount --foreground` subprocess; waits until the mount answers and
    always unmounts afterwards, also when the test failed."""
    mount = spawn_mount(server, token, path, cache_dir, device=device, extra_args=extra_args)
    try:
        yield mount
    finally:
        unmount(path, mount.proc)


class RestartableServer:
    """A cloudfs server that a test can stop and start again on the same port and
    data, to take the devices offline and bring them back."""

    def __init__(self, data_dir: Path, *, db_url: str | None = None) -> None:
        self.data_dir = data_dir
        self.db_url = db_url
        self.port = free_port()
        self._stack = contextlib.ExitStack()
        self.server: ServerProcess = self._start()
        self.url = self.server.url

    def _start(self) -> ServerProcess:
        return self._stack.enter_context(cloudfs_server(self.data_dir, port=self.port, db_url=self.db_url))

    def stop(self) -> None:
        self._stack.close()
        self._stack = contextlib.ExitStack()

    def kill(self) -> None:
        """kill -9: no graceful shutdown, in-flight requests die with it."""
        self.server.proc.kill()
        self.server.proc.wait(10)
        self.stop()

    def start(self) -> None:
        self.server = self._start()

    def close(self) -> None:
        self._stack.close()
