"""The soak's world: one cloudfs server that can be killed and started again on the
same port and data, and K devices (mounts of one account, each with its own cache),
each talking to the server through its own fault proxy (tests/proxy.py). Faults are
methods here; each one that keeps devices from the server is recorded as a window, so
an EIO from a read of bytes never fetched can be told apart from a bug (`excused`).

Everything started is stopped by `close` (mounts unmounted, their processes killed if
they do not go, proxies closed, server stopped), also after a failure or a signal:
a mount process killed here unblocks any operation stuck on its mount point.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from cloudfs.backend.daily import control
from tests.harness import MountProcess, RestartableServer, ServerProcess, is_mounted, spawn_mount, unmount
from tests.proxy import Faults, Proxy

MOUNT_TIMEOUT_S = 180.0
"""How long a mount may take to answer (a loaded machine: 25 s seen at load 22)."""
GRACE_S = 15.0
"""How long after a fault ends a device may still answer EIO for bytes it never fetched
(its client still counts the server as unreachable, and backs off)."""


@dataclass
class Window:
    device: str | None
    """None: every device (the server itself was away)."""
    start: float
    end: float | None = None


@dataclass
class Device:
    name: str
    """One letter; the mount's --device is dev-NAME."""
    path: Path
    cache: Path
    proxy: Proxy
    server: ServerProcess
    token: str
    mount: MountProcess | None = None
    confirmed_deletes: int = 0
    """Deletes held by the mass-delete guard and confirmed by `sync`."""

    @property
    def log_path(self) -> Path:
        return self.cache.parent / f"{self.cache.name}-mount.log"

    def start(self) -> None:
        via = self.proxy.front(self.server)
        self.mount = spawn_mount(via, self.token, self.path, self.cache, device=f"dev-{self.name}",
                                 timeout=MOUNT_TIMEOUT_S)

    def kill(self) -> None:
        """kill -9: no flush, no unmount; the mount point stays dead until `start`."""
        if self.mount is not None and self.mount.proc.poll() is None:
            self.mount.proc.send_signal(signal.SIGKILL)
            self.mount.proc.wait(10)

    def alive(self) -> bool:
        return self.mount is not None and self.mount.proc.poll() is None

    def stop(self) -> None:
        if self.mount is not None:
            try:
                unmount(self.path, self.mount.proc)
            finally:
                self.mount = None
        elif is_mounted(self.path):
            unmount(self.path, None)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ask(self, command: str, timeout: float, **extra: object) -> dict:
        """What `cloudfs COMMAND MOUNTPOINT` sends the mount, sent from here (a CLI process
        per call costs more than the call under load)."""
        return control.request(self.path, {"command": command, "timeout": timeout, **extra}, timeout=timeout + 10)

    def sync(self, timeout: float) -> None:
        """`cloudfs sync`: raises SyncFailed unless the mount says it is done. Deletes the
        mass-delete guard holds (more than 100 in a minute, a quarter of the drive: an rm -r
        of bursts) are confirmed, as the user who meant them would, and synced."""
        try:
            for _ in range(3):
                reply = self.ask("sync", timeout)
                if not reply.get("held_deletes"):
                    break
                self.ask("deletes", 30, action="confirm")
                self.confirmed_deletes += reply["held_deletes"]
        except OSError as exc:
            raise SyncFailed(f"dev-{self.name}: no answer to sync ({exc})\n{self.log()[-3000:]}") from exc
        if not reply.get("ok"):
            raise SyncFailed(f"dev-{self.name}: sync not done: {reply}\n{self.log()[-3000:]}")


class SyncFailed(Exception):
    """`cloudfs sync` did not finish (timed out, or the mount did not answer)."""


@dataclass
class Counts:
    kills: int = 0
    restarts: int = 0
    outages: int = 0


class Cluster:
    def __init__(self, base: Path) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.box = RestartableServer(base / "server")
        self.devices: dict[str, Device] = {}
        self.proxies: list[Proxy] = []
        self.windows: list[Window] = []
        self.counts = Counts()
        self._lock = threading.Lock()
        self._accounts = 0

    @property
    def port(self) -> int:
        return self.box.port

    # --- accounts: a fresh user and K fresh mounts per program ---

    def open_account(self, k: int, work: Path) -> dict[str, Device]:
        """A new user and `k` devices a, b, c... mounted in `work` (started in parallel)."""
        self._accounts += 1
        token = self.box.server.add_user(f"soak-{self._accounts}-{uuid.uuid4().hex[:8]}")
        names = [chr(ord("a") + i) for i in range(k)]
        for name in names:
            proxy = Proxy(self.port)
            self.proxies.append(proxy)
            self.devices[name] = Device(name, work / name, work / f"cache-{name}", proxy, self.box.server, token)
        errors: list[BaseException] = []

        def start(device: Device) -> None:
            try:
                device.start()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(d,), daemon=True) for d in self.devices.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        if errors or any(t.is_alive() for t in threads):
            raise RuntimeError(f"devices did not mount: {errors or 'start timed out'}")
        return self.devices

    def close_account(self) -> None:
        """Unmount every device and close its proxy (kills what does not go)."""
        errors = []
        for device in self.devices.values():
            try:
                device.stop()
            except (AssertionError, OSError, subprocess.SubprocessError) as exc:
                errors.append(exc)
        for proxy in self.proxies:
            proxy.close()
        self.devices, self.proxies, self.windows = {}, [], []
        if errors:
            raise RuntimeError(f"devices did not unmount: {errors}")

    # --- faults ---

    def _window(self, device: str | None) -> Window:
        w = Window(device, time.monotonic())
        with self._lock:
            self.windows.append(w)
        return w

    def excused(self, device: str, since: float) -> bool:
        """An EIO from `device` in an operation started at `since` (monotonic) is explained
        by a fault window that overlapped it or ended less than GRACE_S before."""
        with self._lock:
            return any((w.device is None or w.device == device) and (w.end is None or w.end + GRACE_S >= since)
                       for w in self.windows)

    def kill_device(self, name: str, pause: float) -> None:
        """kill -9 of a mount, then mount it again on its cache after `pause` seconds."""
        device = self.devices[name]
        device.kill()
        self.counts.kills += 1
        time.sleep(pause)
        device.start()

    def restart_server(self, down: float, *, hard: bool) -> None:
        w = self._window(None)
        try:
            if hard:
                self.box.kill()
            else:
                self.box.stop()
            self.counts.restarts += 1
            time.sleep(down)
        finally:
            self.box.start()
            w.end = time.monotonic()

    def hang(self, seconds: float, device: str | None = None) -> None:
        """The server (or, for one device, the network) stops answering for a while."""
        w = self._window(device)
        proxies = [self.devices[device].proxy] if device else [d.proxy for d in self.devices.values()]
        self.counts.outages += 1
        for p in proxies:
            p.hang()
        try:
            time.sleep(seconds)
        finally:
            for p in proxies:
                p.resume()
            w.end = time.monotonic()

    def errors(self, seconds: float, rate: float, seed: int) -> None:
        """The server answers 503 (and resets connections) to a share of the requests."""
        w = self._window(None)
        self.counts.outages += 1
        for i, d in enumerate(self.devices.values()):
            d.proxy.set_faults(Faults(error=rate, reset=rate / 2, seed=seed + i))
        try:
            time.sleep(seconds)
        finally:
            for d in self.devices.values():
                d.proxy.set_faults(Faults())
            w.end = time.monotonic()

    def lose_answers(self, device: str, count: int) -> None:
        """The next `count` changes `device` sends reach the server, their answers do not."""
        self.devices[device].proxy.lose_answers(rb"^(POST|PUT|PATCH|DELETE) ", count)

    def heal(self) -> None:
        """Undo whatever a fault left behind: every proxy passing, the server up, every
        device mounted."""
        for d in self.devices.values():
            d.proxy.resume()
            d.proxy.release()
            if d.proxy.faults != Faults():
                d.proxy.set_faults(Faults())
        if self.box.server.proc.poll() is not None:
            self.box.stop()
            self.box.start()
        for d in self.devices.values():
            if not d.alive():
                d.kill()
                d.start()

    def kill_all_mounts(self) -> None:
        """Unblock operations stuck on a mount point (they get ENOTCONN)."""
        for d in self.devices.values():
            d.kill()

    def server_log(self) -> str:
        return self.box.server.log()

    def close(self) -> None:
        try:
            for d in self.devices.values():
                d.kill()
            self.close_account()
        finally:
            self.box.close()

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)
