"""Shared folders between accounts, on real mounts: three accounts and four devices
(alice on two, bob and carol on one each; bob's device has the name of one of alice's,
so telling own changes apart by device name alone would lose his edits on it).

Through the command line, as a user would: share, accept, edits on every side, a viewer
refused by the mount, a move into and out of the folder, a member removed, one leaving;
a conflict between two accounts; a 410 for one namespace; and an old database and
device cache upgraded, then shared."""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import sqlite3
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

from tests.harness import CLOUDFS, MountProcess, RestartableServer, ServerProcess, cloudfs_mount, cloudfs_server, wait_until
from tests.proxy import Proxy


def eventually(check, what: str, timeout: float = 15):  # noqa: ANN001
    return wait_until(check, timeout=timeout, what=what, interval=0.05)


def read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLOUDFS, *args], capture_output=True, text=True, timeout=180, cwd=cwd)


def ok(*args: str, cwd: Path | None = None) -> str:
    done = cli(*args, cwd=cwd)
    assert done.returncode == 0, f"cloudfs {' '.join(args)}: {done.stderr}"
    return done.stdout


def shares(mount: MountProcess) -> list[dict]:
    return json.loads(ok("shares", "--json", cwd=mount.path))


def refused(errno_: int, fn, *args) -> bool:  # noqa: ANN001
    try:
        fn(*args)
    except OSError as exc:
        return exc.errno == errno_
    return False


@contextlib.contextmanager
def mounts(server: ServerProcess, tmp: Path, *who: tuple[str, str, str]) -> Iterator[list[MountProcess]]:
    """(account token, device name, label) for each mount."""
    with contextlib.ExitStack() as stack:
        out = [stack.enter_context(cloudfs_mount(server, token, tmp / label, tmp / f"cache-{label}", device=device))
               for token, device, label in who]
        yield out
        for m in out:
            assert "Traceback" not in m.log(), m.log()[-5000:]


def test_three_accounts_four_devices(tmp_path: Path) -> None:
    with cloudfs_server(tmp_path / "srv") as srv:
        names = {who: f"{who}-{uuid.uuid4().hex[:6]}" for who in ("alice", "bob", "carol")}
        tokens = {who: srv.add_user(name) for who, name in names.items()}
        with mounts(srv, tmp_path, (tokens["alice"], "desk", "a1"), (tokens["alice"], "laptop", "a2"),
                    (tokens["bob"], "laptop", "b1"), (tokens["carol"], "phone", "c1")) as (a1, a2, b1, c1):
            (a1.path / "proj").mkdir()
            (a1.path / "proj" / "plan.txt").write_bytes(b"the plan\n")
            big = os.urandom(3 << 20)
            (a1.path / "big.bin").write_bytes(big)
            a1.sync()
            a2.sync()
            plan_ino = os.stat(a2.path / "proj" / "plan.txt").st_ino
            ok("share", str(a1.path / "proj"), names["bob"])
            ok("share", str(a1.path / "proj"), names["carol"], "--viewer")
            invited = shares(b1)
            assert [(s["owner"], s["role"], s["state"], s["path"]) for s in invited] == [
                (names["alice"], "editor", "invited", None)]
            ns = invited[0]["id"]
            ok("shares", "accept", str(ns), "--at", str(b1.path / "from-alice"))
            eventually(lambda: read(b1.path / "from-alice" / "plan.txt") == b"the plan\n", "the folder on bob's device")
            assert [(s["id"], s["path"], s["state"]) for s in shares(b1)] == [(ns, str(b1.path / "from-alice"), "accepted")]
            # Alice's other device keeps the folder as it was: same inodes, nothing fetched again.
            a2.sync()
            assert os.stat(a2.path / "proj" / "plan.txt").st_ino == plan_ino
            assert str(ns) in a2.status()["cursors"]

            # Edits flow both ways, to every device of both accounts.
            (b1.path / "from-alice" / "plan.txt").write_bytes(b"the plan, by bob\n")
            (b1.path / "from-alice" / "bob.txt").write_bytes(b"hello from bob\n")
            for m in (a1, a2):
                eventually(lambda m=m: read(m.path / "proj" / "plan.txt") == b"the plan, by bob\n", f"bob's edit on {m.device}")
                eventually(lambda m=m: read(m.path / "proj" / "bob.txt") == b"hello from bob\n", f"bob's file on {m.device}")
            (a2.path / "proj" / "sub").mkdir()
            (a2.path / "proj" / "sub" / "alice.txt").write_bytes(b"from alice's laptop\n")
            eventually(lambda: read(b1.path / "from-alice" / "sub" / "alice.txt") == b"from alice's laptop\n",
                       "alice's laptop's file on bob's laptop")
            # Renaming the folder in one drive changes nothing for the others.
            os.rename(b1.path / "from-alice", b1.path / "alices-project")
            b1.sync()
            a1.sync()
            assert (a1.path / "proj" / "sub").is_dir() and not (a1.path / "alices-project").exists()

            # The viewer reads, and the mount refuses every change in the folder.
            ok("shares", "accept", str(ns), cwd=c1.path)
            eventually(lambda: read(c1.path / "proj" / "plan.txt") == b"the plan, by bob\n", "the folder on carol's phone")
            folder = c1.path / "proj"
            assert refused(errno.EROFS, (folder / "plan.txt").write_bytes, b"vandal")
            assert refused(errno.EROFS, (folder / "new.txt").write_bytes, b"new")
            assert refused(errno.EROFS, os.mkdir, folder / "d")
            assert refused(errno.EROFS, os.unlink, folder / "plan.txt")
            assert refused(errno.EROFS, os.rename, folder / "plan.txt", folder / "moved.txt")
            assert refused(errno.EROFS, os.chmod, folder / "plan.txt", 0o777)
            assert refused(errno.EROFS, os.rename, folder / "plan.txt", c1.path / "stolen.txt")
            assert read(folder / "plan.txt") == b"the plan, by bob\n"
            os.rename(folder, c1.path / "read-only")  # her own place for it is hers
            c1.sync()
            assert c1.status()["pending_ops"] == 0
            assert sorted(os.listdir(a1.path / "proj")) == ["bob.txt", "plan.txt", "sub"]

            # A move into the folder: the bytes are not uploaded again; bob sees a new file.
            sent = a1.status()["uploaded_bytes"]
            os.rename(a1.path / "big.bin", a1.path / "proj" / "big.bin")
            eventually(lambda: (b1.path / "alices-project" / "big.bin").exists(), "moved-in file on bob's device", 30)
            assert read(b1.path / "alices-project" / "big.bin") == big
            assert a1.status()["uploaded_bytes"] == sent
            a2.sync()
            assert not (a2.path / "big.bin").exists() and read(a2.path / "proj" / "big.bin") == big
            # ... and out, into bob's own tree: alice's devices lose it, bob's keeps it.
            os.rename(b1.path / "alices-project" / "big.bin", b1.path / "mine.bin")
            for m in (a1, a2):
                eventually(lambda m=m: not (m.path / "proj" / "big.bin").exists(), f"moved-out file gone on {m.device}")
            assert read(b1.path / "mine.bin") == big

            # Removed and left: the folder leaves those drives.
            ok("shares", "remove", str(a1.path / "proj"), names["carol"])
            eventually(lambda: not (c1.path / "read-only").exists(), "the folder gone from carol's phone")
            ok("shares", "leave", str(b1.path / "alices-project"))
            eventually(lambda: not (b1.path / "alices-project").exists(), "the folder gone from bob's laptop")
            assert shares(b1) == [] and shares(c1) == []
            assert [m["user"] for m in shares(a1)[0]["members"]] == [names["alice"]]
            assert sorted(os.listdir(a2.path / "proj")) == ["bob.txt", "plan.txt", "sub"]


def test_bad_commands_say_why_in_one_line(tmp_path: Path) -> None:
    with cloudfs_server(tmp_path / "srv") as srv:
        alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
        with mounts(srv, tmp_path, (srv.add_user(alice), "desk", "a"), (srv.add_user(bob), "desk", "b")) as (a, b):
            (a.path / "d").mkdir()
            (a.path / "f.txt").write_bytes(b"f")
            a.sync()
            for args, words in [
                (("share", str(a.path / "d"), "nobody-here"), "no account named 'nobody-here'"),
                (("share", str(a.path / "f.txt"), bob), "only a folder can be shared"),
                (("share", str(tmp_path), bob), "is not on a mounted cloudfs drive"),
                (("shares", "accept", "999999"), "no shared folder 999999"),
                (("shares", "leave", str(a.path / "d")), "is not a shared folder"),
            ]:
                done = cli(*args, cwd=a.path)
                assert done.returncode == 1 and done.stdout == "", (args, done)
                assert len(done.stderr.strip().splitlines()) == 1 and words in done.stderr, (args, done.stderr)
            assert cli("shares", "accept", "x").returncode == 2
            ok("share", str(a.path / "d"), bob)
            ns = shares(b)[0]["id"]
            ok("shares", "accept", str(ns), cwd=b.path)
            again = cli("shares", "accept", str(ns), cwd=b.path)
            assert again.returncode == 1 and "already accepted" in again.stderr


def copy_name(name: str, who: str) -> str:
    stem, ext = os.path.splitext(name)
    return f"{stem} (conflicted copy, {who}, {datetime.date.today().isoformat()}){ext}"


def test_a_conflict_between_two_accounts_names_the_account(tmp_path: Path) -> None:
    server = RestartableServer(tmp_path / "srv")
    try:
        alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
        with mounts(server.server, tmp_path, (server.server.add_user(alice), "laptop", "a"),
                    (server.server.add_user(bob), "laptop", "b")) as (a, b):
            (a.path / "team").mkdir()
            (a.path / "team" / "notes.txt").write_text("base\n")
            a.sync()
            ok("share", str(a.path / "team"), bob)
            ok("shares", "accept", str(shares(b)[0]["id"]), cwd=b.path)
            eventually(lambda: read(b.path / "team" / "notes.txt") == b"base\n", "the folder on bob's device")
            server.stop()
            (a.path / "team" / "notes.txt").write_text("alice's edit\n")
            (b.path / "team" / "notes.txt").write_text("bob's edit\n")
            server.start()
            for m in (a, b, a, b):
                m.sync(timeout=60)
            left, right = sorted(os.listdir(a.path / "team")), sorted(os.listdir(b.path / "team"))
            assert left == right and len(left) == 2, (left, right)
            copies = [n for n in left if n != "notes.txt"]
            assert copies[0] in (copy_name("notes.txt", f"{alice} on laptop"), copy_name("notes.txt", f"{bob} on laptop"))
            assert {read(a.path / "team" / n) for n in left} == {b"alice's edit\n", b"bob's edit\n"}

            # Made a viewer while his device was away with changes: the server refuses
            # them (403), and his device goes back to the folder as the server has it.
            server.stop()
            (b.path / "team" / "notes.txt").write_text("edited as an editor, offline\n")
            (b.path / "team" / "new.txt").write_text("made offline\n")
            # Too big to travel inside its commit: refused at /uploads/prepare, in the
            # uploader's nursery of chunk checks, which must hand the 403 on as itself.
            (b.path / "team" / "big.bin").write_bytes(os.urandom(300_000))
            with sqlite3.connect(tmp_path / "srv" / "cloudfs.sqlite3") as db:
                bob_id = db.execute("SELECT id FROM users WHERE name = ?", (bob,)).fetchone()[0]
                db.execute("UPDATE members SET role = 'viewer' WHERE user_id = ?", (bob_id,))
                db.execute("UPDATE nodes SET target = 'viewer' WHERE kind = 'mount' AND owner_id = ?", (bob_id,))
            server.start()
            b.sync(timeout=60)
            eventually(lambda: sorted(os.listdir(b.path / "team")) == left, "bob's refused changes undone")
            eventually(lambda: read(b.path / "team" / "notes.txt") == read(a.path / "team" / "notes.txt"),
                       "bob's refused edit undone")
            assert refused(errno.EROFS, (b.path / "team" / "again.txt").write_bytes, b"x")
            a.sync()
            assert sorted(os.listdir(a.path / "team")) == left
    finally:
        server.close()


def test_a_410_on_one_namespace_compares_that_one_alone(tmp_path: Path) -> None:
    with cloudfs_server(tmp_path / "srv", extra_args=["--journal-retain", "3", "--prune-interval", "0.2"]) as srv:
        alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
        ta, tb = srv.add_user(alice), srv.add_user(bob)
        with mounts(srv, tmp_path, (ta, "desk", "a")) as (a,):
            (a.path / "shared").mkdir()
            a.sync()
            ok("share", str(a.path / "shared"), bob)
            with mounts(srv, tmp_path, (tb, "desk", "b")) as (b,):
                ok("shares", "accept", str(shares(b)[0]["id"]), cwd=b.path)
                b.sync()
                (b.path / "own.txt").write_bytes(b"bob's own")
                b.sync()
            for i in range(8):  # bob's device is away while the shared folder's journal moves on
                (a.path / "shared" / f"f{i}").write_bytes(b"x" * i)
            a.sync()
            wait_until(lambda: "pruned" in srv.log(), timeout=10, what="journal pruned")
            with mounts(srv, tmp_path, (tb, "desk", "b")) as (b,):
                b.sync()
                assert sorted(os.listdir(b.path / "shared")) == [f"f{i}" for i in range(8)]
                log = b.log()
                assert "comparing the whole tree of that namespace" in log
                assert log.count("reconciled the mirror of namespace") == 1 + log.count("following the shared folder")


def test_an_old_database_and_cache_are_upgraded_and_shared(tmp_path: Path) -> None:
    from tests.server.test_migrations import unpack_fixture

    data, token = unpack_fixture(tmp_path / "old")
    with cloudfs_server(data) as srv:
        bob = f"bob-{uuid.uuid4().hex[:6]}"
        with cloudfs_mount(srv, token, tmp_path / "a", tmp_path / "old" / "cache", device="old-device") as a, \
                mounts(srv, tmp_path, (srv.add_user(bob), "desk", "b")) as (b,):
            assert "mirrored" not in a.log()  # the old cache serves, it is not filled again
            a.sync()
            assert a.status()["pending_files"] == 0
            assert list(a.status()["cursors"].values())[0] > 0  # the old cursor, kept
            ok("share", str(a.path / "docs"), bob)
            ok("shares", "accept", str(shares(b)[0]["id"]), cwd=b.path)
            eventually(lambda: read(b.path / "docs" / "pending.txt") == b"written while the server was away\n",
                       "the old cache's pending upload, shared")
            assert read(b.path / "docs" / "notes.txt") == b"hello from the old release\n"
            assert len(read(b.path / "docs" / "big.bin") or b"") == 3 << 20



def test_a_members_writes_count_against_the_owners_quota(tmp_path: Path) -> None:
    with cloudfs_server(tmp_path / "srv") as srv:
        owner, member = f"owner-{uuid.uuid4().hex[:6]}", f"member-{uuid.uuid4().hex[:6]}"
        with mounts(srv, tmp_path, (srv.add_user(owner, quota=str(6 << 20)), "desk", "o"),
                    (srv.add_user(member), "desk", "m")) as (o, m):
            (o.path / "shared").mkdir()
            o.sync()
            ok("share", str(o.path / "shared"), member)
            ok("shares", "accept", str(shares(m)[0]["id"]), cwd=m.path)
            eventually(lambda: (m.path / "shared").is_dir(), "the folder on the member's device")
            (m.path / "shared" / "first.bin").write_bytes(os.urandom(4 << 20))
            m.sync()
            second = os.urandom(4 << 20)
            (m.path / "shared" / "second.bin").write_bytes(second)  # past the owner's quota, not the member's
            eventually(lambda: m.status()["over_quota_files"] == 1, "the server refusing it for the owner's quota")
            assert "quota" in cli("sync", str(m.path), "--timeout", "5").stderr
            fd = os.open(m.path / "shared" / "second.bin", os.O_WRONLY)
            assert refused(errno.EDQUOT, os.fsync, fd)
            assert refused(errno.EDQUOT, os.close, fd)  # closed all the same, as close(2) does
            (m.path / "own.bin").write_bytes(os.urandom(4 << 20))  # the member's own tree: no quota
            eventually(lambda: (o.path / "shared" / "first.bin").exists(), "the first file on the owner's device")
            os.unlink(o.path / "shared" / "first.bin")  # the owner makes room
            eventually(lambda: read(o.path / "shared" / "second.bin") == second, "the kept file uploaded", 60)
            assert m.status()["over_quota_files"] == 0


def test_a_files_names_stay_on_one_side_of_the_boundary(sync_server: ServerProcess, tmp_path: Path) -> None:
    """A directory holding a file with another name elsewhere in the folder cannot leave
    it (the server refuses to split a file's names across the boundary): known here,
    the mount says EXDEV (mv copies instead); made meanwhile on another device, the
    server's refusal puts the directory back where it was, nothing lost, and the two
    accounts' drives agree again (found by test_model_shared: the move was dropped and
    the mover's tree stayed different from the server's for good)."""
    alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    proxy = Proxy(int(sync_server.url.rsplit(":", 1)[1]))
    proxied = proxy.front(sync_server)
    try:
        with mounts(sync_server, tmp_path, (sync_server.add_user(alice), "desk", "a")) as (a,), \
                mounts(proxied, tmp_path, (sync_server.add_user(bob), "laptop", "b")) as (b,):
            (a.path / "s" / "e").mkdir(parents=True)
            (a.path / "s" / "k").mkdir()
            (a.path / "s" / "e" / "x.txt").write_bytes(b"one")
            (a.path / "s" / "k" / "z.txt").write_bytes(b"two")
            os.link(a.path / "s" / "k" / "z.txt", a.path / "s" / "k2.txt")
            a.sync()
            ok("share", str(a.path / "s"), bob)
            ok("shares", "accept", str(shares(b)[0]["id"]), cwd=b.path)
            eventually(lambda: read(b.path / "s" / "k2.txt") == b"two", "the folder on bob's device")

            assert refused(errno.EXDEV, os.rename, b.path / "s" / "k", b.path / "k")
            assert refused(errno.EXDEV, os.rename, b.path / "s" / "k2.txt", b.path / "k2.txt")

            proxy.hang()  # bob's device hears nothing of what alice does next
            os.link(a.path / "s" / "e" / "x.txt", a.path / "s" / "y")
            a.sync()
            os.rename(b.path / "s" / "e", b.path / "e")  # accepted here: the link is not known yet
            (b.path / "e" / "new.txt").write_bytes(b"written after the move")
            proxy.resume()
            for m in (b, a, b, a):
                m.sync(timeout=60)
            expected = {"s/e/x.txt": b"one", "s/y": b"one", "s/e/new.txt": b"written after the move"}
            for m in (a, b):
                assert {p: read(m.path / p) for p in expected} == expected, m.path
            assert not (b.path / "e").exists()
            assert os.stat(b.path / "s" / "y").st_ino == os.stat(b.path / "s" / "e" / "x.txt").st_ino
            assert "refused to move 'e'" in b.log()
    finally:
        proxy.close()
