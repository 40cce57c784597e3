"""Several `cloudfs server` replicas on one PostgreSQL database and one S3 bucket, and
HAProxy in front: real processes on loopback, for the cluster tests, `scripts/cluster.py`
and `scripts/bench_cluster.py`.

A replica keeps its port for its whole life, so a replica killed and started again is
the same backend to HAProxy, which finds it again through its health check (`/ready`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx

from tests.harness import CLOUDFS, ServerProcess, cloudfs_server, free_port, stop, wait_until

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
DRAIN_S = 5.0
"""`cloudfs server --drain`: longer than HAProxy takes to see /ready fail (3 checks, ~4 s)."""


def haproxy_config(port: int, replicas: list[tuple[str, int]], *, stats_port: int, maxconn: int = 4000) -> str:
    """The balancer in front of the replicas.

    - `leastconn`: long-polls are long-lived connections; spreading them by count keeps
      each replica's share even after one of them restarts.
    - Health: `GET /ready` every 2 s (every second once one failed); three failures
      take a replica out, one success brings it back. A draining replica says 503 at
      once and a killed one refuses connections, so either is out within ~4 s
      (`DRAIN_S` is longer). A check may take 2 s to connect and 10 s to be answered: a
      replica flooded by thousands of devices reconnecting accepts and answers late,
      and taking it out for that turned the flood into 503s for everyone
      (bench_cluster, 10,000 devices, one replica).
    - Each replica again as a `backup` without a check (`NAME-anyway`): used only when
      every replica looks down, so a balancer that cannot tell busy from dead tries
      them anyway rather than answer 503 to everyone.
    - `retry-on conn-failure empty-response` + `option redispatch`: a request that
      could not be sent, or whose replica died before answering a byte, is sent again
      to another replica. Replaying a commit is safe: one that had landed is recognised
      by the device (uploader._landed_already) as when the device retries it itself.
    - `timeout server` above the longest long-poll (60 s) plus its answer.
    - `maxconn`: every idle device holds a connection on each side of the balancer,
      two descriptors; HAProxy refuses to start when its file limit cannot hold
      maxconn of them (`balancer_maxconn` caps it). Past that, run several HAProxy
      processes on the one port: they bind it with SO_REUSEPORT and the kernel
      spreads the connections (`Cluster(balancers=N)`).
    """
    servers = "\n".join(f"    server {name} 127.0.0.1:{p} check" for name, p in replicas)
    anyway = "\n".join(f"    server {name}-anyway 127.0.0.1:{p} backup" for name, p in replicas)
    return f"""global
    maxconn {maxconn}
    log stderr format short local0 info

defaults
    mode http
    log global
    option dontlognull
    option httplog
    option dontlog-normal
    timeout connect 5s
    timeout client 120s
    timeout server 90s
    timeout http-request 30s
    timeout http-keep-alive 75s
    timeout queue 10s
    timeout check 10s
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response

frontend cloudfs
    bind 127.0.0.1:{port}
    maxconn {maxconn}
    default_backend replicas

backend replicas
    balance leastconn
    option httpchk GET /ready
    http-check expect status 200
    option allbackups
    default-server inter 2s fastinter 1s downinter 1s fall 3 rise 1
{servers}
{anyway}

listen stats
    bind 127.0.0.1:{stats_port}
    stats enable
    stats uri /stats
"""


def balancer_maxconn(wanted: int) -> int:
    """As many connections as one HAProxy can hold under this process's file limit
    (which it inherits and, without CAP_SYS_RESOURCE, cannot raise)."""
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return wanted if hard == resource.RLIM_INFINITY else max(100, min(wanted, (hard - 500) // 2))


@dataclass
class Replica:
    name: str
    port: int
    data_dir: Path
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    server: ServerProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.server is not None, f"{self.name} is not running"
        return self.server.proc.pid


class Cluster:
    """N replicas on `db_url` and `store_url`, and (with `balancer`) HAProxy before them."""

    def __init__(self, tmp: Path, db_url: str, store_url: str, n: int, *, balancer: bool = True,
                 balancers: int = 1, maxconn: int = 4000, extra_args: list[str] = (),
                 env: dict[str, str] | None = None) -> None:
        self.tmp, self.db_url, self.store_url = tmp, db_url, store_url
        self.extra_args = ["--drain", str(DRAIN_S), *extra_args]
        self.env = env
        self.replicas = [Replica(f"r{i + 1}", free_port(), tmp / f"r{i + 1}") for i in range(n)]
        self.balancer_procs: list[subprocess.Popen] = []
        self.balancer_logs: list[object] = []
        self.balancer_count, self.maxconn = (balancers if balancer else 0), balancer_maxconn(maxconn)
        self.balancer_port = free_port()
        self.stats_port = free_port()
        self.tokens: dict[str, str] = {}
        try:
            for replica in self.replicas:
                self.start(replica)
            for i in range(self.balancer_count):
                self._start_balancer(i)
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        """Where devices go: the balancer."""
        return f"http://127.0.0.1:{self.balancer_port}"

    def start(self, replica: Replica) -> None:
        replica.server = replica.stack.enter_context(cloudfs_server(
            replica.data_dir, db_url=self.db_url, store_url=self.store_url, port=replica.port,
            extra_args=list(self.extra_args), env=self.env))

    def kill(self, replica: Replica) -> None:
        """SIGKILL: no drain, no answers; in-flight requests die with it."""
        assert replica.server is not None
        replica.server.proc.send_signal(signal.SIGKILL)
        replica.server.proc.wait(10)
        replica.stack.close()
        replica.server = None

    def stop(self, replica: Replica, *, timeout: float = 30) -> int:
        """SIGTERM: drain (/ready 503 for DRAIN_S), answer long-polls, finish, exit."""
        assert replica.server is not None
        code = stop(replica.server.proc, timeout=timeout)
        replica.stack.close()
        replica.server = None
        return code

    def add_user(self, name: str, *extra: str) -> str:
        out = subprocess.run([*CLOUDFS, "user", "add", name, "--db", self.db_url, *extra], capture_output=True,
                             text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"cloudfs user add {name}: {out.stderr}")
        self.tokens[name] = out.stdout.strip().splitlines()[-1]
        return self.tokens[name]

    def as_server(self, replica: Replica | None = None) -> ServerProcess:
        """A ServerProcess for the mount fixtures: the balancer's URL, or one replica's."""
        base = (replica or self.replicas[0]).server
        assert base is not None
        url = replica.url if replica is not None else self.url
        return ServerProcess(url=url, data_dir=self.tmp, db_url=self.db_url, store_url=self.store_url,
                             proc=base.proc, log_path=base.log_path, tokens=self.tokens)

    # --- the balancer ---------------------------------------------------------------------

    def _start_balancer(self, i: int) -> None:
        """HAProxy number `i`; each has its own stats port, all share the balancer port."""
        stats_port = self.stats_port if i == 0 else free_port()
        cfg = self.tmp / f"haproxy-{i}.cfg"
        cfg.write_text(haproxy_config(self.balancer_port, [(r.name, r.port) for r in self.replicas],
                                      stats_port=stats_port, maxconn=self.maxconn))
        log = open(self.tmp / f"haproxy-{i}.log", "ab")
        self.balancer_logs.append(log)
        proc = subprocess.Popen([HAPROXY, "-f", str(cfg), "-db"], stdout=log, stderr=subprocess.STDOUT)
        self.balancer_procs.append(proc)
        wait_until(lambda: self.up(stats_port) == {r.name for r in self.replicas}, timeout=30,
                   what=f"haproxy {i} with every replica up (log: {log.name})", proc=proc, interval=0.2)

    def up(self, stats_port: int | None = None) -> set[str]:
        """The replicas HAProxy sends requests to now (its stats page; the first one's)."""
        text = httpx.get(f"http://127.0.0.1:{stats_port or self.stats_port}/stats;csv", timeout=5).text.lstrip("# ")
        return {row["svname"] for row in csv.DictReader(io.StringIO(text))
                if row["pxname"] == "replicas" and row["svname"] not in ("FRONTEND", "BACKEND")
                and row["status"].startswith("UP")}

    def wait_up(self, names: set[str], *, timeout: float = 30) -> None:
        wait_until(lambda: self.up() == names, timeout=timeout, what=f"haproxy to see exactly {sorted(names)} up",
                   interval=0.2)

    def close(self) -> None:
        try:
            for proc in self.balancer_procs:
                stop(proc, timeout=10)
            for log in self.balancer_logs:
                log.close()  # type: ignore[attr-defined]
        finally:
            for replica in self.replicas:
                if replica.server is not None:
                    with contextlib.suppress(Exception):
                        replica.server.proc.send_signal(signal.SIGKILL)  # tests need no drain here
                replica.stack.close()
                replica.server = None

    def logs(self) -> str:
        return "\n".join(f"--- {r.name}\n{(r.data_dir / 'server.log').read_text(errors='replace')[-4000:]}"
                         for r in self.replicas if (r.data_dir / "server.log").exists())


@contextlib.contextmanager
def cluster(tmp: Path, db_url: str, store_url: str, n: int, **kwargs: object) -> Iterator[Cluster]:
    c = Cluster(tmp, db_url, store_url, n, **kwargs)  # type: ignore[arg-type]
    try:
        yield c
    finally:
        c.close()


def raise_fd_limit(wanted: int) -> int:
    """Idle devices hold a socket each, on each side of the balancer; root may raise the
    hard limit too (up to fs.nr_open). Children inherit it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted and os.geteuid() == 0:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
