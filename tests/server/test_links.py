"""Hard links on a real server: POST /links makes alias rows, which move, are renamed
over and are deleted like any node; content and attributes are their file's; deleting
a file's own name moves it to its oldest alias (alone, and inside a deleted directory);
bad input is refused."""

from __future__ import annotations

import hashlib
import time

from tests.server.helpers import changes, cursor, mkdir, names, put_file


def link(api, parent_id: int, name: str, node_id: int) -> dict:  # noqa: ANN001
    r = api.post("/links", json={"parent_id": parent_id, "name": name, "node_id": node_id})
    assert r.status_code == 201, r.text
    return r.json()["node"]


def node(api, node_id: int) -> dict | None:  # noqa: ANN001
    r = api.get(f"/nodes/{node_id}")
    return r.json()["node"] if r.status_code == 200 else None


def ops(api, after: int) -> list[tuple]:  # noqa: ANN001
    return [(c["op"], c["node"]["id"], c["device"]) for c in changes(api, after)["changes"]]


def test_a_link_is_an_alias_row_in_the_journal_and_the_snapshot(alice):
    d = mkdir(alice, alice.root_id, "l")
    f = put_file(alice, "/l/file", b"shared bytes")
    before = cursor(alice)
    other = mkdir(alice, alice.root_id, "elsewhere")
    alias = link(alice, other["id"], "second", f["id"])
    assert (alias["kind"], alias["link_to"], alias["parent_id"], alias["name"]) == ("link", f["id"], other["id"], "second")
    assert alias["id"] != f["id"] and alias["size"] == 0
    feed = changes(alice, before)["changes"]
    assert [(c["op"], c["node"]["id"], c["node"]["link_to"]) for c in feed] == [
        ("create", other["id"], None), ("create", alias["id"], f["id"])]
    snapshot = {n["id"]: n for n in alice.get("/nodes").json()["nodes"]}
    assert snapshot[alias["id"]]["link_to"] == f["id"] and snapshot[f["id"]]["link_to"] is None
    # A link to an alias links to its file; links across directories are fine.
    third = link(alice, d["id"], "third", alias["id"])
    assert third["link_to"] == f["id"]
    assert names(alice, d["id"]) == ["file", "third"]


def test_content_and_attributes_of_an_alias_are_its_file_s(alice):
    f = put_file(alice, "/c-file", b"version one")
    alias = link(alice, alice.root_id, "c-alias", f["id"])
    # A commit through the alias's name or id is a commit of the file.
    data = b"version two"
    fp = hashlib.sha256(data).hexdigest()
    by_name = alice.post("/files", json={"path": "/c-alias", "base_rev": f["rev"], "size": len(data),
                                         "mtime_ns": time.time_ns(), "chunks": [{"fingerprint": fp, "length": len(data)}],
                                         "inline": [{"fingerprint": fp, "data": "dmVyc2lvbiB0d28="}]})
    assert by_name.status_code == 200, by_name.text
    assert by_name.json()["node"]["id"] == f["id"] and by_name.json()["version"]["rev"] == 2
    by_id = alice.post("/files", json={"node_id": alias["id"], "base_rev": 1, "size": 0, "mtime_ns": 1, "chunks": []})
    assert by_id.status_code == 409 and by_id.json()["error"] == "stale_revision"
    assert by_id.json()["node"]["id"] == f["id"]
    info = alice.get(f"/files/{alias['id']}").json()
    assert info["node"]["id"] == f["id"] and info["version"]["rev"] == 2
    assert [v["rev"] for v in alice.get(f"/files/{alias['id']}/versions").json()["versions"]] == [2, 1]
    r = alice.patch(f"/nodes/{alias['id']}", json={"mode": 0o600})
    assert r.status_code == 200 and r.json()["node"]["id"] == f["id"]
    assert node(alice, f["id"])["mode"] == 0o600 and node(alice, alias["id"])["mode"] == 0
    restored = alice.post(f"/files/{alias['id']}/restore", json={"rev": 1})
    assert restored.status_code == 200 and restored.json()["node"]["id"] == f["id"]
    assert restored.json()["node"]["size"] == len(b"version one")


def test_moves_renames_over_and_deletes_of_names(alice):
    d = mkdir(alice, alice.root_id, "m")
    f = put_file(alice, "/m/a", b"a")
    g = put_file(alice, "/m/g", b"g")
    alias = link(alice, d["id"], "b", f["id"])
    moved = alice.post(f"/nodes/{alias['id']}/move", json={"parent_id": alice.root_id, "name": "m-b"})
    assert moved.status_code == 200 and moved.json()["node"]["name"] == "m-b"
    # Renaming one name of a file over another of the same file does nothing, as rename(2).
    before = cursor(alice)
    same = alice.post(f"/nodes/{alias['id']}/move", json={"parent_id": d["id"], "name": "a", "replace": True})
    assert same.status_code == 200 and ops(alice, before) == []
    assert node(alice, alias["id"])["name"] == "m-b" and node(alice, f["id"])["name"] == "a"
    # Renaming another file over an alias replaces that name only.
    over = alice.post(f"/nodes/{g['id']}/move", json={"parent_id": alice.root_id, "name": "m-b", "replace": True})
    assert over.status_code == 200
    assert ops(alice, before) == [("delete", alias["id"], "test-device"), ("move", g["id"], "test-device")]
    assert node(alice, f["id"])["name"] == "a" and node(alice, alias["id"]) is None
    # Deleting an alias leaves the file.
    second = link(alice, d["id"], "second", f["id"])
    assert alice.delete(f"/nodes/{second['id']}").status_code == 200
    assert node(alice, f["id"]) is not None and names(alice, d["id"]) == ["a"]


def test_deleting_a_file_s_own_name_moves_it_to_its_oldest_alias(alice):
    d = mkdir(alice, alice.root_id, "p")
    f = put_file(alice, "/p/own", b"keep me")
    old = link(alice, alice.root_id, "p-oldest", f["id"])
    young = link(alice, d["id"], "youngest", f["id"])
    before = cursor(alice)
    r = alice.delete(f"/nodes/{f['id']}", params={"rev": f["rev"]})
    assert r.status_code == 200, r.text
    answer = r.json()["node"]
    assert not answer["deleted"] and (answer["parent_id"], answer["name"]) == (alice.root_id, "p-oldest")
    assert ops(alice, before) == [("delete", old["id"], "(server)"), ("move", f["id"], "(server)")]
    move = changes(alice, before)["changes"][1]
    assert (move["old_parent_id"], move["old_name"]) == (d["id"], "own")
    assert names(alice, d["id"]) == ["youngest"]
    assert alice.get(f"/files/{f['id']}").json()["version"]["rev"] == f["rev"]  # versions stay
    # A guarded delete with a stale revision is still refused.
    stale = alice.delete(f"/nodes/{f['id']}", params={"rev": f["rev"] + 5})
    assert stale.status_code == 409 and stale.json()["error"] == "stale_revision"
    # Renaming over a file's own name promotes too.
    other = put_file(alice, "/p-other", b"other")
    before = cursor(alice)
    r = alice.post(f"/nodes/{other['id']}/move", json={"parent_id": alice.root_id, "name": "p-oldest", "replace": True})
    assert r.status_code == 200, r.text
    assert ops(alice, before) == [("delete", young["id"], "(server)"), ("move", f["id"], "(server)"),
                                  ("move", other["id"], "test-device")]
    assert (node(alice, f["id"])["parent_id"], node(alice, f["id"])["name"]) == (d["id"], "youngest")
    # The last name goes: the file is deleted.
    before = cursor(alice)
    assert alice.delete(f"/nodes/{f['id']}").json()["node"]["deleted"] is True
    assert ops(alice, before) == [("delete", f["id"], "test-device")]


def test_deleting_a_directory_keeps_files_that_have_names_outside_it(alice):
    top = mkdir(alice, alice.root_id, "tree")
    inner = mkdir(alice, top["id"], "inner")
    keep = put_file(alice, "/tree/inner/keep", b"keep")
    both = put_file(alice, "/tree/both", b"both")
    gone = put_file(alice, "/tree/gone", b"gone")
    outside = put_file(alice, "/outside", b"outside")
    out1 = link(alice, alice.root_id, "keep-1", keep["id"])
    out2 = link(alice, alice.root_id, "keep-2", keep["id"])
    in_keep = link(alice, inner["id"], "keep-inside", keep["id"])
    in_gone = link(alice, top["id"], "gone-2", gone["id"])
    in_both = link(alice, inner["id"], "both-2", both["id"])
    out_both = link(alice, alice.root_id, "both-out", both["id"])
    in_outside = link(alice, top["id"], "outside-2", outside["id"])
    before = cursor(alice)
    r = alice.delete(f"/nodes/{top['id']}", params={"recursive": "true"})
    assert r.status_code == 200 and r.json()["node"]["deleted"] is True
    assert ops(alice, before) == [
        ("delete", out1["id"], "(server)"), ("move", keep["id"], "(server)"),
        ("delete", out_both["id"], "(server)"), ("move", both["id"], "(server)"),
        ("delete", top["id"], "test-device")]
    assert sorted(names(alice, alice.root_id)) == ["both-out", "keep-1", "keep-2", "outside"]
    for gone_id in (top["id"], inner["id"], gone["id"], in_gone["id"], in_keep["id"], in_both["id"], out1["id"],
                    out_both["id"], in_outside["id"]):
        assert node(alice, gone_id) is None, gone_id
    assert node(alice, out2["id"])["link_to"] == keep["id"]
    assert alice.get("/resolve", params={"path": "/keep-1"}).json()["node"]["id"] == keep["id"]
    assert alice.get("/resolve", params={"path": "/both-out"}).json()["node"]["id"] == both["id"]
    live = {n["id"]: n for n in alice.get("/nodes").json()["nodes"]}
    assert all(live[n["link_to"]] for n in live.values() if n["kind"] == "link")  # no alias names a deleted file


def test_bad_links_are_refused(alice, bob):
    d = mkdir(alice, alice.root_id, "bad")
    f = put_file(alice, "/bad/f", b"f")
    post = lambda body, api=alice: api.post("/links", json=body)  # noqa: E731
    to_dir = post({"parent_id": alice.root_id, "name": "x", "node_id": d["id"]})
    assert to_dir.status_code == 409 and to_dir.json()["error"] == "is_a_directory"
    assert to_dir.json()["field"] == "node_id"
    missing = post({"parent_id": alice.root_id, "name": "x", "node_id": 10**12})
    assert missing.status_code == 404 and missing.json()["field"] == "node_id"
    deleted = put_file(alice, "/bad/deleted", b"d")
    assert alice.delete(f"/nodes/{deleted['id']}").status_code == 200
    assert post({"parent_id": alice.root_id, "name": "x", "node_id": deleted["id"]}).status_code == 404
    taken = post({"parent_id": d["id"], "name": "f", "node_id": f["id"]})
    assert taken.status_code == 409 and taken.json()["error"] == "name_exists" and taken.json()["node"]["id"] == f["id"]
    not_a_dir = post({"parent_id": f["id"], "name": "x", "node_id": f["id"]})
    assert not_a_dir.status_code == 409 and not_a_dir.json()["field"] == "parent_id"
    theirs = post({"parent_id": bob.root_id, "name": "x", "node_id": f["id"]}, bob)
    assert theirs.status_code == 404
    into_theirs = post({"parent_id": bob.root_id, "name": "x", "node_id": f["id"]})
    assert into_theirs.status_code == 404 and into_theirs.json()["field"] == "parent_id"
    for body, field in (({"parent_id": d["id"], "name": "a/b", "node_id": f["id"]}, "name"),
                        ({"parent_id": d["id"], "name": "ok", "node_id": 0}, "node_id"),
                        ({"parent_id": d["id"], "name": "ok"}, "node_id"),
                        ({"parent_id": d["id"], "name": "ok", "node_id": f["id"], "extra": 1}, "extra")):
        r = post(body)
        assert r.status_code == 422 and r.json()["field"] == field, (body, r.text)
    assert names(alice, d["id"]) == ["f"]
