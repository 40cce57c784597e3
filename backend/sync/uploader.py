"""Uploading one file's content: chunk, ask what is missing, compress, PUT it, commit.

The file is streamed through the chunker in a worker thread (`ContentReader`), so
memory holds only the chunks in flight, whatever the file size: a byte budget
(BUDGET_BYTES) bounds the pieces between the chunker and the end of their batch, so
the bound holds for 64 MiB chunks as well as for 1 MiB ones. Pieces flow through an
unbuffered channel to the batch loop; the server is asked in batches which chunks it
lacks, and only those are sent. The commit names the base revision the device
started from; the dirty blocks are dropped only after the commit succeeded, and only
if the file did not change meanwhile (its `gen` is unchanged); if it did, only the
blocks written during the upload (`Content.watch`) are kept.

A file whose first chunks were streamed while it was being written (prefix.py,
streamer.py) is walked (`prefix.walk`): the streamed chunks still valid are named, not
read again; the rest is cut and sent as usual. Streaming rounds use the same pipeline
(`send_walk`), with the last piece held back and their progress recorded batch by batch.

Compression (compress.py) is decided once per file from its name and first bytes,
then per chunk by a probe. Only chunks the server lacks are compressed: a batch is
prepared as plain chunks first, the missing ones that compress are prepared again
with their zstd length and hash (the server then signs URLs for the compressed
bodies), so re-uploading a large edited text file compresses only what changed.
Chunks of at most EAGER_BYTES are compressed before the first prepare instead (the
CPU is negligible and a small file then costs one prepare, not two).

Concurrency: the producer thread only reads (LMDB read transactions, and fetches of
base chunks through `trio.from_thread`) and gives the LMDB map's pages back as it goes
(`Cache.mapped`); everything else runs on the trio thread. The budget's waiters are the producer alone.
"""

from __future__ import annotations

import base64
import contextvars
import io
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable, Iterator

import trio

from ..chunker import average_at, forced_average, iter_pieces
from ..daily.transfers import Transfer, Transfers
from ..errors import ConflictError, OfflineError, ServerError, one_error
from ..local.cache import BLOCK_SIZE, Cache, ChunkEntry, Inode
from ..local.chunkcache import ChunkCache, seal
from ..model.content import Content, ContentReader, Watch
from ..protocol import wire
from ..protocol.api_client import ApiClient
from ..stores.compress import Packed, compress, skip_reason
from .prefix import Prefix, Ranges, Reused, walk

if TYPE_CHECKING:
    import lmdb

log = logging.getLogger("cloudfs.uploader")

MiB = 1024 * 1024
BATCH = 16
BATCH_BYTES = 32 * MiB
BUDGET_BYTES = 64 * MiB
"""Plain bytes of pieces held between the chunker and the end of their batch, each
piece counted whole (up to the whole budget). A piece that does not fit while the
batch loop waits to fill its batch first sends `_FLUSH`: the unfinished batch is sent,
its bytes come back, and the loop cannot deadlock. (Pieces used to count at most
BUDGET_BYTES - BATCH_BYTES so that an unfinished batch always left room: at 16 MiB
averages, whose chunks reach 64 MiB, the budget then held up to twice its size.)"""
PARALLEL_PUTS = 8
CHECKS_AT_ONCE = 2
"""Batches the server may be reading back for one upload at once (check_after_put)."""
KEEP_MAX_BYTES = 16 * MiB
"""The longest chunk the uploader keeps a clean copy of (`_keep`): the largest at the 4 MiB
average, so every file under 16 GiB is kept whole. Keeping a chunk holds it twice more
for a moment (sealed, and in LMDB's dirty pages until the commit); at 16 MiB averages
(chunks up to 64 MiB) that took a 4 GiB upload's mount from 165 to 235-286 MiB
anonymous. The chunks of a file past 16 GiB are kept only when short: such a file does
not fit in the default cache anyway, and a read fetches the others back."""
EAGER_BYTES = 256 * 1024
_TRANSFER: contextvars.ContextVar[Transfer | None] = contextvars.ContextVar("cloudfs_upload", default=None)
"""The upload a task works for: trio's child tasks and worker threads inherit it, so a
PUT deep in a batch counts towards its file's progress without being told which."""
COMMITTED_ATTRS = ("mode", "mtime_ns")
"""The attributes a commit of an existing file sets (wire.CommitRequest)."""
CLOCK_SLACK_S = 10.0
"""How far this device's clock may run ahead of the server's: a version the server
dated before the first try of a create by up to this is still counted as that try's."""


@dataclass(frozen=True)
class FirstTry:
    """When a new file's create was first tried (unix time), and the journal position this
    device had read before it (`Syncer._journal_position`; None in a try noted before
    positions were kept): every entry a try made lies past it."""
    at: float
    after: int | None


@dataclass
class UploadResult:
    response: wire.CommitResponse
    refs: list[tuple[str, int]]
    gen: int
    size: int
    sent_chunks: int
    sent_bytes: int
    watch: Watch
    settles: bool = False
    """The file's blocks held all of it and no sent chunk was kept: if the commit finds it
    unchanged, the blocks stay as the cached copy of the new version (`Cache.settle`)."""
    landed_before: bool = False
    """The answer is an earlier try of this create, found after the fact
    (`Uploader._landed_before`): the node may have changed, moved or gone since."""


@dataclass
class _Outgoing:
    """A piece on its way: may it be compressed, and its compressed body once made."""

    fingerprint: str
    length: int
    data: bytes | memoryview
    """The plain bytes; b"" once its batch is done (`drop`)."""
    compressible: bool
    held: int
    """Bytes of the budget it holds."""
    packed: Packed | None = None
    tried: bool = False
    """Compression was tried (`packed` None then means: it did not pay)."""

    def pack(self) -> None:
        self.packed, self.tried = compress(self.data), True

    def drop(self) -> None:
        """Forget the bytes once the batch is done. trio's tasks and thread calls can
        keep this object alive in reference cycles until the cyclic GC runs, and large
        bytes objects never trigger it: without this, a 1 GiB upload at 16 MiB chunks
        left ~120 MiB of finished chunks in memory (gc.collect() freed them)."""
        self.data, self.packed = b"", None

    def seal_and_drop(self) -> list[bytes]:
        """`chunkcache.seal(data)`, forgetting the bytes (see `ChunkCache.put_sealed`)."""
        sealed = seal(self.data)
        self.drop()
        return sealed

    def describe(self) -> wire.ChunkUpload:
        if self.packed is None:
            return wire.ChunkUpload(fingerprint=self.fingerprint, length=self.length)
        return wire.ChunkUpload(fingerprint=self.fingerprint, length=self.length, compression=self.packed.compression,
                                stored_length=len(self.packed.body), stored_sha256=self.packed.sha256)

    @property
    def body(self) -> bytes | memoryview:
        return self.packed.body if self.packed is not None else self.data


class _Flush:
    """Sent by the producer instead of a piece that does not fit in the budget: send the
    unfinished batch now, its bytes are what the piece waits for."""


_FLUSH = _Flush()


class _Unmapping:
    """Reads through `reader`, giving back the LMDB map's pages as it goes (`Cache.mapped`)."""

    def __init__(self, reader: ContentReader, cache: Cache) -> None:
        self.reader = reader
        self.cache = cache

    def read(self, n: int = -1) -> bytes:
        data = self.reader.read(n)
        self.cache.mapped(len(data))
        return data


class ByteBudget:
    """A counting semaphore over bytes (trio's count units, and one unit per byte
    would mean one acquire per byte)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._freed = trio.Event()

    def fits(self, n: int) -> bool:
        """`acquire(n)` would not wait."""
        return self.used + min(n, self.limit) <= self.limit

    async def acquire(self, n: int) -> int:
        """Take `n` bytes (at most the whole limit); returns what was taken."""
        n = min(n, self.limit)
        while self.used + n > self.limit:
            if self._freed.is_set():
                self._freed = trio.Event()
            await self._freed.wait()
        self.used += n
        return n

    def release(self, n: int) -> None:
        self.used -= n
        self._freed.set()


class Uploader:
    def __init__(self, client: ApiClient, cache: Cache, chunks: ChunkCache, content: Content) -> None:
        self.client = client
        self.cache = cache
        self.chunks = chunks
        self.content = content
        self.account: Callable[[], int | None] = lambda: None
        """This device's account id once known (the follower's): a version is ours only
        if this account made it, since two accounts may each have a device of one name."""
        self.sent_chunks = 0
        self.sent_bytes = 0
        """Bytes PUT to the store (compressed bodies count as stored)."""
        self.sent_plain_bytes = 0
        self.cut_bytes = 0
        """Bytes uploads read and cut into chunks; a chunk named again unchanged (a
        streamed prefix's, prefix.py) is not read."""
        self.compressed_chunks = 0
        self.transfers = Transfers()
        """Uploads under way, chunk by chunk (`cloudfs status`; the session shares it)."""

    async def upload(self, node: Inode, *, parent_node_id: int,
                     sending: Callable[[wire.CommitRequest], None] | None = None,
                     first_try: FirstTry | None = None, retrying: bool = False) -> UploadResult:
        """Commit `node`'s current content as a new version; raises the server's error
        (StaleRevisionError, MissingChunksError ...) untouched for the caller to handle.
        The caller holds the file's upload lock and passes the result to `finish_upload`.
        Its progress is a transfer ("up") from the first PUT to the commit's answer.
        `sending` hears of the commit just before it goes (syncer: creates.py).
        `first_try`: of this new file's create (`_landed_before`); `retrying`: this try is
        not the first, so an earlier one is looked for before anything is sent."""
        transfer = self.transfers.start("up", "/" + "/".join(self.cache.names_to(node.ino)), node.size, key=node.ino)
        reset = _TRANSFER.set(transfer)
        try:
            return await self._upload(node, parent_node_id=parent_node_id, sending=sending, first_try=first_try,
                                      retrying=retrying)
        finally:
            _TRANSFER.reset(reset)
            self.transfers.finish(transfer)

    async def _upload(self, node: Inode, *, parent_node_id: int,
                      sending: Callable[[wire.CommitRequest], None] | None, first_try: FirstTry | None,
                      retrying: bool) -> UploadResult:
        gen, size, mtime_ns = node.gen, node.size, node.mtime_ns
        settles = False
        base = await self.content.base_chunks(node)
        watch = self.content.watches[node.ino] = Watch()
        try:
            inline: list[wire.InlineChunk] | None = None
            if size <= wire.INLINE_MAX_BYTES:
                refs, inline = await self._inline(node, size)
                sent_chunks, sent_bytes = len(inline), sum(len(c.data) for c in inline)
            else:
                prefix = self.content.walk_prefix(node, base)
                settles = await self.content.blocks_cover(node, size)
                refs, sent_chunks, sent_bytes = await self.send_walk(node, base, prefix, size, final=True,
                                                                     keep=not settles)
            existing = node.node_id if node.bound else 0  # detached: its node is gone
            request = wire.CommitRequest(
                node_id=existing or None,
                parent_id=None if existing else parent_node_id,
                name=None if existing else node.name,
                base_rev=node.rev if existing else 0,
                size=size, mtime_ns=mtime_ns, mode=node.mode,
                chunks=[wire.ChunkRef(fingerprint=fp, length=length) for fp, length in refs],
                inline=inline or None,
            )
            if sending is not None:
                sending(request)
            response: wire.CommitResponse | None = None
            landed: Callable[[], Awaitable[wire.CommitResponse | None]] | None = None
            found: list[wire.CommitResponse] = []
            if not existing:  # a create: each try after the first asks whether one before landed
                tried = first_try or FirstTry(time.time(), None)

                async def landed_before() -> wire.CommitResponse | None:
                    answer = await self._landed_before(request, refs, tried, node.ino, node.node_id)
                    if answer is not None:
                        found.append(answer)
                    return answer
                landed = landed_before
                if retrying:
                    response = await landed()
            try:
                response = response or await self.client.commit(request, landed=landed)
            except ServerError as exc:
                response = await self._landed_already(exc, node.ino, request, refs)
                if response is None:
                    raise
        except BaseException:
            self.content.watches.pop(node.ino, None)
            raise
        self.sent_chunks += sent_chunks
        self.sent_bytes += sent_bytes
        return UploadResult(response, refs, gen, size, sent_chunks, sent_bytes, watch, settles,
                            landed_before=any(answer is response for answer in found))

    async def _inline(self, node: Inode, size: int) -> tuple[list[tuple[str, int]], list[wire.InlineChunk]]:
        """A small file travels inside its commit: one round trip instead of prepare, PUT
        and commit, and no worker thread (what a saved document waits for elsewhere)."""
        data = await self.content.read(node, 0, size)
        refs, inline, kept = [], {}, []
        compressible = skip_reason(node.name, data[:16]) is None
        for piece in iter_pieces(io.BytesIO(data), size):
            refs.append((piece.fingerprint, piece.length))
            if piece.fingerprint in inline:
                continue
            out = _Outgoing(piece.fingerprint, piece.length, piece.data, compressible, 0)
            if compressible:
                out.pack()
            inline[piece.fingerprint] = wire.InlineChunk(
                fingerprint=out.fingerprint, compression=out.packed.compression if out.packed else "none",
                data=base64.b64encode(out.body))
            kept.append(out)
            self.sent_plain_bytes += out.length
            self.compressed_chunks += out.packed is not None
        self._keep(kept)
        return refs, list(inline.values())

    async def send_walk(self, node: Inode, base: list[ChunkEntry], prefix: Prefix | None, end: int, *, final: bool,
                        on_progress: Callable[[list[tuple[str, int]]], None] | None = None, keep: bool = True,
                        ) -> tuple[list[tuple[str, int]], int, int]:
        """Walk the file's bytes [0, end) (`prefix.walk`) in a worker thread and PUT what
        the server lacks, batch by batch, holding at most BUDGET_BYTES of it in memory.
        After each batch, `on_progress(refs so far)` (all of them in the store by then)
        runs on the trio thread. `keep`: a clean copy of each sent chunk goes into the
        chunk cache (`_keep`). Returns (chunk refs, chunks sent, bytes sent)."""
        hint = self._namespace_hint(node)
        cut = 0  # written by the worker thread alone, added up on this one after

        def items() -> Iterator[_Outgoing | Reused]:
            nonlocal cut
            def open_at(start: int, stop: int) -> _Unmapping:
                return _Unmapping(ContentReader(self.content, node, base, stop, start), self.cache)

            compressible = None
            for item in walk(prefix, open_at, end, final=final):
                if isinstance(item, Reused):
                    yield item
                    continue
                cut += item.length
                if compressible is None:
                    reason = skip_reason(node.name, item.data[:16])
                    if reason:
                        log.debug("inode %d (%s): not compressed, %s", node.ino, node.name, reason)
                    compressible = reason is None
                out = _Outgoing(item.fingerprint, item.length, item.data, compressible, 0)
                del item
                if compressible and out.length <= EAGER_BYTES:
                    out.pack()
                yield out
                del out  # let go once its batch is sent, not when the next piece is cut

        avg = forced_average() or average_at(max(end - 1, 0))
        checking = trio.CapacityLimiter(CHECKS_AT_ONCE)
        async with one_error(), trio.open_nursery() as checks:  # the commit waits for the checks

            async def send_batch(batch: list[_Outgoing]) -> tuple[int, int]:
                sent_chunks, sent_bytes, check = await self._prepare_and_put({o.fingerprint: o for o in batch}, hint,
                                                                             keep)
                if check:  # the store's read-back of this batch overlaps the PUTs of the next
                    checks.start_soon(self._check, check, hint, checking)
                return sent_chunks, sent_bytes
            try:
                return await pipeline(items, send_batch, on_progress, room=min(2 * avg, BUDGET_BYTES // 2))
            finally:
                self.cut_bytes += cut

    async def _landed_already(self, exc: ServerError, ino: int, request: wire.CommitRequest,
                              refs: list[tuple[str, int]]) -> wire.CommitResponse | None:
        """A commit retried after its answer was lost meets its own first attempt (a stale
        base revision, or its own new file under the name). If a version after our base
        is exactly what we sent, from this device, it was ours: success. Usually it is
        the current one; it may be an older one, when another device saw ours and
        committed over it before we found out (a mount killed mid-upload, back later):
        then ours landed all the same, and theirs, newer, reaches us as a change. Or the
        node is gone (404): another device saw ours and deleted the file, and the answer
        says so (`node.deleted`), for the delete to be applied here instead of the bytes
        coming back as a new file. Never a node another inode than `ino` stands for here."""
        if isinstance(exc, ConflictError) and exc.code in ("stale_revision", "name_exists"):
            node_id = int((exc.body.get("node") or {}).get("id", 0))
        elif exc.status == 404 and exc.body.get("field") == "node_id" and request.node_id:
            node_id = request.node_id
        else:
            return None
        if not node_id or self.cache.ino_for_node(node_id) not in (None, ino):
            # Another inode here stands for that node by now: the follower brought it in
            # as another device's file (our create's answer was lost, so it did not know
            # the node was ours) and kept ours beside it. Ours goes up as a file of its own.
            return None
        ours, base_rev = (self.client.device, request.size, request.mtime_ns), request.base_rev
        try:
            current = None if exc.status == 404 else await self.client.file_info(node_id, urls=False)
            if current is not None and current.version is not None and self._is_ours(current, ours, refs):
                version, info = current.version, current
            else:
                newest = current.version.rev if current is not None and current.version is not None else None
                version, info = await self._older_of_ours(node_id, base_rev, newest, ours, refs)
        except ServerError as missing:
            if missing.status == 404:
                return None  # deleted by another device (or never there): not ours, the conflict stands
            raise
        if version is None or info is None:
            return None
        return _as_answer(version, info)

    async def _landed_before(self, request: wire.CommitRequest, refs: list[tuple[str, int]], tried: FirstTry,
                             ino: int, gone_before: int = 0) -> wire.CommitResponse | None:
        """An earlier try of this create may have landed with its answer lost (a kill, a
        broken connection), and the name be free again since: another device deleted
        that file (soak, seed 200011), or wrote over it and moved it away (seed 1060113).
        The commit would make a second node of the same bytes, and what the other device
        deleted or overwrote came back. A node made at this place since the first try
        (the journal says which, `created_named`; and the deleted nodes of the name, for
        a try noted before journal positions were kept) that holds exactly these bytes
        from this device, made since then, was ours: the answer is that node at that
        version, where the create put it, deleted or not. The syncer then has the node
        pulled, which brings what happened to it since as another device's change.
        Never `gone_before`: the node a file created again (`detached`) had before, whose
        delete elsewhere is why it is created again, with these very bytes maybe. Never a
        node another inode than `ino` stands for here (`_landed_already`)."""
        assert request.parent_id is not None and request.name is not None
        ours = (self.client.device, request.size, request.mtime_ns)
        try:
            candidates = await self.client.deleted_named(request.parent_id, request.name)
            if tried.after is not None:
                candidates = await self.client.created_named(request.parent_id, request.name,
                                                             after=tried.after) + candidates
        except ServerError as exc:
            if exc.status == 404:
                return None  # the directory went too: the commit is told so (404 parent_id)
            raise
        looked_at = {gone_before}
        for made in candidates:
            if made.kind != "file" or made.id in looked_at or self.cache.ino_for_node(made.id) not in (None, ino):
                continue
            looked_at.add(made.id)
            version, info = await self._older_of_ours(made.id, 0, None, ours, refs)
            if version is not None and info is not None and version.created_at >= tried.at - CLOCK_SLACK_S:
                return _as_answer(version, info, at=(request.parent_id, request.name))
        return None

    def _is_ours(self, info: wire.FileInfo, ours: tuple[str, int, int], refs: list[tuple[str, int]]) -> bool:
        version = info.version
        return version is not None and (version.device, version.size, version.mtime_ns) == ours \
            and self.made_here(version) and [(c.fingerprint, c.length) for c in info.chunks] == refs

    async def _older_of_ours(self, node_id: int, base_rev: int, newest: int | None, ours: tuple[str, int, int],
                             refs: list[tuple[str, int]]) -> tuple[wire.Version | None, wire.FileInfo | None]:
        """The version after `base_rev` (and before `newest`) that is exactly ours, with
        the node as it was then (a deleted node's history is still there)."""
        candidates = [v for v in (await self.client.versions(node_id)).versions
                      if base_rev < v.rev < (newest or v.rev + 1) and (v.device, v.size, v.mtime_ns) == ours
                      and self.made_here(v)]
        for candidate in candidates:
            old = await self.client.file_info(node_id, rev=candidate.rev, urls=False)
            if [(c.fingerprint, c.length) for c in old.chunks] == refs:
                return candidate, old
        return None, None

    def made_here(self, version: wire.Version) -> bool:
        """This device (its name, and its account where the server says) made `version`."""
        return version.device == self.client.device and version.user_id in (None, self.account())

    def _namespace_hint(self, node: Inode) -> int | None:
        """The node whose namespace the chunks go to (a shared folder has its own): the
        file's own, or its directory's for a file the server has not seen yet."""
        if node.bound:
            return node.node_id
        parent = self.cache.get(node.parent)
        return parent.node_id if parent is not None and parent.node_id else None

    async def _prepare_and_put(self, by_fp: dict[str, _Outgoing], hint: int | None,
                               keep: bool) -> tuple[int, int, list[str]]:
        prepared = await self.client.prepare_upload([o.describe() for o in by_fp.values()], node_id=hint)
        tickets = {t.fingerprint: t for t in prepared.missing}
        late = [by_fp[fp] for fp in tickets if by_fp[fp].compressible and not by_fp[fp].tried]
        if late:
            await trio.to_thread.run_sync(lambda: [o.pack() for o in late])
            packed = [o for o in late if o.packed is not None]
            if packed:  # sign again, for the compressed bodies
                again = await self.client.prepare_upload([o.describe() for o in packed], node_id=hint)
                tickets.update((t.fingerprint, t) for t in again.missing)
                for fp in again.present:  # another upload finished it meanwhile
                    tickets.pop(fp, None)
        limiter = trio.CapacityLimiter(PARALLEL_PUTS)
        sent = 0

        async def put(ticket: wire.ChunkTicket) -> None:
            nonlocal sent
            async with limiter:
                out = by_fp[ticket.fingerprint]
                await self.client.put_chunk(ticket, out.body)
                sent += len(out.body)
                self.sent_plain_bytes += out.length
                _progress(out.length, sent=True)
                self.compressed_chunks += out.packed is not None

        async with one_error(), trio.open_nursery() as nursery:
            for ticket in tickets.values():
                nursery.start_soon(put, ticket)
        _progress(sum(o.length for fp, o in by_fp.items() if fp not in tickets), sent=False)  # the store had them
        self._keep(list(by_fp.values()) if keep else [])
        return len(tickets), sent, list(tickets) if prepared.check_after_put else []

    async def _check(self, fingerprints: list[str], hint: int | None, limiter: trio.CapacityLimiter) -> None:
        """Ask the server to verify a batch just PUT (it reads the chunks back from a
        store that keeps no checksum), so the commit after the last PUT finds them
        verified instead of reading the whole file back then. Best effort: whatever
        this does not verify, the commit does."""
        async with limiter:
            try:
                await self.client.check_chunks(fingerprints, node_id=hint)
            except (ServerError, OfflineError) as exc:
                log.debug("early check of %d chunks: %s (the commit checks them)", len(fingerprints), exc)

    def _keep(self, sent: list[_Outgoing]) -> None:
        """Keep what we just uploaded: the next read of this file is then local. Each
        piece's bytes are let go once sealed (`put_sealed`) and every piece's once it is
        kept or passed over, so keeping a batch holds the batch, shrinking, plus one
        chunk: a mount streaming 16 MiB-average chunks peaked in here (py-spy) at up to
        280 MiB anonymous, the batch and each chunk's two copies all alive at once.
        Chunks longer than KEEP_MAX_BYTES are not kept (see there)."""
        for o in sent:
            if o.length <= KEEP_MAX_BYTES and o.fingerprint not in self.chunks \
                    and self.chunks.used_bytes + o.length < self.chunks.limit:
                self.chunks.put_sealed(o.fingerprint, o.length, o.seal_and_drop)
            o.drop()


async def pipeline(items: Callable[[], Iterator[_Outgoing | Reused]],
                   send_batch: Callable[[list[_Outgoing]], Awaitable[tuple[int, int]]],
                   on_progress: Callable[[list[tuple[str, int]]], None] | None = None,
                   *, room: int = 0) -> tuple[list[tuple[str, int]], int, int]:
    """Run `items()` (the chunker: CPU and reads) in a worker thread and pass its pieces
    to `send_batch` in batches (BATCH pieces or BATCH_BYTES) on the trio thread, one
    batch at a time. A piece is let through only once it fits in BUDGET_BYTES with the
    pieces before it that are not sent yet (each counted whole); and the next item is
    asked for (the next piece cut) only while `room` bytes of the budget are free, so
    the piece being cut counts too: memory holds the budget, plus what a piece longer
    than `room` passes it by, plus the chunker's own buffer. Without `room`, at 16 MiB
    averages the budget (64 MiB), the piece waiting for it and the one being cut (each
    up to 64 MiB) could all be alive: the 50 GB run peaked at 273 MiB anonymous. After
    each batch, `on_progress(refs so far)`. Returns (refs, chunks sent, bytes sent),
    the last two as `send_batch` counted them."""
    refs: list[tuple[str, int]] = []
    sent_chunks = sent_bytes = 0
    budget = ByteBudget(BUDGET_BYTES)
    send, receive = trio.open_memory_channel[_Outgoing | Reused | _Flush](0)

    flushing = False
    """The batch loop is sending a batch (not waiting for pieces): its bytes come back
    when it is done. Otherwise the pieces holding budget are its unfinished batch, which
    only a `_FLUSH` sends: sent while a batch is under way, it would also send the next
    one's first piece or two on their own (smaller batches, twice the round trips)."""

    async def take(n: int) -> int:
        if not budget.fits(n) and not flushing:
            await send.send(_FLUSH)
        return await budget.acquire(n)

    async def make_room() -> None:
        budget.release(await take(room))  # waits until the bytes waiting to be sent leave room

    def produce() -> None:
        it = items()
        try:
            while True:
                if budget.used > budget.limit - room:  # read from this thread: only the trio thread lowers it
                    trio.from_thread.run(make_room)
                out = next(it, None)
                if out is None:
                    break
                if isinstance(out, _Outgoing):
                    out.held = trio.from_thread.run(take, out.length)
                trio.from_thread.run(send.send, out)
                del out  # not kept while the next piece is cut
        finally:
            it.close()
        trio.from_thread.run(send.aclose)

    async def consume() -> None:
        nonlocal sent_chunks, sent_bytes
        batch: list[_Outgoing] = []
        batch_bytes = 0

        async def flush() -> None:
            nonlocal sent_chunks, sent_bytes, batch, batch_bytes, flushing
            if batch:
                flushing = True
                try:
                    c, b = await send_batch(batch)
                finally:
                    flushing = False
                    budget.release(sum(o.held for o in batch))
                    for o in batch:
                        o.drop()
                sent_chunks, sent_bytes, batch, batch_bytes = sent_chunks + c, sent_bytes + b, [], 0
            if on_progress is not None:
                on_progress(refs)

        async with receive:
            async for out in receive:
                if isinstance(out, _Flush):
                    await flush()
                    continue
                refs.append((out.fingerprint, out.length))
                if isinstance(out, Reused):
                    continue
                batch.append(out)
                batch_bytes += out.length
                if len(batch) >= BATCH or batch_bytes >= BATCH_BYTES:
                    await flush()
            await flush()

    async with one_error(), trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await trio.to_thread.run_sync(produce)
    return refs, sent_chunks, sent_bytes


def _as_answer(version: wire.Version, info: wire.FileInfo,
               at: tuple[int, str] | None = None) -> wire.CommitResponse:
    """A commit's answer for our own version found after the fact: the node as the server
    has it (deleted, it may be), with the revision that was ours, not what is newer; for
    a create, where the create put it (`at`), not where it may have moved since."""
    log.info("the commit of node %d rev %d had landed before its answer was lost%s", info.node.id, version.rev,
             "; another device has deleted it since" if info.node.deleted else "")
    update: dict = {"rev": version.rev, "size": version.size, "mtime_ns": version.mtime_ns}
    if at is not None:
        update["parent_id"], update["name"] = at
    node = info.node.model_copy(update=update)
    return wire.CommitResponse(node=node, version=version, cursor=info.cursor)


def _progress(nbytes: int, *, sent: bool) -> None:
    transfer = _TRANSFER.get()
    if transfer is not None and nbytes:
        transfer.advance(nbytes, sent=sent)


def finish_upload(cache: Cache, content: Content, node: Inode, result: UploadResult) -> bool:
    """Record a successful commit; drop the dirty blocks if nothing changed since (if
    something did, those not written during the upload). Returns True when the file is
    now clean. Runs in one write transaction, with buffers: dropping the blocks then
    only measures them, instead of copying every dirty byte out of the map (a 1 GiB
    file: 1 GiB copied, on the trio thread)."""
    chunks = content.chunks
    watch = content.watches.pop(node.ino, None) or result.watch
    with cache.write(buffers=True) as txn:
        current = cache.get(node.ino)
        if current is None:
            return True
        detached = current.extra.pop("detached", False)  # popped always: a stuck flag keeps the file "pending"
        remote = result.response.node
        created = not current.node_id or detached
        if created:  # our create put it where the answer says
            cache.bind_node_id(txn, current, remote.id)
            current.srv_parent = (cache.ino_for_node(remote.parent_id) or 0) if remote.parent_id else 0
            current.srv_name = remote.name
        # Else the commit moved nothing: elsewhere on the server, another device moved the
        # file, and the follower brings that move. Recorded as the server's place, the file
        # looked moved here and never sent, so the follower held the move back for ever
        # (soak, seed 330061). So for the attributes a commit does not set (Inode.record_attrs).
        current.rev = result.response.version.rev
        current.record_attrs(remote, Inode._ATTRS if created else COMMITTED_ATTRS)
        cache.set_chunklist(txn, current.ino, current.rev, result.refs)
        content.prefixes.drop(txn, current.ino)  # the new base holds every streamed chunk
        current.extra["srv_size"] = result.size  # what the server counts against a quota
        current.extra["srv_seq"] = result.response.cursor  # follower.py: our own older entries are stale
        clean = current.gen == result.gen
        if clean:
            if result.settles:
                chunks.dirty_bytes -= cache.settle(txn, current.ino)
            else:
                chunks.dirty_bytes -= cache.drop_blocks(txn, current.ino, from_block=0)
            current.base_len = result.size
            current.dirty = False
            current.min_trunc = -1
        else:
            trunc = current.min_trunc
            current.base_len = result.size if trunc < 0 else min(result.size, trunc)
            chunks.dirty_bytes -= drop_stored_blocks(cache, txn, current.ino, 0, current.base_len, watch.written)
        cache.put(txn, current)
    if clean and result.settles:
        chunks.touch_settled(current.ino)
        content.settled_here(current.ino)
    log.info("committed inode %d as node %d rev %d (%d bytes, %s)", node.ino, result.response.node.id,
             result.response.version.rev, result.size,
             ("settled" if result.settles else "clean") if clean else "changed meanwhile")
    return clean


def drop_stored_blocks(cache: Cache, txn: "lmdb.Transaction", ino: int, start: int, end: int, keep: Ranges) -> int:
    """Drop the dirty blocks lying wholly in [start, end) that no range of `keep`
    touches: the store has their bytes now. Gives the LMDB map's pages back as it goes
    (`Cache.mapped`). Returns the bytes freed."""
    first, stop = -(-start // BLOCK_SIZE), end // BLOCK_SIZE
    if first >= stop:
        return 0
    freed = 0
    cursor = txn.cursor(db=cache.blocks)
    key = _block_key(ino, first)
    if not cursor.set_range(key):
        return 0
    while True:
        raw = bytes(cursor.key())
        if len(raw) != 16:
            break
        key_ino, block_no = _unpack_block_key(raw)
        if key_ino != ino or block_no >= stop:
            break
        lo = block_no * BLOCK_SIZE
        if keep.intersects(lo, lo + BLOCK_SIZE):
            if not cursor.next():
                break
            continue
        size = len(cursor.value())
        freed += size
        cache.mapped(size)  # counted across calls: a streaming round drops a batch at a time
        if not cursor.delete():
            break
    return freed


def _block_key(ino: int, block_no: int) -> bytes:
    return ino.to_bytes(8, "big") + block_no.to_bytes(8, "big")


def _unpack_block_key(raw: bytes) -> tuple[int, int]:
    return int.from_bytes(raw[:8], "big"), int.from_bytes(raw[8:], "big")
