"""Hard links as the web page sees them over HTTP (issue 17 with issue 11's aliases): a
listing and a search say which names are one file and give its size and dates; an
alias's bytes are its file's under the alias's own name, in a zip too; a share of an
alias shares the file and follows it when the name it was shared by goes; a shared
folder shows an alias as a file without handing out its file's id; the trash holds
what was lost, never a name of a file that lives on. On both engines and both stores."""

from __future__ import annotations

import io
import zipfile

import httpx

from tests.conftest import Api
from tests.harness import ServerProcess
from tests.server.helpers import mkdir, put_file


def link(api: Api, parent_id: int, name: str, node_id: int) -> dict:
    r = api.post("/links", json={"parent_id": parent_id, "name": name, "node_id": node_id})
    assert r.status_code == 201, r.text
    return r.json()["node"]


def listing(api: Api, dir_id: int, **params: object) -> dict:
    r = api.get(f"/nodes/{dir_id}/children", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_listing_gives_the_file_behind_each_name_and_how_many_names_it_has(server: ServerProcess,
                                                                            alice: Api) -> None:
    here = mkdir(alice, alice.root_id, "here")
    mkdir(alice, alice.root_id, "there")
    data = b"one file, three names"
    f = put_file(alice, "/here/first.txt", data)
    lone = put_file(alice, "/here/lone.txt", b"one name")
    alias = link(alice, here["id"], "second.txt", f["id"])
    link(alice, alice.me["root_id"], "third.txt", f["id"])
    # A device's listing is as before: names only.
    plain = listing(alice, here["id"])
    assert [(e["name"], e["kind"]) for e in plain["entries"]] == [("first.txt", "file"), ("lone.txt", "file"),
                                                                  ("second.txt", "link")]
    assert plain["linked"] == []
    page = listing(alice, here["id"], linked="true")
    assert [(x["node"]["id"], x["node"]["size"], x["names"]) for x in page["linked"]] == [(f["id"], len(data), 3)]
    assert lone["id"] not in {x["node"]["id"] for x in page["linked"]}
    # Only the linked files of the page asked for, whichever name of theirs is listed.
    there = listing(alice, alice.root_id, linked="true")
    assert [x["node"]["id"] for x in there["linked"]] == [f["id"]]
    # One name less: the count follows.
    assert alice.delete(f"/nodes/{alias['id']}").status_code == 200
    assert [x["names"] for x in listing(alice, here["id"], linked="true")["linked"]] == [2]


def test_an_alias_s_bytes_are_its_file_s_under_its_own_name(server: ServerProcess, alice: Api) -> None:
    d = mkdir(alice, alice.root_id, "bytes")
    f = put_file(alice, "/bytes/report.txt", b"first words")
    put_file(alice, "/bytes/report.txt", b"second words", base_rev=1)
    alias = link(alice, d["id"], "copy of report.txt", f["id"])
    r = alice.get(f"/files/{alias['id']}/content")
    assert r.status_code == 200, r.text
    assert r.content == b"second words"
    assert r.headers["content-disposition"].endswith("UTF-8''copy%20of%20report.txt")
    old = alice.get(f"/files/{alias['id']}/content", params={"rev": 1})
    assert old.content == b"first words" and "copy of report (rev 1).txt" in old.headers["content-disposition"]
    part = alice.get(f"/files/{alias['id']}/content", headers={"Range": "bytes=7-11"})
    assert part.status_code == 206 and part.content == b"words"
    assert [v["rev"] for v in alice.get(f"/files/{alias['id']}/versions").json()["versions"]] == [2, 1]


def test_a_folder_zip_holds_a_hard_link_as_its_file(server: ServerProcess, alice: Api) -> None:
    z_dir = mkdir(alice, alice.root_id, "zipped")
    outside = put_file(alice, "/outside.bin", b"lives outside the folder")
    inside = put_file(alice, "/zipped/inside.bin", b"lives inside")
    link(alice, z_dir["id"], "out-link.bin", outside["id"])
    link(alice, z_dir["id"], "in-link.bin", inside["id"])
    sym = alice.post("/symlinks", json={"parent_id": z_dir["id"], "name": "sym", "target": "inside.bin"}).json()["node"]
    link(alice, z_dir["id"], "sym-link", sym["id"])
    r = alice.get(f"/dirs/{z_dir['id']}/zip")
    assert r.status_code == 200, r.text
    z = zipfile.ZipFile(io.BytesIO(r.content))
    assert sorted(z.namelist()) == ["in-link.bin", "inside.bin", "out-link.bin"]
    assert z.read("out-link.bin") == b"lives outside the folder"
    assert z.read("in-link.bin") == z.read("inside.bin") == b"lives inside"


def test_search_finds_a_hard_link_by_its_own_name(server: ServerProcess, alice: Api) -> None:
    f = put_file(alice, "/plain-name.dat", b"12345")
    alias = link(alice, alice.root_id, "findme-alias.dat", f["id"])
    r = alice.get("/search", params={"q": "FINDME"})
    assert r.status_code == 200, r.text
    hits = r.json()
    assert [(h["node"]["id"], h["node"]["kind"], h["path"]) for h in hits["hits"]] == [
        (alias["id"], "link", "/findme-alias.dat")]
    assert [(x["node"]["id"], x["node"]["size"], x["names"]) for x in hits["linked"]] == [(f["id"], 5, 2)]


def test_a_share_of_a_hard_link_shares_its_file_and_follows_it(server: ServerProcess, alice: Api) -> None:
    d = mkdir(alice, alice.root_id, "share-src")
    data = b"shared through a second name"
    f = put_file(alice, "/share-src/original.txt", data)
    alias = link(alice, d["id"], "alias.txt", f["id"])
    r = alice.post("/share-links", json={"node_id": alias["id"]})
    assert r.status_code == 201, r.text
    shared = r.json()
    assert (shared["node_id"], shared["kind"]) == (f["id"], "file")
    anon = httpx.Client(base_url=server.url, timeout=30)
    # The name it was shared by is not what keeps it: deleting the first name moves the
    # file to the alias's place (same id), and the link still gives it.
    assert alice.delete(f"/nodes/{f['id']}").json()["node"]["name"] == "alias.txt"
    info = anon.get(f"/s/{shared['id']}/info").json()
    assert (info["name"], info["kind"], info["size"]) == ("alias.txt", "file", len(data))
    got = anon.get(f"/s/{shared['id']}/file/{f['id']}")
    assert got.status_code == 200 and got.content == data
    anon.close()


def test_a_shared_folder_shows_a_hard_link_as_a_file_and_nothing_more(server: ServerProcess, alice: Api) -> None:
    folder = mkdir(alice, alice.root_id, "public")
    data = b"kept in a private folder, linked into the shared one"
    private = put_file(alice, "/private-notes.txt", data)
    alias = link(alice, folder["id"], "notes.txt", private["id"])
    shared = alice.post("/share-links", json={"node_id": folder["id"]}).json()
    anon = httpx.Client(base_url=server.url, timeout=30)
    entries = anon.get(f"/s/{shared['id']}/list").json()["entries"]
    assert [(e["id"], e["name"], e["kind"], e["size"], e["link_to"]) for e in entries] == [
        (alias["id"], "notes.txt", "file", len(data), None)]
    got = anon.get(f"/s/{shared['id']}/file/{alias['id']}")
    assert got.status_code == 200 and got.content == data
    assert got.headers["content-disposition"].endswith("''notes.txt")
    # The file's own id (its first name is outside the folder) is not reachable.
    assert anon.get(f"/s/{shared['id']}/file/{private['id']}").status_code == 404
    z = zipfile.ZipFile(io.BytesIO(anon.get(f"/s/{shared['id']}/zip").content))
    assert z.namelist() == ["notes.txt"] and z.read("notes.txt") == got.content
    anon.close()


def test_the_trash_holds_files_never_names_of_a_file_that_lives_on(server: ServerProcess, alice: Api) -> None:
    d = mkdir(alice, alice.root_id, "bin-test")
    f = put_file(alice, "/bin-test/a.txt", b"still here")
    alias = link(alice, d["id"], "b.txt", f["id"])
    other = link(alice, d["id"], "c.txt", f["id"])

    def trash() -> list[tuple[str, int]]:
        r = alice.get("/trash", params={"path": "/bin-test"})
        assert r.status_code == 200, r.text
        return [(e["path"], e["node"]["id"]) for e in r.json()["entries"]]

    assert alice.delete(f"/nodes/{alias['id']}").json()["node"]["kind"] == "link"
    promoted = alice.delete(f"/nodes/{f['id']}").json()["node"]
    assert (promoted["id"], promoted["name"], promoted["deleted"]) == (f["id"], "c.txt", False)
    assert trash() == []  # two names went, the file did not
    assert listing(alice, d["id"], linked="true")["linked"] == []  # one name left: nothing to say
    gone = alice.delete(f"/nodes/{f['id']}").json()["node"]
    assert gone["deleted"] and other["id"] != f["id"]
    assert trash() == [("/bin-test/c.txt", f["id"])]
    back = alice.post(f"/trash/{f['id']}/undelete")
    assert back.status_code == 200 and back.json()["node"]["name"] == "c.txt"
    assert alice.get(f"/files/{f['id']}/content").content == b"still here"
