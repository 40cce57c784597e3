"""A small load of device requests through the balancer, and the checks that nothing was
lost: writers create files one after another, followers long-poll the journal from
their cursors. Used while replicas are killed or restarted (test_failover.py).

Writers behave as the device's uploader does when `retry` is on: a request without an
answer or with a 5xx is sent again (for up to 20 s), and a create that meets its own
earlier attempt (409 `name_exists` with the same bytes) counts as landed. With `retry`
off every request must succeed the first time: what a rolling restart promises.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from dataclasses import dataclass, field

import httpx
import trio

RETRY_FOR_S = 20.0
_OURS = re.compile(r"^w\d+-\d{5}$")


@dataclass
class Tally:
    created: dict[str, int] = field(default_factory=dict)
    """name -> node id, for every create the writer was told (or found) had landed."""
    recognised: int = 0
    """Creates whose answer was lost and whose retry met the first attempt."""
    retries: int = 0
    failures: list[str] = field(default_factory=list)
    followed: dict[int, list[int]] = field(default_factory=dict)
    """follower -> every seq it received, in order."""
    starts: dict[int, int] = field(default_factory=dict)
    ends: dict[int, int] = field(default_factory=dict)
    """follower -> the cursor it stopped at (every write of the load is before it)."""
    polls: int = 0


def _body(name: str) -> dict:
    data = f"content of {name}".encode()
    fp = hashlib.sha256(data).hexdigest()
    return {"path": f"/{name}", "base_rev": 0, "size": len(data), "mtime_ns": 1,
            "chunks": [{"fingerprint": fp, "length": len(data)}],
            "inline": [{"fingerprint": fp, "data": base64.b64encode(data).decode()}]}


class Load:
    def __init__(self, url: str, token: str, *, writers: int = 4, followers: int = 3, retry: bool = True,
                 pace_s: float = 0.02) -> None:
        self.url, self.token, self.writers, self.followers, self.retry, self.pace_s = \
            url, token, writers, followers, retry, pace_s
        self.tally = Tally()
        self.stop = trio.Event()
        """Set to end the run: writers stop, then followers read to the end and stop."""
        self._draining = False

    def client(self, device: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, trust_env=False, timeout=httpx.Timeout(30.0, connect=5.0),
                                 headers={"Authorization": f"Bearer {self.token}", "X-Cloudfs-Device": device})

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Until `stop` is set; `task_status.started()` once every follower has its cursor."""
        async with self.client("setup") as c:
            cursor = (await c.get("/me")).json()["cursor"]
        async with trio.open_nursery() as nursery:
            for f in range(self.followers):
                self.tally.starts[f] = cursor
                nursery.start_soon(self._follower, f, cursor)
            async with trio.open_nursery() as writers:
                for w in range(self.writers):
                    writers.start_soon(self._writer, w)
                task_status.started()
            self._draining = True  # every write has its answer: followers stop at the first empty page

    async def _request(self, c: httpx.AsyncClient, what: str, method: str, path: str, **kwargs: object) -> httpx.Response | None:
        """One device request; None when it failed for good (recorded in `failures`)."""
        deadline = time.monotonic() + RETRY_FOR_S
        delay = 0.05
        while True:
            try:
                response = await c.request(method, path, **kwargs)  # type: ignore[arg-type]
                if response.status_code < 500:
                    return response
                problem = f"{response.status_code} {response.text[:200]}"
            except httpx.TransportError as exc:
                problem = repr(exc)
            if not self.retry or time.monotonic() > deadline:
                self.tally.failures.append(f"{what}: {problem}")
                return None
            self.tally.retries += 1
            await trio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _writer(self, w: int) -> None:
        async with self.client(f"writer-{w}") as c:
            for i in range(100_000):
                if self.stop.is_set():
                    return
                name = f"w{w}-{i:05d}"
                body = _body(name)
                r = await self._request(c, f"create {name}", "POST", "/files", json=body)
                if r is None:
                    continue
                if r.status_code == 200:
                    self.tally.created[name] = r.json()["node"]["id"]
                elif r.status_code == 409 and r.json().get("error") == "name_exists":
                    # a replay (ours, or the balancer's) of a create that had landed
                    node_id = r.json()["node"]["id"]
                    info = await self._request(c, f"check {name}", "GET", f"/files/{node_id}", params={"urls": "false"})
                    if info is not None and [ch["fingerprint"] for ch in info.json()["chunks"]] == \
                            [ch["fingerprint"] for ch in body["chunks"]]:
                        self.tally.created[name] = node_id
                        self.tally.recognised += 1
                    else:
                        self.tally.failures.append(f"create {name}: 409 not our own: {r.text[:200]}")
                else:
                    self.tally.failures.append(f"create {name}: {r.status_code} {r.text[:200]}")
                await trio.sleep(self.pace_s)

    async def _follower(self, f: int, cursor: int) -> None:
        seen = self.tally.followed.setdefault(f, [])
        async with self.client(f"follower-{f}") as c:
            while True:
                r = await self._request(c, f"follow from {cursor}", "GET", "/changes",
                                        params={"cursor": cursor, "wait": 0 if self._draining else 5})
                if r is None or r.status_code != 200:
                    if r is not None:
                        self.tally.failures.append(f"follow from {cursor}: {r.status_code} {r.text[:200]}")
                    await trio.sleep(0.2)
                    continue
                page = r.json()
                self.tally.polls += 1
                seen.extend(ch["seq"] for ch in page["changes"])
                cursor = self.tally.ends[f] = page["cursor"]
                if self._draining and not page["changes"] and not page["has_more"]:
                    return


def journal_after(url: str, token: str, cursor: int) -> list[dict]:
    """Every journal entry after `cursor`, read in pages at the end of a run."""
    entries: list[dict] = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        while True:
            page = c.get("/changes", params={"cursor": cursor, "limit": 5000}).json()
            entries += page["changes"]
            cursor = page["cursor"]
            if not page["has_more"]:
                return entries


def check(tally: Tally, url: str, token: str) -> None:
    """Nothing lost, nothing twice: each acknowledged create is in the journal exactly
    once (one create, one version), nothing else was created, and every follower
    received every entry after its starting cursor, in order, once."""
    assert not tally.failures, tally.failures[:10]
    assert tally.created, "the writers created nothing"
    start = min(tally.starts.values())
    entries = journal_after(url, token, start)
    ours = [e for e in entries if _OURS.match(e["node"]["name"])]  # the account may have other devices
    creates = [e["node"]["name"] for e in ours if e["op"] != "delete"]
    assert len(creates) == len(set(creates)), "a create landed twice"
    assert sorted(creates) == sorted(tally.created), (set(creates) ^ set(tally.created))
    assert all(e["node"]["rev"] == 1 for e in ours), "a file got a second version"
    last_create = max(e["seq"] for e in ours)
    for f, seen in tally.followed.items():
        assert tally.ends[f] >= last_create, f"follower {f} stopped at {tally.ends[f]}, before {last_create}"
        seqs = [e["seq"] for e in entries if e["seq"] <= tally.ends[f]]
        assert seen == seqs, f"follower {f}: {len(seen)} entries, the journal has {len(seqs)}; " \
                             f"missing {sorted(set(seqs) - set(seen))[:10]}, extra {sorted(set(seen) - set(seqs))[:10]}"
