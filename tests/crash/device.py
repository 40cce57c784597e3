"""Crash consistency of the device: kill -9 of the mount at random moments of real work,
mounted again on the same cache, and what was promised must be there.

One server, one account, one mount whose cache lives through every kill. Each round
runs one workload on the mount, takes promises while it runs, kills the mount at a
random moment, stops the workload, mounts again and checks:

- `cloudfs fsck` finds nothing to repair (nor anything it cannot), before anything else
  touches the mount;
- every promise holds: a file fsynced (and renamed into place) before the kill has the
  bytes it had, or, if the kill came during its replacement, the bytes that replaced
  it; a file closed before a `cloudfs sync` that returned has the bytes it had;
- `cloudfs sync` then finishes.

Workloads (a table, WORKLOADS: name -> class):
- cp: `cp -a` of a source tree (text, binary files of several chunks, symlinks, nested
  directories). Promise at a sync: every file cp had closed (not open by cp per
  /proc/PID/fd) holds the source's bytes.
- git-clone: `git clone --no-local` of a repository with history. Promise at a sync:
  the work tree files and the object files (immutable in git) that git had closed hold
  the bytes read then; an object file may be gone since (a temporary pack is renamed).
- git-commit: a repository on the mount that lives through the rounds; commits in a
  loop (edit, add, remove files; `git add -A; git commit`). Promise at a sync: the last
  commit made before it is reachable from HEAD afterwards; `git fsck --full` passes.
- fsync-loop: write a temporary file, fsync, close, rename over one of a few targets,
  fsync the directory. Promise per rename: the target holds those bytes (or the bytes
  of a replacement begun since).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cloudfs.backend import control
from tests.harness import MountProcess, ServerProcess, spawn_mount, unmount

KILL_AFTER = (0.05, 3.0)
"""Seconds the workload runs before the kill, drawn uniformly."""
SYNC_AFTER_S = 600.0
"""What the sync after a remount may take: it uploads whatever the workload left."""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha(path: Path) -> str:
    with open(path, "rb") as f:
        return sha(f.read())


def open_files(pids: list[int], under: Path) -> set[str]:
    """Paths under `under` that any of `pids` has open right now."""
    out: set[str] = set()
    prefix = str(under) + "/"
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith(prefix):
                        out.add(target[len(prefix):])
    return out


def family(pid: int) -> list[int]:
    """`pid` and its descendants (git clone runs index-pack and others as children)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(children.get(p, []))
    return out


def closed_files(root: Path, pids: list[int]) -> dict[str, str]:
    """Regular files under root that no process of `pids` has open, with their SHA-256:
    listed first, then the open ones are taken out, then the rest is read (a file closed
    by then is complete)."""
    listed = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath, f)
            if not p.is_symlink():
                listed.append(str(p.relative_to(root)))
    busy = open_files(pids, root)
    out = {}
    for rel in listed:
        if rel not in busy:
            with contextlib.suppress(FileNotFoundError):
                out[rel] = file_sha(root / rel)
    return out


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)
    promises: int = 0


class Workload:
    """One round of work on the mount. `start` begins it (in the background), `promise`
    is called at random moments while it runs (the mount answers), `stop` ends it after
    the kill, `verify` checks the promises after the mount is back."""

    name = ""

    def __init__(self, mnt: Path, src: Path, rnd: random.Random, round_no: int) -> None:
        self.mnt, self.src, self.rnd, self.round_no = mnt, src, rnd, round_no
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        raise NotImplementedError

    def promise(self, sync: Callable[[], bool]) -> None:
        """Note what is closed now, then `cloudfs sync`; what was closed is promised."""

    def stop(self) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def verify(self) -> Verdict:
        raise NotImplementedError

    def cleanup(self) -> None:
        """Remove what the round left on the mount (keeps the account small for fsck)."""


class Cp(Workload):
    name = "cp"

    def start(self) -> None:
        self.dst = self.mnt / f"cp-{self.round_no}"
        self.promised: dict[str, str] = {}
        self.proc = subprocess.Popen(["cp", "-a", str(self.src / "tree"), str(self.dst)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def promise(self, sync: Callable[[], bool]) -> None:
        closed = closed_files(self.dst, family(self.proc.pid)) if self.dst.exists() else {}
        if sync():
            self.promised.update(closed)

    def verify(self) -> Verdict:
        v = Verdict(promises=len(self.promised))
        for rel, digest in sorted(self.promised.items()):
            want = file_sha(self.src / "tree" / rel)
            if digest != want:
                v.problems.append(f"cp: {rel} read {digest[:12]} at the promise, the source has {want[:12]}")
            try:
                got = file_sha(self.dst / rel)
            except OSError as exc:
                v.problems.append(f"cp: {rel}, closed before a sync, is unreadable after the crash: {exc!r}")
                continue
            if got != want:
                v.problems.append(f"cp: {rel}, closed before a sync, has other bytes after the crash")
        return v

    def cleanup(self) -> None:
        shutil.rmtree(self.dst, ignore_errors=True)


class GitClone(Workload):
    name = "git-clone"

    def start(self) -> None:
        self.dst = self.mnt / f"clone-{self.round_no}"
        self.promised: dict[str, str] = {}
        self.proc = subprocess.Popen(["git", "clone", "-q", "--no-local", str(self.src / "repo"), str(self.dst)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def promise(self, sync: Callable[[], bool]) -> None:
        if not self.dst.exists():
            return
        closed = {rel: d for rel, d in closed_files(self.dst, family(self.proc.pid)).items()
                  if not rel.startswith(".git/") or rel.startswith(".git/objects/")}
        if sync():
            self.promised.update(closed)

    def verify(self) -> Verdict:
        v = Verdict(promises=len(self.promised))
        for rel, digest in sorted(self.promised.items()):
            path = self.dst / rel
            if not path.exists():
                if rel.startswith(".git/objects/"):
                    continue  # a temporary pack, renamed since
                v.problems.append(f"git clone: {rel}, closed before a sync, is gone after the crash")
                continue
            try:
                got = file_sha(path)
            except OSError as exc:
                v.problems.append(f"git clone: {rel} is unreadable after the crash: {exc!r}")
                continue
            if got != digest:
                v.problems.append(f"git clone: {rel}, closed before a sync, has other bytes after the crash")
        return v

    def cleanup(self) -> None:
        shutil.rmtree(self.dst, ignore_errors=True)


GIT_LOOP = r"""
import os, random, subprocess, sys
repo, seed = sys.argv[1], int(sys.argv[2])
r = random.Random(seed)
def git(*a):
    subprocess.run(["git", "-C", repo, *a], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for i in range(100000):
    names = sorted(n for n in os.listdir(repo) if n.startswith("f"))
    roll = r.random()
    if names and roll < 0.2:
        os.unlink(os.path.join(repo, r.choice(names)))
    elif names and roll < 0.6:
        with open(os.path.join(repo, r.choice(names)), "a") as f:
            f.write(f"line {seed}.{i} " + "x" * r.randrange(2000) + "\n")
    else:
        with open(os.path.join(repo, f"f{seed}-{i}.txt"), "wb") as f:
            f.write(os.urandom(r.randrange(1, 300_000)))
    git("add", "-A")
    git("commit", "-q", "--allow-empty", "-m", f"commit {seed}.{i}")
    head = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    print(head.stdout.strip(), flush=True)
"""


class GitCommit(Workload):
    name = "git-commit"

    def start(self) -> None:
        self.repo = self.mnt / "repo"
        if not (self.repo / ".git").exists():
            self.repo.mkdir(exist_ok=True)
            for args in (["init", "-q"], ["config", "user.email", "crash@example.org"],
                         ["config", "user.name", "crash"], ["commit", "-q", "--allow-empty", "-m", "root"]):
                subprocess.run(["git", "-C", str(self.repo), *args], check=True, capture_output=True, timeout=60)
        for lock in ("index.lock", "HEAD.lock", "refs/heads/master.lock", "refs/heads/main.lock"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.repo / ".git" / lock)  # left by the last kill, as after any crash
        self.promised = ""
        self.commits: list[str] = []
        self.proc = subprocess.Popen([sys.executable, "-c", GIT_LOOP, str(self.repo), str(self.rnd.randrange(10**9))],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.commits.append(line.strip())

    def promise(self, sync: Callable[[], bool]) -> None:
        last = self.commits[-1] if self.commits else ""
        if last and sync():
            self.promised = last

    def verify(self) -> Verdict:
        v = Verdict(promises=1 if self.promised else 0)
        fsck = subprocess.run(["git", "-C", str(self.repo), "fsck", "--full", "--no-dangling"],
                              capture_output=True, text=True, timeout=300)
        if fsck.returncode != 0:
            v.problems.append(f"git fsck --full after the crash: {fsck.stdout[-1500:]} {fsck.stderr[-1500:]}")
        if self.promised:
            ok = subprocess.run(["git", "-C", str(self.repo), "merge-base", "--is-ancestor", self.promised, "HEAD"],
                                capture_output=True, text=True, timeout=60)
            if ok.returncode != 0:
                v.problems.append(f"git: commit {self.promised}, made before a sync, is not in HEAD's history "
                                  f"after the crash: {ok.stderr.strip()}")
        return v


FSYNC_LOOP = r"""
import hashlib, os, random, sys
d, seed = sys.argv[1], int(sys.argv[2])
r = random.Random(seed)
os.makedirs(d, exist_ok=True)
dfd = os.open(d, os.O_RDONLY)
for i in range(10**6):
    target = f"t{r.randrange(4)}"
    data = f"{seed}.{i}\n".encode() + os.urandom(r.randrange(1, 300_000))
    print("begin", target, hashlib.sha256(data).hexdigest(), flush=True)
    tmp = os.path.join(d, f".{target}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for off in range(0, len(data), 65536):
        os.write(fd, data[off:off + 65536])
    os.fsync(fd)
    os.close(fd)
    os.rename(tmp, os.path.join(d, target))
    os.fsync(dfd)
    print("done", target, flush=True)
"""


class FsyncLoop(Workload):
    name = "fsync-loop"

    def start(self) -> None:
        self.dir = self.mnt / f"fsync-{self.round_no}"
        self.done: dict[str, str] = {}
        self.begun: dict[str, set[str]] = {}
        self.proc = subprocess.Popen([sys.executable, "-c", FSYNC_LOOP, str(self.dir), str(self.rnd.randrange(10**9))],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        pending: dict[str, str] = {}
        for line in self.proc.stdout:
            word, target, *rest = line.split()
            if word == "begin":
                pending[target] = rest[0]
                self.begun.setdefault(target, set()).add(rest[0])
            else:
                self.done[target] = pending.pop(target)
                self.begun[target] = set()

    def verify(self) -> Verdict:
        v = Verdict(promises=len(self.done))
        for target, digest in sorted(self.done.items()):
            try:
                got = file_sha(self.dir / target)
            except OSError as exc:
                v.problems.append(f"fsync loop: {target}, fsynced and renamed into place, is unreadable: {exc!r}")
                continue
            if got != digest and got not in self.begun.get(target, set()):
                v.problems.append(f"fsync loop: {target} holds neither its last fsynced bytes nor a replacement")
        return v

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


WORKLOADS: dict[str, type[Workload]] = {w.name: w for w in (Cp, GitClone, GitCommit, FsyncLoop)}


def make_sources(src: Path, rnd: random.Random) -> None:
    """The tree `cp -a` copies and the repository `git clone` clones, made once."""
    tree = src / "tree"
    for sub in ("backend", "server", "fs", "tests"):
        shutil.copytree(Path(__file__).resolve().parents[2] / sub, tree / sub,
                        ignore=shutil.ignore_patterns("__pycache__"))
    (tree / "blobs" / "deep" / "er").mkdir(parents=True)
    for i, size in enumerate((300_000, 2 << 20, 5 << 20)):
        (tree / "blobs" / "deep" / "er" / f"blob{i}.bin").write_bytes(rnd.randbytes(size))
    os.symlink("blobs/deep", tree / "link-to-deep")
    os.symlink("nowhere", tree / "dangling")
    repo = src / "repo"
    repo.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "crash", "GIT_AUTHOR_EMAIL": "crash@example.org",
           "GIT_COMMITTER_NAME": "crash", "GIT_COMMITTER_EMAIL": "crash@example.org"}
    subprocess.run(["git", "init", "-q", str(repo)], check=True, env=env)
    for i in range(30):
        for j in range(rnd.randrange(1, 15)):
            p = repo / f"dir{rnd.randrange(8)}" / f"file{rnd.randrange(60)}.txt"
            p.parent.mkdir(exist_ok=True)
            with open(p, "a") as f:
                f.write(f"change {i}.{j}\n" * rnd.randrange(1, 200))
        if i % 10 == 0:
            (repo / f"asset{i}.bin").write_bytes(rnd.randbytes(400_000))
        subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True, env=env)
        subprocess.run(["git", "-C", str(repo), "commit", "-q", "-m", f"commit {i}"], check=True, env=env)


@dataclass
class DeviceCrash:
    """The rounds, on one mount whose cache survives every kill."""

    server: ServerProcess
    token: str
    base: Path
    rnd: random.Random
    say: Callable[[str], None] = print
    mount: MountProcess | None = None
    kills: int = 0
    log_seen: int = 0
    promises: int = 0
    syncs: int = 0
    failures: list[str] = field(default_factory=list)
    by_workload: dict[str, int] = field(default_factory=dict)

    @property
    def mnt(self) -> Path:
        return self.base / "mnt"

    def start_mount(self) -> None:
        self.mount = spawn_mount(self.server, self.token, self.mnt, self.base / "cache", device="crash")

    def ask(self, command: str, timeout: float) -> dict:
        return control.request(self.mnt, {"command": command, "timeout": timeout}, timeout=timeout + 10)

    def sync(self, timeout: float = 60) -> bool:
        self.syncs += 1
        with contextlib.suppress(OSError):
            return bool(self.ask("sync", timeout).get("ok"))
        return False

    def round(self, round_no: int, workload: str) -> list[str]:
        """One kill: returns the problems found."""
        w = WORKLOADS[workload](self.mnt, self.base / "src", self.rnd, round_no)
        w.start()
        t0 = time.monotonic()
        deadline = t0 + self.rnd.uniform(*KILL_AFTER)
        moments = sorted(self.rnd.uniform(t0, deadline) for _ in range(self.rnd.choice([0, 1, 1, 2])))

        def promises() -> None:  # a sync may still run at the kill: it then promises nothing
            for moment in moments:
                time.sleep(max(0.0, moment - time.monotonic()))
                with contextlib.suppress(OSError):  # the kill came first
                    w.promise(self.sync)

        promiser = threading.Thread(target=promises, daemon=True)
        promiser.start()
        time.sleep(max(0.0, deadline - time.monotonic()))
        assert self.mount is not None
        self.mount.proc.send_signal(signal.SIGKILL)
        self.mount.proc.wait(10)
        self.kills += 1
        promiser.join(60)
        w.stop()
        self.start_mount()
        problems = []
        report = self.ask("fsck", 300)
        if not report.get("ok") or report.get("repaired") or report.get("problems"):
            problems.append(f"cloudfs fsck after the crash: repaired {report.get('repaired')}, "
                            f"problems {report.get('problems')}")
        verdict = w.verify()
        problems += verdict.problems
        self.promises += verdict.promises
        if not self.sync(SYNC_AFTER_S):
            problems.append(f"cloudfs sync did not finish within {SYNC_AFTER_S:.0f}s after the crash")
        log = self.mount.log_path.read_text(errors="replace") if self.mount else ""
        bad = [ln for ln in log[self.log_seen:].splitlines() if " ERROR " in ln or "Traceback" in ln]
        self.log_seen = len(log)
        if bad:
            problems.append("the mount logged errors: " + " | ".join(bad[:5]))
        self.by_workload[workload] = self.by_workload.get(workload, 0) + 1
        w.cleanup()
        return problems

    def run(self, kills: int, workloads: list[str], deadline: float) -> None:
        (self.base / "src").mkdir(parents=True, exist_ok=True)
        if not (self.base / "src" / "repo").exists():
            make_sources(self.base / "src", self.rnd)
        self.start_mount()
        try:
            for i in range(kills):
                if time.monotonic() >= deadline:
                    break
                workload = workloads[i % len(workloads)]
                t0 = time.monotonic()
                problems = self.round(i, workload)
                self.say(f"kill {i + 1} during {workload}: {'ok' if not problems else 'FAILED'} "
                         f"({time.monotonic() - t0:.1f} s)")
                for p in problems:
                    self.say(f"  {p}")
                self.failures += [f"kill {i + 1} ({workload}): {p}" for p in problems]
        finally:
            if self.mount is not None:
                unmount(self.mnt, self.mount.proc)
