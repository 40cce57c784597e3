"""The whole upload path as a device drives it, against a real server process:
prepare → PUT missing chunks on signed URLs → commit → read back → /changes → 409."""

from __future__ import annotations

import hashlib
import io
import os
import time
import types

import trio

from cloudfs.backend.protocol import wire
from cloudfs.backend.protocol.api_client import ApiClient
from cloudfs.backend.chunker import iter_pieces
from cloudfs.backend.errors import MissingChunksError, ServerError, StaleRevisionError
from cloudfs.backend.sync.uploader import Uploader
from tests.harness import cloudfs_mount

SIZE = 20 * 1024 * 1024


async def upload_file(client: ApiClient, path: str, data: bytes, *, base_rev: int = 0) -> tuple[wire.CommitResponse, int]:
    """Chunk, prepare, upload what is missing (in parallel), commit. Returns the commit
    and how many chunks were actually sent."""
    pieces = list(iter_pieces(io.BytesIO(data), len(data)))
    prepared = await client.prepare_upload([wire.ChunkUpload(fingerprint=p.fingerprint, length=p.length) for p in pieces])
    by_fp = {p.fingerprint: p for p in pieces}
    async with trio.open_nursery() as nursery:
        for ticket in prepared.missing:
            nursery.start_soon(client.put_chunk, ticket, by_fp[ticket.fingerprint].data)
    commit = await client.commit(wire.CommitRequest(
        path=path, base_rev=base_rev, size=len(data), mtime_ns=time.time_ns(),
        chunks=[wire.ChunkRef(fingerprint=p.fingerprint, length=p.length) for p in pieces],
    ))
    return commit, len(prepared.missing)


async def download_file(client: ApiClient, node_id: int, rev: int | None = None) -> bytes:
    info = await client.file_info(node_id, rev=rev)
    parts: list[bytes] = [b""] * len(info.chunks)

    async def fetch(i: int, chunk: wire.VersionChunk) -> None:
        parts[i] = await client.fetch_chunk(chunk.fingerprint, chunk.download, chunk.compression)

    async with trio.open_nursery() as nursery:
        for i, chunk in enumerate(info.chunks):
            nursery.start_soon(fetch, i, chunk)
    return b"".join(parts)


def test_device_upload_path(server, alice):
    data = os.urandom(SIZE)

    async def main() -> None:
        async with ApiClient(server.url, alice.token, device="dev-a") as client:
            start_cursor = (await client.me()).cursor
            commit, sent = await upload_file(client, "/big.bin", data)
            assert commit.node.size == SIZE and commit.version.rev == 1
            assert sent >= 2, "a 20 MiB file is several chunks (at most 16 MiB each)"

            back = await download_file(client, commit.node.id)
            assert hashlib.sha256(back).hexdigest() == hashlib.sha256(data).hexdigest()

            feed = await client.changes(start_cursor)
            ops = [(c.op, c.node.id, c.node.rev) for c in feed.changes]
            assert ("create", commit.node.id, 1) in ops
            assert feed.cursor == commit.cursor

            # Same content again: nothing to send (dedup / resumability).
            again, sent_again = await upload_file(client, "/big.bin", data, base_rev=1)
            assert sent_again == 0 and again.version.rev == 2

            # A device still at rev 1 is refused, never silently applied.
            try:
                await upload_file(client, "/big.bin", data[: SIZE // 2], base_rev=1)
            except StaleRevisionError as exc:
                assert exc.status == 409 and exc.current_rev == 2
            else:
                raise AssertionError("stale commit was accepted")
            assert (await client.file_info(commit.node.id, urls=False)).node.rev == 2

    trio.run(main)


def test_commit_refuses_chunks_never_uploaded(server, alice):
    async def main() -> None:
        async with ApiClient(server.url, alice.token) as client:
            data = os.urandom(4096)
            fp = hashlib.sha256(data).hexdigest()
            await client.prepare_upload([wire.ChunkUpload(fingerprint=fp, length=len(data))])
            try:
                await client.commit(wire.CommitRequest(path="/x", base_rev=0, size=4096, mtime_ns=1,
                                                       chunks=[wire.ChunkRef(fingerprint=fp, length=4096)]))
            except MissingChunksError as exc:
                assert exc.status == 422 and exc.fingerprints == [fp]
            else:
                raise AssertionError("commit of a chunk that was never uploaded was accepted")

    trio.run(main)


def test_bytes_that_do_not_match_their_fingerprint_never_commit(server, alice):
    """Local store: the PUT itself is refused. S3 (moto keeps no checksum): the PUT lands,
    and the server's verification at commit time catches it."""
    good, evil = os.urandom(5000), os.urandom(5000)
    fp = hashlib.sha256(good).hexdigest()
    prep = alice.post("/uploads/prepare", json={"chunks": [{"fingerprint": fp, "length": 5000}]}).json()
    upload = prep["missing"][0]["upload"]
    put = alice.request(upload["method"], upload["url"], content=evil, headers={**upload["headers"], "Authorization": ""})
    if put.status_code < 300:
        assert server.store_url and server.store_url.startswith("s3://")
    else:
        assert put.status_code == 422 and put.json()["error"] == "corrupt_chunk"
    r = alice.post("/files", json={"path": "/evil", "base_rev": 0, "size": 5000, "mtime_ns": 1,
                                   "chunks": [{"fingerprint": fp, "length": 5000}]})
    assert r.status_code == 422 and r.json()["error"] == "missing_chunks", r.text
    assert alice.get("/resolve", params={"path": "/evil"}).status_code == 404
    # The honest upload still works afterwards.
    put = alice.request(upload["method"], upload["url"], content=good, headers={**upload["headers"], "Authorization": ""})
    assert put.status_code < 300
    again = alice.post("/uploads/prepare", json={"chunks": [{"fingerprint": fp, "length": 5000}]}).json()
    for ticket in again["missing"]:
        up = ticket["upload"]
        alice.request(up["method"], up["url"], content=good, headers={**up["headers"], "Authorization": ""})
    r = alice.post("/files", json={"path": "/evil", "base_rev": 0, "size": 5000, "mtime_ns": 1,
                                   "chunks": [{"fingerprint": fp, "length": 5000}]})
    assert r.status_code == 200, r.text


def test_tampered_or_unsigned_blob_urls_are_refused(server, alice):
    if server.store_url:
        return  # S3 signs its own URLs; moto does not check signatures
    data = os.urandom(100)
    fp = hashlib.sha256(data).hexdigest()
    prep = alice.post("/uploads/prepare", json={"chunks": [{"fingerprint": fp, "length": 100}]}).json()
    url = prep["missing"][0]["upload"]["url"]
    assert alice.put(url.replace("len=100", "len=101"), content=data + b"x").status_code == 403
    assert alice.put(url.split("?")[0], content=data).status_code == 403
    other_key = url.replace(fp, hashlib.sha256(b"other").hexdigest())
    assert alice.put(other_key, content=data).status_code == 403
    assert alice.put(url, content=data).status_code == 201


def test_a_retried_commit_that_meets_a_deleted_file_keeps_its_conflict(server, alice):
    """The uploader asks whether a refused commit had landed before its answer was lost;
    if another device deleted the file meanwhile, the answer to a stale revision is "not
    ours" (the stale revision stands and the syncer keeps the edit), not a 404 that drops
    the upload. A retry answered 404 (the node is gone) whose version is in the deleted
    node's history, exactly, was ours: the answer says the node is deleted, so the
    delete is applied here instead of the bytes coming back."""
    data = b"first version\n"

    async def main() -> None:
        async with ApiClient(server.url, alice.token, device="dev-a") as client:
            commit, _ = await upload_file(client, "/doc.txt", data)
            mirror = types.SimpleNamespace(ino_for_node=lambda node_id: None)  # no other inode stands for it here
            uploader = Uploader(client, cache=mirror, chunks=None, content=None)  # type: ignore[arg-type]
            uploader.account = lambda: commit.version.user_id
            stale = StaleRevisionError(409, {"error": "stale_revision", "current_rev": 2,
                                             "node": commit.node.model_dump()})
            refs = [(hashlib.sha256(data).hexdigest(), len(data))]
            other_mtime = types.SimpleNamespace(node_id=None, size=len(data), mtime_ns=1, base_rev=0)
            assert await uploader._landed_already(stale, 7, other_mtime, refs) is None  # not from this mtime
            await client.delete(commit.node.id)
            assert await uploader._landed_already(stale, 7, other_mtime, refs) is None
            gone = ServerError(404, {"error": "not_found", "field": "node_id"})
            retried = types.SimpleNamespace(node_id=commit.node.id, size=len(data), mtime_ns=commit.version.mtime_ns,
                                            base_rev=0)
            landed = await uploader._landed_already(gone, 7, retried, refs)
            assert landed is not None and landed.node.deleted and landed.version.rev == commit.version.rev
            other_bytes = [(hashlib.sha256(b"edited since").hexdigest(), len(data))]
            assert await uploader._landed_already(gone, 7, retried, other_bytes) is None

    trio.run(main)


def test_uploaded_chunk_is_readable_before_any_commit_names_it(server, alice):
    """A file streamed while it is written (backend/sync/streamer.py) has chunks in the store
    that no commit names yet; a write behind the streaming window fetches one back. S3
    leaves such a chunk unchecked until a commit: the download prepare looks at it then.
    Bytes never uploaded stay unknown."""
    data = os.urandom(300_000)
    fp = hashlib.sha256(data).hexdigest()
    never = hashlib.sha256(b"never uploaded").hexdigest()

    async def main() -> None:
        async with ApiClient(server.url, alice.token, device="dev-a") as client:
            prepared = await client.prepare_upload([wire.ChunkUpload(fingerprint=fp, length=len(data))])
            [ticket] = prepared.missing
            await client.put_chunk(ticket, data)
            [chunk] = (await client.prepare_download([fp])).chunks
            assert await client.fetch_chunk(fp, chunk.download, chunk.compression) == data
            await client.prepare_upload([wire.ChunkUpload(fingerprint=never, length=14)])  # prepared, never PUT
            try:
                await client.prepare_download([never])
            except Exception as exc:  # noqa: BLE001 - the 404 the client raises
                assert getattr(exc, "status", None) == 404, exc
            else:
                raise AssertionError("a chunk never uploaded was offered for download")

    trio.run(main)


def test_chunks_are_checked_as_they_are_put_where_the_store_reads_back(server, alice):
    """Where verifying means reading a chunk back (S3 without a checksum it checked:
    moto), /uploads/prepare says `check_after_put` and POST /chunks/check verifies what
    was PUT before any commit names it, so the commit reads nothing back; bad bytes are
    named, not recorded. The local store hashes every PUT as it arrives: nothing to ask."""
    good, evil = os.urandom(5000), os.urandom(6000)
    fps = [hashlib.sha256(good).hexdigest(), hashlib.sha256(os.urandom(6000)).hexdigest()]
    prep = alice.post("/uploads/prepare", json={"chunks": [{"fingerprint": fps[0], "length": 5000},
                                                           {"fingerprint": fps[1], "length": 6000}]}).json()
    s3 = bool(server.store_url and server.store_url.startswith("s3://"))
    assert prep["check_after_put"] is s3
    for ticket, body in zip(prep["missing"], (good, evil)):
        up = ticket["upload"]
        alice.request(up["method"], up["url"], content=body, headers={**up["headers"], "Authorization": ""})
    checked = alice.post("/chunks/check", json={"fingerprints": fps})
    assert checked.status_code == 200, checked.text
    if s3:
        assert checked.json()["verified"] == [fps[0]]
        assert list(checked.json()["problems"]) == [fps[1]]
        assert "checksum" in checked.json()["problems"][fps[1]]
    else:  # the store refused the bad PUT; the good one was verified as it arrived
        assert checked.json() == {"verified": [fps[0]], "problems": {fps[1]: "not in the store"}}
    again = alice.post("/uploads/prepare", json={"chunks": [{"fingerprint": fps[0], "length": 5000}]}).json()
    assert again["present"] == [fps[0]] and again["check_after_put"] is False  # verified: not asked for again
    r = alice.post("/chunks/check", json={"fingerprints": ["0" * 63]})
    assert r.status_code == 422 and r.json()["field"] == "fingerprints[0]", r.text


def test_a_mount_has_each_batch_checked_before_its_commit(server, alice, tmp_path):
    """A file of several batches (32 MiB each) written through a mount: on a store that
    reads back, the device asks for each batch to be checked as soon as it is PUT, so
    the checks come before the commit (server access log); on the local store it never
    asks."""
    data = os.urandom(72 * 1024 * 1024)
    before = len(server.log().splitlines())  # the server is the module's: earlier tests' lines come first
    with cloudfs_mount(server, alice.token, tmp_path / "mnt", tmp_path / "cache") as m:
        (m.path / "big.bin").write_bytes(data)
        m.sync(timeout=120)
    lines = server.log().splitlines()[before:]
    checks = [i for i, line in enumerate(lines) if '"POST /chunks/check' in line]
    commits = [i for i, line in enumerate(lines) if '"POST /files' in line]
    if (server.store_url or "").startswith("s3://"):
        assert len(checks) >= 2, "72 MiB is at least three batches: the first ones are checked while later ones go up"
        assert commits and max(checks) < commits[-1]
        assert all(" 200 " in lines[i] for i in checks)
    else:
        assert not checks
    r = alice.get("/resolve", params={"path": "/big.bin"})
    assert r.status_code == 200 and r.json()["node"]["size"] == len(data)
