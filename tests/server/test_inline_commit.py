"""Small files travel inside their commit (`inline`): the server hashes the bytes,
stores them and records the chunk verified, all in the one request. Against a real
server on every store and engine (the `server` fixture)."""

from __future__ import annotations

import base64
import hashlib
import os

import zstandard

from cloudfs.backend.protocol import wire
def _commit(path: str, data: bytes, *, inline: bytes | None = None, fingerprint: str | None = None,
            base_rev: int = 0) -> dict:
    fp = fingerprint or hashlib.sha256(data).hexdigest()
    return {"path": path, "base_rev": base_rev, "size": len(data), "mtime_ns": 1,
            "chunks": [{"fingerprint": fp, "length": len(data)}],
            "inline": [{"fingerprint": fp, "data": base64.b64encode(data if inline is None else inline).decode()}]}


def _read(api, node_id: int) -> bytes:  # noqa: ANN001 - the fixtures' Api
    """The file's bytes as another device gets them: signed URLs, then inflate."""
    info = api.get(f"/files/{node_id}").json()
    out = b""
    for chunk in info["chunks"]:
        d = chunk["download"]
        body = api.request(d["method"], d["url"], headers={**d["headers"], "Authorization": ""})
        assert body.status_code == 200, body.text
        out += zstandard.ZstdDecompressor().decompress(body.content) if chunk["compression"] == "zstd" else body.content
    return out


def test_a_small_file_commits_in_one_request_and_reads_back(server, alice):
    data = os.urandom(3000)
    r = alice.post("/files", json=_commit("/note.txt", data))
    assert r.status_code == 200, r.text
    node = r.json()["node"]
    assert node["size"] == 3000 and node["rev"] == 1
    assert _read(alice, node["id"]) == data
    # The chunk is known good now: uploading the same bytes elsewhere sends nothing.
    fp = hashlib.sha256(data).hexdigest()
    prep = alice.post("/uploads/prepare", json={"chunks": [{"fingerprint": fp, "length": 3000}]}).json()
    assert prep["present"] == [fp] and prep["missing"] == []
    # An edit inline too, guarded by its base revision like any commit.
    edited = data + b"more"
    r = alice.post("/files", json=_commit("/note.txt", edited, base_rev=1))
    assert r.status_code == 200 and r.json()["version"]["rev"] == 2, r.text
    stale = alice.post("/files", json=_commit("/note.txt", b"late", base_rev=1))
    assert stale.status_code == 409
    assert _read(alice, node["id"]) == edited


def test_inline_bytes_that_do_not_match_their_fingerprint_are_refused(server, alice):
    good, evil = os.urandom(2000), os.urandom(2000)
    r = alice.post("/files", json=_commit("/evil", good, inline=evil))
    assert r.status_code == 422 and r.json()["field"] == "inline[0].data", r.text
    assert alice.get("/resolve", params={"path": "/evil"}).status_code == 404
    # Nothing was recorded for that fingerprint: a commit without the bytes is refused.
    fp = hashlib.sha256(good).hexdigest()
    bare = alice.post("/files", json={"path": "/evil", "base_rev": 0, "size": 2000, "mtime_ns": 1,
                                      "chunks": [{"fingerprint": fp, "length": 2000}]})
    assert bare.status_code == 422 and bare.json()["error"] == "missing_chunks"


def test_inline_chunks_must_belong_to_the_commit_and_stay_small(server, alice):
    data, other = os.urandom(100), os.urandom(100)
    body = _commit("/x", data)
    body["inline"][0] = {"fingerprint": hashlib.sha256(other).hexdigest(), "data": base64.b64encode(other).decode()}
    r = alice.post("/files", json=body)
    assert r.status_code == 422 and r.json()["field"] == "inline[0]", r.text

    short = _commit("/x", data, inline=data[:50])
    r = alice.post("/files", json=short)
    assert r.status_code == 422 and r.json()["field"] == "inline[0].data", r.text

    big = os.urandom(wire.INLINE_MAX_BYTES + 1)
    r = alice.post("/files", json=_commit("/big", big))
    assert r.status_code == 422 and "inline" in r.text, r.text
    assert alice.get("/resolve", params={"path": "/x"}).status_code == 404


def test_inline_chunks_may_come_compressed_and_must_inflate_to_their_fingerprint(server, alice):
    plain = b"hello world, " * 400
    body = _commit("/small.txt", plain, inline=zstandard.ZstdCompressor().compress(plain))
    body["inline"][0]["compression"] = "zstd"
    r = alice.post("/files", json=body)
    assert r.status_code == 200, r.text
    assert _read(alice, r.json()["node"]["id"]) == plain

    other = b"something else entirely " * 100
    lie = _commit("/lie.txt", plain, inline=zstandard.ZstdCompressor().compress(other))
    lie["inline"][0]["compression"] = "zstd"
    r = alice.post("/files", json=lie)
    assert r.status_code == 422 and r.json()["field"] == "inline[0].data", r.text
    junk = _commit("/junk.txt", plain, inline=b"not zstd at all")
    junk["inline"][0]["compression"] = "zstd"
    r = alice.post("/files", json=junk)
    assert r.status_code == 422 and "zstd" in r.json()["detail"], r.text
