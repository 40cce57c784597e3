"""Group commit: many commits written in one transaction still get one answer each.

Over HTTP, on both engines: a burst of concurrent commits where some race from the
same base revision, some create the same name, some name chunks never uploaded and
some are simply good. Every request gets its own right answer, the good ones are all
committed, and the journal holds exactly them, in order.

In process, on both engines: the writer's own promises (writer.py) with jobs that
fail, refuse, or outlive a cancelled leader, and a batch whose COMMIT fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import anyio

from cloudfs.server.db import Database
from cloudfs.server.errors import Conflict
from cloudfs.server.sql import Stmt, Tx
from cloudfs.server.writer import Refused, Writer
from tests.conftest import Api, run_async
from tests.server.helpers import cursor, mkdir, put_file


def upload(api: Api, count: int) -> list[dict]:
    """`count` chunks uploaded the way a device does it; returns their ChunkRefs."""
    datas = [os.urandom(100 + i) for i in range(count)]
    refs = [{"fingerprint": hashlib.sha256(d).hexdigest(), "length": len(d)} for d in datas]
    prep = api.post("/uploads/prepare", json={"chunks": refs})
    assert prep.status_code == 200, prep.text
    by_fp = {r["fingerprint"]: d for r, d in zip(refs, datas)}
    for ticket in prep.json()["missing"]:
        up = ticket["upload"]
        r = api.request(up["method"], up["url"], content=by_fp[ticket["fingerprint"]],
                        headers={**up["headers"], "Authorization": ""})
        assert r.status_code < 300, r.text
    return refs


def test_concurrent_commits_each_get_their_own_answer(server, alice):
    folder = mkdir(alice, alice.root_id, "burst")
    olds = [put_file(alice, f"/burst/old{i}") for i in range(8)]
    refs = upload(alice, 40)  # on S3 these are still unverified: the first commits look in the store
    start = cursor(alice)
    missing = {"fingerprint": "0" * 64, "length": 5}

    def body(ref: dict, **target: Any) -> dict:
        return {**target, "size": ref["length"], "mtime_ns": time.time_ns(), "chunks": [ref]}

    requests: list[tuple[str, dict]] = []
    for i in range(16):
        requests.append(("new", body(refs[i], parent_id=folder["id"], name=f"new{i}", base_rev=0)))
    for i, old in enumerate(olds):  # two devices, same base: one wins
        requests.append(("race", body(refs[16 + i], node_id=old["id"], base_rev=1)))
        requests.append(("race", body(refs[24 + i], path=f"/burst/old{i}", base_rev=1)))
    for i in range(4):  # two devices create the same name: one wins
        requests.append(("twin", body(refs[32 + i], parent_id=folder["id"], name=f"twin{i}", base_rev=0)))
        requests.append(("twin", body(refs[36 + i], path=f"/burst/twin{i}", base_rev=0)))
    for i in range(6):
        requests.append(("missing", body(missing, parent_id=folder["id"], name=f"lost{i}", base_rev=0)))
    for i in range(4):
        requests.append(("stale", body(refs[i], path=f"/burst/old{i}", base_rev=7)))

    clients = [Api(alice.server, alice.token, device=f"dev-{i}") for i in range(16)]
    try:
        with ThreadPoolExecutor(len(clients)) as pool:
            answers = list(pool.map(lambda i: clients[i % len(clients)].post("/files", json=requests[i][1]),
                                    range(len(requests))))
    finally:
        for c in clients:
            c.close()

    done: dict[int, dict] = {}  # journal seq -> the commit answer that claims it
    for (kind, req), r in zip(requests, answers):
        if kind == "new":
            assert r.status_code == 200, r.text
        elif kind == "missing":
            assert r.status_code == 422 and r.json()["error"] == "missing_chunks", r.text
            assert r.json()["chunks"] == [{"fingerprint": "0" * 64, "problem": "not uploaded"}]
        elif kind == "stale":
            assert r.status_code == 409 and r.json()["error"] == "stale_revision", r.text
        if r.status_code == 200:
            answer = r.json()
            assert answer["node"]["size"] == req["size"] and answer["version"]["size"] == req["size"]
            assert answer["cursor"] not in done
            done[answer["cursor"]] = answer
    for i, old in enumerate(olds):
        pair = [answers[16 + 2 * i], answers[17 + 2 * i]]
        assert sorted(r.status_code for r in pair) == [200, 409], [r.text for r in pair]
        lost = next(r for r in pair if r.status_code == 409).json()
        assert lost["error"] == "stale_revision" and lost["current_rev"] == 2
        assert alice.get(f"/files/{old['id']}").json()["node"]["rev"] == 2
        assert [v["rev"] for v in alice.get(f"/files/{old['id']}/versions").json()["versions"]] == [2, 1]
    for i in range(4):
        pair = [answers[32 + 2 * i], answers[33 + 2 * i]]
        assert sorted(r.status_code for r in pair) == [200, 409], [r.text for r in pair]
        assert next(r for r in pair if r.status_code == 409).json()["error"] == "name_exists"
    assert len(done) == 16 + 8 + 4

    # The journal holds exactly the accepted commits, each once, in seq order, and
    # each answer's cursor is its own entry.
    feed = alice.get("/changes", params={"cursor": start, "limit": 1000}).json()
    seqs = [c["seq"] for c in feed["changes"]]
    assert seqs == sorted(seqs) and set(seqs) == set(done)
    for change in feed["changes"]:
        answer = done[change["seq"]]
        assert change["node"]["id"] == answer["node"]["id"] and change["node"]["rev"] == answer["version"]["rev"]
        assert change["op"] == ("create" if answer["version"]["rev"] == 1 else "modify")
    assert feed["cursor"] == max(done)
    names = {c["node"]["name"] for c in feed["changes"]}
    assert not any(n.startswith("lost") for n in names)


# --- the writer in process -----------------------------------------------------------

_PUT = Stmt("INSERT INTO settings (key, value) VALUES (:key, :value)")
_KEYS = Stmt("SELECT key FROM settings WHERE key LIKE 'k-%' ORDER BY key")


class Recorder:
    """Stands in for the ChangeNotifier: remembers who was woken."""

    def __init__(self) -> None:
        self.woken: list[int] = []

    def notify(self, owner_id: int) -> None:
        self.woken.append(owner_id)


def keys(db: Database) -> list[str]:
    with db.read() as conn:
        return [r["key"] for r in Tx.of(conn).all(_KEYS, {})]


def put(key: str, *, sleep: float = 0, then: Any = None):  # noqa: ANN201
    """A job that writes one row, then returns `then` (raises it, if an exception)."""
    def job(tx: Tx) -> Any:
        time.sleep(sleep)
        tx.run(_PUT, {"key": key, "value": "v"})
        if isinstance(then, BaseException):
            raise then
        return key if then is None else then
    return job


async def submit_all(writer: Writer, jobs: list[tuple[int, Any]]) -> list[Any]:
    """Submit the jobs concurrently, in this order; each result or exception."""
    results: list[Any] = [None] * len(jobs)

    async def one(i: int) -> None:
        try:
            results[i] = await writer.submit(jobs[i][0], jobs[i][1])
        except Exception as exc:  # noqa: BLE001 - compared by the test
            results[i] = exc

    async with anyio.create_task_group() as tg:
        for i in range(len(jobs)):
            tg.start_soon(one, i)
            await anyio.sleep(0)  # queue in this order
    return results


def test_jobs_that_arrive_during_a_batch_form_the_next_one(database):
    writer = Writer(database, Recorder())
    jobs = [(1, put("k-00", sleep=0.3))] + [(1, put(f"k-{i:02d}")) for i in range(1, 20)]
    results = run_async(submit_all, writer, jobs)
    assert results == [f"k-{i:02d}" for i in range(20)]
    assert (writer.batches, writer.jobs) == (2, 20)
    assert keys(database) == [f"k-{i:02d}" for i in range(20)]


def test_a_failing_job_rolls_back_only_itself(database):
    notifier = Recorder()
    writer = Writer(database, notifier)
    jobs = [
        (1, put("k-0", sleep=0.3)),                   # leads alone; the rest queue behind it
        (1, put("k-a")),
        (2, put("k-b", then=ValueError("job b failed after writing"))),
        (3, put("k-c")),
        (4, put("k-a")),                              # a duplicate key: the database refuses it
        (5, put("k-d", then=Refused(Conflict("refused, but keeps its row")))),
        (3, put("k-e")),
    ]
    results = run_async(submit_all, writer, jobs)
    assert results[:2] == ["k-0", "k-a"]
    assert isinstance(results[2], ValueError)
    assert results[3] == "k-c"
    assert "UNIQUE" in str(results[4]).upper() or "duplicate key" in str(results[4])
    assert isinstance(results[5], Conflict) and str(results[5]) == "refused, but keeps its row"
    assert results[6] == "k-e"
    assert (writer.batches, writer.jobs) == (2, 7)
    assert keys(database) == ["k-0", "k-a", "k-c", "k-d", "k-e"]
    # Woken once per batch per owner with a successful job; never for failed or refused ones.
    assert sorted(notifier.woken) == [1, 1, 3]


def test_a_failed_commit_fails_every_job_of_the_batch(database):
    class FailingCommit:
        """The database, except that COMMIT of a batch with k-x in it fails."""

        def __init__(self, db: Database) -> None:
            self.db = db

        @contextlib.contextmanager
        def write(self, *owner_ids: int) -> Iterator[Any]:
            with self.db.write(*owner_ids) as conn:
                yield conn
                if "k-x" in [r["key"] for r in Tx.of(conn).all(_KEYS, {})]:
                    raise OSError("disk full")

    notifier = Recorder()
    writer = Writer(FailingCommit(database), notifier)  # type: ignore[arg-type]
    jobs = [(1, put("k-0", sleep=0.3)), (1, put("k-1")), (2, put("k-x")), (2, put("k-2", then=ValueError("own")))]
    results = run_async(submit_all, writer, jobs)
    assert results[0] == "k-0"
    assert all(isinstance(r, OSError) for r in results[1:]), results
    assert keys(database) == ["k-0"]
    assert notifier.woken == [1]


def test_a_cancelled_leader_still_writes_its_batch_and_hands_on(database):
    writer = Writer(database, Recorder())

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.submit, 1, put("k-leader", sleep=0.3))
            await anyio.sleep(0.05)
            for i in range(5):
                tg.start_soon(writer.submit, 1, put(f"k-{i}"))
            await anyio.sleep(0.05)
            tg.cancel_scope.cancel()  # the leader is mid-batch, the others are queued

    run_async(main)
    # Every submitted job was written, whatever happened to its caller, and the lead
    # was passed on and given back.
    assert keys(database) == ["k-0", "k-1", "k-2", "k-3", "k-4", "k-leader"]
    assert writer.batches == 2 and not writer._leading


def test_a_statement_failing_unread_in_a_batch_rolls_back_only_its_job(database):
    """On PostgreSQL the batch runs in pipeline mode: a failing statement whose result
    nobody reads surfaces later, inside the job or at its end. The job still rolls back
    alone and the batch goes on (before the fix: `PipelineAborted` for everyone)."""
    from cloudfs.server.sql import Stmt

    insert = Stmt("INSERT INTO settings (key, value) VALUES (:key, 'x')")

    def duplicate_unread(tx: Tx) -> str:
        tx.send(insert, {"key": "k-dup"})
        tx.send(insert, {"key": "k-dup"})  # fails; nothing reads it here
        return "never"

    writer = Writer(database, Recorder())
    jobs = [(1, put("k-0", sleep=0.3)), (1, put("k-1")), (2, duplicate_unread), (3, put("k-2"))]
    results = run_async(submit_all, writer, jobs)
    assert results[:2] == ["k-0", "k-1"] and results[3] == "k-2", results
    assert "UNIQUE" in str(results[2]).upper() or "duplicate key" in str(results[2]), results[2]
    assert keys(database) == ["k-0", "k-1", "k-2"]
