"""Group commit: every version commit of the process goes through one writer, which
writes whatever has queued up meanwhile in one transaction, with one fsync.

Why: a transaction costs a WAL fsync on SQLite (`synchronous=FULL`) and a WAL flush
on PostgreSQL, plus a thread hop and a connection checkout, and SQLite serialises its
writers anyway. Sixteen queued commits written together cost little more than one.

How (LevelDB's writer queue): a caller that finds the writer idle becomes the leader.
It takes every job queued at that moment (up to MAX_BATCH), runs them in one worker
thread inside one write transaction, each job in its own savepoint, commits, hands
each job its own answer, and passes the lead to the first job still waiting. So no
task outlives its request and nothing has to be started beside the app. There is no
waiting for company: an idle writer writes a lone commit at once, and batches form
only from what arrived while the previous batch was being written.

What a caller can rely on:
- Jobs run in arrival order, so one owner's journal order is the order in which its
  commits were accepted, and a job sees the writes of every job ahead of it.
- A job that raises is rolled back to its savepoint and its caller gets the exception;
  the rest of the batch is unaffected. A job that returns `Refused(error)` keeps its
  writes, and its caller gets `error`.
- A job's answer is handed out only after COMMIT. If anything outside the jobs fails
  (the lock, the commit itself), nothing of the batch is written and every caller in
  it gets that error.
- Each owner with a successful job is woken once per batch: its long-polls in this
  process through the notifier after COMMIT, other replicas through one `pg_notify`
  inside the transaction.
- A submitted job is written even if its request is cancelled meanwhile, as a commit
  that had reached its database thread always was; `submit` shields itself, so that
  a cancelled leader still finishes its batch and passes the lead on.
"""

from __future__ import annotations

import contextvars
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import anyio

from . import journal
from .db import Database
from .errors import ApiError
from .notifier import ChangeNotifier
from .sql import Tx

T = TypeVar("T")
MAX_BATCH = 128


@dataclass(frozen=True)
class Refused:
    """What a job returns to refuse its caller while keeping its writes."""

    error: ApiError


class _Job:
    __slots__ = ("owner_id", "fn", "turn", "finished", "value", "error")

    def __init__(self, owner_id: int, fn: Callable[[Tx], Any]) -> None:
        self.owner_id = owner_id
        self.fn = fn
        self.turn = anyio.Event()  # set when the job is finished, or when it is handed the lead
        self.finished = False
        self.value: Any = None
        self.error: BaseException | None = None


class Writer:
    """The one writer of version commits in this process (see the module docstring)."""

    def __init__(self, db: Database, notifier: ChangeNotifier, limiter: anyio.CapacityLimiter | None = None) -> None:
        self.db = db
        self.notifier = notifier
        self.limiter = limiter
        self._queue: deque[_Job] = deque()
        self._leading = False
        self.batches = 0
        """Batches written so far; with `jobs`, how well commits are grouped."""
        self.jobs = 0
        self.committed = 0
        """Jobs that wrote (not refused, not failed), in committed batches."""

    async def submit(self, owner_id: int, fn: Callable[[Tx], T], *args: Any, **kwargs: Any) -> T:
        """Run `fn(tx, *args, **kwargs)` in the next batch; its value, or its exception."""
        context = contextvars.copy_context()  # the request's (journal.ACTOR), in the batch's thread too
        job = _Job(owner_id, lambda tx: context.run(fn, tx, *args, **kwargs))
        self._queue.append(job)
        with anyio.CancelScope(shield=True):
            if self._leading:
                await job.turn.wait()
            else:
                self._leading = True
            if not job.finished:
                await self._lead()
        if job.error is not None:
            raise job.error
        return job.value

    async def _lead(self) -> None:
        batch = [self._queue.popleft() for _ in range(min(len(self._queue), MAX_BATCH))]
        changed: set[int] = set()
        try:
            changed = await anyio.to_thread.run_sync(self._write, batch, limiter=self.limiter)
        finally:
            # Hand the lead on first: the next batch is then on its way to the database
            # while this batch's answers are rendered and sent (wakers run in order).
            if self._queue:
                self._queue[0].turn.set()
            else:
                self._leading = False
            for job in batch:
                if not job.finished:  # the thread itself failed: nothing was committed
                    job.finished, job.value, job.error = True, None, RuntimeError("the commit batch was interrupted")
                job.turn.set()
            for owner_id in changed:
                self.notifier.notify(owner_id)

    def _write(self, batch: list[_Job]) -> set[int]:
        """In a worker thread: the whole batch in one transaction. Returns the owners
        whose journal grew."""
        self.batches += 1
        self.jobs += len(batch)
        changed: set[int] = set()
        try:
            with self.db.write(*{job.owner_id for job in batch}) as conn:
                tx = Tx.of(conn)
                with tx.pipelined():  # PostgreSQL: SAVEPOINT, RELEASE, pg_notify cost no round trip
                    for job in batch:
                        tx.savepoint()
                        try:
                            value = job.fn(tx)
                            tx.settle()  # its errors are its own, not the next job's
                        except Exception as exc:  # noqa: BLE001 - handed to the job's own caller
                            tx.rollback_to_savepoint()
                            tx.release()
                            job.error = exc
                            continue
                        tx.release()
                        if isinstance(value, Refused):
                            job.error = value.error
                        else:
                            job.value = value
                            changed.add(job.owner_id)
                    sent_at = time.time()
                    for owner_id in sorted(changed):
                        journal.wake_other_replicas(tx, owner_id, sent_at=sent_at)
        except Exception as exc:  # noqa: BLE001 - the batch failed as a whole: every caller hears it
            for job in batch:
                job.value, job.error, job.finished = None, exc, True
            return set()
        for job in batch:
            job.finished = True
            self.committed += job.error is None
        return changed
