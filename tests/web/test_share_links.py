"""Share links over HTTP (issue 17, item 7): what a link reaches and what it refuses.
On both engines and both stores."""

from __future__ import annotations

import io
import time
import zipfile

import httpx

from tests.conftest import Api
from tests.harness import ServerProcess
from tests.server.helpers import mkdir, put_file


def anonymous(server: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=30)


def test_a_folder_link_reaches_its_subtree_only(server: ServerProcess, alice: Api, bob: Api) -> None:
    shared = mkdir(alice, alice.root_id, "shared")
    sub = mkdir(alice, shared["id"], "sub")
    inside = put_file(alice, "/shared/sub/in.txt", b"inside")
    outside = put_file(alice, "/private.txt", b"private")
    r = alice.post("/share-links", json={"node_id": shared["id"]})
    assert r.status_code == 201, r.text
    link = r.json()
    assert link["url"].endswith("/s/" + link["id"])
    assert len(link["id"]) >= 22  # 128 bits and more in URL-safe base64 (192 here)
    anon = anonymous(server)
    info = anon.get(f"/s/{link['id']}/info").json()
    assert info["kind"] == "dir" and info["name"] == "shared" and not info["needs_password"]
    top = anon.get(f"/s/{link['id']}/list").json()
    assert [e["name"] for e in top["entries"]] == ["sub"] and top["crumbs"] == [{"id": shared["id"], "name": "shared"}]
    deeper = anon.get(f"/s/{link['id']}/list", params={"dir": sub["id"]}).json()
    assert [c["name"] for c in deeper["crumbs"]] == ["shared", "sub"]
    assert anon.get(f"/s/{link['id']}/file/{inside['id']}").content == b"inside"
    z = zipfile.ZipFile(io.BytesIO(anon.get(f"/s/{link['id']}/zip").content))
    assert z.namelist() == ["sub/", "sub/in.txt"] and z.read("sub/in.txt") == b"inside"
    # Nothing outside: a file beside the folder, the folder's parent, another account's file.
    bobs = put_file(bob, "/bob.txt", b"bob")
    for node_id in (outside["id"], alice.root_id, bobs["id"]):
        assert anon.get(f"/s/{link['id']}/file/{node_id}").status_code == 404
        assert anon.get(f"/s/{link['id']}/list", params={"dir": node_id}).status_code in (404, 409)
        assert anon.get(f"/s/{link['id']}/zip", params={"dir": node_id}).status_code in (404, 409)
    # A file moved out of the shared folder is out of reach at once.
    alice.post(f"/nodes/{inside['id']}/move", json={"parent_id": alice.root_id, "name": "in.txt"})
    assert anon.get(f"/s/{link['id']}/file/{inside['id']}").status_code == 404
    # The link gives out no signed chunk URL and no account route works with it.
    assert "blobs" not in anon.get(f"/s/{link['id']}/list").text
    assert anon.get(f"/nodes/{shared['id']}").status_code == 401
    # Listed, and revoked by its owner only.
    assert [x["id"] for x in alice.get("/share-links").json()["links"]] == [link["id"]]
    assert bob.delete(f"/share-links/{link['id']}").status_code == 404
    assert alice.delete(f"/share-links/{link['id']}").status_code == 200
    assert anon.get(f"/s/{link['id']}/info").status_code == 404
    assert anon.get(f"/s/{link['id']}/zip").status_code == 404
    assert alice.get("/share-links").json()["links"] == []


def test_expiry_limit_password(server: ServerProcess, alice: Api) -> None:
    node = put_file(alice, "/photo.jpg", b"\xff\xd8 not really a jpeg")
    anon = anonymous(server)
    soon = alice.post("/share-links", json={"node_id": node["id"], "expires_at": time.time() + 1}).json()
    assert anon.get(f"/s/{soon['id']}/file/{node['id']}").status_code == 200
    time.sleep(1.2)
    gone = anon.get(f"/s/{soon['id']}/info")
    assert gone.status_code == 410 and gone.json()["error"] == "link_expired"
    assert alice.post("/share-links", json={"node_id": node["id"], "expires_at": time.time() - 5}).status_code == 422

    twice = alice.post("/share-links", json={"node_id": node["id"], "max_downloads": 2}).json()
    assert anon.get(f"/s/{twice['id']}/info").json()["downloads_left"] == 2
    for _ in range(2):
        assert anon.get(f"/s/{twice['id']}/file/{node['id']}").status_code == 200
    used = anon.get(f"/s/{twice['id']}/file/{node['id']}")
    assert used.status_code == 410 and used.json()["error"] == "download_limit_reached"

    locked = alice.post("/share-links", json={"node_id": node["id"], "password": "s3same s3same"}).json()
    assert locked["has_password"]
    info = anon.get(f"/s/{locked['id']}/info").json()
    assert info["needs_password"] and info["size"] == 0
    assert anon.get(f"/s/{locked['id']}/file/{node['id']}").status_code == 401
    assert anon.post(f"/s/{locked['id']}/unlock", json={"password": "wrong wrong"}).status_code == 401
    ok = anon.post(f"/s/{locked['id']}/unlock", json={"password": "s3same s3same"})
    assert ok.status_code == 200 and f"Path=/s/{locked['id']}" in ok.headers["set-cookie"]
    assert anon.get(f"/s/{locked['id']}/file/{node['id']}").content == b"\xff\xd8 not really a jpeg"
    # The cookie opens that link only.
    other = alice.post("/share-links", json={"node_id": node["id"], "password": "s3same s3same"}).json()
    cookie = anon.cookies.get("cloudfs_share")
    assert httpx.get(f"{server.url}/s/{other['id']}/file/{node['id']}", cookies={"cloudfs_share": cookie}).status_code == 401

    # Deleted: the link finds nothing.
    alice.delete(f"/nodes/{node['id']}")
    assert anon.get(f"/s/{twice['id']}/info").status_code in (404, 410)
    assert anon.get(f"/s/{locked['id']}/info").status_code == 404
    assert anon.get("/s/" + "A" * 32 + "/info").status_code == 404
