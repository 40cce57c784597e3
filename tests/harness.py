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

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CLOUDFS = [str(BIN / "cloudfs")] if (BIN / "cloudfs").exists() else [sys.executable, "-m", "cloudfs"]
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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

    def add_user(self, name: str) -> str:
        where = ["--db", self.db_url] if self.db_url else ["--data", str(self.data_dir)]
        out = subprocess.run([*CLOUDFS, "user", "add", name, *where], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"cloudfs user add {name}: {out.stderr}")
        self.tokens[name] = out.stdout.strip().splitlines()[-1]
        return self.tokens[name]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def cloudfs_server(data_dir: Path, *, db_url: str | None = None, store_url: str | None = None,
                   extra_args: list[str] = (), env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "server.log"
    args = [*CLOUDFS, "server", "--data", str(data_dir), "--port", "0", *extra_args]
    if db_url:
        args += ["--db", db_url]
    if store_url:
        args += ["--store", store_url]
    log_file = open(log_path, "w")
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
