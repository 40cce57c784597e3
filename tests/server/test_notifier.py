"""The PostgreSQL LISTEN relay (notifier.listen_postgres), in this process against the
real test PostgreSQL: how fast a notification reaches a waiter, and what happens when
the LISTEN connection is cut."""

from __future__ import annotations

import statistics
import time
from typing import Iterator

import anyio
import psycopg
import pytest

from tests.conftest import run_async

from cloudfs.server.notifier import CHANNEL, ChangeNotifier, listen_postgres
from tests.harness import postgres_database


@pytest.fixture
def pg_db(pg_admin_url: str) -> Iterator[str]:
    with postgres_database(pg_admin_url) as url:
        yield url


async def _notify(dsn: str, owner: int) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(owner)))


def test_a_notification_is_passed_on_at_once(pg_db: str) -> None:
    """Before: a thread waited in `notifies(timeout=0.5)` and handed over what it had
    only when the timeout ran out, 0.25 s late on average. The median of 8 must be
    well below that (it is a few ms)."""
    delays: list[float] = []

    async def main() -> None:
        notifier = ChangeNotifier()
        async with anyio.create_task_group() as tg:
            await tg.start(listen_postgres, pg_db, notifier)
            async with await psycopg.AsyncConnection.connect(pg_db, autocommit=True) as conn:
                for round_no in range(8):
                    woken = notifier.waiter(7)
                    await anyio.sleep(0.05 * (round_no % 3))  # land anywhere in a would-be timeout period
                    sent = time.perf_counter()
                    await conn.execute("SELECT pg_notify(%s, '7')", (CHANNEL,))
                    with anyio.fail_after(5):
                        await woken.wait()
                    delays.append(time.perf_counter() - sent)
            tg.cancel_scope.cancel()

    run_async(main)
    assert statistics.median(delays) < 0.1, delays


def test_a_lost_connection_wakes_everyone_and_listening_resumes(pg_db: str) -> None:
    """The relay's backend is killed: every long-poll is woken (a notification may
    have been lost with the connection), and after the reconnect notifications flow
    again. Before, a reconnect that failed once ended the server's task group."""
    async def main() -> None:
        notifier = ChangeNotifier()
        async with anyio.create_task_group() as tg:
            await tg.start(lambda task_status: listen_postgres(pg_db, notifier, ping_s=0.5, retry_s=0.2,
                                                               task_status=task_status))
            someone = notifier.waiter(1)
            async with await psycopg.AsyncConnection.connect(pg_db, autocommit=True) as admin:
                await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                    "WHERE query LIKE 'LISTEN%%' AND datname = current_database()")
            with anyio.fail_after(5):
                await someone.wait()  # woken without any notification
            deadline = time.monotonic() + 10
            while True:  # the relay reconnects: a notification arrives again
                again = notifier.waiter(2)
                await _notify(pg_db, 2)
                with anyio.move_on_after(0.5):
                    await again.wait()
                if again.is_set() and notifier.generation(2) > 0:
                    break
                assert time.monotonic() < deadline, "no notification after the reconnect"
            tg.cancel_scope.cancel()

    run_async(main)


def test_a_known_empty_page_lasts_until_the_owners_next_change() -> None:
    """What lets an idle device's next long-poll park without a database read: the
    empty page is kept per owner and cursor, forgotten by the owner's next notify or
    by a wake-up of everyone (a lost LISTEN connection), and never kept when a change
    was notified while the read that found it ran."""
    async def main() -> None:
        notifier = ChangeNotifier()
        page = b'{"changes":[],"cursor":7,"has_more":false}'
        notifier.remember_empty(1, 7, notifier.generation(1), page)
        assert notifier.known_empty(1, 7) == page
        assert notifier.known_empty(1, 6) is None and notifier.known_empty(2, 7) is None
        notifier.notify(2)
        assert notifier.known_empty(1, 7) == page  # another owner's change
        notifier.notify(1)
        assert notifier.known_empty(1, 7) is None

        read_began = notifier.generation(1)
        notifier.notify(1)  # lands while the read runs
        notifier.remember_empty(1, 7, read_began, page)
        assert notifier.known_empty(1, 7) is None

        notifier.remember_empty(1, 8, notifier.generation(1), page)
        notifier.notify_all()
        assert notifier.known_empty(1, 8) is None

    run_async(main)


def test_a_known_empty_sync_answer_lasts_until_one_of_its_namespaces_changes() -> None:
    """The same for a long-poll over several namespaces: kept per account, for one set
    of cursors, valid while the generations of every namespace it watches are those its
    read began at; a wake-up of everyone forgets it."""
    async def main() -> None:
        notifier = ChangeNotifier()
        page = b'{"changes":[]}'
        asked = (((1, 5), (9, 3)), 1000)
        began = (notifier.generation(1), notifier.generation(9))
        notifier.remember_empty_sync(1, asked, began, page)
        assert notifier.known_empty_sync(1, asked, began) == page
        assert notifier.known_empty_sync(1, (((1, 5), (9, 4)), 1000), began) is None  # other cursors
        assert notifier.known_empty_sync(2, asked, began) is None  # another account
        notifier.notify(7)
        assert notifier.known_empty_sync(1, asked, (notifier.generation(1), notifier.generation(9))) == page
        notifier.notify(9)  # the shared folder changed
        assert notifier.known_empty_sync(1, asked, (notifier.generation(1), notifier.generation(9))) is None
        now = (notifier.generation(1), notifier.generation(9))
        notifier.remember_empty_sync(1, asked, now, page)
        notifier.notify_all()
        assert notifier.known_empty_sync(1, asked, now) is None

    run_async(main)
