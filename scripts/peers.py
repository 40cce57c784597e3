"""The filesystems scripts/bench.py compares, each started, waited for and always stopped.

Every system is a context manager with the same small surface, so a workload never asks
which one it runs on:

  root                 where the workloads write (a mountpoint, or a plain directory)
  settle(timeout)      wait until background uploads are done (untimed, between workloads)
  wait_durable(rel, size, timeout)   until the file at `rel` is in the store at full size
  wait_files_durable(rel_dir, count, timeout)   until `count` files under `rel_dir` are
  remount_cold()       unmount, mount again on an empty cache dir, drop the page cache
  second_mount()       a context manager: a second mount of the same bucket / account
                       (None where that means nothing: the local dir, bindfs)
  pids()               the processes that serve it (for CPU figures and py-spy)

"In the store" is watched from outside wherever there is an outside: `head_object` on
moto for s3fs and rclone, the server's API for cloudfs (a committed version), fsync /
syncfs for the local references. Each S3 system gets its own moto server, so moto's
in-memory objects of one system are freed before the next one starts.

Peers run in the foreground as our children (`s3fs -f`, `rclone mount`, `bindfs -f`)
and come down like the cloudfs mount in tests.harness: `fusermount3 -u`, then lazy
unmount and kill.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import httpx

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.harness import (S3_ENV, cloudfs_mount, cloudfs_server, free_port, is_mounted,  # noqa: E402
                           moto_server, unmount, wait_until)

APT_PACKAGES = {"s3fs": "s3fs", "rclone": "rclone", "bindfs": "bindfs", "fio": "fio"}
POLL_S = 0.05


class PeerError(Exception):
    """A system did not start, or did not get something into its store in time."""


def ensure_tools() -> None:
    """apt-get install the peers that are missing (Debian packages of the same names)."""
    missing = [pkg for tool, pkg in APT_PACKAGES.items() if shutil.which(tool) is None]
    if not missing:
        return
    print(f"installing with apt-get: {' '.join(missing)}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=600, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, timeout=1200, env=env)


def drop_caches(timeout: float = 120) -> None:
    """Write back, then drop the page cache, dentries and inodes (root only)."""
    subprocess.run(["sync"], timeout=timeout, check=False)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def syncfs(path: Path) -> None:
    """syncfs(2) of the filesystem holding `path`: durability of a local directory
    without writing back every other filesystem on the machine."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), f"syncfs {path}")
    finally:
        os.close(fd)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _poll(check, *, timeout: float, what: str, interval: float = POLL_S):  # noqa: ANN001
    try:
        return wait_until(check, timeout=timeout, what=what, interval=interval)
    except TimeoutError as exc:
        raise PeerError(str(exc)) from None


@contextlib.contextmanager
def fuse_process(args: list[str], path: Path, log_path: Path, *, env: dict[str, str] | None = None,
                 timeout: float = 60) -> Iterator[subprocess.Popen]:
    """A foreground FUSE daemon of ours: wait until `path` answers, always unmount."""
    path.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(args, stdout=log_file, stderr=log_file, stdin=subprocess.DEVNULL, env=env)
        try:
            wait_until(lambda: is_mounted(path) and os.stat(path), timeout=timeout, what=f"{args[0]} at {path}",
                       proc=proc, interval=0.05)
            yield proc
        finally:
            unmount(path, proc)


class System:
    """The local directory: the reference every figure is also compared with."""

    name = "local"
    role = "reference"
    workloads: tuple[str, ...] | None = None
    """The workloads this system can run (None: every one)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.root = work / "dir"
        self.stack = contextlib.ExitStack()

    def __enter__(self) -> "System":
        self.work.mkdir(parents=True, exist_ok=True)
        try:
            self.start()
        except BaseException:
            self.stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def log_tail(self) -> str:
        return ""

    def pids(self) -> dict[str, int]:
        return {}

    def settle(self, timeout: float) -> None:
        syncfs(self.root)

    def wait_durable(self, rel: str, size: int, timeout: float) -> None:
        fsync_path(self.root / rel)

    def wait_files_durable(self, rel_dir: str, count: int, timeout: float) -> None:
        syncfs(self.root)

    def remount_cold(self) -> None:
        drop_caches()

    @contextlib.contextmanager
    def second_mount(self) -> Iterator[Path | None]:
        yield None


class Bindfs(System):
    """bindfs over a local directory: a FUSE passthrough, the cost of FUSE itself."""

    name = "bindfs"

    def start(self) -> None:
        self.backing = self.work / "backing"
        self.backing.mkdir(parents=True, exist_ok=True)
        self.root = self.work / "mnt"
        self._mount()

    def _mount(self) -> None:
        self.mount_stack = contextlib.ExitStack()
        self.stack.callback(self.mount_stack.close)
        self.proc = self.mount_stack.enter_context(fuse_process(
            ["bindfs", "-f", "-o", "allow_other", str(self.backing), str(self.root)], self.root,
            self.work / "bindfs.log"))

    def pids(self) -> dict[str, int]:
        return {"bindfs": self.proc.pid}

    def settle(self, timeout: float) -> None:
        syncfs(self.backing)

    def wait_files_durable(self, rel_dir: str, count: int, timeout: float) -> None:
        syncfs(self.backing)

    def remount_cold(self) -> None:
        self.mount_stack.close()
        self._mount()
        drop_caches()


class Nullfs(System):
    """scripts/nullfs.py: a pyfuse3 + trio mount that keeps no bytes (reads are zeros).
    Only the random workload runs on it: what one 4 KiB request costs any pyfuse3 mount
    before it does any work, the floor under cloudfs's random rows (fio lays out
    seq.bin through it, discarded)."""

    name = "nullfs"
    workloads = ("random",)

    def start(self) -> None:
        self.root = self.work / "mnt"
        self.proc = self.stack.enter_context(fuse_process(
            [sys.executable, str(REPO / "scripts" / "nullfs.py"), str(self.root)], self.root,
            self.work / "nullfs.log"))

    def pids(self) -> dict[str, int]:
        return {"nullfs": self.proc.pid}

    def settle(self, timeout: float) -> None:
        pass  # nothing is kept

    def wait_files_durable(self, rel_dir: str, count: int, timeout: float) -> None:
        pass


class S3System(System):
    """Something that keeps files as S3 objects of the same key in its own moto bucket."""

    role = "peer"
    bucket = "bench"
    versioned = False

    def start(self) -> None:
        self.s3_url = self.stack.enter_context(moto_server())
        import boto3

        self.s3 = boto3.client("s3", endpoint_url=self.s3_url, region_name="us-east-1",
                               aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                               aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"])
        self.s3.create_bucket(Bucket=self.bucket)
        if self.versioned:
            self.s3.put_bucket_versioning(Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"})
        self.root = self.work / "mnt"
        self.generation = 0
        self._mount()

    def _mount(self) -> None:
        self.generation += 1
        cache = self.work / f"cache-{self.generation}"
        cache.mkdir()
        self.mount_stack = contextlib.ExitStack()
        self.stack.callback(self.mount_stack.close)
        self.proc = self.mount_stack.enter_context(self.mount(self.root, cache, f"mount-{self.generation}"))
        self.mount_stack.callback(shutil.rmtree, cache, True)

    def mount(self, path: Path, cache: Path, label: str) -> contextlib.AbstractContextManager[subprocess.Popen]:
        raise NotImplementedError

    def pids(self) -> dict[str, int]:
        return {self.name: self.proc.pid}

    def log_tail(self) -> str:
        logs = sorted(self.work.glob("*.log"), key=lambda p: p.stat().st_mtime)
        return logs[-1].read_text(errors="replace")[-3000:] if logs else ""

    def object_size(self, key: str) -> int | None:
        try:
            return self.s3.head_object(Bucket=self.bucket, Key=key)["ContentLength"]
        except Exception:  # noqa: BLE001 - not there (yet)
            return None

    def wait_durable(self, rel: str, size: int, timeout: float) -> None:
        _poll(lambda: self.object_size(rel) == size, timeout=timeout, what=f"{self.name}: {rel} in S3")

    def object_count(self, prefix: str) -> int:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sum(1 for page in pages for item in page.get("Contents", []) if not item["Key"].endswith("/"))

    def wait_files_durable(self, rel_dir: str, count: int, timeout: float) -> None:
        _poll(lambda: self.object_count(rel_dir.rstrip("/") + "/") >= count, timeout=timeout,
              what=f"{self.name}: {count} objects under {rel_dir}", interval=0.2)

    def remount_cold(self) -> None:
        self.settle(600)
        self.mount_stack.close()
        self._mount()
        drop_caches()

    @contextlib.contextmanager
    def second_mount(self) -> Iterator[Path | None]:
        cache = self.work / "cache-second"
        cache.mkdir(exist_ok=True)
        with self.mount(self.work / "mnt-second", cache, "second"):
            yield self.work / "mnt-second"


class S3fs(S3System):
    """s3fs-fuse with its local file cache (`use_cache`), the closest it has to ours."""

    name = "s3fs"

    def start(self) -> None:
        self.passwd = self.work / "passwd"
        self.passwd.write_text(f"{S3_ENV['AWS_ACCESS_KEY_ID']}:{S3_ENV['AWS_SECRET_ACCESS_KEY']}\n")
        self.passwd.chmod(0o600)
        super().start()

    def mount(self, path: Path, cache: Path, label: str) -> contextlib.AbstractContextManager[subprocess.Popen]:
        opts = [f"url={self.s3_url}", "use_path_request_style", f"passwd_file={self.passwd}",
                f"use_cache={cache}", "allow_other"]
        return fuse_process(["s3fs", self.bucket, str(path), "-f", *[x for o in opts for x in ("-o", o)]],
                            path, self.work / f"s3fs-{label}.log")

    def settle(self, timeout: float) -> None:
        pass  # s3fs uploads in flush/fsync: once close returned, the object is there


class Rclone(S3System):
    """rclone mount with --vfs-cache-mode full (it uploads 5 s after close).

    Its bucket has versioning on: after a multipart upload (files over 200 MiB) rclone
    sends `HEAD ?versionId=<id from the completion>`, which is `null` on an unversioned
    moto bucket, and moto answers 400. rclone then takes the complete object for a
    failed upload and sends the whole file again with a backoff up to 5 minutes, for
    ever. With versioning the completion carries a real id and the HEAD succeeds."""

    name = "rclone"
    versioned = True

    def start(self) -> None:
        self.conf = self.work / "rclone.conf"
        self.rc_port = 0
        super().start()

    def mount(self, path: Path, cache: Path, label: str) -> contextlib.AbstractContextManager[subprocess.Popen]:
        self.conf.write_text(
            "[s3]\ntype = s3\nprovider = Other\n"
            f"access_key_id = {S3_ENV['AWS_ACCESS_KEY_ID']}\nsecret_access_key = {S3_ENV['AWS_SECRET_ACCESS_KEY']}\n"
            f"endpoint = {self.s3_url}\nregion = us-east-1\nforce_path_style = true\n")
        args = ["rclone", "--config", str(self.conf), "mount", f"s3:{self.bucket}", str(path),
                "--vfs-cache-mode", "full", "--cache-dir", str(cache), "--allow-other",
                "--log-file", str(self.work / f"rclone-{label}.log"), "--log-level", "NOTICE"]
        if label != "second":  # the first mount answers remote control: how we see its upload queue
            self.rc_port = free_port()
            args += ["--rc", "--rc-addr", f"127.0.0.1:{self.rc_port}", "--rc-no-auth"]
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}  # rclone 1.60 refuses to start with it
        return fuse_process(args, path, self.work / f"rclone-{label}.out", env=env)

    def uploads_pending(self) -> int:
        stats = httpx.post(f"http://127.0.0.1:{self.rc_port}/vfs/stats", timeout=10).json()
        disk = stats.get("diskCache", {})
        return int(disk.get("uploadsInProgress", 0)) + int(disk.get("uploadsQueued", 0))

    def settle(self, timeout: float) -> None:
        _poll(lambda: self.uploads_pending() == 0, timeout=timeout, what="rclone uploads", interval=0.2)


class Cloudfs(System):
    """A cloudfs server on moto (SQLite metadata) and `cloudfs mount` of a fresh user."""

    name = "cloudfs"
    role = "cloudfs"
    bucket = "cloudfs-bench"

    def start(self) -> None:
        s3_url = self.stack.enter_context(moto_server())
        self.server = self.stack.enter_context(cloudfs_server(
            self.work / "server", store_url=f"s3://{self.bucket}?endpoint={s3_url}&region=us-east-1"))
        self.token = self.server.add_user(f"bench-{uuid.uuid4().hex[:8]}")
        self.http = httpx.Client(base_url=self.server.url, headers={"Authorization": f"Bearer {self.token}"},
                                 timeout=30)
        self.stack.callback(self.http.close)
        self.root = self.work / "mnt"
        self.generation = 0
        self._mount()

    def _mount(self) -> None:
        self.generation += 1
        cache = self.work / f"cache-{self.generation}"
        self.mount_stack = contextlib.ExitStack()
        self.stack.callback(self.mount_stack.close)
        self.mount = self.mount_stack.enter_context(
            cloudfs_mount(self.server, self.token, self.root, cache, device="bench-a"))
        self.mount_stack.callback(shutil.rmtree, cache, True)

    def pids(self) -> dict[str, int]:
        return {"mount": self.mount.proc.pid, "server": self.server.proc.pid}

    def log_tail(self) -> str:
        return "mount log:\n" + self.mount.log()[-2000:] + "\nserver log:\n" + self.server.log()[-1000:]

    def committed_size(self, rel: str) -> int | None:
        reply = self.http.get("/resolve", params={"path": "/" + rel})
        return reply.json()["node"]["size"] if reply.status_code == 200 else None

    def wait_durable(self, rel: str, size: int, timeout: float) -> None:
        _poll(lambda: self.committed_size(rel) == size, timeout=timeout, what=f"cloudfs: {rel} committed")

    def settle(self, timeout: float) -> None:
        done = subprocess.run([str(Path(sys.executable).parent / "cloudfs"), "sync", str(self.root), "--timeout",
                               str(int(timeout))], capture_output=True, text=True, timeout=timeout + 60)
        if done.returncode != 0:
            raise PeerError(f"cloudfs sync: {done.stderr.strip() or done.stdout.strip()}")

    def wait_files_durable(self, rel_dir: str, count: int, timeout: float) -> None:
        self.settle(timeout)  # `cloudfs sync`: every local change made before it is committed

    def remount_cold(self) -> None:
        self.settle(600)
        self.mount_stack.close()
        self._mount()
        drop_caches()

    def bare_read(self, rel: str, parallel: int, timeout: float) -> tuple[int, float]:
        """What a bare parallel HTTP client gets from this store: the chunks of the file
        at `rel`, on the URLs the server signs (one GET /files/{id}?urls=true, untimed),
        downloaded with httpx, `parallel` GETs in flight, bodies counted and dropped (no
        checksum, no cache, no FUSE). The reference a cold read through the mount is
        measured against. Returns (bytes, seconds)."""
        import anyio

        from cloudfs.backend.protocol.api_client import receive_in_large_pieces

        receive_in_large_pieces()  # as the mount receives: the reference is no worse a client
        node = self.http.get("/resolve", params={"path": "/" + rel}).json()["node"]
        chunks = self.http.get(f"/files/{node['id']}", params={"urls": "true"}).json()["chunks"]
        got = [0]

        async def main() -> None:
            limiter = anyio.Semaphore(parallel)
            async with httpx.AsyncClient(timeout=timeout,
                                         limits=httpx.Limits(max_connections=parallel)) as client:
                async def one(chunk: dict) -> None:
                    async with limiter:
                        download = chunk["download"]
                        async with client.stream(download["method"], download["url"],
                                                 headers=download.get("headers") or {}) as response:
                            response.raise_for_status()
                            async for piece in response.aiter_raw():
                                got[0] += len(piece)

                async with anyio.create_task_group() as group:
                    for chunk in chunks:
                        group.start_soon(one, chunk)

        start = time.perf_counter()
        anyio.run(main)  # each GET is bounded by the client's timeout
        seconds = time.perf_counter() - start
        if got[0] < node["size"] * 0.9:  # compressed chunks would be smaller; random bytes are not
            raise PeerError(f"bare client: {got[0]} bytes of {rel}'s {node['size']}")
        return got[0], seconds

    def status(self) -> dict:
        return json.loads(self.mount.cli("status", str(self.root), "--json", timeout=30).stdout or "{}")

    @contextlib.contextmanager
    def second_mount(self) -> Iterator[Path | None]:
        cache = self.work / "cache-second"
        with cloudfs_mount(self.server, self.token, self.work / "mnt-second", cache, device="bench-b") as second:
            yield second.path


SYSTEMS: dict[str, type[System]] = {"local": System, "bindfs": Bindfs, "nullfs": Nullfs, "s3fs": S3fs,
                                    "rclone": Rclone, "cloudfs": Cloudfs}


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a whole process, all threads included (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def io_bytes(pid: int) -> tuple[int, int]:
    """Bytes a process passed through read(2)/write(2)-like calls (rchar, wchar): for a
    FUSE daemon, wchar counts its replies to /dev/fuse (and its own file writes)."""
    try:
        fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    except OSError:
        return 0, 0
    return int(fields["rchar"]), int(fields["wchar"])


@contextlib.contextmanager
def profiled(pids: dict[str, int], out_prefix: Path | None, fmt: str = "flamegraph") -> Iterator[None]:
    """py-spy record of each process while the block runs (`OUT_PREFIX-NAME.svg`, or
    `.txt` for `fmt="raw"`: collapsed stacks, which add up across runs and grep well)."""
    if out_prefix is None or not pids:
        yield
        return
    spy = Path(sys.executable).parent / "py-spy"
    spy_path = str(spy) if spy.exists() else (shutil.which("py-spy") or "py-spy")
    suffix = "txt" if fmt == "raw" else "svg"
    procs = [subprocess.Popen([spy_path, "record", "--pid", str(pid), "--output", f"{out_prefix}-{name}.{suffix}",
                               "--format", fmt, "--rate", "200", "--nonblocking"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for name, pid in pids.items()]
    try:
        time.sleep(1.0)  # let it attach
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(2)  # SIGINT: py-spy writes the flame graph and exits
        for proc in procs:
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
