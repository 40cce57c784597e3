"""Compressed chunks on both stores: the device's two-step prepare (plain first, then
zstd for what is missing), stored bytes are the compressed ones, reads give the plain
bytes back, and a compressed body that does not inflate to its fingerprint never
commits (local store: the PUT is refused; S3, which checks only the compressed bytes'
hash: the server inflates the object at commit time)."""

from __future__ import annotations

import hashlib
import os
import random

import httpx
import trio
import zstandard

from cloudfs.backend.protocol.api_client import ApiClient
from cloudfs.backend.stores.compress import compress


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def text(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    words = [bytes(rng.choices(b"abcdefghij klmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(500)]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choices(words, k=10)) + b"\n"
    return bytes(out[:size])


def put(alice, ticket: dict, body: bytes) -> httpx.Response:
    up = ticket["upload"]
    return alice.request(up["method"], up["url"], content=body, headers={**up["headers"], "Authorization": ""})


def zstd_entry(plain: bytes, body: bytes) -> dict:
    return {"fingerprint": sha(plain), "length": len(plain), "compression": "zstd",
            "stored_length": len(body), "stored_sha256": sha(body)}


def commit(alice, path: str, plain: bytes) -> httpx.Response:
    return alice.post("/files", json={"path": path, "base_rev": 0, "size": len(plain), "mtime_ns": 1,
                                      "chunks": [{"fingerprint": sha(plain), "length": len(plain)}]})


def test_compressed_chunk_round_trip(server, alice):
    plain = text(3 << 20, seed=1)
    packed = compress(plain)
    assert packed is not None and len(packed.body) < len(plain) // 2
    # As the uploader does it: plain first, then signed again for the compressed body.
    first = alice.post("/uploads/prepare", json={"chunks": [{"fingerprint": sha(plain), "length": len(plain)}]}).json()
    assert [t["fingerprint"] for t in first["missing"]] == [sha(plain)]
    again = alice.post("/uploads/prepare", json={"chunks": [zstd_entry(plain, packed.body)]}).json()
    assert put(alice, again["missing"][0], packed.body).status_code < 300
    r = commit(alice, "/notes.txt", plain)
    assert r.status_code == 200, r.text

    info = alice.get(f"/files/{r.json()['node']['id']}").json()
    [chunk] = info["chunks"]
    assert chunk["compression"] == "zstd" and chunk["length"] == len(plain)
    raw = httpx.request(chunk["download"]["method"], chunk["download"]["url"], headers=chunk["download"]["headers"])
    assert raw.status_code == 200 and raw.content == packed.body  # stored compressed

    async def fetch() -> bytes:
        async with ApiClient(server.url, alice.token) as client:
            return await client.fetch_chunk(chunk["fingerprint"], _signed(chunk["download"]), chunk["compression"])

    assert trio.run(fetch) == plain
    # Known now: a later prepare, plain or compressed, has nothing to send.
    later = alice.post("/uploads/prepare", json={"chunks": [{"fingerprint": sha(plain), "length": len(plain)}]}).json()
    assert later["missing"] == [] and later["present"] == [sha(plain)]


def _signed(download: dict):  # noqa: ANN202
    from cloudfs.backend.protocol import wire
    return wire.SignedRequest.model_validate(download)


def test_compressed_body_of_other_bytes_never_commits(server, alice):
    plain, other = text(1 << 20, seed=2), text(1 << 20, seed=3)
    lie = zstandard.ZstdCompressor().compress(other)  # a valid frame, of the wrong bytes
    prep = alice.post("/uploads/prepare", json={"chunks": [zstd_entry(plain, lie)]}).json()
    r = put(alice, prep["missing"][0], lie)
    if server.store_url:
        assert r.status_code < 300  # S3 checks the body's hash only: it matches what was claimed
    else:
        assert r.status_code == 422 and r.json()["error"] == "corrupt_chunk"
    r = commit(alice, "/lie.txt", plain)
    assert r.status_code == 422 and r.json()["error"] == "missing_chunks", r.text
    assert "decompress" in r.text or "not uploaded" in r.text or "not in the store" in r.text, r.text

    # The honest body then commits.
    body = zstandard.ZstdCompressor().compress(plain)
    prep = alice.post("/uploads/prepare", json={"chunks": [zstd_entry(plain, body)]}).json()
    for ticket in prep["missing"]:
        assert put(alice, ticket, body).status_code < 300
    assert commit(alice, "/lie.txt", plain).status_code == 200


def test_body_that_is_not_zstd_never_commits(server, alice):
    plain = text(200_000, seed=4)
    junk = os.urandom(5000)
    prep = alice.post("/uploads/prepare", json={"chunks": [zstd_entry(plain, junk)]}).json()
    r = put(alice, prep["missing"][0], junk)
    assert (r.status_code < 300) == bool(server.store_url), r.text
    r = commit(alice, "/junk.txt", plain)
    assert r.status_code == 422 and r.json()["error"] == "missing_chunks", r.text
