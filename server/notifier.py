"""Wakes long-polling `/changes` requests when an owner's journal grows.

Within one server process a commit calls `notify` directly. Across replicas on
PostgreSQL, every journal append also issues `pg_notify('cloudfs_journal', owner)`,
delivered at commit time, and `listen_postgres` relays those into `notify`, so a
long-poll held by any replica wakes for a commit made on any other.

Concurrency: all methods run on the event-loop thread; an idle waiter costs one shared
`anyio.Event` per owner and no thread. An owner is a namespace (an account's tree or a
shared folder); a long-poll over several of them (`listen`) holds one event of its own,
registered under each.

Known-empty pages: once a journal read found nothing after an owner's cursor, the
same question gets the same answer until the owner's next notify (which forgets
it), so a device's next long-poll from that cursor parks without reading the
database. Only long-polls use it: they would park on the same waiter anyway, and
what a notification still on its way from another replica carries wakes them.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import psycopg
import anyio
from anyio.abc import TaskStatus

log = logging.getLogger("cloudfs.server")

CHANNEL = "cloudfs_journal"


class ChangeNotifier:
    def __init__(self) -> None:
        self._events: dict[int, anyio.Event] = {}
        self._generation: dict[int, int] = {}
        self._empty: dict[int, tuple[int, bytes]] = {}
        """owner -> (cursor, the rendered empty page) found since its last notify."""
        self._listeners: dict[int, set[anyio.Event]] = {}
        self._empty_sync: dict[int, tuple[object, tuple[int, ...], bytes]] = {}
        """account -> (its cursors, the generations of its namespaces, the rendered empty
        answer) of its devices' last POST /sync that found nothing: one per account."""
        self.closing = False

    def known_empty(self, owner_id: int, cursor: int) -> bytes | None:
        """The empty page a read found after `cursor` since the owner's last change, if any."""
        hit = self._empty.get(owner_id)
        return hit[1] if hit is not None and hit[0] == cursor else None

    def remember_empty(self, owner_id: int, cursor: int, generation: int, page: bytes) -> None:
        """A read that took its waiter in `generation` found nothing after `cursor`;
        kept only if no change has been notified since."""
        if generation == self.generation(owner_id):
            self._empty[owner_id] = (cursor, page)

    def known_empty_sync(self, account_id: int, cursors: object, generations: tuple[int, ...]) -> bytes | None:
        """`known_empty` for a long-poll over several namespaces (POST /sync): the empty
        answer found for these cursors, if none of the namespaces changed since
        (`generations`, in the order they were taken)."""
        hit = self._empty_sync.get(account_id)
        return hit[2] if hit is not None and hit[0] == cursors and hit[1] == generations else None

    def remember_empty_sync(self, account_id: int, cursors: object, generations: tuple[int, ...],
                            page: bytes) -> None:
        """A read that began at `generations` found nothing after `cursors`."""
        self._empty_sync[account_id] = (cursors, generations, page)

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
        self._empty.pop(owner_id, None)
        event = self._events.pop(owner_id, None)
        if event is not None:
            event.set()
        for listener in self._listeners.get(owner_id, ()):
            listener.set()

    def notify_all(self) -> None:
        for owner_id in self._events:
            self._generation[owner_id] = self._generation.get(owner_id, 0) + 1
        self._empty.clear()
        self._empty_sync.clear()
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


async def listen_postgres(dsn: str, notifier: ChangeNotifier, *, ping_s: float = 10.0, retry_s: float = 1.0,
                          observe_lag: Callable[[float], None] | None = None,
                          task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    """Relay PostgreSQL notifications into `notifier` until cancelled.

    On psycopg's async connection, on the server's own event loop: a notification is
    passed on the moment its packet is read (a thread blocked in `notifies(timeout=)`
    held each one until its timeout ran out, which made a change through one replica
    reach a long-poll on another 0.3 s late). Every `ping_s` the connection is asked
    `SELECT 1`, so a dead one is noticed even when nothing is being committed.

    A lost connection may have swallowed notifications: every long-poll is woken (it
    reads the journal again from its cursor, so nothing is missed, only re-read) once
    when the loss is seen and once more when LISTEN holds again; meanwhile the relay
    reconnects every `retry_s`, and the HTTP side keeps serving. `observe_lag` gets
    the seconds from each timed notification's transaction to its arrival here."""
    conn = await _listening(dsn)
    task_status.started()
    while True:
        try:
            while True:
                async for notify in conn.notifies(timeout=ping_s):
                    owner_id, sent_at = _parse(notify.payload)
                    if owner_id >= 0:
                        notifier.notify(owner_id)
                    if sent_at is not None and observe_lag is not None:
                        observe_lag(max(0.0, time.time() - sent_at))
                with anyio.fail_after(ping_s):  # a connection that hangs is as good as lost
                    await conn.execute("SELECT 1")  # what arrives meanwhile waits in psycopg's backlog
        except (psycopg.Error, TimeoutError) as exc:
            log.warning("lost the PostgreSQL LISTEN connection (%s); waking every long-poll and reconnecting", exc)
        finally:
            await _close(conn)
        notifier.notify_all()
        while True:
            await anyio.sleep(retry_s)
            try:
                conn = await _listening(dsn)
                break
            except (psycopg.Error, OSError) as exc:
                log.warning("cannot LISTEN on PostgreSQL yet (%s); retrying in %g s", exc, retry_s)
        log.info("listening for PostgreSQL notifications again")
        notifier.notify_all()


async def _listening(dsn: str) -> psycopg.AsyncConnection:
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=5,
                                                 application_name="cloudfs server")
    try:
        await conn.execute(f"LISTEN {CHANNEL}")
    except BaseException:
        await _close(conn)
        raise
    return conn


async def _close(conn: psycopg.AsyncConnection) -> None:
    """Also when cancelled (server shutdown): a bounded, shielded close."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(2):
        await conn.close()


def _parse(payload: str) -> tuple[int, float | None]:
    """`OWNER` or `OWNER SENT_AT` (journal.wake_other_replicas); (-1, None) if neither."""
    try:
        owner, _, sent_at = payload.partition(" ")
        return int(owner), (float(sent_at) if sent_at else None)
    except ValueError:
        log.warning("ignoring notification %r on %s", payload, CHANNEL)
        return -1, None
