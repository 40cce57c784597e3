"""One device's drive, assembled: cache, client, fetcher, uploader, syncer, follower.

`open_session` is the async context manager the mount uses; its background tasks live
in the caller's nursery (`session.start(nursery)`), so they end with the mount. It
first claims the cache directory and asks the server who we are (startup.py): a
refusal ends the start with one line for the user; a server that does not answer is
fatal only to a first mount (nothing cached to serve), otherwise the session starts
offline and says so in `notes`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

import lmdb
import trio

from .daily.ignore import IGNORE_FILE, IgnoreRules
from .daily.pins import Pins
from .daily.transfers import Transfers
from .errors import OfflineError, ServerError, UserError
from .local import cache_format
from .local.cache import ROOT_INO, Cache
from .local.chunkcache import ChunkCache
from .model.content import Content
from .model.drive import Drive
from .model.fetcher import Fetcher
from .protocol.api_client import ApiClient
from .startup import ServerUnreachableError, check_account, claim_cache, over_quota, probe_server
from .sync import shared
from .sync.follower import Follower, Invalidator
from .sync.streamer import Streamer
from .sync.syncer import Syncer
from .sync.uploader import Uploader

log = logging.getLogger("cloudfs.session")
HEARTBEAT_S = 2.0
QUOTA_EVERY = 2  # heartbeats between refreshes of the quota and the bytes used


@dataclass
class SessionOptions:
    server_url: str
    token: str
    cache_dir: Path
    cache_size: int
    device: str
    mountpoint: Path | None = None
    """Only to name this mount to another one that finds the cache taken."""
    delete_guard: int = 1000
    """Hold a burst of more deletes than this (0: never hold); see delete_guard.py."""
    delete_guard_fraction: float = 0.25


def default_cache_dir(base: Path, server_url: str, mountpoint: Path) -> Path:
    """One cache per server + mountpoint, so two mounts never share dirty data."""
    digest = hashlib.sha256(f"{server_url.rstrip('/')}\0{mountpoint.resolve()}".encode()).hexdigest()[:16]
    return base / digest


CLI_ROUTES = ("/history/", "/trash", "/restore", "/files/", "/devices", "/shares", "/resolve", "/me")
"""What `cloudfs versions|restore|trash|undelete|devices|share|shares` may ask through a mount."""


@dataclass
class Session:
    options: SessionOptions
    client: ApiClient
    cache: Cache
    chunks: ChunkCache
    drive: Drive
    syncer: Syncer
    follower: Follower
    fetcher: Fetcher
    uploader: Uploader
    streamer: Streamer
    pins: Pins
    ignore: IgnoreRules
    transfers: Transfers
    notes: list[str] = field(default_factory=list)
    """What the user should hear about the start: offline (and why), over quota."""
    offline_since: float | None = None
    """trio time since when the server has not answered (kept by the heartbeat)."""
    fsck_progress: dict | None = None
    """What a running fsck has checked so far (fsck.py), for its progress bar."""

    @property
    def offline(self) -> bool:
        return not self.client.reachable

    async def call_api(self, method: str, path: str, *, params: dict | None = None, json: object = None) -> dict:
        """The command line's way to the server through this mount's token, for the
        routes of the command line only (CLI_ROUTES); answers {"ok", "status", "body"}."""
        if method not in ("GET", "POST", "DELETE", "PATCH") or not path.startswith(CLI_ROUTES):
            return {"ok": False, "status": 0, "body": {"detail": f"{method} {path} is not a route for the command line"}}
        try:
            body = await self.client.request_json(method, path, params=params, json=json,
                                                  device=f"{self.options.device[:48]} (command line)")
        except ServerError as exc:
            return {"ok": False, "status": exc.status, "body": exc.body}
        except OfflineError as exc:
            return {"ok": False, "status": 0, "body": {"detail": f"the server is unreachable: {exc}"}}
        return {"ok": True, "status": 200, "body": body}

    async def start(self, nursery: trio.Nursery) -> None:
        self.fetcher.nursery = nursery
        await nursery.start(self.syncer.run)
        await nursery.start(self.follower.run)
        await nursery.start(self.streamer.run)
        await nursery.start(self.pins.run, self.follower)
        self.drive.forget_size = lambda parent, name: nursery.start_soon(self.follower.invalidate_entry, parent, name)
        nursery.start_soon(self._heartbeat)

    async def _heartbeat(self) -> None:
        """Notice a server that stopped answering while nothing else is asking it
        (a parked long-poll does not tell), so `status` says offline within seconds."""
        for beat in range(10**12):
            try:
                if beat % QUOTA_EVERY == 0:
                    me = await self.client.me()
                    self.drive.quota = (me.quota_bytes, me.used_bytes) if me.quota_bytes is not None else None
                else:
                    await self.client.health(HEARTBEAT_S)
            except (OfflineError, ServerError):
                pass
            if self.client.reachable:
                self.offline_since = None
            elif self.offline_since is None:
                self.offline_since = trio.current_time()
            await trio.sleep(HEARTBEAT_S)

    def status(self) -> dict:
        items = self.cache.outbox_items(limit=100_000)
        pending = {op.get("ino") for _, op in items if op.get("op") == "upload"}
        dirty = {n.ino for n in self.cache.iter_inodes() if n.dirty and n.parent}
        return {
            "online": self.client.reachable and self.syncer.online and self.follower.online,
            "pending_files": len(pending | dirty),
            "pending_ops": len(items),
            "pending_bytes": self.pending_bytes(),
            "cursor": self.follower.cursor,
            "cursors": {str(ns): cursor for ns, cursor in sorted(self.follower.cursors.items())},
            "cache_bytes": self.chunks.used_bytes,
            "cache_limit": self.chunks.limit,
            "conflicts": self.syncer.conflicts,
            "over_quota_files": len(self.syncer.quota_blocked),
            "uploaded_chunks": self.uploader.sent_chunks,
            "uploaded_bytes": self.uploader.sent_bytes,
            "cut_bytes": self.uploader.cut_bytes,
            "downloaded_bytes": self.fetcher.downloaded_bytes,
            "last_error": self.syncer.last_error or self.streamer.last_error,
            "held_deletes": self.syncer.guard.held,
            "streamed_bytes": self.streamer.streamed_bytes,
            "stream_rounds": self.streamer.rounds,
            "write_blocked": self.drive.room.stopped(),
            "token_refused": self.client.refused,
            "quota_bytes": self.drive.quota[0] if self.drive.quota else None,
            "used_bytes": self.drive.quota[1] if self.drive.quota else None,
            "shared_folders": len(self.follower.visible - {self.follower.user_id}),
        }

    def pending_bytes(self) -> int:
        """Bytes waiting for upload: dirty bytes, less what uploads under way already sent."""
        return max(0, self.chunks.dirty_bytes - self.transfers.sent_bytes("up"))

    def progress(self) -> dict:
        """What the progress bars follow (cheap: no walk over the tree)."""
        return {"pending_bytes": self.pending_bytes(), "pinned_missing_bytes": self.pins.missing_bytes,
                "transfers": self.transfers.current(), "fsck": self.fsck_progress}

    def uploading(self, ino: int) -> int:
        """Bytes of `ino` uploaded so far by an upload under way (0 when none is)."""
        return self.transfers.sent_for(ino)

    async def report(self) -> dict:
        """`cloudfs status`: `status()`, with what takes a walk or may read an ignore
        file: the files ignore rules keep here (not counted as pending), the pins and the
        transfers under way."""
        status = self.status()
        memo: dict[int, bool] = {}
        ignored, ignored_bytes = 0, 0
        for node in list(self.cache.iter_inodes()):
            if node.name == IGNORE_FILE and node.parent:
                with contextlib.suppress(OfflineError, ServerError):
                    await self.ignore.rules_of(node.parent)  # so a bad line is reported even if nothing is new
            if node.node_id or not node.parent or node.kind == "dir":
                continue
            try:
                if await self.ignore.ignored(node, memo):
                    ignored += 1
                    ignored_bytes += node.size if node.dirty else 0
            except (OfflineError, ServerError):
                continue  # its rules cannot be read now: it counts as pending
        status["ignored_files"] = ignored
        status["pending_files"] = max(0, status["pending_files"] - ignored)
        status["pending_bytes"] = max(0, status["pending_bytes"] - ignored_bytes)
        status["ignore_problems"] = self.ignore.problems
        status["transfers"] = self.transfers.current()
        return {**status, **self.pins.status()}

    def confirm_deletes(self) -> int:
        held = self.syncer.guard.held
        self.syncer.guard.confirm()
        self.syncer.wake()
        return held

    async def undo_deletes(self) -> int:
        """Drop the held deletes and bring those nodes back from the server."""
        node_ids = self.syncer.take_held_deletes()
        for node_id in node_ids:
            await self.follower.pull(node_id)
        await self.follower.settled()
        return len(node_ids)

    async def flush(self) -> None:
        """Upload every local change made so far, open files included."""
        dirty = [n.ino for n in self.cache.iter_inodes() if n.dirty and n.parent]
        with self.cache.write() as txn:
            last = 0
            for ino in dirty:
                last = self.cache.enqueue(txn, {"op": "upload", "ino": ino, "force": True})
            if not last:
                raw = txn.get(b"next_outbox", db=self.cache.meta)
                last = int(raw) - 1 if raw else 0
        self.syncer.wake()
        await self.syncer.wait_idle(last)

    async def sync(self, *, full: bool = False) -> None:
        """Local changes committed, then every remote change known now applied (with
        `full`, by comparing the whole tree with the server's)."""
        for _ in range(5):  # applying remote changes can queue local ones (conflicted copies)
            await self.flush()
            if full:
                await self.follower.reconcile()
                full = False
            me = await self.client.me()
            await self.follower.wait_for({int(ns): cursor for ns, cursor in me.cursors.items()} or
                                         {me.user_id: me.cursor})
            await self.follower.settled()
            if not self.cache.outbox_items(limit=1):
                return


async def _who_are_we(client: ApiClient, cache: Cache) -> list[str]:
    """Probe the server before serving: a refusal is fatal, silence only to a first mount."""
    try:
        me = await probe_server(client)
    except ServerUnreachableError as exc:
        if cache.get(ROOT_INO) is None:
            raise UserError(f"{exc.cause}, and a first mount needs the server (nothing is cached in {cache.path} "
                            f"yet): {exc.hint}") from None
        log.warning("starting offline: %s", exc)
        return [f"offline, {exc.cause}: what is cached is served and changes queue until the server answers"]
    check_account(cache, me)
    warning = over_quota(me)
    return [warning] if warning else []


def _why_stuck(client: ApiClient, syncer: Syncer, streamer: Streamer) -> str:
    """What keeps uploads from making room, in a few words for `cloudfs status`."""
    error = streamer.last_error or syncer.last_error
    if not (client.reachable and syncer.online):
        return f"server unreachable: {error}" if error else "server unreachable"
    if error:
        return f"uploads failing: {error}"
    return "uploads cannot keep up, or what is written cannot be uploaded yet (a file written out of order)"


@contextlib.asynccontextmanager
async def open_session(options: SessionOptions, invalidate: Invalidator | None = None,
                       migrating: cache_format.Working | None = None) -> AsyncIterator[Session]:
    """The mount's parts over one cache. `migrating` hears how far a long cache migration
    got (cache_format.upgrade), so a service manager can be told the start is moving."""
    lock_fd = claim_cache(options.cache_dir, options.mountpoint)
    try:
        cache = Cache(options.cache_dir)
    except lmdb.Error as exc:
        os.close(lock_fd)
        raise UserError(f"the cache {options.cache_dir} is damaged or not a cloudfs cache ({exc}): mount with "
                        f"another --cache DIR (keep this one aside if it may hold changes not yet uploaded)") from None
    except BaseException:
        os.close(lock_fd)
        raise
    try:
        cache_format.upgrade(cache, migrating)
    except cache_format.CacheFormatError as exc:
        cache.close()
        os.close(lock_fd)
        raise UserError(str(exc)) from None
    except BaseException:
        cache.close()
        os.close(lock_fd)
        raise
    client = ApiClient(options.server_url, options.token, device=options.device)
    try:
        notes = await _who_are_we(client, cache)
        chunks = ChunkCache(cache, options.cache_size)
        fetcher = Fetcher(client, chunks)
        content = Content(cache, chunks, fetcher)
        drive = Drive(cache, chunks, content, device=options.device)
        uploader = Uploader(client, cache, chunks, content)
        syncer = Syncer(client, cache, chunks, uploader, device=options.device, open_count=drive.open_count)
        syncer.guard.max_files, syncer.guard.fraction = options.delete_guard, options.delete_guard_fraction
        follower = Follower(client, cache, chunks, device=options.device, open_count=drive.open_count,
                            lookups=drive.lookups, writers=drive.writers, invalidate=invalidate, stale=drive.stale)
        drive.on_outbox = syncer.wake
        streamer = Streamer(cache, content, uploader, writers=drive.writers, lock=syncer.lock)
        drive.on_written = streamer.written
        drive.room.on_pressure = lambda: (syncer.wake(), streamer.press())
        drive.room.why = lambda: _why_stuck(client, syncer, streamer)
        transfers = uploader.transfers
        pins = Pins(cache, chunks, content, fetcher, transfers)
        ignore = IgnoreRules(cache, content)
        follower.on_replaced = pins.replaced
        syncer.keep_local = ignore.ignored
        syncer.on_stale = follower.refresh
        uploader.account = lambda: follower.user_id or None
        drive.server_refused = lambda ino: ino in syncer.quota_blocked and shared.namespace_of(cache, ino)[0] is not None
        syncer.forget_name = follower.invalidate_entry
        syncer.took_name = follower.took_name
        await follower.bootstrap()
        drive.recover()
        session = Session(options, client, cache, chunks, drive, syncer, follower, fetcher, uploader, streamer, pins,
                          ignore, transfers, notes)
        if not client.reachable:
            session.offline_since = trio.current_time()
        yield session
    finally:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(5):
                await client.aclose()
        cache.close()
        os.close(lock_fd)
