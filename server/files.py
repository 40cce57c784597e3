"""Chunks and file versions: upload preparation, chunk verification, reads and history.
Writing a version (commit, restore) lives in `commits.py`.

Order of events, as in JuiceFS: bytes first, metadata second. A device uploads the
chunks the server says it lacks, then commits; the commit is accepted only when every
chunk is known to be in the store with the right length and hash. A crash in between
leaves orphan chunks (swept later), never a version pointing at missing bytes.

The functions here are synchronous and run in worker threads; store calls that may
be slow (S3 HEAD) happen outside any database transaction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloudfs.backend.protocol import wire
from cloudfs.backend.stores.compress import CompressionError, plain_digest
from cloudfs.backend.stores.store import NoSuchKeyError, ObjectStore, StoreError, TransientError, chunk_key

from . import journal, tree
from .db import Database, chunks, versions
from .errors import Collecting, Invalid, IsADirectory, MissingChunks, NotFound, StoreUnavailable
from .sql import Row, Stmt, Tx, as_tx, expand, values_params

URL_TTL = 3600
IN_BATCH = 500


@dataclass
class Signer:
    """Signs store URLs for one request (the local store needs the server's base URL)."""

    store: ObjectStore
    base_url: str

    def put(self, owner_id: int, c: wire.ChunkUpload) -> wire.SignedRequest:
        return self.store.presign_put(
            chunk_key(owner_id, c.fingerprint), stored_length=c.stored_length, stored_sha256=c.stored_sha256,
            expires=URL_TTL, base_url=self.base_url, compression=c.compression, plain_length=c.length,
        )

    def get(self, row: Row) -> wire.SignedRequest:
        """A GET of a chunk row's bytes, wherever they are stored (`key_of`)."""
        return self.store.presign_get(key_of(row), expires=URL_TTL, base_url=self.base_url)


def key_of(row: Row) -> str:
    """The store key of a chunk row's bytes: its namespace's, or the namespace the server
    gave it from (`store_ns`, crossing.py)."""
    return chunk_key(row["store_ns"] if row.get("store_ns") is not None else row["owner_id"], row["fingerprint"])


def _batched(items: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(items), IN_BATCH):
        yield items[i:i + IN_BATCH]


_CHUNKS = "SELECT * FROM chunks WHERE owner_id = :owner_id AND fingerprint IN ({values})"
_MARK_VERIFIED = ("UPDATE chunks SET state = 'verified' WHERE owner_id = :owner_id AND state = 'pending'"
                  " AND fingerprint IN ({values})")
_VERSION = Stmt("SELECT * FROM versions WHERE node_id = :node_id AND rev = :rev")
_VERSION_CHUNKS = Stmt("SELECT fingerprint, length FROM version_chunks WHERE version_id = :version_id ORDER BY idx")


def chunk_rows(conn: Connection | Tx, owner_id: int, fingerprints: list[str]) -> dict[str, Row]:
    tx = as_tx(conn)
    found: dict[str, Row] = {}
    for batch in _batched(fingerprints):
        for row in tx.all(expand(_CHUNKS, len(batch)), values_params(batch, owner_id=owner_id)):
            found[row["fingerprint"]] = row
    return found


def normalise_upload(c: wire.ChunkUpload, index: int) -> wire.ChunkUpload:
    """Fill the stored_* fields of an uncompressed chunk; insist on them for zstd."""
    field = f"chunks[{index}]"
    if c.compression == "none":
        if c.stored_length not in (None, c.length) or c.stored_sha256 not in (None, c.fingerprint):
            raise Invalid("an uncompressed chunk is stored as is: stored_length/stored_sha256 must match", field=field)
        return c.model_copy(update={"stored_length": c.length, "stored_sha256": c.fingerprint})
    if c.stored_length is None or c.stored_sha256 is None:
        raise Invalid("a compressed chunk needs stored_length and stored_sha256", field=field)
    return c


def prepare_upload(db: Database, signer: Signer, owner_id: int, req: wire.PrepareUploadRequest) -> wire.PrepareUploadResponse:
    wanted: dict[str, wire.ChunkUpload] = {}
    for i, c in enumerate(req.chunks):
        c = normalise_upload(c, i)
        previous = wanted.setdefault(c.fingerprint, c)
        if previous.length != c.length:
            raise Invalid(f"fingerprint {c.fingerprint} given with two lengths", field=f"chunks[{i}]")
    missing: list[wire.ChunkUpload] = []
    present: list[str] = []
    with db.write(owner_id) as conn:
        rows = chunk_rows(conn, owner_id, list(wanted))
        for fp, c in wanted.items():
            row = rows.get(fp)
            if row is not None and row["state"] == "purging":
                raise Collecting(f"chunk {fp} is being collected as unused; ask again in a moment", field="chunks")
            if row is not None and row["state"] == "verified":
                if row["length"] != c.length:
                    raise Invalid(f"chunk {fp} is stored with length {row['length']}, not {c.length}", field="chunks")
                present.append(fp)
                continue
            values = dict(length=c.length, stored_length=c.stored_length, stored_sha256=c.stored_sha256,
                          compression=c.compression, state="pending", created_at=time.time(), store_ns=None)
            if row is None:
                conn.execute(chunks.insert().values(owner_id=owner_id, fingerprint=fp, **values))
            else:
                conn.execute(chunks.update().where(chunks.c.owner_id == owner_id, chunks.c.fingerprint == fp).values(**values))
            missing.append(c)
    tickets = [wire.ChunkTicket(fingerprint=c.fingerprint, upload=signer.put(owner_id, c)) for c in missing]
    return wire.PrepareUploadResponse(missing=tickets, present=present)


def mark_uploaded(db: Database, owner_id: int, fingerprint: str, stored_sha256: str, stored_length: int) -> None:
    """The local store hashed these bytes as they arrived: no HEAD needed at commit."""
    with db.write(owner_id) as conn:
        conn.execute(
            chunks.update().where(
                chunks.c.owner_id == owner_id, chunks.c.fingerprint == fingerprint,
                chunks.c.stored_sha256 == stored_sha256, chunks.c.stored_length == stored_length,
                chunks.c.state != "purging",
            ).values(state="verified")
        )


def check_stored(store: ObjectStore, owner_id: int, row: Row) -> str | None:
    """Step 2, one pending chunk: None if the store holds exactly its bytes, else why not.
    Blocking (a HEAD, or a streamed hash on stores that keep no checksum)."""
    try:
        info = store.head(key_of(row))
    except NoSuchKeyError:
        return "not in the store"
    except TransientError as exc:
        raise StoreUnavailable(f"object store unavailable while verifying chunk {row['fingerprint']}: {exc}") from exc
    except StoreError as exc:
        return f"store error: {exc}"
    if info.size != row["stored_length"]:
        return f"stored size {info.size}, expected {row['stored_length']}"
    if not info.verified_on_write and info.sha256_hex != row["stored_sha256"]:
        return "stored bytes do not match their checksum"
    if row["compression"] != "none" and not info.verified_on_write:
        return _check_plain(store, owner_id, row)
    return None


def _check_plain(store: ObjectStore, owner_id: int, row: Row) -> str | None:
    """A compressed object must inflate to exactly its chunk: the store (S3) checked
    only the compressed bytes, against the hash the device claimed for them. Streams
    the object once, capped at the chunk's length (compress.plain_digest)."""
    try:
        digest, length = plain_digest(store.stream(key_of(row)), row["compression"],
                                      max_length=row["length"])
    except CompressionError as exc:
        return f"stored bytes are not a valid {row['compression']} body: {exc}"
    except NoSuchKeyError:
        return "not in the store"
    except TransientError as exc:
        raise StoreUnavailable(f"object store unavailable while verifying chunk {row['fingerprint']}: {exc}") from exc
    except StoreError as exc:
        return f"store error: {exc}"
    if length != row["length"] or digest != row["fingerprint"]:
        return "stored bytes do not decompress to the chunk"
    return None


def mark_verified(tx: Tx, owner_id: int, fingerprints: list[str]) -> None:
    """Step 3: remember what the store confirmed, so no later commit looks again."""
    for batch in _batched(fingerprints):
        tx.run(expand(_MARK_VERIFIED, len(batch)), values_params(batch, owner_id=owner_id))


_STORED = Stmt("""INSERT INTO chunks (owner_id, fingerprint, length, stored_length, stored_sha256, compression,
                                      state, created_at)
                   VALUES (:owner_id, :fingerprint, :length, :stored_length, :stored_sha256, :compression,
                           'verified', :created_at)
                   ON CONFLICT (owner_id, fingerprint) DO UPDATE SET
                     length = excluded.length, stored_length = excluded.stored_length,
                     stored_sha256 = excluded.stored_sha256, compression = excluded.compression,
                     state = 'verified', store_ns = NULL""")


class Stored(NamedTuple):
    """A chunk the server checked and put into the store itself (a commit's inline chunk)."""

    fingerprint: str
    length: int
    stored_length: int
    stored_sha256: str
    compression: str


def record_stored(tx: Tx, owner_id: int, stored: list[Stored]) -> None:
    """Verified, whatever state an earlier upload left these chunks in, unless the
    collector is deleting one of them (retention.py): then the commit comes back later."""
    rows = chunk_rows(tx, owner_id, [s.fingerprint for s in stored])
    for s in stored:
        if rows.get(s.fingerprint, {}).get("state") == "purging":
            raise Collecting(f"chunk {s.fingerprint} is being collected as unused; commit again in a moment",
                             field="inline")
    now = time.time()
    tx.many(_STORED, [{"owner_id": owner_id, "created_at": now, **s._asdict()} for s in stored])


def missing_chunks(problems: dict[str, str]) -> MissingChunks:
    listed = [{"fingerprint": fp, "problem": p} for fp, p in sorted(problems.items())]
    return MissingChunks(f"{len(problems)} chunk(s) are not in the store: upload them, then commit again",
                         field="chunks", chunks=listed)


def version_row(row: Row) -> wire.Version:
    return wire.Version(rev=row["rev"], size=row["size"], mtime_ns=row["mtime_ns"], device=row["device"],
                        created_at=row["created_at"], user_id=row.get("user_id"))


def load_version(conn: Connection | Tx, node_id: int, rev: int | None, node_rev: int) -> Row | None:
    return as_tx(conn).one(_VERSION, {"node_id": node_id, "rev": rev if rev is not None else node_rev})


def version_chunks(conn: Connection | Tx, version_id: int) -> list[tuple[str, int]]:
    return [(r["fingerprint"], r["length"]) for r in as_tx(conn).all(_VERSION_CHUNKS, {"version_id": version_id})]


def file_info(db: Database, signer: Signer, owner_id: int, node_id: int, *, rev: int | None, urls: bool) -> wire.FileInfo:
    with db.read() as conn:
        node = tree.inode(conn, owner_id, tree.get(conn, owner_id, node_id, allow_deleted=rev is not None),
                          allow_deleted=rev is not None)
        node_id = node["id"]
        cursor = journal.cursor(conn, owner_id)
        if node["kind"] != "file":
            return wire.FileInfo(node=tree.to_wire(node), version=None, chunks=[], cursor=cursor)
        vrow = load_version(conn, node_id, rev, node["rev"])
        if vrow is None:
            raise NotFound(f"node {node_id} has no revision {rev}", field="rev")
        refs = version_chunks(conn, vrow["id"])
        rows = chunk_rows(conn, owner_id, list({fp for fp, _ in refs}))
    out, offset = [], 0
    for fp, length in refs:
        row = rows.get(fp) or {"owner_id": owner_id, "fingerprint": fp, "compression": "none"}
        out.append(wire.VersionChunk(fingerprint=fp, length=length, offset=offset, compression=row["compression"],
                                     download=signer.get(row) if urls else None))
        offset += length
    return wire.FileInfo(node=tree.to_wire(node), version=version_row(vrow), chunks=out, cursor=cursor)


def prepare_download(db: Database, signer: Signer, owner_ids: list[int],
                     req: wire.PrepareDownloadRequest) -> wire.PrepareDownloadResponse:
    """Fresh signed GET URLs for chunks of the namespaces this account can see (tried in
    the order given; a chunk of no namespace of theirs is simply unknown)."""
    wanted = list(dict.fromkeys(req.fingerprints))
    rows: dict[str, Row] = {}
    with db.read() as conn:
        for owner_id in owner_ids:
            lacking = [fp for fp in wanted if fp not in rows]
            if not lacking:
                break
            rows.update((fp, row) for fp, row in chunk_rows(conn, owner_id, lacking).items() if row["state"] == "verified")
    unknown = [fp for fp in req.fingerprints if fp not in rows]
    if unknown:
        raise NotFound(f"{len(unknown)} chunk(s) unknown to this account", field="fingerprints", chunks=unknown[:100])
    return wire.PrepareDownloadResponse(chunks=[
        wire.ChunkDownload(fingerprint=fp, length=rows[fp]["length"], compression=rows[fp]["compression"],
                           download=signer.get(rows[fp]))
        for fp in wanted
    ])


def pending_rows(db: Database, owner_id: int, fingerprints: list[str]) -> list[Row]:
    """Chunks of this owner uploaded but not looked at yet (S3 verifies at commit): a
    device streaming a file still being written may need one back before its commit."""
    with db.read() as conn:
        rows = chunk_rows(conn, owner_id, list(dict.fromkeys(fingerprints)))
    return [row for row in rows.values() if row["state"] == "pending"]


def verified_among(db: Database, owner_id: int, fingerprints: list[str]) -> list[str]:
    """Which of these chunks this owner has, verified."""
    with db.read() as conn:
        rows = chunk_rows(conn, owner_id, fingerprints)
    return [fp for fp, row in rows.items() if row["state"] == "verified"]


def record_verified(db: Database, owner_id: int, fingerprints: list[str]) -> None:
    with db.write(owner_id) as conn:
        mark_verified(as_tx(conn), owner_id, fingerprints)


def list_versions(db: Database, owner_id: int, node_id: int, *, limit: int) -> wire.VersionList:
    with db.read() as conn:
        node = tree.inode(conn, owner_id, tree.get(conn, owner_id, node_id, allow_deleted=True), allow_deleted=True)
        if node["kind"] != "file":
            raise IsADirectory(f"node {node_id} is a {node['kind']}; only files have versions", field="id")
        node_id = node["id"]
        rows = conn.execute(
            sa.select(versions).where(versions.c.node_id == node_id).order_by(versions.c.rev.desc()).limit(limit)
        ).mappings().all()
    return wire.VersionList(node_id=node_id, versions=[version_row(r) for r in rows])
