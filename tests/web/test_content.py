"""A file's bytes and a folder's zip for the browser, search by name, and the headers
that keep user content from running in the page (issue 17, items 3, 5 and 8). On both
engines and both stores."""

from __future__ import annotations

import hashlib
import io
import os
import time
import zipfile

import httpx

from tests.conftest import Api
from tests.harness import ServerProcess
from tests.server.helpers import mkdir, put_file


def test_file_with_range_and_name(server: ServerProcess, alice: Api) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    node = put_file(alice, "/Résumé final.bin", data)
    url = f"/files/{node['id']}/content"
    r = alice.get(url)
    assert r.status_code == 200 and r.content == data
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-disposition"] == "attachment; filename=\"R_sum_ final.bin\"; filename*=UTF-8''R%C3%A9sum%C3%A9%20final.bin"
    part = alice.get(url, headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206 and part.content == data[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
    tail = alice.get(url, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == data[-10:]
    assert alice.get(url, headers={"Range": f"bytes={len(data)}-"}).status_code == 416
    head = alice.head(url)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data)) and not head.content
    # An old revision, by number.
    put_file(alice, "/Résumé final.bin", b"second", base_rev=1)
    assert alice.get(url).content == b"second"
    old = alice.get(url, params={"rev": 1})
    assert old.content == data and "(rev 1)" in old.headers["content-disposition"]


def test_user_content_never_runs_in_the_page(server: ServerProcess, alice: Api) -> None:
    page = alice.get("/")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
    html = put_file(alice, "/evil.html", b"<script>parent.pwned = 1</script>")
    svg = put_file(alice, "/evil.svg", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>')
    png = put_file(alice, "/fine.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    for node in (html, svg):
        r = alice.get(f"/files/{node['id']}/content", params={"inline": 1})
        assert r.headers["content-type"] == "application/octet-stream"
        assert r.headers["content-disposition"].startswith("attachment;")
        assert "sandbox" in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff"
    shown = alice.get(f"/files/{png['id']}/content", params={"inline": 1})
    assert shown.headers["content-type"] == "image/png" and shown.headers["content-disposition"].startswith("inline;")
    assert "sandbox" in shown.headers["content-security-policy"]
    # JSON answers are not framed or sniffed either.
    assert alice.get("/me").headers["x-content-type-options"] == "nosniff"


def test_folder_as_zip(server: ServerProcess, alice: Api) -> None:
    top = mkdir(alice, alice.root_id, "album")
    inner = mkdir(alice, top["id"], "2026 <trip>")
    mkdir(alice, top["id"], "empty")
    files = {"album/a.txt": b"alpha", "album/2026 <trip>/b.bin": os.urandom(2 * 1024 * 1024),
             "album/2026 <trip>/c.txt": b""}
    for path, data in files.items():
        put_file(alice, "/" + path, data)
    r = alice.get(f"/dirs/{top['id']}/zip")
    assert r.status_code == 200, r.text
    assert r.headers["content-length"] == str(len(r.content))
    assert r.headers["content-disposition"].startswith('attachment; filename="album.zip"')
    z = zipfile.ZipFile(io.BytesIO(r.content))
    assert z.testzip() is None
    assert sorted(z.namelist()) == sorted(["a.txt", "2026 <trip>/", "2026 <trip>/b.bin", "2026 <trip>/c.txt", "empty/"])
    for path, data in files.items():
        assert z.read(path.removeprefix("album/")) == data
    assert alice.get(f"/dirs/{inner['id']}/zip").status_code == 200
    file_id = alice.get("/resolve", params={"path": "/album/a.txt"}).json()["node"]["id"]
    assert alice.get(f"/dirs/{file_id}/zip").status_code == 409


def test_zip64_past_4_gib(server: ServerProcess, alice: Api) -> None:
    """A 4.1 GiB file made of one 4 MiB chunk 1,025 times (dedup keeps the store small):
    the zip streams past 4 GiB with ZIP64 records, and is never built anywhere."""
    if server.store_url:  # the same code path; one engine is enough for 4 GiB on the wire
        return
    chunk = os.urandom(4 * 1024 * 1024)
    fp = hashlib.sha256(chunk).hexdigest()
    prep = alice.post("/uploads/prepare", json={"chunks": [{"fingerprint": fp, "length": len(chunk)}]}).json()
    for ticket in prep["missing"]:
        assert httpx.put(ticket["upload"]["url"], content=chunk).status_code == 201
    count = 1025
    big = mkdir(alice, alice.root_id, "huge")
    r = alice.post("/files", json={"parent_id": big["id"], "name": "big.bin", "base_rev": 0, "size": count * len(chunk),
                                   "mtime_ns": time.time_ns(), "chunks": [{"fingerprint": fp, "length": len(chunk)}] * count})
    assert r.status_code == 200, r.text
    total, tail = 0, b""
    with alice.stream("GET", f"/dirs/{big['id']}/zip") as response:
        declared = int(response.headers["content-length"])
        for piece in response.iter_bytes(1 << 20):
            total += len(piece)
            tail = (tail + piece)[-(1 << 16):]
    assert total == declared > 4 << 30
    assert b"PK\x06\x06" in tail and b"PK\x06\x07" in tail  # ZIP64 end of central directory and its locator
    assert tail.endswith(b"\x00\x00") and b"big.bin" in tail


def test_search_by_name(server: ServerProcess, alice: Api) -> None:
    docs = mkdir(alice, alice.root_id, "Docs")
    put_file(alice, "/Docs/Quarterly Report.PDF")
    put_file(alice, "/Docs/100% done.txt")
    put_file(alice, "/report-old.txt")
    hits = alice.get("/search", params={"q": "report"}).json()["hits"]
    assert sorted(h["path"] for h in hits) == ["/Docs/Quarterly Report.PDF", "/report-old.txt"]
    literal = alice.get("/search", params={"q": "0% d"}).json()["hits"]
    assert [h["path"] for h in literal] == ["/Docs/100% done.txt"]
    assert alice.get("/search", params={"q": "%"}).json()["hits"][0]["node"]["name"] == "100% done.txt"
    assert alice.get("/search", params={"q": "docs"}).json()["hits"][0]["node"]["id"] == docs["id"]


def test_files_of_a_shared_folder_and_chunks_given_across_namespaces(alice: Api, bob: Api) -> None:
    """The browser reads a shared folder's files as any member, and a file whose chunks
    the server gave from another namespace (moved out of a shared folder: nothing was
    uploaded again, its bytes stay under the folder's keys) downloads whole, alone and
    in a zip; a non-member gets 404 as for a node that does not exist."""
    from tests.server.test_shares import accept, share

    box = mkdir(alice, alice.root_id, "box")
    ns = share(alice, "/box", bob)["id"]
    accept(bob, ns)
    data = os.urandom(2 * 1024 * 1024 + 5)
    inside = put_file(alice, "/box/in.bin", data)
    assert bob.get(f"/files/{inside['id']}/content").content == data
    zipped = zipfile.ZipFile(io.BytesIO(bob.get(f"/dirs/{box['id']}/zip").content))
    assert zipped.read("in.bin") == data
    out = bob.post(f"/nodes/{inside['id']}/move", json={"parent_id": bob.root_id, "name": "mine.bin"})
    assert out.status_code == 200, out.text
    assert bob.get(f"/files/{inside['id']}/content").content == data
    assert bob.get(f"/files/{inside['id']}/content", headers={"Range": "bytes=10-19"}).content == data[10:20]
    assert alice.get(f"/files/{inside['id']}/content").status_code == 404
    assert alice.get(f"/dirs/{box['id']}/zip").status_code == 200


def test_search_reaches_into_shared_folders_where_they_are_mounted(alice: Api, bob: Api) -> None:
    """A member finds a shared folder's files by name, at the path where they mounted
    the folder (not the owner's); the folder itself is found by its name there too, and
    a folder nobody shared stays out of the other account's results."""
    from tests.server.test_shares import accept, share

    mkdir(alice, alice.root_id, "plans")
    put_file(alice, "/plans/budget-2027.ods", b"numbers")
    mkdir(alice, alice.root_id, "private")
    put_file(alice, "/private/budget-secret.txt", b"no")
    accept(bob, share(alice, "/plans", bob)["id"], "/From Alice")
    put_file(bob, "/budget-mine.txt", b"mine")
    paths = sorted(h["path"] for h in bob.get("/search", params={"q": "budget"}).json()["hits"])
    assert paths == ["/From Alice/budget-2027.ods", "/budget-mine.txt"]
    folder = bob.get("/search", params={"q": "from al"}).json()["hits"]
    assert [(h["path"], h["node"]["name"]) for h in folder] == [("/From Alice", "From Alice")]
    assert sorted(h["path"] for h in alice.get("/search", params={"q": "budget"}).json()["hits"]) == \
        ["/plans/budget-2027.ods", "/private/budget-secret.txt"]
