"""File bytes to a browser: one file (with Range), or a folder as a streamed zip.

A device reads chunks straight from the store on signed URLs and checks them itself;
a browser cannot, and wants one HTTP answer per file, with its name, seekable (video),
or a folder as one zip. So here the server reads the chunks of a version from the store
and streams them: one chunk at a time is in memory (at most 64 MiB, usually 4), each
checked against its fingerprint before a byte of it is sent, so a chunk gone bad in
the store ends the answer short instead of handing out wrong bytes. A zip is written
as it is read (zipstream-ng, stored, ZIP64 when past 4 GiB): never in memory, never on
disk, and its length is known up front.

The generators are synchronous; Starlette runs them in worker threads.

How user content is answered (the page's origin must never run it): only images
(not SVG), audio, video and PDF may be shown inline, with a Content-Security-Policy
that allows no script; everything else is `application/octet-stream` and an
attachment. The page previews text by fetching it and showing it as text.
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import time
from dataclasses import dataclass
from typing import Iterable, Iterator
from urllib.parse import quote

import sqlalchemy as sa
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy.engine import Connection
from zipstream import ZIP_STORED, ZipStream

from cloudfs.backend.stores.compress import decode
from cloudfs.backend.stores.store import ObjectStore, StoreError, chunk_key

from . import files, tree
from .db import Database, nodes
from .errors import ApiError, IsADirectory, NotFound

log = logging.getLogger("cloudfs.content")

INLINE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/bmp",
                "application/pdf")
INLINE_PREFIXES = ("audio/", "video/")
CONTENT_CSP = "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; sandbox"
PDF_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; frame-ancestors 'self'"
FILE_RESPONSES = {
    200: {"description": "the file's bytes", "content": {"*/*": {}}},
    206: {"description": "the range asked for", "content": {"*/*": {}}},
    416: {"description": "the range starts past the end", "content": {"application/json": {}}},
}
ZIP_RESPONSES = {200: {"description": "a zip, streamed", "content": {"application/zip": {}}}}
"""What these routes answer, for /openapi.json (and the schema checks of the tests)."""
ZIP_MAX_ENTRIES = 1_000_000
"""A bound on what one zip may hold (the listing of a folder is kept while zipping)."""


class RangeNotSatisfiable(ApiError):
    status, code = 416, "range_not_satisfiable"


@dataclass
class Version:
    """A file version's bytes as the store keeps them."""

    node: dict
    rev: int
    size: int
    mtime_ns: int
    chunks: list[tuple[str, int, str, str]]
    """(fingerprint, plain length, compression, store key), in file order: the key is
    the namespace's own, or the one the server gave the chunk from (files.key_of)."""
    name: str
    """The name it was asked for by: a hard link's own, not its file's first name."""


def load_version(conn: Connection, owner_id: int, node: dict, rev: int | None) -> Version:
    if node["kind"] != "file":
        raise IsADirectory(f"{node['name']!r} is a {node['kind']}: only files have content", field="id")
    vrow = files.load_version(conn, node["id"], rev, node["rev"])
    if vrow is None:
        raise NotFound(f"node {node['id']} has no revision {rev}", field="rev")
    refs = files.version_chunks(conn, vrow["id"])
    rows = files.chunk_rows(conn, owner_id, list({fp for fp, _ in refs}))
    chunks = [(fp, length, rows[fp]["compression"], files.key_of(rows[fp])) if fp in rows
              else (fp, length, "none", chunk_key(owner_id, fp)) for fp, length in refs]
    return Version(dict(node), vrow["rev"], vrow["size"], vrow["mtime_ns"], chunks, node["name"])


def file_version(db: Database, owner_id: int, node_id: int, rev: int | None) -> Version:
    """A version of the file `node_id` names (through a hard link too: the alias's name)."""
    with db.read() as conn:
        row = tree.get(conn, owner_id, node_id, allow_deleted=rev is not None)
        version = load_version(conn, owner_id, tree.inode(conn, owner_id, row, allow_deleted=rev is not None), rev)
    version.name = row["name"]
    return version


class ChunkReader:
    """Reads plain chunks from the store, each checked; remembers the last one (a zip of
    a file made of one repeated chunk, or Range requests within a chunk)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._last: tuple[str, bytes] | None = None

    def read(self, fingerprint: str, length: int, compression: str, key: str) -> bytes:
        if self._last is not None and self._last[0] == fingerprint:
            return self._last[1]
        try:
            body = self.store.get(key)
        except StoreError as exc:
            log.error("chunk %s could not be read from the store: %s", key, exc)
            raise
        plain = body if compression == "none" else decode(body, compression, fingerprint, max_length=length)
        if plain is None or len(plain) != length or hashlib.sha256(plain).hexdigest() != fingerprint:
            log.error("chunk %s is damaged in the store: the answer is cut short", key)
            raise StoreError(f"chunk {fingerprint} does not match its fingerprint")
        self._last = (fingerprint, plain)
        return plain


def iter_bytes(reader: ChunkReader, version: Version, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """The bytes [start, end) of a version, chunk by chunk."""
    end = version.size if end is None else end
    offset = 0
    for fingerprint, length, compression, key in version.chunks:
        if offset >= end:
            break
        if offset + length > start:
            plain = reader.read(fingerprint, length, compression, key)
            lo, hi = max(start - offset, 0), min(end - offset, length)
            yield plain[lo:hi] if (lo, hi) != (0, length) else plain
        offset += length


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """A single `bytes=a-b` range as [start, end); None for the whole file. Several
    ranges are answered with the whole file (allowed by RFC 9110)."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            suffix = int(last)
            if suffix <= 0:
                raise RangeNotSatisfiable("an empty suffix range", field="Range")
            return max(size - suffix, 0), size
        start = int(first)
        end = size if last == "" else min(int(last) + 1, size)
    except ValueError:
        return None
    if start >= size or end <= start:
        raise RangeNotSatisfiable(f"the range starts past the end of the file ({size} bytes)", field="Range",
                                  size=size)
    return start, end


def media_type(name: str) -> str:
    guessed = mimetypes.guess_type(name, strict=False)[0] or "application/octet-stream"
    return guessed


def can_show_inline(kind: str) -> bool:
    return kind in INLINE_TYPES or kind.startswith(INLINE_PREFIXES)


def disposition(kind: str, name: str) -> str:
    """RFC 6266: an ASCII fallback and the UTF-8 name."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\%;' else "_" for c in name) or "file"
    return f'{kind}; filename="{fallback}"; filename*=UTF-8\'\'{quote(name, safe="")}'


def file_response(store: ObjectStore, version: Version, request: Request, *, name: str, inline: bool) -> Response:
    """The version's bytes with its name, Range support, and headers that keep the
    bytes from ever being run as part of the page."""
    kind = media_type(name)
    show = inline and can_show_inline(kind)
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": f'"{version.node["id"]}-{version.rev}"',
        "Last-Modified": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(version.mtime_ns / 1e9)),
        "Content-Disposition": disposition("inline" if show else "attachment", name),
        "Content-Security-Policy": PDF_CSP if show and kind == "application/pdf" else CONTENT_CSP,
        "Cache-Control": "private, no-cache",
    }
    if show and kind == "application/pdf":
        headers["X-Frame-Options"] = "SAMEORIGIN"  # the page previews it in a frame
    wanted = parse_range(request.headers.get("range"), version.size) if version.size else None
    if wanted is not None and request.headers.get("if-range") not in (None, headers["ETag"]):
        wanted = None
    start, end = wanted if wanted is not None else (0, version.size)
    headers["Content-Length"] = str(end - start)
    status = 200
    if wanted is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{version.size}"
    media = kind if show else "application/octet-stream"
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=media)
    reader = ChunkReader(store)
    return StreamingResponse(iter_bytes(reader, version, start, end), status_code=status, headers=headers,
                             media_type=media)


# --- folders as zips ---


def walk(conn: Connection, owner_id: int, top_id: int) -> list[tuple[str, dict]]:
    """(path inside the zip, node row) of every live file and directory below `top_id`,
    parents before children; a hard link is its file under the link's name (as tar or
    cp would copy it). Symlinks and special files have no bytes to give."""
    out: list[tuple[str, dict]] = []
    queue: list[tuple[int, str]] = [(top_id, "")]
    while queue:
        dir_id, prefix = queue.pop()
        rows = conn.execute(sa.select(nodes).where(nodes.c.owner_id == owner_id, nodes.c.parent_id == dir_id,
                                                   nodes.c.deleted == sa.false()).order_by(nodes.c.name)).mappings()
        for row in rows:
            path = prefix + row["name"]
            if row["kind"] == "link":
                row = tree.inode(conn, owner_id, row)
            if row["kind"] == "dir":
                out.append((path + "/", dict(row)))
                queue.append((row["id"], path + "/"))
            elif row["kind"] == "file":
                out.append((path, dict(row)))
            if len(out) > ZIP_MAX_ENTRIES:
                raise ApiError(f"the folder holds more than {ZIP_MAX_ENTRIES} entries: download it in parts",
                               field="id")
    return out


def zip_plan(db: Database, owner_id: int, top_id: int) -> list[tuple[str, Version | None, int]]:
    """What the zip will hold: each entry's path, its version (None: a directory) and mtime."""
    with db.read() as conn:
        tree.get_dir(conn, owner_id, top_id, field="id")
        plan = []
        for path, row in walk(conn, owner_id, top_id):
            version = load_version(conn, owner_id, row, None) if row["kind"] == "file" else None
            plan.append((path, version, row["mtime_ns"]))
    return plan


def zip_response(store: ObjectStore, plan: list[tuple[str, Version | None, int]], name: str) -> Response:
    stream = ZipStream(compress_type=ZIP_STORED, sized=True)
    reader = ChunkReader(store)
    for path, version, _mtime_ns in plan:
        if version is None:
            stream.mkdir(path)
        else:
            stream.add(_lazy(reader, version), path, size=version.size)
    headers = {"Content-Disposition": disposition("attachment", f"{name}.zip"), "Content-Length": str(len(stream)),
               "Content-Security-Policy": CONTENT_CSP, "Cache-Control": "private, no-cache"}
    return StreamingResponse(iter(stream), headers=headers, media_type="application/zip")


def _lazy(reader: ChunkReader, version: Version) -> Iterable[bytes]:
    """An iterable that reads nothing until the zip reaches this entry."""

    class Entry:
        def __iter__(self) -> Iterator[bytes]:
            return iter_bytes(reader, version)

    return Entry()
