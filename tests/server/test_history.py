"""The trash, undelete and point-in-time restore through the API, on both engines."""

from __future__ import annotations

import time

from tests.conftest import Api
from tests.server.helpers import cursor, mkdir, put_file


def tree_of(api: Api, dir_id: int | None = None, prefix: str = "") -> dict[str, bytes | None]:
    """path -> content (None for a directory), read through the API."""
    dir_id = dir_id or api.get("/me").json()["root_id"]
    out: dict[str, bytes | None] = {}
    for entry in api.get(f"/nodes/{dir_id}/children").json()["entries"]:
        path = f"{prefix}/{entry['name']}"
        if entry["kind"] == "dir":
            out[path] = None
            out.update(tree_of(api, entry["id"], path))
        else:
            out[path] = read(api, entry["id"])
    return out


def read(api: Api, node_id: int, rev: int | None = None) -> bytes:
    info = api.get(f"/files/{node_id}", params={"rev": rev} if rev else {}).json()
    data = b""
    for chunk in info["chunks"]:
        d = chunk["download"]
        data += api.request(d["method"], d["url"], headers={**d["headers"], "Authorization": ""}).content
    return data


def resolve(api: Api, path: str) -> dict:
    r = api.get("/resolve", params={"path": path})
    assert r.status_code == 200, r.text
    return r.json()["node"]


def delete(api: Api, node_id: int, recursive: bool = False) -> None:
    r = api.delete(f"/nodes/{node_id}", params={"recursive": recursive})
    assert r.status_code == 200, r.text


def moment() -> float:
    time.sleep(0.05)
    at = time.time()
    time.sleep(0.05)
    return at


def test_the_trash_lists_each_delete_once_newest_first(alice: Api) -> None:
    root = alice.get("/me").json()["root_id"]
    docs = mkdir(alice, root, "docs")
    put_file(alice, "/docs/a.txt", b"a")
    old = mkdir(alice, docs["id"], "old")
    put_file(alice, "/docs/old/x", b"x")
    put_file(alice, "/docs/old/y", b"y")
    delete(alice, resolve(alice, "/docs/a.txt")["id"])
    time.sleep(0.01)
    delete(alice, old["id"], recursive=True)
    entries = alice.get("/trash", params={"path": "/docs"}).json()["entries"]
    assert [(e["path"], e["inside"], e["device"]) for e in entries] == [
        ("/docs/old", 2, "test-device"), ("/docs/a.txt", 0, "test-device")]
    assert entries[0]["deleted_at"] >= entries[1]["deleted_at"]
    assert alice.get("/trash", params={"path": "/docs/old"}).status_code == 404  # gone: not a live directory


def test_undelete_brings_back_a_file_and_a_directory_with_what_was_in_it(alice: Api) -> None:
    root = alice.get("/me").json()["root_id"]
    mkdir(alice, root, "keep")
    put_file(alice, "/keep/report.txt", b"v1")
    report = put_file(alice, "/keep/report.txt", b"v2", base_rev=1)
    mkdir(alice, root, "photos")
    put_file(alice, "/photos/1.jpg", b"one")
    put_file(alice, "/photos/2.jpg", b"two")
    delete(alice, report["id"])
    delete(alice, resolve(alice, "/photos")["id"], recursive=True)
    r = alice.post(f"/trash/{report['id']}/undelete")
    assert r.status_code == 200, r.text
    assert r.json()["node"]["name"] == "report.txt"
    assert read(alice, report["id"]) == b"v2"
    photos = alice.get("/trash", params={"path": "/"}).json()["entries"][0]["node"]
    assert alice.post(f"/trash/{photos['id']}/undelete").status_code == 200
    assert tree_of(alice) == {"/keep": None, "/keep/report.txt": b"v2", "/photos": None, "/photos/1.jpg": b"one",
                              "/photos/2.jpg": b"two"}
    assert alice.get("/trash").json()["entries"] == []


def test_undelete_beside_when_the_name_is_taken_and_with_its_deleted_directories(alice: Api) -> None:
    root = alice.get("/me").json()["root_id"]
    first = put_file(alice, "/notes.txt", b"first")
    delete(alice, first["id"])
    put_file(alice, "/notes.txt", b"second")
    assert alice.post(f"/trash/{first['id']}/undelete").json()["node"]["name"] == "notes (restored).txt"
    a = mkdir(alice, root, "a")
    mkdir(alice, a["id"], "b")
    deep = put_file(alice, "/a/b/deep.txt", b"deep")
    put_file(alice, "/a/b/sibling.txt", b"sib")
    delete(alice, deep["id"])
    delete(alice, a["id"], recursive=True)
    assert alice.post(f"/trash/{deep['id']}/undelete").status_code == 200
    got = tree_of(alice)
    assert got["/a/b/deep.txt"] == b"deep" and "/a/b/sibling.txt" not in got  # only the way back came back


def test_restore_at_puts_a_tree_back_and_a_second_restore_undoes_it(alice: Api) -> None:
    root = alice.get("/me").json()["root_id"]
    proj = mkdir(alice, root, "proj")
    mkdir(alice, proj["id"], "src")
    put_file(alice, "/proj/a.txt", b"a1")
    put_file(alice, "/proj/src/b.txt", b"b1")
    put_file(alice, "/proj/src/c.txt", b"c1")
    mkdir(alice, proj["id"], "gone")
    put_file(alice, "/proj/gone/g.txt", b"g1")
    then = tree_of(alice, proj["id"])
    at = moment()
    a = resolve(alice, "/proj/a.txt")
    put_file(alice, "/proj/a.txt", b"a2", base_rev=a["rev"])
    delete(alice, resolve(alice, "/proj/src/b.txt")["id"])
    delete(alice, resolve(alice, "/proj/gone")["id"], recursive=True)
    put_file(alice, "/proj/new.txt", b"made since")
    c = resolve(alice, "/proj/src/c.txt")
    assert alice.post(f"/nodes/{c['id']}/move", json={"parent_id": proj["id"], "name": "c-moved.txt"}).status_code == 200
    # a rename cycle: x <-> y through a third name
    put_file(alice, "/proj/x", b"x")
    put_file(alice, "/proj/y", b"y")
    at_cycle = moment()
    x, y = resolve(alice, "/proj/x"), resolve(alice, "/proj/y")
    alice.post(f"/nodes/{x['id']}/move", json={"parent_id": proj["id"], "name": "tmp"})
    alice.post(f"/nodes/{y['id']}/move", json={"parent_id": proj["id"], "name": "x"})
    alice.post(f"/nodes/{x['id']}/move", json={"parent_id": proj["id"], "name": "y"})
    now = tree_of(alice, proj["id"])
    before_restore = moment()

    r = alice.post("/restore", json={"path": "/proj", "at": at})
    assert r.status_code == 200, r.text
    report = r.json()
    assert (report["reverted"], report["undeleted"], report["trashed"]) == (1, 3, 3)  # a; b, gone, g; new, x, y
    assert tree_of(alice, proj["id"]) == then
    assert "/proj/new.txt" in [e["path"] for e in alice.get("/trash", params={"path": "/proj"}).json()["entries"]]

    again = alice.post("/restore", json={"path": "/proj", "at": at}).json()  # interrupted? run it again: done
    assert (again["reverted"], again["undeleted"], again["moved"], again["trashed"]) == (0, 0, 0, 0)
    assert tree_of(alice, proj["id"]) == then

    undo = alice.post("/restore", json={"path": "/proj", "at": before_restore})
    assert undo.status_code == 200, undo.text
    assert tree_of(alice, proj["id"]) == now

    cycle = alice.post("/restore", json={"path": "/proj", "at": at_cycle})
    assert cycle.status_code == 200, cycle.text
    back = tree_of(alice, proj["id"])
    assert (back["/x"], back["/y"]) == (b"x", b"y")


def test_a_tree_deleted_restored_and_deleted_again_is_restored_whole(alice: Api) -> None:
    """The second delete stamps the nodes again; walking back past it and past the
    restore's own entries must still find everything the first delete took."""
    root = alice.get("/me").json()["root_id"]
    proj = mkdir(alice, root, "proj")
    mkdir(alice, proj["id"], "src")
    put_file(alice, "/proj/a.txt", b"a")
    put_file(alice, "/proj/src/b.txt", b"b")
    then = tree_of(alice)
    at = moment()
    for cycle in range(3):
        delete(alice, resolve(alice, "/proj")["id"], recursive=True)
        assert "/proj" not in tree_of(alice)
        r = alice.post("/restore", json={"path": "/", "at": at})
        assert r.status_code == 200, r.text
        assert tree_of(alice) == then, f"cycle {cycle}"


def test_restore_bad_input_changes_nothing(alice: Api) -> None:
    put_file(alice, "/only.txt", b"x")
    cursor = alice.get("/me").json()["cursor"]
    future = alice.post("/restore", json={"path": "/", "at": time.time() + 3600})
    assert future.status_code == 422 and future.json()["field"] == "at"
    ancient = alice.post("/restore", json={"path": "/", "at": 1.0})
    assert ancient.status_code == 422 and "before the retained history" in ancient.json()["detail"]
    missing = alice.post("/restore", json={"path": "/never/was", "at": time.time() - 1})
    assert missing.status_code == 404 and missing.json()["field"] == "path"
    live = resolve(alice, "/only.txt")
    assert alice.post(f"/trash/{live['id']}/undelete").status_code == 422
    assert alice.get("/me").json()["cursor"] == cursor


def test_emptying_the_trash_purges_for_good(alice: Api) -> None:
    doomed = put_file(alice, "/doomed.txt", b"bye")
    delete(alice, doomed["id"])
    r = alice.delete("/trash", params={"path": "/"})
    assert r.status_code == 200 and r.json()["purged"] >= 1
    assert alice.get("/trash").json()["entries"] == []
    assert alice.post(f"/trash/{doomed['id']}/undelete").status_code == 404
    assert alice.get(f"/files/{doomed['id']}/versions").status_code == 404


def test_another_user_cannot_see_or_undelete_my_trash(alice: Api, bob: Api) -> None:
    secret = put_file(alice, "/secret.txt", b"s")
    delete(alice, secret["id"])
    assert bob.get("/trash").json()["entries"] == []
    assert bob.post(f"/trash/{secret['id']}/undelete").status_code == 404


def test_the_deleted_nodes_of_a_name_newest_first_and_only_the_owner_s(alice: Api, bob: Api) -> None:
    d = mkdir(alice, alice.root_id, "deleted-names")
    first = put_file(alice, "/deleted-names/f", b"one")
    assert alice.delete(f"/nodes/{first['id']}").status_code == 200
    second = put_file(alice, "/deleted-names/f", b"two")
    assert alice.delete(f"/nodes/{second['id']}").status_code == 200
    live = put_file(alice, "/deleted-names/f", b"three")
    put_file(alice, "/deleted-names/g", b"other name")
    answer = alice.get(f"/nodes/{d['id']}/deleted", params={"name": "f"})
    assert answer.status_code == 200, answer.text
    assert [e["id"] for e in answer.json()["entries"]] == [second["id"], first["id"]]
    assert all(e["deleted"] for e in answer.json()["entries"]) and live["id"] not in {
        e["id"] for e in answer.json()["entries"]}
    assert alice.get(f"/nodes/{d['id']}/deleted", params={"name": "nothing"}).json()["entries"] == []
    assert alice.get(f"/nodes/{d['id']}/deleted", params={"name": "a\0b"}).status_code == 422
    assert alice.get(f"/nodes/{live['id']}/deleted", params={"name": "f"}).status_code in (404, 409)
    assert bob.get(f"/nodes/{d['id']}/deleted", params={"name": "f"}).status_code == 404


def test_the_nodes_created_under_a_name_after_a_position_wherever_they_are_now(alice: Api, bob: Api) -> None:
    """What a create retried after its answer was lost asks (uploader._landed_before): its
    first try may have landed and been moved away, written over or deleted since."""
    d = mkdir(alice, alice.root_id, "created-names")
    elsewhere = mkdir(alice, alice.root_id, "created-elsewhere")
    before = put_file(alice, "/created-names/f", b"made before the position")
    assert alice.post(f"/nodes/{before['id']}/move", json={"parent_id": elsewhere["id"], "name": "old"}).status_code == 200
    after = cursor(alice)
    moved = put_file(alice, "/created-names/f", b"one")
    r = alice.post(f"/nodes/{moved['id']}/move", json={"parent_id": elsewhere["id"], "name": "moved"})
    assert r.status_code == 200, r.text
    gone = put_file(alice, "/created-names/f", b"two")
    assert alice.delete(f"/nodes/{gone['id']}").status_code == 200
    live = put_file(alice, "/created-names/f", b"three")
    put_file(alice, "/created-names/g", b"another name")
    answer = alice.get(f"/nodes/{d['id']}/created", params={"name": "f", "after": after})
    assert answer.status_code == 200, answer.text
    entries = answer.json()["entries"]
    assert [e["id"] for e in entries] == [moved["id"], gone["id"], live["id"]]
    assert [(e["parent_id"], e["name"], e["deleted"]) for e in entries] == [
        (elsewhere["id"], "moved", False), (d["id"], "f", True), (d["id"], "f", False)]
    assert alice.get(f"/nodes/{d['id']}/created", params={"name": "f", "after": cursor(alice)}).json()["entries"] == []
    assert alice.get(f"/nodes/{d['id']}/created", params={"name": "f", "after": -1}).status_code == 422
    assert alice.get(f"/nodes/{d['id']}/created", params={"name": "f", "after": 2**63}).status_code == 422  # was 500
    assert alice.delete(f"/nodes/{live['id']}", params={"rev": 2**63}).status_code == 422  # a revision past int64 too
    assert alice.get(f"/nodes/{d['id']}/created", params={"name": "a/b", "after": 0}).status_code == 422
    assert alice.get(f"/nodes/{d['id']}/created", params={"name": "f"}).status_code == 422
    assert bob.get(f"/nodes/{d['id']}/created", params={"name": "f", "after": 0}).status_code == 404
