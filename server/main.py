"""`cloudfs server`: open the database and store, serve HTTP until SIGINT/SIGTERM.

One root nursery holds the HTTP server, the PostgreSQL LISTEN relay and the journal
pruner. A signal first answers every long-poll, then lets hypercorn finish in-flight
requests and exit; the process returns 0.
"""

from __future__ import annotations

import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from cloudfs.backend.s3store import S3Store
from cloudfs.backend.store import open_store

from . import journal
from .app import ServerContext, create_app
from .db import Database, open_database, users
from .notifier import listen_postgres

log = logging.getLogger("cloudfs.server")


@dataclass
class ServerOptions:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8470
    db_url: str | None = None
    store_url: str | None = None
    journal_retain: int = 1_000_000
    prune_interval: float = 300.0


async def prune_journal(db: Database, retain: int, interval: float) -> None:
    """Bound the journal: keep each user's newest `retain` entries."""
    def run() -> int:
        with db.read() as conn:
            owner_ids = [r.id for r in conn.execute(users.select().with_only_columns(users.c.id))]
        pruned = 0
        for owner_id in owner_ids:
            with db.write(owner_id) as conn:
                pruned += journal.prune(conn, owner_id, retain)
        return pruned

    while True:
        await trio.sleep(interval)
        pruned = await trio.to_thread.run_sync(run)
        if pruned:
            log.info("pruned %d journal entries", pruned)


async def serve_forever(options: ServerOptions) -> None:
    db = await trio.to_thread.run_sync(open_database, options.data_dir, options.db_url)
    secret = await trio.to_thread.run_sync(db.signing_secret)
    store = open_store(options.store_url or str(options.data_dir / "chunks"), data_dir=options.data_dir, secret=secret)
    if isinstance(store, S3Store):
        await trio.to_thread.run_sync(store.ensure_bucket)
    ctx = ServerContext(db=db, store=store)
    app = create_app(ctx)

    config = Config()
    config.bind = [f"{options.host}:{options.port}"]
    config.accesslog = None  # app.AccessLog logs each request; hypercorn's copies os.environ per line
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 10
    config.keep_alive_timeout = 75

    async def until_signal() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("got %s: answering long-polls, finishing in-flight requests", signal.Signals(signum).name)
                ctx.notifier.close()
                return

    try:
        async with trio.open_nursery() as nursery:
            if not db.is_sqlite:
                dsn = db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
                await nursery.start(listen_postgres, dsn, ctx.notifier)
            nursery.start_soon(prune_journal, db, options.journal_retain, options.prune_interval)

            async def run_http(task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
                await serve(app, config, shutdown_trigger=until_signal, task_status=task_status)
                nursery.cancel_scope.cancel()  # HTTP is done: stop the helpers too

            for bind in await nursery.start(run_http):
                print(f"cloudfs server listening on {bind}", flush=True)
    finally:
        db.dispose()


def run(options: ServerOptions) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    trio.run(serve_forever, options)
    return 0
