"""`cloudfs versions | restore | trash | undelete` on real mounts: what a user types
after a mistake, checked on the mount that typed it and on another device."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from tests.harness import CLOUDFS
from tests.sync.conftest import Devices


def cli(*args: object, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([*CLOUDFS, *map(str, args)], capture_output=True, text=True, timeout=180)
    if ok:
        assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return done


def contents(top: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames:
            out[os.path.relpath(Path(dirpath) / name, top)] = None
        for name in filenames:
            out[os.path.relpath(Path(dirpath) / name, top)] = (Path(dirpath) / name).read_bytes()
    return out


def test_versions_and_restore_of_a_file(devices: Devices) -> None:
    a = devices.a.path
    doc = a / "doc.txt"
    for text in (b"first", b"second", b"third"):
        doc.write_bytes(text)
        devices.a.sync()
    listed = json.loads(cli("versions", doc, "--json").stdout)
    assert [(v["rev"], v["size"], v["device"]) for v in listed] == [(3, 5, "dev-a"), (2, 6, "dev-a"), (1, 5, "dev-a")]
    assert listed[0]["current"] and listed[2]["time"] <= listed[0]["time"]
    assert "dev-a" in cli("versions", doc).stdout
    cli("restore", doc, "--rev", "1")
    assert doc.read_bytes() == b"first"
    devices.b.sync()
    assert (devices.b.path / "doc.txt").read_bytes() == b"first"
    assert [v["rev"] for v in json.loads(cli("versions", doc, "--json").stdout)][0] == 4  # a restore is a new version


def test_trash_and_undelete_of_files_and_trees(devices: Devices) -> None:
    a = devices.a.path
    (a / "notes.txt").write_bytes(b"notes")
    (a / "album").mkdir()
    for i in range(3):
        (a / "album" / f"{i}.jpg").write_bytes(bytes([i]) * 1000)
    devices.a.sync()
    (a / "notes.txt").unlink()
    shutil.rmtree(a / "album")
    devices.a.sync()
    trash = json.loads(cli("trash", a, "--json").stdout)
    assert [(t["path"], t["device"], t["inside"]) for t in trash] == [("/album", "dev-a", 3), ("/notes.txt", "dev-a", 0)]
    cli("undelete", a / "notes.txt", a / "album")
    assert (a / "notes.txt").read_bytes() == b"notes"
    assert sorted(os.listdir(a / "album")) == ["0.jpg", "1.jpg", "2.jpg"]
    devices.b.sync()
    assert (devices.b.path / "album" / "2.jpg").read_bytes() == bytes([2]) * 1000
    assert "nothing deleted" in cli("trash", a).stdout

    (a / "notes.txt").unlink()
    devices.a.sync()
    (a / "notes.txt").write_bytes(b"a new one")
    live = cli("undelete", a / "notes.txt", ok=False)  # the path is live again: nothing to undelete
    assert live.returncode == 1 and "is not deleted" in live.stderr
    cli("trash", "empty", a)
    assert json.loads(cli("trash", a, "--json").stdout) == []


def test_restore_a_directory_as_it_was_and_undo_it(devices: Devices, tmp_path: Path) -> None:
    a = devices.a.path
    proj = a / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "README").write_bytes(b"read me")
    (proj / "src" / "main.c").write_bytes(b"int main() {}")
    (proj / "src" / "util.c").write_bytes(b"void util() {}")
    devices.a.sync()
    then = contents(proj)
    time.sleep(0.1)
    at = time.time()
    time.sleep(0.1)
    # a bad afternoon: rewritten, deleted, renamed, and new junk
    (proj / "README").write_bytes(b"ransomware was here")
    (proj / "src" / "util.c").unlink()
    (proj / "src" / "main.c").rename(proj / "main.c.locked")
    (proj / "PAY_ME.txt").write_bytes(b"bitcoin")
    devices.a.sync()
    after = contents(proj)
    time.sleep(0.1)
    before_restore = time.time()
    time.sleep(0.1)

    out = cli("restore", proj, "--at", str(at)).stdout
    assert "1 file(s) reverted" in out and "moved to the trash" in out
    assert contents(proj) == then
    devices.b.sync()
    assert contents(devices.b.path / "proj") == then

    cli("restore", proj, "--at", str(before_restore))
    assert contents(proj) == after


def test_bad_input_gets_one_line_and_changes_nothing(devices: Devices) -> None:
    a = devices.a.path
    (a / "f").write_bytes(b"x")
    devices.a.sync()
    future = cli("restore", a, "--at", "in 3 days", ok=False)
    assert future.returncode == 1 and "future" in future.stderr
    nonsense = cli("restore", a, "--at", "the day after never", ok=False)
    assert nonsense.returncode == 1 and "not a time" in nonsense.stderr
    missing = cli("versions", a / "never-was", ok=False)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    no_rev = cli("restore", a / "f", "--rev", "99", ok=False)
    assert no_rev.returncode == 1 and "revision 99" in no_rev.stderr
    outside = cli("trash", "/tmp", ok=False)
    assert outside.returncode == 1 and "not on a mounted cloudfs drive" in outside.stderr
    assert (a / "f").read_bytes() == b"x"


def test_a_mass_delete_is_held_until_confirmed_or_undone(sync_server, tmp_path: Path) -> None:  # noqa: ANN001
    import uuid

    from tests.harness import cloudfs_mount

    token = sync_server.add_user(f"guard-{uuid.uuid4().hex[:8]}")
    guard = ["--delete-guard", "20"]
    with cloudfs_mount(sync_server, token, tmp_path / "a", tmp_path / "ca", device="dev-a", extra_args=guard) as a, \
            cloudfs_mount(sync_server, token, tmp_path / "b", tmp_path / "cb", device="dev-b") as b:
        (a.path / "keep").mkdir()
        for i in range(30):
            (a.path / "keep" / f"{i}.txt").write_bytes(b"precious %d" % i)
        (a.path / "one.txt").write_bytes(b"one")
        a.sync()
        b.sync()
        (a.path / "one.txt").unlink()  # an ordinary delete goes through
        a.sync()
        b.sync()
        assert not (b.path / "one.txt").exists()

        shutil.rmtree(a.path / "keep")
        time.sleep(2)
        status = a.status()
        assert status["held_deletes"] == 31
        assert "deletes confirm" in cli("status", a.path).stdout
        b.sync()
        assert len(os.listdir(b.path / "keep")) == 30  # the other device keeps them

        # Held deletes hold back nothing else: a new file, and an edit, reach the other device;
        # a file put at a name a held delete frees waits for it (not a conflicted copy there).
        (a.path / "new.txt").write_bytes(b"made while held")
        (a.path / "keep2").mkdir()
        a.sync()
        b.sync()
        assert (b.path / "new.txt").read_bytes() == b"made while held"
        assert (b.path / "keep2").is_dir()
        assert a.status()["held_deletes"] == 31

        cli("deletes", "undo", a.path)
        assert sorted(os.listdir(a.path / "keep")) == sorted(f"{i}.txt" for i in range(30))
        assert (a.path / "keep" / "7.txt").read_bytes() == b"precious 7"
        assert a.status()["held_deletes"] == 0

        shutil.rmtree(a.path / "keep")
        time.sleep(2)
        assert a.status()["held_deletes"] == 31
        (a.path / "keep").mkdir()
        (a.path / "keep" / "fresh.txt").write_bytes(b"after the rm -r")
        a.sync()
        b.sync()
        assert len(os.listdir(b.path / "keep")) == 30  # still the old directory there
        cli("deletes", "confirm", a.path)
        a.sync()
        b.sync()
        assert os.listdir(b.path / "keep") == ["fresh.txt"]
        assert (b.path / "keep" / "fresh.txt").read_bytes() == b"after the rm -r"
        assert not [n for n in os.listdir(b.path) if "conflicted" in n], os.listdir(b.path)
        assert a.status()["held_deletes"] == 0
