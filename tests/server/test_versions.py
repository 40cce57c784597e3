"""Version history and restore: every commit is kept, a restore is a new commit."""

from __future__ import annotations

import trio

from cloudfs.backend.protocol.api_client import ApiClient
from tests.server.helpers import changes, cursor, put_file
from tests.server.test_upload_path import download_file


def test_history_and_restore(server, alice):
    v1 = put_file(alice, "/notes.txt", b"first draft")
    v2 = put_file(alice, "/notes.txt", b"second draft", base_rev=v1["rev"])
    put_file(alice, "/notes.txt", b"", base_rev=v2["rev"])
    listing = alice.get(f"/files/{v1['id']}/versions").json()
    assert [v["rev"] for v in listing["versions"]] == [3, 2, 1]
    assert [v["size"] for v in listing["versions"]] == [0, 12, 11]

    before = cursor(alice)
    r = alice.post(f"/files/{v1['id']}/restore", json={"rev": 1})
    assert r.status_code == 200, r.text
    assert r.json()["version"]["rev"] == 4 and r.json()["node"]["size"] == 11
    assert [c["op"] for c in changes(alice, before)["changes"]] == ["modify"]

    async def read(rev: int | None) -> bytes:
        async with ApiClient(server.url, alice.token) as client:
            return await download_file(client, v1["id"], rev)

    assert trio.run(read, None) == b"first draft"
    assert trio.run(read, 2) == b"second draft"
    assert alice.get(f"/files/{v1['id']}", params={"rev": 99}).status_code == 404


def test_restore_brings_back_a_deleted_file(alice):
    f = put_file(alice, "/deleted.txt", b"keep me")
    assert alice.delete(f"/nodes/{f['id']}").status_code == 200
    assert alice.get(f"/nodes/{f['id']}").status_code == 404
    assert [v["rev"] for v in alice.get(f"/files/{f['id']}/versions").json()["versions"]] == [1]
    before = cursor(alice)
    r = alice.post(f"/files/{f['id']}/restore", json={"rev": 1})
    assert r.status_code == 200, r.text
    assert r.json()["node"]["deleted"] is False
    assert [c["op"] for c in changes(alice, before)["changes"]] == ["create"]
    assert alice.get("/resolve", params={"path": "/deleted.txt"}).json()["node"]["id"] == f["id"]


def test_restore_refuses_a_taken_name(alice):
    f = put_file(alice, "/taken.txt", b"old")
    alice.delete(f"/nodes/{f['id']}")
    put_file(alice, "/taken.txt", b"new one")
    r = alice.post(f"/files/{f['id']}/restore", json={"rev": 1})
    assert r.status_code == 409 and r.json()["error"] == "name_exists"
