"""What the processes of a cluster use and what its replicas report, for
scripts/bench_cluster.py: CPU and RSS from /proc, Prometheus histograms scraped from
every replica's /metrics, and sampling profiles of the replicas (py-spy).

Everything here reads; nothing changes a process. Scrapes wait up to a minute: a
replica accepting 10,000 connections at once answers /metrics late, and a slow
scrape is no reason to end a benchmark run.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx

CLK_TCK = os.sysconf("SC_CLK_TCK")
PY_SPY = shutil.which("py-spy") or str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "py-spy")


def cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except OSError:
        return 0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pids_named(name: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() == name:
                    found.append(int(entry))
            except OSError:
                pass
    return found


def child_named(name: str) -> int:
    """This process's child of that name (its moto server), or 0."""
    for pid in pids_named(name):
        try:
            if int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) == os.getpid():
                return pid
        except (OSError, ValueError):
            pass
    return 0


def machine_busy_ticks() -> int:
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return sum(values) - values[3] - values[4]  # less idle and iowait


class CpuMeter:
    """Cores used by each group of processes between its creation and `cores()`; also
    this process's own ("generator") and the whole machine's."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.t0 = time.monotonic()
        self.t0_ticks = {pid: cpu_ticks(pid) for pids in groups.values() for pid in pids}
        self.own0 = sum(os.times()[:2])
        self.machine0 = machine_busy_ticks()

    def cores(self) -> dict[str, float]:
        dt = max(time.monotonic() - self.t0, 1e-9)

        def used(pid: int) -> int:  # a process gone meanwhile counts nothing
            now = cpu_ticks(pid)
            return max(0, now - self.t0_ticks[pid]) if now else 0
        out = {name: sum(used(p) for p in pids) / CLK_TCK / dt for name, pids in self.groups.items()}
        out["generator"] = (sum(os.times()[:2]) - self.own0) / dt
        out["machine"] = (machine_busy_ticks() - self.machine0) / CLK_TCK / dt
        return out

    def each(self, name: str) -> list[float]:
        dt = max(time.monotonic() - self.t0, 1e-9)
        return [max(0, cpu_ticks(p) - self.t0_ticks[p]) / CLK_TCK / dt for p in self.groups[name]]


def pg_backends(db_url: str) -> list[int]:
    """The PostgreSQL backends serving this run's database (the server may be shared)."""
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        return [pid for (pid,) in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")]


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


# --- what the replicas report -------------------------------------------------------------


async def scrape(client: httpx.AsyncClient, urls: list[str]) -> list[str]:
    """Every replica's /metrics text ("" for one that did not answer within a minute)."""
    texts = []
    for url in urls:
        try:
            texts.append((await client.get(url + "/metrics", timeout=60)).text)
        except httpx.HTTPError:
            texts.append("")
    return texts


def sample(text: str, name: str) -> float:
    """The sum of the samples named `name` (all label sets)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


class Histogram:
    """A Prometheus histogram summed over replicas and the label sets that hold every
    one of `match` (label texts, e.g. 'route="/files"'); `minus` another snapshot,
    so a phase's own observations can be told apart."""

    def __init__(self, texts: list[str], name: str, *match: str) -> None:
        self.buckets: dict[float, float] = {}
        for text in texts:
            for line in text.splitlines():
                if line.startswith(name + "_bucket{") and all(m in line for m in match):
                    bound = line.split('le="', 1)[1].split('"', 1)[0]
                    le = math.inf if bound == "+Inf" else float(bound)
                    self.buckets[le] = self.buckets.get(le, 0.0) + float(line.rsplit(" ", 1)[1])

    def minus(self, earlier: "Histogram") -> "Histogram":
        out = Histogram([], "")
        out.buckets = {le: n - earlier.buckets.get(le, 0.0) for le, n in self.buckets.items()}
        return out

    @property
    def count(self) -> int:
        return int(self.buckets.get(math.inf, 0.0))

    def bound(self, p: float) -> float:
        """The upper bound of the bucket holding the p-th percentile."""
        if not self.count:
            return math.nan
        return next(le for le, n in sorted(self.buckets.items()) if n >= p / 100 * self.count)


def ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else ("> 60 s" if math.isinf(seconds) else f"{seconds * 1000:g}")


# --- profiles ---------------------------------------------------------------------------


def start_profiles(pids: list[int], seconds: float, out_dir: Path, label: str) -> list[tuple[subprocess.Popen, Path]]:
    """py-spy sampling each replica (every thread, on-CPU samples only) for `seconds`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    started = []
    for i, pid in enumerate(pids):
        path = out_dir / f"{label}-r{i + 1}.txt"
        proc = subprocess.Popen([PY_SPY, "record", "-p", str(pid), "-d", str(max(1, int(seconds))), "-r", "67",
                                 "-f", "raw", "-o", str(path), "--nonblocking"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append((proc, path))
    return started


def finish_profiles(started: list[tuple[subprocess.Popen, Path]]) -> list[Path]:
    for proc, _ in started:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return [path for _, path in started if path.exists()]


def summarise_profile(paths: list[Path], top: int = 12) -> str:
    """Share of on-CPU samples per frame, over the replicas' collapsed stacks: by what
    ran itself (the leaf) and by what it ran under (the nearest frame of cloudfs' own
    code, or of the library the leaf belongs to)."""
    own: Counter[str] = Counter()
    under: Counter[str] = Counter()
    total = 0
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = [f for f in stack.split(";") if not f.startswith("process ") and not f.startswith("thread ")]
            if not frames:
                continue
            own[_short(frames[-1])] += n
            ours = [f for f in frames if _is_ours(f)]
            under[_short(ours[-1]) if ours else _library(frames[-1])] += n
    if not total:
        return "  (no samples)"
    lines = [f"  {total} on-CPU samples; by leaf frame:"]
    lines += [f"    {n / total:6.1%}  {name}" for name, n in own.most_common(top)]
    lines.append("  by the innermost cloudfs frame (else the leaf's library):")
    lines += [f"    {n / total:6.1%}  {name}" for name, n in under.most_common(top)]
    return "\n".join(lines)


def _where(frame: str) -> str:
    """'fn (path/to/module.py:12)' -> 'path/to/module.py' (py-spy names files from the
    import root: server/writer.py, psycopg/connection.py, threading.py)."""
    return frame.partition(" (")[2].rsplit(":", 1)[0]


def _is_ours(frame: str) -> bool:
    return _where(frame).startswith(("server/", "backend/", "cloudfs/"))


def _short(frame: str) -> str:
    """'fn (path/to/module.py:12)' -> 'fn (module.py)'."""
    name = frame.partition(" (")[0]
    module = _where(frame).rsplit("/", 1)[-1]
    return f"{name} ({module})" if module else name


def _library(frame: str) -> str:
    where = _where(frame)
    return f"[{where.split('/', 1)[0]}]" if "/" in where else f"[stdlib {where}]"
