"""Shared folders through the API, on both engines: three accounts share, accept, edit,
read as viewers, are removed and leave; moves into and out of a shared folder; the
feed over several namespaces; and every refusal of bad input changes nothing."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from typing import Iterator

import httpx
import pytest

from tests.conftest import Api
from tests.harness import ServerProcess
from tests.server.helpers import mkdir, put_file


@pytest.fixture
def carol(server: ServerProcess) -> Iterator[Api]:
    api = Api(server, server.add_user(f"carol-{uuid.uuid4().hex[:8]}"))
    yield api
    api.close()


def name_of(api: Api) -> str:
    return api.me["name"]


def share(owner: Api, path: str, to: Api, role: str = "editor") -> dict:
    r = owner.post("/shares", json={"path": path, "user": name_of(to), "role": role})
    assert r.status_code == 201, r.text
    return r.json()


def accept(api: Api, ns: int, path: str | None = None) -> dict:
    r = api.post(f"/shares/{ns}/accept", json={"path": path} if path else {})
    assert r.status_code == 200, r.text
    return r.json()


def resolve(api: Api, path: str) -> httpx.Response:
    return api.get("/resolve", params={"path": path})


def read(api: Api, node_id: int) -> bytes:
    info = api.get(f"/files/{node_id}")
    assert info.status_code == 200, info.text
    out = b""
    for chunk in info.json()["chunks"]:
        down = chunk["download"]
        body = httpx.request(down["method"], down["url"], headers=down["headers"])
        assert body.status_code == 200, body.text
        out += body.content
    return out


def commit(api: Api, data: bytes, **target) -> httpx.Response:  # noqa: ANN003
    """Upload `data` as one chunk, prepared in the namespace of `hint` (a node id), and commit it."""
    hint = target.pop("hint", None)
    fp = hashlib.sha256(data).hexdigest()
    body: dict = {"chunks": [{"fingerprint": fp, "length": len(data)}]}
    if hint:
        body["node_id"] = hint
    prep = api.post("/uploads/prepare", json=body)
    if prep.status_code != 200:
        return prep
    for ticket in prep.json()["missing"]:
        up = ticket["upload"]
        assert httpx.request(up["method"], up["url"], content=data, headers=up["headers"]).status_code < 300
    return api.post("/files", json={"size": len(data), "mtime_ns": time.time_ns(), "base_rev": target.pop("base_rev", 0),
                                    "chunks": [{"fingerprint": fp, "length": len(data)}], **target})


def sync(api: Api, cursors: dict[int, int], **params) -> dict:  # noqa: ANN003
    r = api.post("/sync", json={"cursors": {str(k): v for k, v in cursors.items()}, **params})
    assert r.status_code == 200, r.text
    return r.json()


def test_share_accept_and_edit_on_both_sides(alice: Api, bob: Api) -> None:
    proj = mkdir(alice, alice.root_id, "proj")
    plan = put_file(alice, "/proj/plan.txt", b"the plan")
    before = alice.get("/me").json()["cursors"]
    shared = share(alice, "/proj", bob)
    ns = shared["id"]
    assert (shared["owner"], shared["role"], shared["state"], shared["path"]) == (name_of(alice), "owner", "accepted", "/proj")
    assert [(m["user"], m["role"], m["state"]) for m in shared["members"]] == [
        (name_of(alice), "owner", "accepted"), (name_of(bob), "editor", "invited")]
    # The owner's tree is unchanged: same ids, same bytes, the folder now says it is shared.
    seen = resolve(alice, "/proj").json()["node"]
    assert (seen["id"], seen["parent_id"], seen["name"], seen["ns"], seen["role"]) == (
        proj["id"], alice.root_id, "proj", ns, "owner")
    assert resolve(alice, "/proj/plan.txt").json()["node"]["id"] == plan["id"]
    assert read(alice, plan["id"]) == b"the plan"
    assert set(alice.get("/me").json()["cursors"]) == {*before, str(ns)}

    invited = bob.get("/shares").json()["shares"]
    assert [(s["id"], s["owner"], s["role"], s["state"], s["path"]) for s in invited] == [
        (ns, name_of(alice), "editor", "invited", None)]
    assert resolve(bob, "/proj").status_code == 404  # not before accepting
    mounted = accept(bob, ns, "/from-alice")
    assert (mounted["state"], mounted["path"]) == ("accepted", "/from-alice")
    folder = resolve(bob, "/from-alice").json()["node"]
    assert (folder["id"], folder["parent_id"], folder["ns"], folder["role"]) == (proj["id"], bob.root_id, ns, "editor")
    bobs_plan = resolve(bob, "/from-alice/plan.txt").json()["node"]
    assert read(bob, bobs_plan["id"]) == b"the plan"

    # Edits flow both ways: bob changes alice's file and adds one; alice reads both.
    changed = commit(bob, b"the better plan", node_id=plan["id"], base_rev=1, hint=plan["id"])
    assert changed.status_code == 200, changed.text
    assert read(alice, plan["id"]) == b"the better plan"
    added = commit(bob, b"notes by bob", path="/from-alice/bob.txt")
    assert added.status_code == 200, added.text
    assert read(alice, resolve(alice, "/proj/bob.txt").json()["node"]["id"]) == b"notes by bob"
    reply = commit(alice, b"thanks", parent_id=proj["id"], name="reply.txt", hint=proj["id"])
    assert reply.status_code == 200, reply.text
    assert read(bob, resolve(bob, "/from-alice/reply.txt").json()["node"]["id"]) == b"thanks"
    assert mkdir(bob, proj["id"], "sub")["parent_id"] == proj["id"]

    # Renaming the folder in one drive changes nothing for the other.
    moved = bob.post(f"/nodes/{proj['id']}/move", json={"parent_id": bob.root_id, "name": "renamed"})
    assert moved.status_code == 200 and moved.json()["node"]["name"] == "renamed", moved.text
    assert resolve(alice, "/proj").json()["node"]["id"] == proj["id"]
    assert resolve(bob, "/renamed/reply.txt").status_code == 200


def test_one_long_poll_follows_every_namespace(alice: Api, bob: Api) -> None:
    mkdir(alice, alice.root_id, "team")
    ns = share(alice, "/team", bob)["id"]
    accept(bob, ns)
    cursors = {int(k): v for k, v in bob.get("/me").json()["cursors"].items()}
    assert set(cursors) == {bob.me["user_id"], ns}
    idle = sync(bob, cursors)
    assert idle["changes"] == [] and not idle["gone"]
    assert {n["id"]: n["role"] for n in idle["namespaces"]} == {bob.me["user_id"]: "owner", ns: "editor"}

    # A change by alice in the shared folder wakes bob's long-poll over both namespaces.
    started = time.monotonic()
    with httpx.Client(base_url=bob.server.url, headers=bob.headers, timeout=60) as client:
        import threading
        answer: dict = {}

        def poll() -> None:
            answer.update(client.post("/sync", json={"cursors": {str(k): v for k, v in cursors.items()},
                                                     "wait": 20}).json())
        t = threading.Thread(target=poll)
        t.start()
        time.sleep(0.5)
        put_file(alice, "/team/new.txt", b"new")
        t.join(30)
    assert time.monotonic() - started < 10
    assert [(c["ns"], c["op"], c["node"]["name"], c["user_id"]) for c in answer["changes"]] == [
        (ns, "create", "new.txt", alice.me["user_id"])]
    assert answer["cursors"][str(ns)] == answer["changes"][0]["seq"]
    assert answer["cursors"][str(bob.me["user_id"])] == cursors[bob.me["user_id"]]

    # A cursor out of one namespace's journal is a 410 for that one alone.
    put_file(bob, "/mine.txt", b"mine")
    partly = sync(bob, {bob.me["user_id"]: cursors[bob.me["user_id"]], ns: 10**15})
    assert partly["gone"] == [ns]
    assert [c["node"]["name"] for c in partly["changes"]] == ["mine.txt"]
    # Cursors of namespaces the account does not follow yet (or no longer) come back at once.
    only_root = sync(bob, {bob.me["user_id"]: 10**15}, wait=20)
    assert {n["id"] for n in only_root["namespaces"]} == {bob.me["user_id"], ns}
    bad = bob.post("/sync", json={"cursors": {"root": 0}})
    assert bad.status_code == 422 and bad.json()["field"] == "cursors"


def test_viewers_read_and_are_refused_every_change(alice: Api, bob: Api, carol: Api) -> None:
    proj = mkdir(alice, alice.root_id, "docs")
    doc = put_file(alice, "/docs/doc.txt", b"read me")
    ns = share(alice, "/docs", carol, role="viewer")["id"]
    accept(carol, ns)
    assert read(carol, doc["id"]) == b"read me"
    assert [n["name"] for n in carol.get(f"/nodes/{proj['id']}/children").json()["entries"]] == ["doc.txt"]
    refusals = [
        commit(carol, b"vandal", node_id=doc["id"]),
        commit(carol, b"new", parent_id=proj["id"], name="new.txt"),
        commit(carol, b"new", path="/docs/new.txt"),
        carol.post("/uploads/prepare", json={"chunks": [], "node_id": proj["id"]}),
        carol.post("/dirs", json={"parent_id": proj["id"], "name": "d"}),
        carol.post("/symlinks", json={"parent_id": proj["id"], "name": "l", "target": "doc.txt"}),
        carol.post(f"/nodes/{doc['id']}/move", json={"parent_id": proj["id"], "name": "moved.txt"}),
        carol.post(f"/nodes/{doc['id']}/move", json={"parent_id": carol.root_id, "name": "stolen.txt"}),
        carol.patch(f"/nodes/{doc['id']}", json={"mode": 0o777}),
        carol.delete(f"/nodes/{doc['id']}"),
        carol.post(f"/files/{doc['id']}/restore", json={"rev": 1}),
        carol.post("/restore", json={"path": "/docs", "at": time.time() - 1}),
        carol.delete("/trash", params={"path": "/docs"}),
        carol.post(f"/shares/{ns}/members", json={"user": name_of(bob)}),
        carol.delete(f"/shares/{ns}/members/{name_of(alice)}"),
    ]
    assert [r.status_code for r in refusals] == [403] * len(refusals), [r.text for r in refusals]
    assert {r.json()["error"] for r in refusals[:-2]} == {"read_only"}
    assert read(alice, doc["id"]) == b"read me"
    assert [n["name"] for n in alice.get(f"/nodes/{proj['id']}/children").json()["entries"]] == ["doc.txt"]
    # Her own place for it is hers to change.
    assert carol.post(f"/nodes/{proj['id']}/move", json={"parent_id": carol.root_id, "name": "theirs"}).status_code == 200
    # Made an editor, she writes.
    assert alice.patch(f"/shares/{ns}/members/{name_of(carol)}", json={"role": "editor"}).status_code == 200
    assert resolve(carol, "/theirs").json()["node"]["role"] == "editor"
    assert commit(carol, b"by carol", path="/theirs/c.txt", hint=proj["id"]).status_code == 200


def test_nothing_of_a_namespace_reaches_a_non_member(alice: Api, bob: Api, carol: Api) -> None:
    proj = mkdir(alice, alice.root_id, "secret")
    data = os.urandom(5000)
    doc = put_file(alice, "/secret/s.bin", data)
    fp = hashlib.sha256(data).hexdigest()
    ns = share(alice, "/secret", bob)["id"]  # bob is invited, has not accepted; carol never was
    for outsider in (bob, carol):
        assert outsider.get(f"/nodes/{doc['id']}").status_code == 404
        assert outsider.get(f"/nodes/{proj['id']}/children").status_code == 404
        assert outsider.get(f"/files/{doc['id']}").status_code == 404
        assert outsider.get(f"/files/{doc['id']}/versions").status_code == 404
        assert outsider.get("/nodes", params={"ns": ns}).status_code == 404
        assert outsider.post("/downloads/prepare", json={"fingerprints": [fp]}).status_code == 404
        assert outsider.post(f"/nodes/{doc['id']}/move", json={"parent_id": outsider.root_id, "name": "x"}).status_code == 404
        assert outsider.post("/dirs", json={"parent_id": proj["id"], "name": "x"}).status_code == 404
        assert outsider.post(f"/shares/{ns}/leave").status_code in (404, 200 if outsider is bob else 404)
        # Knowing the fingerprint grants nothing: a commit naming it is told to upload it.
        r = outsider.post("/files", json={"path": "/guess.bin", "base_rev": 0, "size": len(data),
                                          "mtime_ns": 1, "chunks": [{"fingerprint": fp, "length": len(data)}]})
        assert r.status_code == 422 and r.json()["error"] == "missing_chunks", r.text
        synced = sync(outsider, {ns: 0})
        assert synced["changes"] == [] and ns not in {n["id"] for n in synced["namespaces"]}


def test_removed_members_and_leavers_lose_the_folder(alice: Api, bob: Api, carol: Api) -> None:
    proj = mkdir(alice, alice.root_id, "club")
    put_file(alice, "/club/rules.txt", b"rules")
    ns = share(alice, "/club", bob)["id"]
    assert alice.post(f"/shares/{ns}/members", json={"user": name_of(carol), "role": "viewer"}).status_code == 201
    accept(bob, ns)
    accept(carol, ns, "/club-of-alice")
    bob_cursor = bob.get("/me").json()["cursor"]

    removed = alice.delete(f"/shares/{ns}/members/{name_of(bob)}")
    assert removed.status_code == 200, removed.text
    assert [m["user"] for m in removed.json()["members"]] == [name_of(alice), name_of(carol)]
    assert resolve(bob, "/club").status_code == 404
    assert bob.get(f"/nodes/{proj['id']}/children").status_code == 404
    gone = sync(bob, {bob.me["user_id"]: bob_cursor})["changes"]
    assert [(c["op"], c["node"]["id"], c["node"]["deleted"]) for c in gone] == [("delete", proj["id"], True)]
    assert bob.get("/shares").json()["shares"] == []
    assert bob.post(f"/shares/{ns}/accept").json()["error"] == "withdrawn"

    left = carol.post(f"/shares/{ns}/leave")
    assert left.status_code == 200 and left.json()["state"] == "left"
    assert resolve(carol, "/club-of-alice").status_code == 404
    assert [m["user"] for m in alice.get(f"/shares/{ns}").json()["members"]] == [name_of(alice)]
    # Alone in it, the owner may delete it: a folder of theirs again, in their trash.
    assert alice.post(f"/shares/{ns}/leave").json()["error"] == "shared_folder"
    assert alice.delete(f"/nodes/{proj['id']}", params={"recursive": True}).status_code == 200
    assert [e["path"] for e in alice.get("/trash").json()["entries"]] == ["/club"]
    assert alice.get("/shares").json()["shares"] == []


def test_a_member_deleting_the_folder_leaves_it_and_the_owner_cannot_while_shared(alice: Api, bob: Api) -> None:
    proj = mkdir(alice, alice.root_id, "keep")
    ns = share(alice, "/keep", bob)["id"]
    accept(bob, ns)
    refused = alice.delete(f"/nodes/{proj['id']}", params={"recursive": True})
    assert refused.status_code == 409 and refused.json()["error"] == "shared_folder"
    holder = mkdir(bob, bob.root_id, "holder")
    assert bob.post(f"/nodes/{proj['id']}/move", json={"parent_id": holder["id"], "name": "keep"}).status_code == 200
    assert bob.delete(f"/nodes/{holder['id']}", params={"recursive": True}).status_code == 200
    assert bob.get("/shares").json()["shares"] == []
    assert resolve(alice, "/keep").json()["node"]["ns"] == ns


def test_moves_into_and_out_of_a_shared_folder(alice: Api, bob: Api) -> None:
    proj = mkdir(alice, alice.root_id, "box")
    ns = share(alice, "/box", bob)["id"]
    accept(bob, ns)
    data = os.urandom(3000)
    loose = put_file(alice, "/loose.bin", data)
    cursors = {int(k): v for k, v in bob.get("/me").json()["cursors"].items()}
    moved = alice.post(f"/nodes/{loose['id']}/move", json={"parent_id": proj["id"], "name": "in.bin"})
    assert moved.status_code == 200, moved.text
    assert read(bob, loose["id"]) == data  # the server gave the folder the chunks: nothing uploaded again
    seen = sync(bob, cursors)["changes"]
    assert [(c["ns"], c["op"], c["node"]["name"]) for c in seen] == [(ns, "move", "in.bin")]

    # Out again, into bob's own tree: a move for bob, a delete for alice.
    alice_cursors = {int(k): v for k, v in alice.get("/me").json()["cursors"].items()}
    out = bob.post(f"/nodes/{loose['id']}/move", json={"parent_id": bob.root_id, "name": "mine.bin"})
    assert out.status_code == 200, out.text
    assert read(bob, loose["id"]) == data
    assert alice.get(f"/files/{loose['id']}").status_code == 404
    told = sync(alice, alice_cursors)["changes"]
    assert [(c["ns"], c["op"], c["to_ns"]) for c in told] == [(ns, "delete", bob.me["user_id"])]
    # A directory with its subtree, and its history, goes along.
    sub = mkdir(alice, alice.root_id, "sub")
    inner = put_file(alice, "/sub/inner.txt", b"v1")
    put_file(alice, "/sub/inner.txt", b"v2", base_rev=1)
    assert alice.post(f"/nodes/{sub['id']}/move", json={"parent_id": proj["id"], "name": "sub"}).status_code == 200
    assert [v["rev"] for v in bob.get(f"/files/{inner['id']}/versions").json()["versions"]] == [2, 1]
    assert read(bob, inner["id"]) == b"v2"
    assert bob.post(f"/files/{inner['id']}/restore", json={"rev": 1}).status_code == 200
    assert read(alice, inner["id"]) == b"v1"
    # A shared folder never goes inside another.
    other = mkdir(bob, bob.root_id, "other")
    ns2 = share(bob, "/other", alice)["id"]
    accept(alice, ns2)
    assert resolve(alice, "/other").json()["node"]["ns"] == ns2
    nested = alice.post(f"/nodes/{other['id']}/move", json={"parent_id": proj["id"], "name": "x"})
    assert nested.status_code == 409 and nested.json()["error"] == "shared_folder", nested.text


def test_bad_input_is_refused_and_changes_nothing(alice: Api, bob: Api, carol: Api) -> None:
    mkdir(alice, alice.root_id, "p")
    put_file(alice, "/p/file.txt", b"f")
    outer = mkdir(alice, alice.root_id, "outer")
    mkdir(alice, outer["id"], "inner")
    cases = [
        ({"path": "/p", "user": "nobody-" + uuid.uuid4().hex[:6]}, 404, "not_found", "user"),
        ({"path": "/p/file.txt", "user": name_of(bob)}, 409, "not_a_directory", "path"),
        ({"path": "/p", "user": name_of(bob), "role": "admin"}, 422, "invalid", "role"),
        ({"path": "/nowhere", "user": name_of(bob)}, 404, "not_found", "path"),
        ({"path": "/", "user": name_of(bob)}, 422, "invalid", "path"),
        ({"path": "/p", "user": name_of(alice)}, 422, "invalid", "user"),
    ]
    for body, status, error, field in cases:
        r = alice.post("/shares", json=body)
        assert (r.status_code, r.json()["error"], r.json()["field"]) == (status, error, field), (body, r.text)
    assert alice.get("/shares").json()["shares"] == []
    assert resolve(alice, "/p").json()["node"]["ns"] is None

    ns = share(alice, "/outer/inner", bob)["id"]
    nested = [alice.post("/shares", json={"path": "/outer", "user": name_of(carol)}),
              alice.post("/shares", json={"path": "/outer/inner", "user": name_of(bob)})]
    assert [(r.status_code, r.json()["error"]) for r in nested] == [(409, "shared_folder"), (409, "already_member")]
    accept(bob, ns)
    again = bob.post(f"/shares/{ns}/accept")
    assert (again.status_code, again.json()["error"]) == (409, "already_member")
    mkdir(bob, resolve(bob, "/inner").json()["node"]["id"], "deeper")
    inside = bob.post("/shares", json={"path": "/inner/deeper", "user": name_of(carol)})
    assert (inside.status_code, inside.json()["error"]) == (409, "shared_folder")
    not_owner = bob.post("/shares", json={"path": "/inner", "user": name_of(carol)})
    assert not_owner.status_code == 403
    assert carol.post(f"/shares/{ns}/accept").status_code == 404
    assert carol.get("/shares").json()["shares"] == []
    unknown = alice.patch(f"/shares/{ns}/members/{name_of(bob)}", json={"role": "boss"})
    assert (unknown.status_code, unknown.json()["field"]) == (422, "role")
    assert [(m["user"], m["role"]) for m in alice.get(f"/shares/{ns}").json()["members"]] == [
        (name_of(alice), "owner"), (name_of(bob), "editor")]


def test_a_shared_folders_bytes_count_against_its_owner(server: ServerProcess) -> None:
    owner = Api(server, server.add_user(f"owner-{uuid.uuid4().hex[:8]}", quota="10000"))
    guest = Api(server, server.add_user(f"guest-{uuid.uuid4().hex[:8]}"))
    with owner, guest:
        mkdir(owner, owner.root_id, "q")
        ns = share(owner, "/q", guest)["id"]
        accept(guest, ns)
        assert commit(guest, os.urandom(6000), path="/q/a.bin").status_code == 200
        assert owner.get("/me").json()["used_bytes"] == 6000
        over = commit(guest, os.urandom(6000), path="/q/b.bin")
        assert over.status_code == 507 and over.json()["error"] == "quota_exceeded", over.text
        assert commit(guest, os.urandom(6000), path="/b.bin").status_code == 200  # the guest's own tree is theirs


def test_an_idle_long_poll_answered_from_memory_still_sees_every_change(alice: Api, bob: Api, carol: Api) -> None:
    """An idle device's next POST /sync from the same cursors parks without reading the
    database (the empty answer is kept per account until one of its namespaces changes:
    notifier.known_empty_sync). Whatever changes next is still seen at once: a file in a
    shared folder, one in the account's own tree, and a folder newly shared with it."""
    mkdir(alice, alice.root_id, "kept")
    ns = share(alice, "/kept", bob)["id"]
    accept(bob, ns)
    cursors = {int(k): v for k, v in bob.get("/me").json()["cursors"].items()}
    for _ in range(2):  # the second answer comes from memory
        idle = sync(bob, cursors, wait=0.3)
        assert idle["changes"] == [] and {n["id"] for n in idle["namespaces"]} == {bob.me["user_id"], ns}
    put_file(alice, "/kept/a.txt", b"a")
    seen = sync(bob, cursors, wait=5)
    assert [(c["ns"], c["node"]["name"]) for c in seen["changes"]] == [(ns, "a.txt")]
    cursors = {int(k): v for k, v in seen["cursors"].items()}
    assert sync(bob, cursors, wait=0.3)["changes"] == []
    put_file(bob, "/own.txt", b"own")
    assert [c["node"]["name"] for c in sync(bob, cursors, wait=5)["changes"]] == ["own.txt"]
    cursors = {int(k): v for k, v in sync(bob, cursors)["cursors"].items()}
    assert sync(bob, cursors, wait=0.3)["changes"] == []
    mkdir(carol, carol.root_id, "news")
    accept(bob, share(carol, "/news", bob)["id"])
    newly = sync(bob, cursors, wait=5)
    assert len(newly["namespaces"]) == 3, newly
