"""Hard links on two devices: links made on one arrive on the other with their link
counts and one shared content, writes through any name show through every name
elsewhere, removing a file's first name (alone, with rm -r, or on the server itself)
keeps the others, conflicts leave the names with the winner, and a device that mirrors
the tree from scratch sees the same."""

from __future__ import annotations

import datetime
import os
import shutil
import stat
from pathlib import Path

import httpx
import pytest

from tests.harness import ServerProcess, cloudfs_mount, cloudfs_server, wait_until
from tests.sync.test_conflicts import a_behind_a_proxy
from tests.sync.conftest import Devices, RestartableServer, hold_the_change_feed


def shape(top: Path) -> dict[str, tuple]:
    """Per path: its kind, every path that names the same inode, st_nlink, and content
    (bytes of a file, target of a symlink). Equal shapes: equal trees of hard links."""
    names: dict[int, list[str]] = {}
    info: dict[str, os.stat_result] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = os.lstat(path)
            rel = str(path.relative_to(top))
            info[rel] = st
            if not stat.S_ISDIR(st.st_mode):
                names.setdefault(st.st_ino, []).append(rel)
    out = {}
    for rel, st in info.items():
        kind = stat.S_IFMT(st.st_mode)
        if kind == stat.S_IFDIR:
            out[rel] = ("dir",)
            continue
        content = (top / rel).read_bytes() if kind == stat.S_IFREG else \
            os.readlink(top / rel) if kind == stat.S_IFLNK else None
        out[rel] = (stat.filemode(st.st_mode), sorted(names[st.st_ino]), st.st_nlink, content)
    return out


def settle(devices: Devices, first: str = "a") -> None:
    order = [devices.a, devices.b] if first == "a" else [devices.b, devices.a]
    for m in order + order:
        m.sync(timeout=60)


def test_hard_links_arrive_and_follow_every_change(devices: Devices, sync_server: ServerProcess,
                                                   tmp_path: Path) -> None:
    a, b = devices.a.path, devices.b.path
    (a / "docs").mkdir()
    (a / "other").mkdir()
    (a / "docs" / "report.txt").write_bytes(b"first version")
    os.link(a / "docs" / "report.txt", a / "report-link.txt")
    os.link(a / "docs" / "report.txt", a / "other" / "third.txt")
    os.symlink("docs/report.txt", a / "sym")
    os.link(a / "sym", a / "docs" / "sym-again", follow_symlinks=False)
    os.mkfifo(a / "fifo", 0o640)
    os.link(a / "fifo", a / "other" / "fifo-again")
    settle(devices)
    expected = shape(a)
    assert expected["report-link.txt"][1:3] == (["docs/report.txt", "other/third.txt", "report-link.txt"], 3)
    assert expected["sym"][1:3] == (["docs/sym-again", "sym"], 2)
    assert shape(b) == expected

    # A write on b through one name shows through every name on a.
    with open(b / "other" / "third.txt", "r+b") as f:
        f.write(b"SECOND")
    os.chmod(b / "report-link.txt", 0o600)
    settle(devices, "b")
    for name in ("docs/report.txt", "report-link.txt", "other/third.txt"):
        assert (a / name).read_bytes() == b"SECONDversion", name
    assert shape(a) == shape(b)
    assert shape(a)["docs/report.txt"][0] == "-rw-------"

    # Unlinking the first name on b keeps the others on a.
    os.unlink(b / "docs" / "report.txt")
    os.unlink(b / "sym")
    settle(devices, "b")
    assert not (a / "docs" / "report.txt").exists()
    assert shape(a)["report-link.txt"][1:] == (["other/third.txt", "report-link.txt"], 2, b"SECONDversion")
    assert shape(a)["docs/sym-again"][1:] == (["docs/sym-again"], 1, "docs/report.txt")
    assert shape(a) == shape(b)

    # rm -r of a directory holding one name keeps the file reachable through the name outside it.
    os.link(b / "report-link.txt", b / "docs" / "inside.txt")
    settle(devices, "b")
    shutil.rmtree(b / "other")
    shutil.rmtree(b / "docs")
    settle(devices, "b")
    assert shape(a) == shape(b) == {"report-link.txt": ("-rw-------", ["report-link.txt"], 1, b"SECONDversion"),
                                    "fifo": ("prw-r-----", ["fifo"], 1, None)}

    # Links made on b come to a, and a device that mirrors the tree from scratch has them all.
    (b / "d").mkdir()
    os.link(b / "report-link.txt", b / "d" / "from-b")
    (b / "d" / "x").write_bytes(b"x")
    os.link(b / "d" / "x", b / "d" / "y")
    os.rename(b / "d" / "y", b / "y-moved")
    settle(devices, "b")
    assert shape(a) == shape(b)
    with cloudfs_mount(sync_server, devices.a.token, tmp_path / "fresh", tmp_path / "fresh-cache",
                       device="dev-fresh") as fresh:
        assert shape(fresh.path) == shape(a)
        assert "Traceback" not in fresh.log()


def test_the_server_moves_a_file_to_its_other_name(devices: Devices, sync_server: ServerProcess) -> None:
    """Deletes made through the API (no device promoted anything) reach both devices as
    the server's own entries: the file moves to its oldest other name."""
    a, b = devices.a.path, devices.b.path
    (a / "dir").mkdir()
    (a / "dir" / "inner").mkdir()
    (a / "dir" / "inner" / "f").write_bytes(b"linked")
    os.link(a / "dir" / "inner" / "f", a / "outside")
    os.link(a / "dir" / "inner" / "f", a / "dir" / "also-inside")
    (a / "g").write_bytes(b"g")
    os.link(a / "g", a / "dir" / "g2")
    os.link(a / "g", a / "g3")
    settle(devices)
    api = httpx.Client(base_url=sync_server.url, headers={"Authorization": f"Bearer {devices.a.token}",
                                                          "X-Cloudfs-Device": "script"}, timeout=30)
    with api:
        g = api.get("/resolve", params={"path": "/g"}).json()["node"]
        assert api.delete(f"/nodes/{g['id']}").json()["node"]["name"] == "g2"  # its oldest other name
        top = api.get("/resolve", params={"path": "/dir"}).json()["node"]
        assert api.delete(f"/nodes/{top['id']}", params={"recursive": "true"}).status_code == 200
    settle(devices)
    want = {"outside": ("-rw-r--r--", ["outside"], 1, b"linked"), "g3": ("-rw-r--r--", ["g3"], 1, b"g")}
    assert shape(a) == shape(b) == want


def expect_winner(got: dict[str, tuple], won: bytes, lost: bytes, loser: str, names: list[str]) -> None:
    copy = f"notes (conflicted copy, dev-{loser}, {datetime.date.today().isoformat()}).txt"
    assert got == {**{name: ("-rw-r--r--", names, len(names), won) for name in names},
                   copy: ("-rw-r--r--", [copy], 1, lost)}, got


def test_conflicting_edits_leave_the_names_with_the_winner(restartable: RestartableServer,
                                                           offline_devices: Devices) -> None:
    """The loser's bytes become a conflicted copy with one name; every other name names
    the winner's version (either device may win here: both retry once the server is back)."""
    d = offline_devices
    (d.a.path / "notes.txt").write_bytes(b"base")
    os.link(d.a.path / "notes.txt", d.a.path / "alias.txt")
    settle(d)
    restartable.stop()
    (d.a.path / "alias.txt").write_bytes(b"edited on a, through the alias")
    (d.b.path / "notes.txt").write_bytes(b"edited on b")
    restartable.start()
    settle(d)
    got = shape(d.a.path)
    assert shape(d.b.path) == got
    names = ["alias.txt", "notes.txt"]
    if got["notes.txt"][3] == b"edited on b":
        expect_winner(got, b"edited on b", b"edited on a, through the alias", "a", names)
    else:
        expect_winner(got, b"edited on a, through the alias", b"edited on b", "b", names)


def test_names_made_on_the_losing_device_go_with_the_winner(sync_server: ServerProcess, tmp_path: Path) -> None:
    """a is cut off while b's edit lands; a edited the file too and gave it another name
    meanwhile. a's bytes become its conflicted copy; the name a made names b's version."""
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        (d.a.path / "notes.txt").write_bytes(b"base")
        os.link(d.a.path / "notes.txt", d.a.path / "alias.txt")
        settle(d)
        proxy.hang()
        (d.a.path / "alias.txt").write_bytes(b"edited on a, through the alias")
        os.link(d.a.path / "notes.txt", d.a.path / "made-on-a.txt")
        (d.b.path / "notes.txt").write_bytes(b"edited on b")
        d.b.sync(timeout=60)
        proxy.resume()
        settle(d)
        got = shape(d.a.path)
        assert shape(d.b.path) == got
        expect_winner(got, b"edited on b", b"edited on a, through the alias", "a",
                      ["alias.txt", "made-on-a.txt", "notes.txt"])


@pytest.mark.parametrize("how", ["unlink", "rename over"])
def test_a_device_that_did_not_know_of_a_link_keeps_the_file_under_it(sync_server: ServerProcess, tmp_path: Path,
                                                                      how: str) -> None:
    """b links a file while a is cut off; a, not knowing, removes the file's name. The
    server moves the file to b's name instead of deleting it, and a applies that too."""
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        (d.a.path / "f.txt").write_bytes(b"content")
        (d.a.path / "g.txt").write_bytes(b"other")
        settle(d)
        proxy.hang()
        os.link(d.b.path / "f.txt", d.b.path / "from-b.txt")
        d.b.sync(timeout=60)
        if how == "unlink":
            os.unlink(d.a.path / "f.txt")
        else:
            os.rename(d.a.path / "g.txt", d.a.path / "f.txt")
        proxy.resume()
        settle(d)
        want = {"from-b.txt": ("-rw-r--r--", ["from-b.txt"], 1, b"content")}
        if how == "unlink":
            want["g.txt"] = ("-rw-r--r--", ["g.txt"], 1, b"other")
        else:
            want["f.txt"] = ("-rw-r--r--", ["f.txt"], 1, b"other")
        assert shape(d.a.path) == want
        assert shape(d.b.path) == want


@pytest.mark.parametrize("then", ["", "moves the directory"])
@pytest.mark.parametrize("how", ["unlink", "rm -r"])
def test_a_name_made_while_the_file_was_deleted_elsewhere_keeps_it(sync_server: ServerProcess, tmp_path: Path,
                                                                   how: str, then: str) -> None:
    """a, cut off, gives a file another name while b deletes the file (or its directory).
    The name is a's work: the file lives on under it (and only there), as if the name had
    reached the server first and the server had moved the file to it.

    `then`: a also moves the file's directory. The server refuses the name (its file is
    gone), so the name waits until the follower has applied the delete, which moves the
    file to it; the delete must not in turn wait for the directory's move, queued behind
    the name: each waited for the other, and a never synced again (bug 37, soak seed
    660039)."""
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        (d.a.path / "dir").mkdir()
        (d.a.path / "dir" / "x.txt").write_bytes(b"content")
        (d.a.path / "dir" / "y.txt").write_bytes(b"stays")
        (d.a.path / "other").mkdir()
        settle(d)
        proxy.hang()
        os.link(d.a.path / "dir" / "x.txt", d.a.path / "kept.txt")
        if then:
            os.rename(d.a.path / "dir", d.a.path / "other" / "moved")
        if how == "unlink":
            os.unlink(d.b.path / "dir" / "x.txt")
        else:
            shutil.rmtree(d.b.path / "dir")
        d.b.sync(timeout=60)
        proxy.resume()
        settle(d)
        want = {"kept.txt": ("-rw-r--r--", ["kept.txt"], 1, b"content"), "other": ("dir",)}
        if then:  # the move kept the directory, and what b did not delete in it
            want.update({"other/moved": ("dir",), "other/moved/y.txt": ("-rw-r--r--", ["other/moved/y.txt"], 1, b"stays")})
        elif how == "unlink":
            want.update({"dir": ("dir",), "dir/y.txt": ("-rw-r--r--", ["dir/y.txt"], 1, b"stays")})
        assert shape(d.a.path) == want
        assert shape(d.b.path) == want


def test_a_device_away_past_the_journal_finds_the_links_by_comparing(tmp_path: Path) -> None:
    """b's cursor falls out of the retained journal while a changes the links: b compares
    its whole mirror with the server's, and a second comparison finds nothing to repair."""
    with cloudfs_server(tmp_path / "srv", extra_args=["--journal-retain", "3", "--prune-interval", "0.2"]) as srv:
        token = srv.add_user("owner")
        with cloudfs_mount(srv, token, tmp_path / "a", tmp_path / "cache-a", device="dev-a") as a:
            (a.path / "d").mkdir()
            (a.path / "f").write_bytes(b"f")
            (a.path / "g").write_bytes(b"g")
            os.link(a.path / "f", a.path / "f2")
            os.link(a.path / "f", a.path / "d" / "f3")
            os.link(a.path / "g", a.path / "g2")
            a.sync()
            with cloudfs_mount(srv, token, tmp_path / "b", tmp_path / "cache-b", device="dev-b") as b:
                b.sync()
                assert shape(b.path) == shape(a.path)
            os.unlink(a.path / "f")
            os.unlink(a.path / "g2")
            os.link(a.path / "g", a.path / "g3")
            shutil.rmtree(a.path / "d")
            (a.path / "h").write_bytes(b"h")
            os.link(a.path / "h", a.path / "h2")
            for i in range(6):
                (a.path / f"pad{i}").write_bytes(b"")
            a.sync()
            wait_until(lambda: "pruned" in srv.log(), timeout=10, what="journal pruned")
            with cloudfs_mount(srv, token, tmp_path / "b", tmp_path / "cache-b", device="dev-b") as b:
                b.sync()
                assert "comparing the whole tree" in b.log()
                assert shape(b.path) == shape(a.path)
                assert shape(b.path)["g3"][1:3] == (["g", "g3"], 2)
                done = b.cli("sync", str(b.path), "--full", "--timeout", "60")
                assert done.returncode == 0, done.stderr
                compared = [ln for ln in b.log().splitlines() if "reconciled the mirror" in ln]
                assert len(compared) >= 2 and compared[-1].endswith(": 0 node(s) repaired"), compared
                assert shape(b.path) == shape(a.path)


@pytest.mark.parametrize(("link", "rm"), [("written through", "rm -r"), ("removed first", "rm -r"),
                                         ("removed first", "in one request")])
def test_a_directory_delete_pulled_ahead_of_the_journal_leaves_another_device_s_link(sync_server: ServerProcess,
                                                                                     tmp_path: Path, link: str,
                                                                                     rm: str) -> None:
    """b makes dir/x.txt and links it as y.txt, and a has both; then, with a's change
    feed held, b writes through y.txt and removes dir. The server moved x.txt to y.txt
    first (its other name) and deleted dir after. a edits dir/keep.txt: its upload finds
    the file and then its directory gone, so a pulls the directory's delete ahead of
    the journal. The file lives on at y.txt as the server has it, clean: taken for a
    name given on a, it was created anew with its old bytes, and b's version then came
    back as a conflicted copy of them (soak run 45, seed 1090052). `removed first`: b
    removed y.txt before dir, so the server moved nothing and the file is gone; a, which
    cannot tell before the journal comes, moves it to y.txt all the same, and must drop
    it once the journal has come: by the file's own delete (`rm -r`), or, with dir
    deleted `in one request` (the web page: one entry for all of it), by asking again."""
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        (b.path / "dir").mkdir()
        (b.path / "dir" / "x.txt").write_bytes(b"first\n")
        (b.path / "dir" / "keep.txt").write_bytes(b"keep\n")
        os.link(b.path / "dir" / "x.txt", b.path / "y.txt")
        settle(d, first="b")
        assert os.stat(a.path / "y.txt").st_nlink == 2
        hold_the_change_feed(proxy)
        if link == "written through":
            (b.path / "y.txt").write_bytes(b"b wrote through its link\n")
        else:
            (b.path / "y.txt").unlink()
        if rm == "rm -r":
            shutil.rmtree(b.path / "dir")
        else:
            b.sync(timeout=60)
            with httpx.Client(base_url=sync_server.url, headers={"Authorization": f"Bearer {b.token}"}) as api:
                dir_id = api.get("/resolve", params={"path": "/dir"}).json()["node"]["id"]
                api.delete(f"/nodes/{dir_id}", params={"recursive": "true"}).raise_for_status()
        b.sync(timeout=60)
        (a.path / "dir" / "keep.txt").write_bytes(b"edited on a\n")
        wait_until(lambda: "'keep.txt' was deleted on another device while edited here" in a.log(), timeout=30,
                   what="a's upload should find its file deleted")
        wait_until(lambda: not a.status()["pending_ops"], timeout=30, what="a's edit should be on the server")
        proxy.release()
        settle(d)
        want = {"dir": ("dir",), "dir/keep.txt": ("-rw-r--r--", ["dir/keep.txt"], 1, b"edited on a\n")}
        if link == "written through":
            want["y.txt"] = ("-rw-r--r--", ["y.txt"], 1, b"b wrote through its link\n")
        assert shape(a.path) == want
        assert shape(b.path) == want
        assert a.status()["conflicts"] == 0
