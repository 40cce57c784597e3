"""File versions: upload preparation, verified commits, reads, history and restore.

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
from typing import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping

from cloudfs.backend import wire
from cloudfs.backend.compress import CompressionError, plain_digest
from cloudfs.backend.names import split_path
from cloudfs.backend.store import NoSuchKeyError, ObjectStore, StoreError, TransientError, chunk_key

from . import journal, tree
from .db import Database, chunks, nodes, version_chunks, versions
from .errors import (Invalid, IsADirectory, MissingChunks, NameExists, NotADirectory, NotFound, StaleRevision,
                     StoreUnavailable)

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

    def get(self, owner_id: int, fingerprint: str) -> wire.SignedRequest:
        return self.store.presign_get(chunk_key(owner_id, fingerprint), expires=URL_TTL, base_url=self.base_url)


def _batched(items: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(items), IN_BATCH):
        yield items[i:i + IN_BATCH]


_CHUNKS = sa.select(chunks).where(chunks.c.owner_id == sa.bindparam("owner_id"),
                                 chunks.c.fingerprint.in_(sa.bindparam("fps", expanding=True)))
_VERSION = versions.insert()
_VCHUNKS = version_chunks.insert()
_NODE_UPDATE = nodes.update().where(nodes.c.id == sa.bindparam("b_id")).values(
    size=sa.bindparam("b_size"), mtime_ns=sa.bindparam("b_mtime"), rev=sa.bindparam("b_rev"), deleted=False)
_NODE_UPDATE_MODE = _NODE_UPDATE.values(mode=sa.bindparam("b_mode"))


def _chunk_rows(conn: Connection, owner_id: int, fingerprints: list[str]) -> dict[str, RowMapping]:
    found: dict[str, RowMapping] = {}
    for batch in _batched(fingerprints):
        for row in conn.execute(_CHUNKS, {"owner_id": owner_id, "fps": batch}).mappings():
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
        rows = _chunk_rows(conn, owner_id, list(wanted))
        for fp, c in wanted.items():
            row = rows.get(fp)
            if row is not None and row["state"] == "verified":
                if row["length"] != c.length:
                    raise Invalid(f"chunk {fp} is stored with length {row['length']}, not {c.length}", field="chunks")
                present.append(fp)
                continue
            values = dict(length=c.length, stored_length=c.stored_length, stored_sha256=c.stored_sha256,
                          compression=c.compression, state="pending", created_at=time.time())
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
            ).values(state="verified")
        )


def chunk_plan(db: Database, owner_id: int, refs: list[wire.ChunkRef]) -> tuple[dict[str, str], list[RowMapping]]:
    """Trust but verify, step 1: which chunks of a commit are already known good,
    which are unknown (problems) and which need a look in the store (pending)."""
    distinct = {r.fingerprint: r.length for r in refs}
    with db.read() as conn:
        rows = _chunk_rows(conn, owner_id, list(distinct))
    problems: dict[str, str] = {}
    pending: list[RowMapping] = []
    for fp, length in distinct.items():
        row = rows.get(fp)
        if row is None or row["state"] == "bad":
            problems[fp] = "not uploaded"
        elif row["length"] != length:
            problems[fp] = f"length {length} given, {row['length']} uploaded"
        elif row["state"] == "pending":
            pending.append(row)
    return problems, pending


def check_stored(store: ObjectStore, owner_id: int, row: RowMapping) -> str | None:
    """Step 2, one pending chunk: None if the store holds exactly its bytes, else why not.
    Blocking (a HEAD, or a streamed hash on stores that keep no checksum)."""
    try:
        info = store.head(chunk_key(owner_id, row["fingerprint"]))
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


def _check_plain(store: ObjectStore, owner_id: int, row: RowMapping) -> str | None:
    """A compressed object must inflate to exactly its chunk: the store (S3) checked
    only the compressed bytes, against the hash the device claimed for them. Streams
    the object once, capped at the chunk's length (compress.plain_digest)."""
    try:
        digest, length = plain_digest(store.stream(chunk_key(owner_id, row["fingerprint"])), row["compression"],
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


def finish_verification(db: Database, owner_id: int, verified: list[str], problems: dict[str, str]) -> None:
    """Step 3: remember what was verified; refuse the commit if anything is missing."""
    if verified:
        with db.write(owner_id) as conn:
            for batch in _batched(verified):
                conn.execute(chunks.update().where(chunks.c.owner_id == owner_id, chunks.c.fingerprint.in_(batch))
                             .values(state="verified"))
    if problems:
        listed = [{"fingerprint": fp, "problem": p} for fp, p in sorted(problems.items())]
        raise MissingChunks(f"{len(problems)} chunk(s) are not in the store: upload them, then commit again",
                            field="chunks", chunks=listed)


def _target_for_commit(conn: Connection, owner_id: int, root_id: int, req: wire.CommitRequest) -> tuple[RowMapping | None, int, str]:
    """The existing file the commit updates (or None) and the parent + name it lives at."""
    ways = sum(x is not None for x in (req.node_id, req.path, req.parent_id))
    if ways != 1 or (req.parent_id is None) != (req.name is None):
        raise Invalid("name the file by exactly one of: node_id, path, or parent_id + name", field="node_id")
    if req.node_id is not None:
        try:
            row = tree.get(conn, owner_id, req.node_id)
        except NotFound:
            raise NotFound(f"no file with id {req.node_id}", field="node_id") from None
        if row["kind"] != "file":
            raise IsADirectory(f"node {req.node_id} is a {row['kind']}, not a file", field="node_id")
        return row, row["parent_id"], row["name"]
    if req.path is not None:
        try:
            names = split_path(req.path)
        except ValueError as exc:
            raise Invalid(f"path {req.path!r}: {exc}", field="path") from None
        if not names:
            raise IsADirectory("the root is a directory, not a file", field="path")
        parent = tree.resolve(conn, owner_id, root_id, names[:-1])
        if parent["kind"] != "dir":
            raise NotADirectory(f"/{'/'.join(names[:-1])} is not a directory", field="path")
        parent_id, name = parent["id"], names[-1]
    else:
        parent_id, name = tree.get_dir(conn, owner_id, req.parent_id)["id"], req.name
    existing = tree.child(conn, owner_id, parent_id, name)
    if existing is not None and existing["kind"] == "file" and req.base_rev == 0:
        # A create onto a taken name is a name conflict, not an edit of that file.
        raise NameExists(f"{name!r} already exists in directory {parent_id}", field="path" if req.path else "name",
                         node=tree.to_wire(existing).model_dump())
    if existing is not None and existing["kind"] != "file":
        raise IsADirectory(f"{name!r} is a {existing['kind']}", field="path" if req.path is not None else "name",
                           node=tree.to_wire(existing).model_dump())
    return existing, parent_id, name


def _version_row(row: RowMapping) -> wire.Version:
    return wire.Version(rev=row["rev"], size=row["size"], mtime_ns=row["mtime_ns"], device=row["device"],
                        created_at=row["created_at"])


def _write_version(conn: Connection, owner_id: int, node: RowMapping | None, parent_id: int, name: str,
                   *, size: int, mtime_ns: int, mode: int | None, refs: list[tuple[str, int]],
                   base_rev: int, device: str) -> tuple[RowMapping, wire.Version, int]:
    if node is None:
        if base_rev != 0:
            raise NotFound(f"{name!r} does not exist in directory {parent_id} (base_rev {base_rev})", field="base_rev")
        node, _ = tree.insert(conn, owner_id, parent_id=parent_id, name=name, kind="file",
                              mode=mode if mode is not None else 0o644, mtime_ns=mtime_ns, device=device,
                              rev=0, record=False)
        op = "create"
    elif node["rev"] != base_rev:
        raise StaleRevision(f"node {node['id']} is at revision {node['rev']}, not {base_rev}", field="base_rev",
                            current_rev=node["rev"], node=tree.to_wire(node).model_dump())
    else:
        op = "create" if node["deleted"] else "modify"
    rev = node["rev"] + 1
    created = time.time()
    version_id = conn.execute(
        _VERSION, dict(node_id=node["id"], rev=rev, size=size, mtime_ns=mtime_ns, device=device, created_at=created)
    ).inserted_primary_key[0]
    if refs:
        conn.execute(_VCHUNKS, [
            {"version_id": version_id, "idx": i, "fingerprint": fp, "length": length} for i, (fp, length) in enumerate(refs)
        ])
    update = {"b_id": node["id"], "b_size": size, "b_mtime": mtime_ns, "b_rev": rev}
    if mode is not None:
        update["b_mode"] = mode
    conn.execute(_NODE_UPDATE_MODE if mode is not None else _NODE_UPDATE, update)
    node = tree.get(conn, owner_id, node["id"])
    seq = journal.append(conn, owner_id, op, node, device=device)
    return node, wire.Version(rev=rev, size=size, mtime_ns=mtime_ns, device=device, created_at=created), seq


def check_commit(req: wire.CommitRequest) -> None:
    total = sum(c.length for c in req.chunks)
    if total != req.size:
        raise Invalid(f"size is {req.size} but the chunks add up to {total}", field="size")


def write_commit(db: Database, owner_id: int, root_id: int, req: wire.CommitRequest, device: str) -> wire.CommitResponse:
    """Step 4, after verification: version + node + journal entry in one transaction."""
    with db.write(owner_id) as conn:
        node, parent_id, name = _target_for_commit(conn, owner_id, root_id, req)
        node, version, seq = _write_version(
            conn, owner_id, node, parent_id, name, size=req.size, mtime_ns=req.mtime_ns, mode=req.mode,
            refs=[(c.fingerprint, c.length) for c in req.chunks], base_rev=req.base_rev, device=device,
        )
    return wire.CommitResponse(node=tree.to_wire(node), version=version, cursor=seq)


def _load_version(conn: Connection, node_id: int, rev: int | None, node_rev: int) -> RowMapping | None:
    wanted = rev if rev is not None else node_rev
    return conn.execute(
        sa.select(versions).where(versions.c.node_id == node_id, versions.c.rev == wanted)
    ).mappings().first()


def _version_chunks(conn: Connection, version_id: int) -> list[tuple[str, int]]:
    return [(r.fingerprint, r.length) for r in conn.execute(
        sa.select(version_chunks.c.fingerprint, version_chunks.c.length)
        .where(version_chunks.c.version_id == version_id).order_by(version_chunks.c.idx)
    )]


def file_info(db: Database, signer: Signer, owner_id: int, node_id: int, *, rev: int | None, urls: bool) -> wire.FileInfo:
    with db.read() as conn:
        node = tree.get(conn, owner_id, node_id, allow_deleted=rev is not None)
        cursor = journal.cursor(conn, owner_id)
        if node["kind"] != "file":
            return wire.FileInfo(node=tree.to_wire(node), version=None, chunks=[], cursor=cursor)
        vrow = _load_version(conn, node_id, rev, node["rev"])
        if vrow is None:
            raise NotFound(f"node {node_id} has no revision {rev}", field="rev")
        refs = _version_chunks(conn, vrow["id"])
        compression = {fp: row["compression"] for fp, row in _chunk_rows(conn, owner_id, list({fp for fp, _ in refs})).items()}
    out, offset = [], 0
    for fp, length in refs:
        out.append(wire.VersionChunk(fingerprint=fp, length=length, offset=offset, compression=compression.get(fp, "none"),
                                     download=signer.get(owner_id, fp) if urls else None))
        offset += length
    return wire.FileInfo(node=tree.to_wire(node), version=_version_row(vrow), chunks=out, cursor=cursor)


def prepare_download(db: Database, signer: Signer, owner_id: int, req: wire.PrepareDownloadRequest) -> wire.PrepareDownloadResponse:
    """Fresh signed GET URLs for chunks this user owns (others are simply unknown)."""
    with db.read() as conn:
        rows = _chunk_rows(conn, owner_id, list(dict.fromkeys(req.fingerprints)))
    unknown = [fp for fp in req.fingerprints if fp not in rows or rows[fp]["state"] != "verified"]
    if unknown:
        raise NotFound(f"{len(unknown)} chunk(s) unknown to this account", field="fingerprints", chunks=unknown[:100])
    return wire.PrepareDownloadResponse(chunks=[
        wire.ChunkDownload(fingerprint=fp, length=rows[fp]["length"], compression=rows[fp]["compression"],
                           download=signer.get(owner_id, fp))
        for fp in dict.fromkeys(req.fingerprints)
    ])


def list_versions(db: Database, owner_id: int, node_id: int, *, limit: int) -> wire.VersionList:
    with db.read() as conn:
        node = tree.get(conn, owner_id, node_id, allow_deleted=True)
        if node["kind"] != "file":
            raise IsADirectory(f"node {node_id} is a {node['kind']}; only files have versions", field="id")
        rows = conn.execute(
            sa.select(versions).where(versions.c.node_id == node_id).order_by(versions.c.rev.desc()).limit(limit)
        ).mappings().all()
    return wire.VersionList(node_id=node_id, versions=[_version_row(r) for r in rows])


def restore(db: Database, owner_id: int, node_id: int, req: wire.RestoreRequest, device: str) -> wire.CommitResponse:
    """Make an old revision current again, as a new commit (history only grows).
    A deleted file comes back at its old place if that name is still free."""
    with db.write(owner_id) as conn:
        node = tree.get(conn, owner_id, node_id, allow_deleted=True)
        if node["kind"] != "file":
            raise IsADirectory(f"node {node_id} is a {node['kind']}; only files have versions", field="id")
        vrow = _load_version(conn, node_id, req.rev, node["rev"])
        if vrow is None:
            raise NotFound(f"node {node_id} has no revision {req.rev}", field="rev")
        if node["deleted"]:
            tree.get_dir(conn, owner_id, node["parent_id"])
            taken = tree.child(conn, owner_id, node["parent_id"], node["name"])
            if taken is not None:
                raise NameExists(f"{node['name']!r} is taken again in directory {node['parent_id']}",
                                 field="id", node=tree.to_wire(taken).model_dump())
        base = req.base_rev if req.base_rev is not None else node["rev"]
        node, version, seq = _write_version(
            conn, owner_id, node, node["parent_id"], node["name"], size=vrow["size"], mtime_ns=time.time_ns(),
            mode=None, refs=_version_chunks(conn, vrow["id"]), base_rev=base, device=device,
        )
    return wire.CommitResponse(node=tree.to_wire(node), version=version, cursor=seq)
