"""Wakes long-polling `/changes` requests when an owner's journal grows.

Within one server process a commit calls `notify` directly. Across replicas on
PostgreSQL, every journal append also issues `pg_notify('cloudfs_journal', owner)`,
delivered at commit time, and `listen_postgres` relays those into `notify`, so a
long-poll held by any replica wakes for a commit made on any other.

Concurrency: all methods run on the event-loop thread; an idle waiter costs one shared
`anyio.Event` per owner and no thread. An owner is a namespace (an account's tree or a
shared folder); a long-poll over several of them (`listen`) holds one event of its own,
registered under each.
"""

from __future__ import annotations

import logging

import psycopg
import anyio
from anyio.abc import TaskStatus

log = logging.getLogger("cloudfs.server")

CHANNEL = "cloudfs_journal"


class ChangeNotifier:
    def __init__(self) -> None:
        self._events: dict[int, anyio.Event] = {}
        self._generation: dict[int, int] = {}
        self._listeners: dict[int, set[anyio.Event]] = {}
        self.closing = False

    def generation(self, owner_id: int) -> int:
        """Bumped by every notify: two readers that took their waiter in the same
        generation may share one journal read."""
        return self._generation.get(owner_id, 0)

    def waiter(self, owner_id: int) -> anyio.Event:
        """The event that is set on the owner's next change. Take it *before* reading
        the journal, so a change landing in between is not missed."""
        event = self._events.get(owner_id)
        if event is None:
            event = self._events[owner_id] = anyio.Event()
        if self.closing:
            event.set()
        return event

    def listen(self, owner_ids: list[int]) -> anyio.Event:
        """One event set on the next change of any of these owners (a device following
        all its namespaces with one long-poll: one event, however many namespaces).
        Take it before reading, like `waiter`; give it back with `unlisten`."""
        event = anyio.Event()
        for owner_id in owner_ids:
            self._listeners.setdefault(owner_id, set()).add(event)
        if self.closing:
            event.set()
        return event

    def unlisten(self, owner_ids: list[int], event: anyio.Event) -> None:
        for owner_id in owner_ids:
            listeners = self._listeners.get(owner_id)
            if listeners is not None:
                listeners.discard(event)
                if not listeners:
                    del self._listeners[owner_id]

    def notify(self, owner_id: int) -> None:
        self._generation[owner_id] = self._generation.get(owner_id, 0) + 1
        event = self._events.pop(owner_id, None)
        if event is not None:
            event.set()
        for listener in self._listeners.get(owner_id, ()):
            listener.set()

    def notify_all(self) -> None:
        for owner_id in self._events:
            self._generation[owner_id] = self._generation.get(owner_id, 0) + 1
        events, self._events = self._events, {}
        for event in events.values():
            event.set()
        for listeners in self._listeners.values():
            for listener in listeners:
                listener.set()

    def close(self) -> None:
        """Server shutdown: every long-poll answers now with what it has."""
        self.closing = True
        self.notify_all()


async def listen_postgres(dsn: str, notifier: ChangeNotifier, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    """Relay PostgreSQL notifications into `notifier` until cancelled.

    psycopg's `notifies` blocks, so it runs in a worker thread with a short timeout:
    cancellation waits at most that long for the thread to come back."""
    conn = await anyio.to_thread.run_sync(lambda: psycopg.connect(dsn, autocommit=True))
    try:
        await anyio.to_thread.run_sync(conn.execute, f"LISTEN {CHANNEL}")
        task_status.started()

        def wait() -> list[str]:
            return [n.payload for n in conn.notifies(timeout=0.5, stop_after=1000)]

        while True:
            try:
                payloads = await anyio.to_thread.run_sync(wait)
            except psycopg.Error as exc:
                log.warning("lost the PostgreSQL LISTEN connection (%s); waking every long-poll and reconnecting", exc)
                notifier.notify_all()
                await anyio.sleep(1)
                conn.close()
                conn = await anyio.to_thread.run_sync(lambda: psycopg.connect(dsn, autocommit=True))
                await anyio.to_thread.run_sync(conn.execute, f"LISTEN {CHANNEL}")
                continue
            for payload in set(payloads):
                try:
                    notifier.notify(int(payload))
                except ValueError:
                    log.warning("ignoring notification %r on %s", payload, CHANNEL)
    finally:
        conn.close()
