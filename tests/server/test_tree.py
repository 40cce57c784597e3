"""Tree operations on a real server: mkdir, symlink, list, resolve, move, attributes,
delete, and the rename(2) rules the mount relies on."""

from __future__ import annotations

from tests.server.helpers import changes, cursor, mkdir, names, put_file


def test_mkdir_list_resolve(alice):
    docs = mkdir(alice, alice.root_id, "docs")
    mkdir(alice, docs["id"], "b")
    mkdir(alice, docs["id"], "a")
    assert names(alice, docs["id"]) == ["a", "b"]
    r = alice.get("/resolve", params={"path": "/docs/a"})
    assert r.status_code == 200 and r.json()["node"]["kind"] == "dir"
    r = alice.get("/resolve", params={"path": "/docs/zzz"})
    assert r.status_code == 404 and r.json()["field"] == "path" and "/docs/zzz" in r.json()["detail"]
    again = alice.post("/dirs", json={"parent_id": docs["id"], "name": "a"})
    assert again.status_code == 409 and again.json()["error"] == "name_exists"
    assert again.json()["node"]["name"] == "a"


def test_listing_pages(alice):
    d = mkdir(alice, alice.root_id, "many")
    for i in range(25):
        mkdir(alice, d["id"], f"n{i:02d}")
    seen, after = [], None
    for _ in range(10):
        params = {"limit": 10, **({"after": after} if after else {})}
        page = alice.get(f"/nodes/{d['id']}/children", params=params).json()
        seen += [e["name"] for e in page["entries"]]
        after = page["next_after"]
        if after is None:
            break
    assert seen == [f"n{i:02d}" for i in range(25)]


def test_symlink(alice):
    r = alice.post("/symlinks", json={"parent_id": alice.root_id, "name": "ln", "target": "../some/where"})
    assert r.status_code == 201, r.text
    node = r.json()["node"]
    assert node["kind"] == "symlink" and node["target"] == "../some/where" and node["size"] == len("../some/where")


def test_directory_move_is_one_journal_entry(alice):
    src = mkdir(alice, alice.root_id, "src")
    dst = mkdir(alice, alice.root_id, "dst")
    for i in range(20):
        put_file(alice, f"/src/f{i}")
    before = cursor(alice)
    r = alice.post(f"/nodes/{src['id']}/move", json={"parent_id": dst["id"], "name": "moved"})
    assert r.status_code == 200, r.text
    feed = changes(alice, before)
    assert [(c["op"], c["node"]["id"]) for c in feed["changes"]] == [("move", src["id"])]
    entry = feed["changes"][0]
    assert entry["old_parent_id"] == alice.root_id and entry["old_name"] == "src"
    assert entry["node"]["parent_id"] == dst["id"] and entry["node"]["name"] == "moved"
    assert len(names(alice, src["id"])) == 20
    assert alice.get("/resolve", params={"path": "/dst/moved/f7"}).status_code == 200


def test_move_into_own_subtree_is_refused(alice):
    a = mkdir(alice, alice.root_id, "a")
    b = mkdir(alice, a["id"], "b")
    r = alice.post(f"/nodes/{a['id']}/move", json={"parent_id": b["id"], "name": "a"})
    assert r.status_code == 409 and r.json()["error"] == "invalid_move"
    r = alice.post(f"/nodes/{alice.root_id}/move", json={"parent_id": a["id"], "name": "root"})
    assert r.status_code == 409


def test_rename_over_existing_follows_rename2(alice):
    d = mkdir(alice, alice.root_id, "r")
    f1 = put_file(alice, "/r/one", b"1")
    f2 = put_file(alice, "/r/two", b"2")
    sub = mkdir(alice, d["id"], "sub")
    full = mkdir(alice, d["id"], "full")
    mkdir(alice, full["id"], "inner")

    no_replace = alice.post(f"/nodes/{f1['id']}/move", json={"parent_id": d["id"], "name": "two"})
    assert no_replace.status_code == 409 and no_replace.json()["error"] == "name_exists"
    assert alice.post(f"/nodes/{f1['id']}/move", json={"parent_id": d["id"], "name": "sub", "replace": True}).json()["error"] == "is_a_directory"
    assert alice.post(f"/nodes/{sub['id']}/move", json={"parent_id": d["id"], "name": "two", "replace": True}).json()["error"] == "not_a_directory"
    assert alice.post(f"/nodes/{sub['id']}/move", json={"parent_id": d["id"], "name": "full", "replace": True}).json()["error"] == "not_empty"

    before = cursor(alice)
    r = alice.post(f"/nodes/{f1['id']}/move", json={"parent_id": d["id"], "name": "two", "replace": True})
    assert r.status_code == 200, r.text
    assert sorted(names(alice, d["id"])) == ["full", "sub", "two"]
    ops = [(c["op"], c["node"]["id"]) for c in changes(alice, before)["changes"]]
    assert ops == [("delete", f2["id"]), ("move", f1["id"])]


def test_attributes(alice):
    f = put_file(alice, "/attrs")
    before = cursor(alice)
    r = alice.patch(f"/nodes/{f['id']}", json={"mode": 0o600, "mtime_ns": 1_000_000_000})
    assert r.status_code == 200 and r.json()["node"]["mode"] == 0o600 and r.json()["node"]["mtime_ns"] == 1_000_000_000
    assert r.json()["node"]["rev"] == f["rev"], "attributes do not bump the content revision"
    assert [c["op"] for c in changes(alice, before)["changes"]] == ["attr"]


def test_owners_as_wide_as_uid_t(alice):
    """uid_t is 32-bit unsigned: ids past 2^31 fit (they did not in PostgreSQL's integer
    columns, and a chown answered 500; schemathesis found uid 4294967293)."""
    f = put_file(alice, "/owned")
    before = cursor(alice)
    r = alice.patch(f"/nodes/{f['id']}", json={"uid": 2**32 - 3, "gid": 2**31})
    assert r.status_code == 200, r.text
    assert (r.json()["node"]["uid"], r.json()["node"]["gid"]) == (2**32 - 3, 2**31)
    assert [c["node"]["uid"] for c in changes(alice, before)["changes"]] == [2**32 - 3]
    assert alice.patch(f"/nodes/{f['id']}", json={"uid": 2**32 - 1}).status_code == 422  # (uid_t)-1 means "unchanged"


def test_delete_tombstones_subtree(alice):
    top = mkdir(alice, alice.root_id, "gone")
    inner = mkdir(alice, top["id"], "inner")
    f = put_file(alice, "/gone/inner/file")
    r = alice.delete(f"/nodes/{top['id']}")
    assert r.status_code == 409 and r.json()["error"] == "not_empty"
    before = cursor(alice)
    r = alice.delete(f"/nodes/{top['id']}", params={"recursive": "true"})
    assert r.status_code == 200 and r.json()["node"]["deleted"] is True
    assert [(c["op"], c["node"]["id"]) for c in changes(alice, before)["changes"]] == [("delete", top["id"])]
    assert "gone" not in names(alice, alice.root_id)
    for node_id in (top["id"], inner["id"], f["id"]):
        assert alice.get(f"/nodes/{node_id}").status_code == 404
    snapshot_ids = {n["id"] for n in alice.get("/nodes").json()["nodes"]}
    assert not snapshot_ids & {top["id"], inner["id"], f["id"]}
    # The name is free again.
    assert mkdir(alice, alice.root_id, "gone")["id"] != top["id"]


def test_root_cannot_be_deleted(alice):
    r = alice.delete(f"/nodes/{alice.root_id}", params={"recursive": "true"})
    assert r.status_code == 409 and r.json()["error"] == "invalid_move"


def test_snapshot_pages_and_cursor(alice):
    d = mkdir(alice, alice.root_id, "snap")
    for i in range(12):
        mkdir(alice, d["id"], f"s{i}")
    first = alice.get("/nodes", params={"limit": 5}).json()
    assert first["cursor"] == cursor(alice)
    ids = [n["id"] for n in first["nodes"]]
    after = first["next_after_id"]
    for _ in range(10):
        if after is None:
            break
        page = alice.get("/nodes", params={"limit": 5, "after_id": after}).json()
        ids += [n["id"] for n in page["nodes"]]
        after = page["next_after_id"]
    assert len(ids) == len(set(ids)) == 14  # root + snap + 12
