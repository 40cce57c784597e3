"""Isolation between accounts on a real server: bob can never see, list, read, change,
download or reference alice's nodes, versions or chunks.

Every probe of one of alice's ids must answer exactly as the same probe of an id that
does not exist (status, error code, field; the detail may only differ by the number),
so bob cannot even learn which ids are taken. Dedup is per user: a fingerprint alice
uploaded is unknown to bob, who must upload the bytes himself.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
import uuid
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import Api
from tests.server.helpers import put_file

UNKNOWN = 2**62


class World:
    """Alice with a small tree (a directory, a file at revision 2 with real chunks, a
    symlink, a deleted file); bob with nothing but his root."""

    def __init__(self, server) -> None:  # noqa: ANN001
        self.alice = Api(server, server.add_user(f"alice-{uuid.uuid4().hex[:8]}"))
        self.bob = Api(server, server.add_user(f"bob-{uuid.uuid4().hex[:8]}"))
        a = self.alice
        self.dir = a.post("/dirs", json={"parent_id": a.root_id, "name": "secret"}).json()["node"]
        self.data = os.urandom(3000)
        self.fp = hashlib.sha256(self.data).hexdigest()
        put_file(a, "/secret/plans.txt", self.data)
        self.file = put_file(a, "/secret/plans.txt", self.data + b"v2", base_rev=1)
        self.fp2 = hashlib.sha256(self.data + b"v2").hexdigest()
        self.link = a.post("/symlinks", json={"parent_id": self.dir["id"], "name": "ln", "target": "plans.txt"}).json()["node"]
        gone = put_file(a, "/secret/gone.txt", b"deleted but restorable")
        assert a.delete(f"/nodes/{gone['id']}").status_code == 200
        self.gone = gone
        self.alice_ids = {"root": a.root_id, "dir": self.dir["id"], "file": self.file["id"], "link": self.link["id"],
                          "deleted": gone["id"]}

    def close(self) -> None:
        self.alice.close()
        self.bob.close()


@pytest.fixture(scope="module")
def world(server) -> World:  # noqa: ANN001
    w = World(server)
    yield w
    w.close()


def alice_state(w: World) -> tuple:
    a = w.alice
    return (a.get("/nodes").json()["nodes"], a.get("/changes", params={"cursor": 0}).json()["changes"],
            a.get(f"/files/{w.file['id']}/versions").json())


def same_as_unknown(api: Api, method: str, victim_id: int, path_of, body_of=None) -> httpx.Response:  # noqa: ANN001
    """Send the probe for alice's id and for an id nobody has: both must be the same
    refusal (status, error, field, keys), and the details may differ only by the id."""
    results = []
    for target in ("victim", "unknown"):
        body = body_of(target) if body_of else None
        results.append(api.request(method, path_of(target), json=body))
    victim, unknown = results
    assert victim.status_code == unknown.status_code, (victim.text, unknown.text)
    assert victim.status_code in (404, 409, 422), victim.text
    vb, ub = victim.json(), unknown.json()
    assert (vb["error"], vb["field"]) == (ub["error"], ub["field"]), (vb, ub)
    assert set(vb) == set(ub), (vb, ub)
    assert re.sub(rf"\b{victim_id}\b", "<id>", vb["detail"]) == re.sub(rf"\b{UNKNOWN}\b", "<id>", ub["detail"]), (vb, ub)
    return victim


# --- nodes -----------------------------------------------------------------------------

READS = {
    "get-node": ("GET", "/nodes/{id}", None),
    "children": ("GET", "/nodes/{id}/children", None),
    "file-info": ("GET", "/files/{id}", None),
    "file-info-rev-1": ("GET", "/files/{id}?rev=1", None),
    "file-info-no-urls": ("GET", "/files/{id}?urls=false", None),
    "versions": ("GET", "/files/{id}/versions", None),
}
WRITES = {
    "patch-mode": ("PATCH", "/nodes/{id}", lambda ids, bob: {"mode": 0o777}),
    "patch-mtime": ("PATCH", "/nodes/{id}", lambda ids, bob: {"mtime_ns": 1}),
    "delete": ("DELETE", "/nodes/{id}", None),
    "delete-recursive": ("DELETE", "/nodes/{id}?recursive=true", None),
    "move-to-bob": ("POST", "/nodes/{id}/move", lambda ids, bob: {"parent_id": bob.root_id, "name": "stolen"}),
    "rename-in-place": ("POST", "/nodes/{id}/move", lambda ids, bob: {"parent_id": ids["dir"], "name": "renamed"}),
    "restore-rev-1": ("POST", "/files/{id}/restore", lambda ids, bob: {"rev": 1}),
}


@pytest.mark.parametrize("kind", ["root", "dir", "file", "link", "deleted"])
@pytest.mark.parametrize("probe", list(READS) + list(WRITES))
def test_bob_cannot_touch_alices_nodes(world: World, probe: str, kind: str):
    method, template, body = {**READS, **WRITES}[probe]
    ids, bob = world.alice_ids, world.bob
    before = alice_state(world)

    def path_of(target: str) -> str:
        return template.replace("{id}", str(ids[kind] if target == "victim" else UNKNOWN))

    r = same_as_unknown(bob, method, ids[kind], path_of, (lambda _t: body(ids, bob)) if body else None)
    assert r.status_code == 404, r.text
    assert alice_state(world) == before, "bob changed alice's tree"


CREATES = {
    "mkdir": ("/dirs", lambda parent, bob: {"parent_id": parent, "name": "planted"}),
    "symlink": ("/symlinks", lambda parent, bob: {"parent_id": parent, "name": "planted", "target": "x"}),
    "commit-by-parent": ("/files", lambda parent, bob: {"parent_id": parent, "name": "planted", "base_rev": 0, "size": 0,
                                                        "mtime_ns": 1, "chunks": []}),
    "commit-by-node": ("/files", lambda node, bob: {"node_id": node, "base_rev": 2, "size": 0, "mtime_ns": 1, "chunks": []}),
    "move-bobs-node-into-alices-dir": ("/nodes/{bob_node}/move", lambda parent, bob: {"parent_id": parent, "name": "planted"}),
}


@pytest.mark.parametrize("kind", ["root", "dir", "file", "deleted"])
@pytest.mark.parametrize("probe", list(CREATES))
def test_bob_cannot_write_into_alices_tree(world: World, probe: str, kind: str):
    template, body = CREATES[probe]
    ids, bob = world.alice_ids, world.bob
    own = bob.post("/dirs", json={"parent_id": bob.root_id, "name": f"own-{uuid.uuid4().hex[:6]}"}).json()["node"]
    path = template.replace("{bob_node}", str(own["id"]))
    before = alice_state(world)
    r = same_as_unknown(bob, "POST", ids[kind], lambda _t: path,
                        lambda t: body(ids[kind] if t == "victim" else UNKNOWN, bob))
    assert r.status_code == 404, r.text
    assert alice_state(world) == before, "bob wrote into alice's tree"
    assert bob.get(f"/nodes/{own['id']}").json()["node"]["parent_id"] == bob.root_id
    bob.delete(f"/nodes/{own['id']}")


def test_bob_sees_only_his_own_tree(world: World):
    bob, alice = world.bob, world.alice
    snap = bob.get("/nodes", params={"limit": 10_000}).json()
    assert bob.root_id in {n["id"] for n in snap["nodes"]}
    assert not {n["id"] for n in snap["nodes"]} & set(world.alice_ids.values())
    assert not {n["name"] for n in snap["nodes"]} & {"secret", "plans.txt", "ln", "gone.txt"}
    assert all(e["name"] not in ("secret", "plans.txt", "ln") for e in bob.get(f"/nodes/{bob.root_id}/children").json()["entries"])
    for path in ("/secret", "/secret/plans.txt", "/secret/ln"):
        r = bob.get("/resolve", params={"path": path})
        assert r.status_code == 404 and r.json()["error"] == "not_found", r.text
        assert alice.get("/resolve", params={"path": path}).status_code == 200
    # Paging by id past alice's ids shows nothing of hers either.
    for after_id in (0, world.alice_ids["root"], world.alice_ids["dir"] - 1):
        page = bob.get("/nodes", params={"after_id": after_id, "limit": 1}).json()
        assert not {n["id"] for n in page["nodes"]} & set(world.alice_ids.values())


def test_a_name_alice_uses_is_free_for_bob(world: World):
    bob = world.bob
    r = bob.post("/dirs", json={"parent_id": bob.root_id, "name": "secret"})
    assert r.status_code == 201, r.text
    assert r.json()["node"]["id"] != world.dir["id"]
    assert bob.get("/resolve", params={"path": "/secret"}).json()["node"]["id"] == r.json()["node"]["id"]
    assert world.alice.get("/resolve", params={"path": "/secret"}).json()["node"]["id"] == world.dir["id"]
    assert bob.delete(f"/nodes/{r.json()['node']['id']}").status_code == 200


# --- chunks and versions --------------------------------------------------------------------


def test_bob_cannot_download_alices_chunks(world: World):
    bob = world.bob
    r = bob.post("/downloads/prepare", json={"fingerprints": [world.fp]})
    assert r.status_code == 404, r.text
    body = r.json()
    assert body["error"] == "not_found" and body["field"] == "fingerprints" and body["chunks"] == [world.fp]
    unknown = bob.post("/downloads/prepare", json={"fingerprints": ["0" * 64]}).json()
    assert (unknown["error"], unknown["field"]) == (body["error"], body["field"])
    # Mixed with nothing of his own, or asked twice: still nothing.
    r = bob.post("/downloads/prepare", json={"fingerprints": [world.fp, world.fp2, world.fp]})
    assert r.status_code == 404 and set(r.json()["chunks"]) == {world.fp, world.fp2}
    # Alice, of course, can.
    assert world.alice.post("/downloads/prepare", json={"fingerprints": [world.fp]}).status_code == 200


def test_knowing_a_fingerprint_grants_nothing(world: World):
    """Bob names alice's chunk: prepare says he lacks it, a commit referencing it is
    422 missing_chunks, and only after uploading the bytes himself can he commit."""
    bob = world.bob
    size = len(world.data)
    prep = bob.post("/uploads/prepare", json={"chunks": [{"fingerprint": world.fp, "length": size}]})
    assert prep.status_code == 200, prep.text
    assert prep.json()["present"] == []
    assert [t["fingerprint"] for t in prep.json()["missing"]] == [world.fp]
    ticket = prep.json()["missing"][0]["upload"]

    commit = {"path": "/borrowed", "base_rev": 0, "size": size, "mtime_ns": 1,
              "chunks": [{"fingerprint": world.fp, "length": size}]}
    r = bob.post("/files", json=commit)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "missing_chunks" and r.json()["field"] == "chunks"
    assert [c["fingerprint"] for c in r.json()["chunks"]] == [world.fp]
    assert bob.get("/resolve", params={"path": "/borrowed"}).status_code == 404

    # A fingerprint bob never even prepared: same answer.
    r = bob.post("/files", json={**commit, "path": "/borrowed2", "chunks": [{"fingerprint": world.fp2, "length": size + 2}],
                                 "size": size + 2})
    assert r.status_code == 422 and r.json()["error"] == "missing_chunks", r.text

    # Bytes that are not the fingerprint's are refused on upload (local store) or at
    # commit (S3): bob cannot claim the chunk without having it.
    fake = os.urandom(size)
    put = bob.request(ticket["method"], ticket["url"], content=fake, headers={**ticket["headers"], "Authorization": ""})
    if put.status_code < 300:
        r = bob.post("/files", json=commit)
        assert r.status_code == 422 and r.json()["error"] == "missing_chunks", r.text
    else:
        assert put.status_code in (400, 403, 422), put.text
    assert world.alice.get(f"/files/{world.file['id']}", params={"rev": 1, "urls": "false"}).status_code == 200

    # Now with the real bytes: his own copy, under his own key.
    prep = bob.post("/uploads/prepare", json={"chunks": [{"fingerprint": world.fp, "length": size}]})
    for t in prep.json()["missing"]:
        up = t["upload"]
        assert _key_owner(up["url"]) == bob.me["user_id"]
        ok = bob.request(up["method"], up["url"], content=world.data, headers={**up["headers"], "Authorization": ""})
        assert ok.status_code < 300, ok.text
    r = bob.post("/files", json=commit)
    assert r.status_code == 200, r.text
    info = bob.get(f"/files/{r.json()['node']['id']}").json()
    assert _key_owner(info["chunks"][0]["download"]["url"]) == bob.me["user_id"]
    assert bob.delete(f"/nodes/{r.json()['node']['id']}").status_code == 200


def _key_owner(url: str) -> int:
    """The user id in a signed chunk URL's key (`.../u<id>/<fp[:2]>/<fp>`), local or S3."""
    parts = urlsplit(url).path.split("/")
    return int(parts[-3].removeprefix("u"))


def test_bobs_versions_and_alices_are_separate(world: World):
    """Bob commits a file at the same path: his history starts at 1 and never lists
    alice's versions; alice's history is unchanged."""
    bob = world.bob
    before = world.alice.get(f"/files/{world.file['id']}/versions").json()
    node = put_file(bob, "/plans.txt", b"bob's own")
    versions = bob.get(f"/files/{node['id']}/versions").json()
    assert [v["rev"] for v in versions["versions"]] == [1]
    assert versions["node_id"] == node["id"] != world.file["id"]
    for rev in (1, 2):
        assert bob.get(f"/files/{world.file['id']}", params={"rev": rev}).status_code == 404
    assert bob.get(f"/files/{node['id']}", params={"rev": 2}).json()["field"] == "rev"
    assert world.alice.get(f"/files/{world.file['id']}/versions").json() == before
    assert bob.delete(f"/nodes/{node['id']}").status_code == 200


def test_signed_urls_cannot_be_retargeted_at_alices_keys(world: World):
    """Local store only (S3 signs its own URLs): bob edits the key of his valid signed
    GET URL to alice's chunk; the signature no longer matches."""
    if world.bob.server.store_url:
        pytest.skip("chunks live in S3; URLs are signed by the store")
    bob = world.bob
    node = put_file(bob, "/mine.bin", world.data)  # same bytes as alice's chunk
    url = bob.get(f"/files/{node['id']}").json()["chunks"][0]["download"]["url"]
    bob_prefix, alice_prefix = f"/blobs/u{bob.me['user_id']}/", f"/blobs/u{world.alice.me['user_id']}/"
    assert bob_prefix in url
    assert httpx.get(url).status_code == 200
    forged = url.replace(bob_prefix, alice_prefix)
    r = httpx.get(forged)
    assert r.status_code == 403 and r.json()["error"] == "bad_signature", r.text
    # A PUT URL likewise: bob cannot overwrite alice's bytes.
    prep = bob.post("/uploads/prepare", json={"chunks": [{"fingerprint": hashlib.sha256(b"x").hexdigest(), "length": 1}]})
    put_url = prep.json()["missing"][0]["upload"]["url"]
    r = httpx.put(put_url.replace(bob_prefix, alice_prefix), content=b"x")
    assert r.status_code == 403, r.text
    assert bob.delete(f"/nodes/{node['id']}").status_code == 200


# --- the change feed ------------------------------------------------------------------------


def test_bobs_changes_never_show_alices_entries(world: World):
    bob, alice = world.bob, world.alice
    start = bob.get("/me").json()["cursor"]
    alice_names = set()
    for i in range(3):
        name = f"alice-only-{i}-{uuid.uuid4().hex[:6]}"
        alice_names.add(name)
        assert alice.post("/dirs", json={"parent_id": world.dir["id"], "name": name}).status_code == 201
    feed = bob.get("/changes", params={"cursor": 0, "limit": 5000}).json()
    alice_nodes = {n["id"] for n in alice.get("/nodes", params={"limit": 10_000}).json()["nodes"]} | {world.gone["id"]}
    assert not {c["node"]["id"] for c in feed["changes"]} & alice_nodes
    assert not {c["node"]["name"] for c in feed["changes"]} & alice_names  # (bob made his own "secret" earlier)
    assert bob.get("/me").json()["cursor"] == start, "alice's writes moved bob's cursor"
    after = bob.get("/changes", params={"cursor": start}).json()
    assert after["changes"] == [] and after["cursor"] == start


def test_alices_writes_do_not_answer_bobs_long_poll(world: World):
    """Bob long-polls; alice writes meanwhile. Bob's poll ends empty at its timeout
    and never carries her entry."""
    bob, alice = world.bob, world.alice
    start = bob.get("/me").json()["cursor"]
    result: dict = {}

    def poll() -> None:
        t0 = time.monotonic()
        result["response"] = bob.get("/changes", params={"cursor": start, "wait": 2})
        result["took"] = time.monotonic() - t0

    t = threading.Thread(target=poll)
    t.start()
    time.sleep(0.5)
    assert alice.post("/dirs", json={"parent_id": world.dir["id"], "name": f"during-{uuid.uuid4().hex[:6]}"}).status_code == 201
    t.join(30)
    r = result["response"]
    assert r.status_code == 200, r.text
    assert r.json()["changes"] == [] and r.json()["cursor"] == start
    assert result["took"] >= 1.5, "bob's long-poll was answered early"


def test_alices_tree_is_intact_after_everything(world: World):
    a = world.alice
    r = a.get(f"/files/{world.file['id']}", params={"urls": "false"}).json()
    assert r["node"]["name"] == "plans.txt" and r["node"]["parent_id"] == world.dir["id"] and r["node"]["rev"] == 2
    assert [v["rev"] for v in a.get(f"/files/{world.file['id']}/versions").json()["versions"]] == [2, 1]
    assert a.get(f"/nodes/{world.link['id']}").json()["node"]["mode"] == world.link["mode"]
    assert a.get(f"/nodes/{world.gone['id']}").status_code == 404  # still deleted, not restored by bob
    # Her chunks still hold her bytes, whatever bob uploaded under the same fingerprints.
    chunks = a.post("/downloads/prepare", json={"fingerprints": [world.fp, world.fp2]}).json()["chunks"]
    for chunk, want in zip(chunks, (world.data, world.data + b"v2")):
        got = httpx.get(chunk["download"]["url"], headers=chunk["download"]["headers"])
        assert got.status_code == 200 and got.content == want
