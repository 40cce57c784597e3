"""The device crash run's workloads (device.py runs them): each starts real work on the
mount, takes promises while it runs, and checks them after the kill and the remount.
WORKLOADS is a table, name -> class; `make_sources` makes what cp and git clone copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


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


