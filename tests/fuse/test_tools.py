"""Ordinary tools on a real mount: cp, cat, mv, rm, tar, an editor's save, shell
appends, git, rsync, sqlite, df and du.

Where it helps, the same commands run in a plain local directory and the two trees
are compared. The heavier tests then sync and look at the server's copy through a
second mount with an empty cache (same account, another device), so a tool that
only works against the local mirror does not pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import sqlite3
import stat
import subprocess
from pathlib import Path
from typing import Iterator


from tests.harness import MountProcess, cloudfs_mount

GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_DATE": "2024-01-02T03:04:05Z",
           "GIT_COMMITTER_DATE": "2024-01-02T03:04:05Z"}
GIT = ["git", "-c", "user.name=Cloud Tester", "-c", "user.email=tester@example.com",
       "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false"]
TAR_OPTS = ["--sort=name", "--format=gnu", "--numeric-owner", "--owner=0", "--group=0"]


def run(*args: object, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 60) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def sh(script: str, cwd: Path) -> str:
    return run("sh", "-ec", script, cwd=cwd)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(root: Path, *, mtimes: bool = True, mtime_unit: int = 1, dir_mtimes: bool = False) -> dict[str, tuple]:
    """Everything a user can see of a tree: kinds, modes, bytes, link targets, mtimes
    (of files; of directories too if asked, in units of `mtime_unit` ns)."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = os.lstat(path)
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns // mtime_unit if dir_mtimes else None)
            else:
                assert stat.S_ISREG(st.st_mode), rel
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_size, sha(path),
                            st.st_mtime_ns // mtime_unit if mtimes else None)
    return out


def assert_same_tree(expected: Path, actual: Path, **how: object) -> None:
    want, got = snapshot(expected, **how), snapshot(actual, **how)
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    differ = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    assert not (missing or extra or differ), {
        "missing": missing[:10], "extra": extra[:10],
        "differ": [(k, want[k], got[k]) for k in differ[:10]]}


def make_tree(root: Path, files: int, seed: int = 1) -> None:
    """Nested directories, empty and 1-block-plus files, several modes, symlinks."""
    rnd = random.Random(seed)
    for i in range(files):
        d = root / f"dir{i % 7}" / f"sub {i % 3}" / ("deep" if i % 11 == 0 else "")
        d.mkdir(parents=True, exist_ok=True)
        size = 0 if i % 50 == 0 else rnd.randrange(1, 6000)
        f = d / f"file-{i}{'.ü' if i % 13 == 0 else '.txt'}"
        f.write_bytes(rnd.randbytes(size))
        f.chmod([0o644, 0o600, 0o755, 0o640][i % 4])
        os.utime(f, ns=(1_600_000_000_123_456_789 + i * 1_000_000_007,) * 2)
    (root / "big.bin").write_bytes(rnd.randbytes(300 * 1024 + 17))  # spans several dirty blocks
    (root / "empty dir").mkdir()
    (root / "private").mkdir(mode=0o700)
    (root / "private" / "secret").write_bytes(b"shh\n")
    (root / "private").chmod(0o700)
    (root / "link-to-file").symlink_to("dir1/sub 1/file-1.txt")
    (root / "link-to-dir").symlink_to("dir2")
    (root / "dangling").symlink_to("no/such/target")
    for n, (dirpath, _, _) in enumerate(sorted(os.walk(root), reverse=True)):
        os.utime(dirpath, ns=(1_500_000_000_000_000_000 + n * 1_000_000_003,) * 2)


@contextlib.contextmanager
def server_view(m: MountProcess, tmp_path: Path, name: str = "fresh") -> Iterator[MountProcess]:
    """Sync `m`, then mount the same account again with an empty cache: what it shows
    came from the server."""
    m.sync()
    assert m.status()["pending_files"] == 0
    with cloudfs_mount(m.server, m.token, tmp_path / f"{name}-mnt", tmp_path / f"{name}-cache",
                       device=f"{name}-dev") as fresh:
        yield fresh
        assert "Traceback" not in fresh.log(), fresh.log()[-5000:]


# --- copying and the shell ---


def test_cp_a_tree(mount: MountProcess, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, files=120)
    dst = mount.path / "copy"
    run("cp", "-a", src, dst)
    run("diff", "-r", "--no-dereference", src, dst)
    assert_same_tree(src, dst, dir_mtimes=True)
    with server_view(mount, tmp_path) as fresh:
        run("diff", "-r", "--no-dereference", src, fresh.path / "copy")
        assert_same_tree(src, fresh.path / "copy")
        # and back out again: cp -a from the mount to a local directory
        run("cp", "-a", fresh.path / "copy", tmp_path / "back")
        assert_same_tree(src, tmp_path / "back")


def test_cat_and_shell_append(mount: MountProcess, tmp_path: Path) -> None:
    local = tmp_path / "local"
    local.mkdir()
    script = """
        printf 'one\\ntwo\\n' > a
        head -c 200000 /dev/zero | tr '\\0' 'z' > b
        cat a >> b
        cat a b a > joined
        cat joined | cat > piped
        cat < a > redirected
    """
    for where in (local, mount.path):
        sh(script, where)
    assert_same_tree(local, mount.path, mtimes=False)
    assert run("cat", mount.path / "a") == "one\ntwo\n"
    assert (mount.path / "joined").stat().st_size == 2 * 8 + 200008
    script = """
        for i in $(seq 1 150); do echo "line $i" >> log.txt; done
        : >> empty-append
        printf 'no newline' >> partial; printf ' continued\\n' >> partial
    """
    for where in (local, mount.path):
        sh(script, where)
    assert_same_tree(local, mount.path, mtimes=False)
    assert (mount.path / "log.txt").read_text().splitlines()[-1] == "line 150"
    with server_view(mount, tmp_path) as fresh:
        # appending to a file whose bytes are only on the server
        sh("echo 'line 151' >> log.txt", fresh.path)
        sh("echo 'line 151' >> log.txt", local)
        assert (fresh.path / "log.txt").read_bytes() == (local / "log.txt").read_bytes()
        assert (fresh.path / "partial").read_text() == "no newline continued\n"


def test_mv_files_and_directories(mount: MountProcess, tmp_path: Path) -> None:
    local = tmp_path / "local"
    local.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "incoming.txt").write_text("from another filesystem\n")
    script = f"""
        mkdir -p d1/inner d2 empty
        echo alpha > d1/inner/a
        echo beta > d1/b
        echo old > target
        echo new > source
        mv source target                  # over an existing file
        mv d1/b d1/b-renamed              # rename in place
        mv d1/b-renamed d2/               # into another directory
        mv d1 d2/d1-moved                 # a directory with content
        mv -T d2/d1-moved/inner empty     # a directory over an empty one
        cp '{outside}/incoming.txt' incoming-copy.txt
        mv incoming-copy.txt d2/incoming.txt
        echo keep > keep; mv keep kept; mv kept keep
    """
    for where in (local, mount.path):
        sh(script, where)
    assert_same_tree(local, mount.path, mtimes=False)
    assert (mount.path / "target").read_text() == "new\n"
    assert (mount.path / "empty" / "a").read_text() == "alpha\n"
    # across filesystems: in from a local directory, and back out
    run("mv", outside / "incoming.txt", mount.path / "in.txt")
    assert not (outside / "incoming.txt").exists()
    run("mv", mount.path / "d2", outside / "d2")
    assert not (mount.path / "d2").exists()
    assert (outside / "d2" / "b-renamed").read_text() == "beta\n"
    assert sorted(os.listdir(mount.path)) == ["empty", "in.txt", "keep", "target"]


def test_rm_r(mount: MountProcess, tmp_path: Path) -> None:
    small_tree = """
        mkdir -p t/a/b/c t/x "t/empty dir"
        for d in t t/a t/a/b t/a/b/c t/x; do for i in 1 2 3; do echo "$d $i" > "$d/f$i"; done; done
        ln -s a/b t/link; chmod 500 t/x
    """
    sh(small_tree, mount.path)
    (mount.path / "other").write_text("stays\n")
    run("rm", "-r", mount.path / "t")  # never synced: only the local mirror knew it
    assert os.listdir(mount.path) == ["other"]
    sh(small_tree, mount.path)
    mount.sync()
    run("rm", "-rf", mount.path / "t")  # synced: every node must be deleted on the server
    assert os.listdir(mount.path) == ["other"]
    with server_view(mount, tmp_path) as fresh:
        assert os.listdir(fresh.path) == ["other"]


# --- archives, editors, version control, replication, databases ---


def test_tar_round_trip(mount: MountProcess, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src / "tree", files=50, seed=2)
    original = tmp_path / "original.tar"
    run("tar", "cf", original, *TAR_OPTS, "-C", src, "tree")
    run("tar", "xf", original, "-C", mount.path)
    assert_same_tree(src / "tree", mount.path / "tree", mtime_unit=10**9, dir_mtimes=True)  # tar keeps seconds
    out = tmp_path / "out.tar"
    run("tar", "cf", out, *TAR_OPTS, "-C", mount.path, "tree")
    assert sha(out) == sha(original)
    # an archive written onto the mount is byte-identical too
    run("tar", "cf", mount.path / "on-mount.tar", *TAR_OPTS, "-C", src, "tree")
    assert sha(mount.path / "on-mount.tar") == sha(original)
    with server_view(mount, tmp_path) as fresh:
        # Symlink mtimes do not reach the server yet (test_posix.py::test_symlink_mtime_survives_a_fresh_cache),
        # so the archive from the server's copy leaves the links out; their targets are checked below.
        links = ["--exclude=link-to-*", "--exclude=dangling"]
        run("tar", "cf", tmp_path / "original-nolinks.tar", *TAR_OPTS, *links, "-C", src, "tree")
        run("tar", "cf", tmp_path / "again.tar", *TAR_OPTS, *links, "-C", fresh.path, "tree")
        assert sha(tmp_path / "again.tar") == sha(tmp_path / "original-nolinks.tar")
        assert_same_tree(src / "tree", fresh.path / "tree", mtime_unit=10**9, dir_mtimes=True)
        assert sha(fresh.path / "on-mount.tar") == sha(original)
        # and extracting the archive that lives on the mount reproduces the tree
        (tmp_path / "from-mount").mkdir()
        run("tar", "xf", fresh.path / "on-mount.tar", "-C", tmp_path / "from-mount")
        assert_same_tree(src, tmp_path / "from-mount", mtime_unit=10**9)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def test_editor_style_save(mount: MountProcess, tmp_path: Path) -> None:
    """gedit, emacs, most IDEs: write a temp file, fsync it, rename it over the original."""
    notes = mount.path / "notes.txt"
    notes.write_text("version 1\n")
    mount.sync()  # the original is committed: the save replaces a server node
    new = b"version 2\n" * 1000
    tmp = mount.path / ".notes.txt.tmp-4711"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, new)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, notes)
    _fsync_dir(mount.path)
    assert notes.read_bytes() == new
    assert os.listdir(mount.path) == ["notes.txt"]
    with server_view(mount, tmp_path) as fresh:
        assert os.listdir(fresh.path) == ["notes.txt"]  # no temp file, no conflicted copy
        assert (fresh.path / "notes.txt").read_bytes() == new
    assert os.listdir(mount.path) == ["notes.txt"]
    assert notes.read_bytes() == new


def test_editor_style_save_with_backup(mount: MountProcess, tmp_path: Path) -> None:
    """vim (backupcopy=no): rename the original to a backup, write anew, drop the backup."""
    doc = mount.path / "doc.md"
    doc.write_text("# draft\n")
    mount.sync()
    os.rename(doc, mount.path / "doc.md~")
    with open(doc, "wb") as f:
        f.write(b"# final\n")
        f.flush()
        os.fsync(f.fileno())
    os.chmod(doc, 0o640)
    os.unlink(mount.path / "doc.md~")
    assert doc.read_text() == "# final\n"
    with server_view(mount, tmp_path) as fresh:
        assert os.listdir(fresh.path) == ["doc.md"]
        assert (fresh.path / "doc.md").read_text() == "# final\n"
        assert stat.S_IMODE(os.stat(fresh.path / "doc.md").st_mode) == 0o640
    assert os.listdir(mount.path) == ["doc.md"]


def test_git(mount: MountProcess, tmp_path: Path) -> None:
    env = {**GIT_ENV, "HOME": str(tmp_path)}
    repo = mount.path / "repo"
    run(*GIT, "init", "-q", repo, env=env)
    (repo / "README").write_text("hello\n")
    (repo / "src").mkdir()
    for i in range(30):
        (repo / "src" / f"m{i}.py").write_text(f"x = {i}\n" * (i + 1))
    (repo / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (repo / "run.sh").chmod(0o755)
    (repo / "link").symlink_to("README")
    run(*GIT, "add", "-A", cwd=repo, env=env)
    run(*GIT, "commit", "-q", "-m", "first", cwd=repo, env=env)

    (repo / "README").write_text("hello again\n")
    run(*GIT, "mv", "src/m0.py", "src/zero.py", cwd=repo, env=env)
    run(*GIT, "rm", "-q", "src/m1.py", cwd=repo, env=env)
    run(*GIT, "commit", "-q", "-a", "-m", "second", cwd=repo, env=env)
    run(*GIT, "gc", "-q", cwd=repo, env=env)  # packs, repacks, deletes loose objects
    (repo / "untracked").write_text("?\n")

    log = run(*GIT, "log", "--format=%H %s", cwd=repo, env=env).splitlines()
    assert [line.split(" ", 1)[1] for line in log] == ["second", "first"]
    assert run(*GIT, "status", "--porcelain", cwd=repo, env=env) == "?? untracked\n"
    run(*GIT, "fsck", "--strict", "--no-progress", cwd=repo, env=env)
    tree = run(*GIT, "ls-tree", "-r", "HEAD", cwd=repo, env=env)
    assert "100755 blob" in tree and "120000 blob" in tree

    with server_view(mount, tmp_path) as fresh:
        clone = fresh.path / "repo"
        assert run(*GIT, "log", "--format=%H %s", cwd=clone, env=env).splitlines() == log
        assert run(*GIT, "status", "--porcelain", cwd=clone, env=env) == "?? untracked\n"
        run(*GIT, "fsck", "--strict", "--no-progress", cwd=clone, env=env)
        assert run(*GIT, "ls-tree", "-r", "HEAD", cwd=clone, env=env) == tree
        assert (clone / "src" / "zero.py").read_text() == "x = 0\n"
        run(*GIT, "checkout", "-q", "HEAD~1", cwd=clone, env=env)
        assert (clone / "README").read_text() == "hello\n"
        assert (clone / "src" / "m1.py").exists()


def test_rsync(mount: MountProcess, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, files=80, seed=3)
    dst = mount.path / "mirror"
    run("rsync", "-a", f"{src}/", f"{dst}/")
    check = ["rsync", "-a", "--checksum", "--dry-run", "--itemize-changes", f"{src}/", f"{dst}/"]
    assert run(*check) == ""
    assert_same_tree(src, dst)
    # an incremental run: changed, grown, deleted and new files (temp file + rename)
    (src / "big.bin").write_bytes((src / "big.bin").read_bytes()[:1000] + b"changed" * 1000)
    (src / "dir1" / "sub 1" / "file-1.txt").write_bytes(b"rewritten")
    (src / "dir2" / "sub 2" / "file-2.txt").unlink()
    (src / "new.txt").write_text("new\n")
    run("rsync", "-a", "--delete", f"{src}/", f"{dst}/")
    assert run(*check, "--delete") == ""
    assert_same_tree(src, dst)


def test_sqlite_database(mount: MountProcess, tmp_path: Path) -> None:
    db = mount.path / "data.db"
    con = sqlite3.connect(db)
    con.execute("create table item (id integer primary key, name text not null, payload blob)")
    con.execute("create index item_name on item(name)")
    rnd = random.Random(4)
    with con:  # one transaction, many inserts
        con.executemany("insert into item values (?, ?, ?)",
                        ((i, f"name {i:06d}", rnd.randbytes(rnd.randrange(0, 400))) for i in range(20000)))
    with con:
        con.execute("update item set name = name || ' (odd)' where id % 2 = 1")
        con.execute("delete from item where id % 10 = 0")
    try:
        with con:
            con.execute("insert into item values (1, 'duplicate', null)")
    except sqlite3.IntegrityError:
        pass  # rolled back
    con.execute("vacuum")
    assert con.execute("pragma integrity_check").fetchone() == ("ok",)
    count, digest = _item_digest(con)
    assert count == 18000
    con.close()
    assert run("sqlite3", db, "select count(*) from item where name like '%(odd)'").strip() == "10000"
    file_sha = sha(db)
    assert not (mount.path / "data.db-journal").exists()

    # WAL mode: a shared mmap of the -shm file, many small overlapping writes, a checkpoint
    wal = sqlite3.connect(mount.path / "wal.db")
    assert wal.execute("pragma journal_mode=wal").fetchone() == ("wal",)
    wal.execute("create table t (k integer primary key, v text)")
    for batch in range(5):
        with wal:
            wal.executemany("insert into t values (?, ?)", ((batch * 1000 + i, "v" * (i % 50)) for i in range(1000)))
        reader = sqlite3.connect(mount.path / "wal.db")
        assert reader.execute("select count(*) from t").fetchone() == ((batch + 1) * 1000,)
        reader.close()
    wal.execute("pragma wal_checkpoint(truncate)")
    assert wal.execute("pragma integrity_check").fetchone() == ("ok",)
    wal.close()
    assert sorted(p.name for p in mount.path.iterdir()) == ["data.db", "wal.db"]

    with server_view(mount, tmp_path) as fresh:
        assert sha(fresh.path / "data.db") == file_sha
        con = sqlite3.connect(f"file:{fresh.path / 'data.db'}?mode=ro", uri=True)
        try:
            assert con.execute("pragma integrity_check").fetchone() == ("ok",)
            assert _item_digest(con) == (count, digest)
        finally:
            con.close()
        assert run("sqlite3", fresh.path / "wal.db", "pragma integrity_check; select count(*) from t").split() == \
            ["ok", "5000"]


def _item_digest(con: sqlite3.Connection) -> tuple[int, str]:
    h = hashlib.sha256()
    count = 0
    for row in con.execute("select id, name, payload from item order by id"):
        h.update(repr(row).encode())
        count += 1
    return count, h.hexdigest()


# --- space ---


def test_df_and_du(mount: MountProcess) -> None:
    d = mount.path / "space"
    d.mkdir()
    sizes = [1 << 20, 300_000, 5, 0]
    for i, size in enumerate(sizes):
        (d / f"f{i}").write_bytes(os.urandom(size))
    (d / "sub").mkdir()
    (d / "sub" / "g").write_bytes(b"x" * 4096)
    total = sum(sizes) + 4096

    lines = run("df", "-P", "-B1", mount.path).splitlines()
    fields = lines[-1].split()
    size, used, avail = int(fields[1]), int(fields[2]), int(fields[3])
    assert fields[-1] == str(mount.path)
    assert size > 0 and 0 <= used <= size and 0 < avail <= size
    inodes = run("df", "-P", "-i", mount.path).splitlines()[-1].split()
    assert int(inodes[1]) > 0

    apparent = int(run("du", "-s", "-b", d).split()[0])
    assert total <= apparent <= total + 4096 * 3  # directory sizes, if any
    kib = int(run("du", "-s", "-k", d).split()[0])
    assert total // 1024 <= kib <= total // 1024 + 16
    per_file = dict(reversed(line.split("\t")) for line in run("du", "-a", "-b", d).splitlines())
    assert int(per_file[str(d / "f0")]) == 1 << 20
    assert int(per_file[str(d / "f2")]) == 5
