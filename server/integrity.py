"""Stored chunks checked again after their commit: a device's report of a bad
download, and `fsck` over every chunk a live file needs.

Bytes in a store can rot or be replaced after the commit verified them. The server
never takes a device's word that a chunk is bad (that would let a device make another
upload necessary for nothing, or hide a bug of its own): it reads the object itself and
hashes the plain bytes. A chunk that really is bad is marked `bad`, so the next device
that prepares an upload of those bytes is asked for them again and its PUT replaces the
object; the commits that use it stay, and read fine again once it is replaced.
"""

from __future__ import annotations

import hashlib
from typing import Annotated

import anyio
import sqlalchemy as sa
import zstandard
from fastapi import APIRouter, Depends, Path
from sqlalchemy.engine import RowMapping

from cloudfs.backend.protocol import wire
from cloudfs.backend.stores.store import NoSuchKeyError, ObjectStore, StoreError, TransientError

from .api import ERRORS
from .app import ServerContext, User, context_dependency, current_user
from .db import Database, chunks, nodes, version_chunks, versions
from .errors import NotFound, StoreUnavailable
from .files import key_of
from .namespaces import visible

router = APIRouter(tags=["integrity"], responses=ERRORS)
Ctx = Annotated[ServerContext, Depends(context_dependency)]
Auth = Annotated[User, Depends(current_user)]
Fingerprint = Annotated[str, Path(pattern="^[0-9a-f]{64}$", description="SHA-256 of the chunk's plain bytes")]

FSCK_PARALLEL = 8


def verify_stored(store: ObjectStore, owner_id: int, row: RowMapping) -> str | None:
    """None if the store holds exactly this chunk's bytes, else what is wrong.
    Reads the whole object (a chunk is at most a few MiB)."""
    try:
        data = store.get(key_of(row))
    except NoSuchKeyError:
        return "not in the store"
    except TransientError as exc:
        raise StoreUnavailable(f"object store unavailable while checking chunk {row['fingerprint']}: {exc}") from exc
    except StoreError as exc:
        return f"store error: {exc}"
    if len(data) != row["stored_length"]:
        return f"stored size {len(data)}, expected {row['stored_length']}"
    if hashlib.sha256(data).hexdigest() != row["stored_sha256"]:
        return "stored bytes do not match their checksum"
    if row["compression"] == "zstd":
        try:
            data = zstandard.ZstdDecompressor().decompress(data, max_output_size=row["length"])
        except zstandard.ZstdError as exc:
            return f"not a valid zstd frame: {exc}"
    if len(data) != row["length"] or hashlib.sha256(data).hexdigest() != row["fingerprint"]:
        return "plain bytes do not match the fingerprint"
    return None


def _rows(db: Database, owner_id: int, fingerprints: list[str] | None) -> list[RowMapping]:
    """Chunk rows of the given fingerprints, or of every chunk a live file references."""
    query = sa.select(chunks).where(chunks.c.owner_id == owner_id)
    if fingerprints is not None:
        query = query.where(chunks.c.fingerprint.in_(fingerprints))
    else:
        live = (sa.select(version_chunks.c.fingerprint)
                .join(versions, versions.c.id == version_chunks.c.version_id)
                .join(nodes, sa.and_(nodes.c.id == versions.c.node_id, nodes.c.rev == versions.c.rev))
                .where(nodes.c.owner_id == owner_id, nodes.c.deleted == sa.false(), nodes.c.kind == "file"))
        query = query.where(chunks.c.fingerprint.in_(live))
    with db.read() as conn:
        return list(conn.execute(query.order_by(chunks.c.fingerprint)).mappings())


def _mark(db: Database, owner_id: int, verdicts: dict[str, str | None]) -> None:
    with db.write(owner_id) as conn:
        for fp, problem in verdicts.items():
            conn.execute(chunks.update().where(chunks.c.owner_id == owner_id, chunks.c.fingerprint == fp)
                         .values(state="bad" if problem else "verified"))


def _files_using(db: Database, owner_id: int, fingerprints: list[str]) -> dict[str, list[int]]:
    if not fingerprints:
        return {}
    query = (sa.select(version_chunks.c.fingerprint, nodes.c.id).distinct()
             .join(versions, versions.c.id == version_chunks.c.version_id)
             .join(nodes, sa.and_(nodes.c.id == versions.c.node_id, nodes.c.rev == versions.c.rev))
             .where(nodes.c.owner_id == owner_id, nodes.c.deleted == sa.false(),
                    version_chunks.c.fingerprint.in_(fingerprints)))
    out: dict[str, list[int]] = {}
    with db.read() as conn:
        for fp, node_id in conn.execute(query):
            out.setdefault(fp, []).append(node_id)
    return out


async def _check(ctx: ServerContext, owner_id: int, rows: list[RowMapping]) -> dict[str, str | None]:
    verdicts: dict[str, str | None] = {}
    unavailable: list[StoreUnavailable] = []
    limiter = anyio.Semaphore(FSCK_PARALLEL)

    async def one(row: RowMapping) -> None:
        async with limiter:
            try:
                verdicts[row["fingerprint"]] = await ctx.run_store(verify_stored, ctx.store, owner_id, row)
            except StoreUnavailable as exc:
                unavailable.append(exc)

    async with anyio.create_task_group() as tg:
        for row in rows:
            tg.start_soon(one, row)
    if unavailable:
        raise unavailable[0]
    await ctx.run_db(_mark, ctx.db, owner_id, verdicts)
    return verdicts


@router.post("/chunks/{fingerprint}/report")
async def report_chunk(ctx: Ctx, user: Auth, fingerprint: Fingerprint) -> wire.ChunkReport:
    """A device downloaded bytes that do not hash to `fingerprint`. The server checks
    the stored object itself; `state` is `bad` if it agrees (the next upload of those
    bytes then replaces it), `verified` if the object is fine."""
    problem: str | None = None
    found = False
    for ns_id in await ctx.run_db(_visible, ctx.db, user):
        rows = await ctx.run_db(_rows, ctx.db, ns_id, [fingerprint])
        if rows:
            found = True
            problem = problem or (await _check(ctx, ns_id, rows))[fingerprint]
    if not found:
        raise NotFound(f"no chunk {fingerprint} in this account", field="fingerprint")
    return wire.ChunkReport(fingerprint=fingerprint, state="bad" if problem else "verified", problem=problem)


def _visible(db: Database, user: User) -> list[int]:
    with db.read() as conn:
        return [v.id for v in visible(conn, user.id, user.root_id)]


@router.post("/fsck")
async def fsck(ctx: Ctx, user: Auth) -> wire.FsckReport:
    """Check every chunk of every live file this account sees (its own tree and its
    shared folders) in the store; mark the bad ones (their next upload replaces them)
    and name the files that need them."""
    checked = 0
    bad: list[wire.BadChunk] = []
    for ns_id in await ctx.run_db(_visible, ctx.db, user):
        rows = await ctx.run_db(_rows, ctx.db, ns_id, None)
        verdicts = await _check(ctx, ns_id, rows)
        checked += len(rows)
        wrong = sorted(fp for fp, problem in verdicts.items() if problem)
        using = await ctx.run_db(_files_using, ctx.db, ns_id, wrong)
        bad += [wire.BadChunk(fingerprint=fp, problem=verdicts[fp] or "", node_ids=sorted(using.get(fp, [])))
                for fp in wrong]
    return wire.FsckReport(checked=checked, bad=bad)
