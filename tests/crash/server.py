"""Crash consistency of the server: kill -9 at random moments of a commit burst from
two devices, started again at once on the same data, many times over; then:

- every acknowledged commit (a 2xx answer) is there, exactly once (no other version of
  its node holds the same chunk list), with every byte readable and verified;
- nothing half-written is visible: every version of every live file adds up (size =
  its chunks), the bytes of SAMPLE acknowledged versions (old ones too) read back as
  sent, and the server's own read-back of every chunk of every live file (`POST /fsck`)
  finds nothing bad;
- the journal has no gap a cursor could skip: a follower that long-polled /changes
  with its cursor through all the kills saw every entry the journal holds up to its
  cursor, and every entry it saw is still there (nothing it saw was rolled back);
  every acknowledged commit has its entry;
- two real mounts writing files through the same kills end up with the same tree, in
  which every file holds the bytes last written to it.

The devices here talk HTTP themselves (httpx, no retries), so an answer is exactly an
acknowledgement; a request that got none (the server died under it) may or may not have
landed, and is allowed either way, but never twice.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx
import zstandard

from cloudfs.backend.daily import control
from tests.harness import RestartableServer, postgres_database, spawn_mount, unmount
from tests.model import snapshot

INLINE_MAX = 64 * 1024
SAMPLE = 200
"""Acknowledged versions whose bytes are downloaded and checked at the end."""


def fp(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Commit:
    device: str
    name: str
    chunks: list[tuple[str, int]]
    node_id: int = 0
    rev: int = 0


@dataclass
class Device:
    """A device committing through the API in a loop: new files and revisions, small
    ones inline, larger ones prepared and PUT chunk by chunk."""

    name: str
    url: str
    token: str
    seed: int
    acked: list[Commit] = field(default_factory=list)
    unknown: list[Commit] = field(default_factory=list)
    refused: int = 0
    files: dict[str, tuple[int, int]] = field(default_factory=dict)
    """name -> (node id, rev) as last acknowledged."""

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=httpx.Timeout(10, connect=2),
                            headers={"Authorization": f"Bearer {self.token}", "X-Cloudfs-Device": self.name})

    def run(self, stop: threading.Event, root_id: int) -> None:
        r = random.Random(self.seed)
        with self.client() as api:
            for i in range(10**6):
                if stop.is_set():
                    return
                name = f"{self.name}-{r.randrange(40)}.bin"
                size = r.choice([r.randrange(1, 3000), r.randrange(3000, 60_000), r.randrange(70_000, 400_000)])
                data = f"<{self.name}#{i}>".encode() + r.randbytes(size)
                try:
                    self.commit(api, root_id, name, data)
                except (httpx.HTTPError, OSError):
                    time.sleep(0.02)  # the server is down: try again shortly, as a device would

    def commit(self, api: httpx.Client, root_id: int, name: str, data: bytes) -> None:
        pieces = [data[i:i + 150_000] for i in range(0, len(data), 150_000)]
        chunks = [(fp(p), len(p)) for p in pieces]
        known = self.files.get(name)
        body: dict[str, Any] = {"size": len(data), "mtime_ns": time.time_ns(),
                                "chunks": [{"fingerprint": f, "length": n} for f, n in chunks]}
        if known:
            body.update(node_id=known[0], base_rev=known[1])
        else:
            body.update(parent_id=root_id, name=name, base_rev=0)
        if len(data) <= INLINE_MAX:
            body["inline"] = [{"fingerprint": fp(p), "data": base64.b64encode(p).decode()} for p in pieces]
        else:
            prep = api.post("/uploads/prepare", json={"chunks": body["chunks"]})
            prep.raise_for_status()
            for ticket in prep.json()["missing"]:
                up = ticket["upload"]
                piece = next(p for p in pieces if fp(p) == ticket["fingerprint"])
                api.request(up["method"], up["url"], content=piece, headers=up.get("headers") or {}).raise_for_status()
        commit = Commit(self.name, name, chunks)
        try:
            answer = api.post("/files", json=body)
        except httpx.ConnectError:
            raise  # never reached the server
        except (httpx.HTTPError, OSError):
            self.unknown.append(commit)  # landed or not: nobody knows
            raise
        if answer.status_code in (200, 201):
            got = answer.json()
            commit.node_id, commit.rev = got["node"]["id"], got["version"]["rev"]
            self.acked.append(commit)
            self.files[name] = (commit.node_id, commit.rev)
            return
        self.refused += 1
        err = answer.json()
        node = err.get("node") or {}
        if answer.status_code == 409 and node.get("id"):  # an unknown commit landed first: learn where we are
            self.files[name] = (node["id"], err.get("current_rev") or node.get("rev", 0))
        elif answer.status_code >= 500:
            self.unknown.append(commit)


@dataclass
class Follower:
    """Long-polls /changes with its cursor through every kill, as a device does."""

    url: str
    token: str
    cursor: int = 0
    seen: dict[int, tuple[int, str, int]] = field(default_factory=dict)
    """seq -> (node id, op, rev)"""
    out_of_order: list[str] = field(default_factory=list)

    def run(self, stop: threading.Event) -> None:
        with httpx.Client(base_url=self.url, timeout=httpx.Timeout(10, connect=2),
                          headers={"Authorization": f"Bearer {self.token}"}) as api:
            while not stop.is_set():
                try:
                    answer = api.get("/changes", params={"cursor": self.cursor, "wait": 1, "limit": 200})
                    answer.raise_for_status()
                except (httpx.HTTPError, OSError):
                    time.sleep(0.05)
                    continue
                self.take(answer.json())

    def take(self, body: dict) -> None:
        for c in body["changes"]:
            if c["seq"] <= self.cursor:
                self.out_of_order.append(f"seq {c['seq']} came after cursor {self.cursor}")
            self.seen[c["seq"]] = (c["node"]["id"], c["op"], c["node"]["rev"])
            self.cursor = max(self.cursor, c["seq"])
        self.cursor = max(self.cursor, body["cursor"])


def mount_writer(path: Path, dev: str, seed: int, stop: threading.Event, last: dict[str, bytes]) -> None:
    """Writes files on a mount in a loop (local-first: never waits for the server)."""
    r = random.Random(seed)
    for i in range(10**6):
        if stop.is_set():
            return
        name = f"m-{dev}-{r.randrange(12)}.txt"
        data = f"<{dev}#{i}>".encode() + r.randbytes(r.randrange(1, 200_000))
        (path / name).write_bytes(data)
        last[name] = data
        time.sleep(r.uniform(0, 0.05))


@dataclass
class ServerCrash:
    base: Path
    rnd: random.Random
    say: Callable[[str], None] = print
    db_url: str | None = None
    """A PostgreSQL server's admin URL: the run gets a fresh database on it (else SQLite)."""
    kills: int = 0
    failures: list[str] = field(default_factory=list)
    figures: dict[str, int] = field(default_factory=dict)

    def run(self, kills: int, deadline: float) -> None:
        with contextlib.ExitStack() as stack:
            db = stack.enter_context(postgres_database(self.db_url)) if self.db_url else None
            box = RestartableServer(self.base / "server", db_url=db)
            stack.callback(box.close)
            self._run(box, kills, deadline)

    def _run(self, box: RestartableServer, kills: int, deadline: float) -> None:
        token = box.server.add_user("crash")
        with httpx.Client(base_url=box.url, headers={"Authorization": f"Bearer {token}"}) as api:
            root_id = api.get("/me").json()["root_id"]
        devices = [Device(f"api-{d}", box.url, token, self.rnd.randrange(10**9)) for d in "ab"]
        follower = Follower(box.url, token)
        stop = threading.Event()
        mounts = [spawn_mount(box.server, token, self.base / f"mnt-{d}", self.base / f"cache-{d}", device=f"dev-{d}")
                  for d in "ab"]
        written: list[dict[str, bytes]] = [{}, {}]
        threads = [threading.Thread(target=d.run, args=(stop, root_id), daemon=True) for d in devices]
        threads.append(threading.Thread(target=follower.run, args=(stop,), daemon=True))
        threads += [threading.Thread(target=mount_writer, args=(m.path, d, self.rnd.randrange(10**9), stop, w),
                                     daemon=True) for m, d, w in zip(mounts, "ab", written)]
        try:
            for t in threads:
                t.start()
            for i in range(kills):
                if time.monotonic() >= deadline:
                    break
                time.sleep(self.rnd.uniform(0.1, 1.2))
                box.kill()
                self.kills += 1
                time.sleep(self.rnd.choice([0.0, 0.0, self.rnd.uniform(0, 0.5)]))
                box.start()
                if (i + 1) % 10 == 0:
                    acked = sum(len(d.acked) for d in devices)
                    self.say(f"server kill {i + 1}: {acked} commits acknowledged so far, follower at {follower.cursor}")
            time.sleep(1.0)
            stop.set()
            for t in threads:
                t.join(30)
            self.settle_mounts(mounts, written)
            self.check(box, token, devices, follower)
        finally:
            stop.set()
            for m in mounts:
                unmount(m.path, m.proc)

    def settle_mounts(self, mounts: list, written: list[dict[str, bytes]]) -> None:  # noqa: ANN001
        for _ in range(2):
            for m in mounts:
                reply = control.request(m.path, {"command": "sync", "timeout": 120}, timeout=130)
                if not reply.get("ok"):
                    self.failures.append(f"cloudfs sync on {m.path.name} did not finish: {reply}")
                    return
        trees = [snapshot(m.path) for m in mounts]
        if trees[0] != trees[1]:
            differ = sorted(p for p in set(trees[0]) | set(trees[1]) if trees[0].get(p, 0) != trees[1].get(p, 0))
            self.failures.append(f"the two mounts differ after the kills: {differ[:20]}")
        files = {p: v for p, v in trees[0].items() if p.startswith("m-")}
        for w in written:
            for name, data in w.items():
                if files.get(name) != data:
                    self.failures.append(f"mount file {name}: not the bytes last written to it")
        self.figures["mount files"] = sum(len(w) for w in written)
        for m in mounts:
            bad = [ln for ln in m.log().splitlines() if " ERROR " in ln or "Traceback" in ln]
            if bad:
                self.failures.append(f"{m.path.name} logged errors: {bad[:5]}")

    def check(self, box: RestartableServer, token: str, devices: list[Device], follower: Follower) -> None:
        fail = self.failures.append
        with httpx.Client(base_url=box.url, timeout=120, headers={"Authorization": f"Bearer {token}"}) as api:
            journal: list[dict] = []
            cursor = 0
            for _ in range(100_000):
                page = api.get("/changes", params={"cursor": cursor, "limit": 1000}).json()
                journal += page["changes"]
                cursor = page["cursor"]
                if not page["has_more"]:
                    break
            seqs = [c["seq"] for c in journal]
            if seqs != sorted(set(seqs)):
                fail("the journal's seqs are not strictly increasing")
            by_seq = {c["seq"]: (c["node"]["id"], c["op"], c["node"]["rev"]) for c in journal}
            skipped = [s for s in by_seq if s <= follower.cursor and s not in follower.seen]
            if skipped:
                fail(f"the follower's cursor skipped journal entries {skipped[:20]} (cursor {follower.cursor})")
            vanished = [s for s, e in follower.seen.items() if by_seq.get(s) != e]
            if vanished:
                fail(f"journal entries the follower saw are gone or changed after the kills: {vanished[:20]}")
            for problem in follower.out_of_order[:5]:
                fail(problem)
            entries = {(e[0], e[2]) for e in by_seq.values() if e[1] in ("create", "modify")}
            versions: dict[int, list[dict]] = {}
            after = 0
            for _ in range(100_000):  # every live file, not only those with an acknowledged commit
                page = api.get("/nodes", params={"after_id": after}).json()
                for node in page["nodes"]:
                    if node["kind"] == "file":
                        versions[node["id"]] = api.get(f"/files/{node['id']}/versions",
                                                        params={"limit": 10_000}).json()["versions"]
                if page["next_after_id"] is None:
                    break
                after = page["next_after_id"]
            for d in devices:
                for c in d.acked:
                    if c.node_id not in versions:
                        fail(f"acknowledged commit {c.name} node {c.node_id} rev {c.rev}: the file is gone")
                    if (c.node_id, c.rev) not in entries:
                        fail(f"acknowledged commit node {c.node_id} rev {c.rev} has no journal entry")
            lists: dict[tuple[int, int], list[tuple[str, int]]] = {}
            for node_id, vs in versions.items():
                for v in vs:
                    info = api.get(f"/files/{node_id}", params={"rev": v["rev"], "urls": "false"}).json()
                    chunks = [(c["fingerprint"], c["length"]) for c in info["chunks"]]
                    lists[(node_id, v["rev"])] = chunks
                    if sum(n for _, n in chunks) != v["size"]:
                        fail(f"node {node_id} rev {v['rev']}: size {v['size']} but its chunks add up to "
                             f"{sum(n for _, n in chunks)}")
            for d in devices:
                for c in d.acked:
                    if lists.get((c.node_id, c.rev)) != c.chunks:
                        fail(f"acknowledged commit {c.name} node {c.node_id} rev {c.rev} is not what was sent")
                    same = [rev for (n, rev), ch in lists.items() if n == c.node_id and ch == c.chunks]
                    if len(same) != 1:
                        fail(f"acknowledged commit {c.name} node {c.node_id} rev {c.rev} is there "
                             f"{len(same)} times (revs {same})")
                for c in d.unknown:
                    same = [rev for (n, rev), ch in lists.items() if ch == c.chunks]
                    if len(same) > 1:
                        fail(f"unacknowledged commit {c.name} landed {len(same)} times (revs {same})")
            acked = [c for d in devices for c in d.acked]
            sample = self.rnd.sample(acked, min(SAMPLE, len(acked)))
            for c in sample:  # the bytes themselves, of old versions too (fsck reads current ones)
                info = api.get(f"/files/{c.node_id}", params={"rev": c.rev}).json()
                for chunk in info["chunks"]:
                    dl = chunk["download"]
                    body = api.request(dl["method"], dl["url"], headers=dl.get("headers") or {}).content
                    if chunk.get("compression") == "zstd":
                        body = zstandard.ZstdDecompressor().decompress(body, max_output_size=chunk["length"])
                    if fp(body) != chunk["fingerprint"]:
                        fail(f"acknowledged commit {c.name} node {c.node_id} rev {c.rev}: chunk "
                             f"{chunk['fingerprint'][:12]} reads back as other bytes")
            fsck = api.post("/fsck").json()
            if fsck["bad"]:
                fail(f"the server's read-back found bad chunks: {fsck['bad'][:5]}")
            self.figures.update(acked=sum(len(d.acked) for d in devices),
                                unknown=sum(len(d.unknown) for d in devices),
                                refused=sum(d.refused for d in devices), journal=len(journal),
                                versions=sum(len(vs) for vs in versions.values()), chunks_read_back=fsck["checked"],
                                versions_read_back=len(sample))
        log = box.server.log()
        if "Traceback" in log:
            at = log.index("Traceback")
            fail(f"the server logged a traceback: {log[at:at + 2000]}")
