"""Changes made on one device show up on the other by themselves, within seconds,
and moves and deletes arrive as what they are."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

from tests.harness import cloudfs_mount, spawn_mount, unmount, wait_until


def eventually(check, what: str, timeout: float = 10):  # noqa: ANN001
    return wait_until(check, timeout=timeout, what=what, interval=0.05)


def read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def test_create_modify_delete_arrive_by_themselves(devices):
    a, b = devices.a, devices.b
    (a.path / "hello.txt").write_bytes(b"hello from a\n")
    eventually(lambda: read(b.path / "hello.txt") == b"hello from a\n", "new file on b")

    (a.path / "hello.txt").write_bytes(b"changed on a, and longer\n")
    eventually(lambda: read(b.path / "hello.txt") == b"changed on a, and longer\n", "new content on b")

    (b.path / "hello.txt").write_bytes(b"back from b\n")
    eventually(lambda: read(a.path / "hello.txt") == b"back from b\n", "edit of b on a")

    (a.path / "hello.txt").unlink()
    eventually(lambda: not (b.path / "hello.txt").exists(), "delete on b")
    assert os.listdir(b.path) == []


def test_directories_symlinks_modes_and_mtimes(devices):
    a, b = devices.a, devices.b
    (a.path / "docs" / "deep").mkdir(parents=True)
    (a.path / "docs" / "deep" / "x.sh").write_text("#!/bin/sh\necho x\n")
    os.symlink("deep/x.sh", a.path / "docs" / "link")
    eventually(lambda: (b.path / "docs" / "deep" / "x.sh").exists() and (b.path / "docs" / "link").is_symlink(),
               "tree on b")
    assert os.readlink(b.path / "docs" / "link") == "deep/x.sh"

    os.chmod(a.path / "docs" / "deep" / "x.sh", 0o755)
    os.utime(a.path / "docs" / "deep" / "x.sh", ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    def attrs_arrived() -> bool:
        st = os.stat(b.path / "docs" / "deep" / "x.sh")
        return (st.st_mode & 0o777, st.st_mtime_ns) == (0o755, 1_600_000_000_000_000_000)
    eventually(attrs_arrived, "mode and mtime on b")

    (a.path / "docs" / "deep" / "x.sh").unlink()
    os.unlink(a.path / "docs" / "link")
    (a.path / "docs" / "deep").rmdir()
    eventually(lambda: os.listdir(b.path / "docs") == [], "removals on b")


def test_directory_move_is_one_operation_on_the_other_device(devices):
    a, b = devices.a, devices.b
    src = a.path / "project"
    for i in range(60):
        (src / f"sub{i % 6}").mkdir(parents=True, exist_ok=True)
        (src / f"sub{i % 6}" / f"f{i}.txt").write_bytes(f"file {i}\n".encode() * 100)
    a.sync()
    b.sync()
    # Read everything on b so it is cached there; remember the inode numbers.
    before = {p.relative_to(b.path / "project"): (p.stat().st_ino, p.read_bytes())
              for p in (b.path / "project").rglob("*.txt")}
    downloaded = b.status()["downloaded_bytes"]
    os.rename(src, a.path / "renamed")
    eventually(lambda: (b.path / "renamed").is_dir() and not (b.path / "project").exists(), "move on b")
    after = {p.relative_to(b.path / "renamed"): (p.stat().st_ino, p.read_bytes())
             for p in (b.path / "renamed").rglob("*.txt")}
    assert after == before  # same inodes, same bytes: moved, not deleted and re-created
    assert b.status()["downloaded_bytes"] == downloaded


def test_reader_on_b_sees_appends_made_on_a(devices):
    a, b = devices.a, devices.b
    log = a.path / "app.log"
    log.write_text("line 1\n")
    eventually(lambda: read(b.path / "app.log") == b"line 1\n", "log on b")
    tail = subprocess.Popen(["tail", "-n", "+1", "-F", "-s", "0.1", str(b.path / "app.log")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        os.set_blocking(tail.stdout.fileno(), False)
        seen = b""

        def saw(text: bytes) -> bool:
            nonlocal seen
            seen += tail.stdout.read() or b""
            return text in seen

        eventually(lambda: saw(b"line 1\n"), "tail started")
        with open(log, "a") as f:
            f.write("line 2\n")
        eventually(lambda: saw(b"line 2\n"), "tail -F on b shows the append made on a")
    finally:
        tail.kill()
        tail.wait(5)


def test_listing_on_b_sees_new_names_at_once(devices):
    a, b = devices.a, devices.b
    (a.path / "dir").mkdir()
    eventually(lambda: (b.path / "dir").is_dir(), "dir on b")
    assert os.listdir(b.path / "dir") == []  # the kernel now caches this listing
    for i in range(5):
        (a.path / "dir" / f"n{i}").write_text(str(i))
    eventually(lambda: sorted(os.listdir(b.path / "dir")) == [f"n{i}" for i in range(5)], "new names in ls on b")


def test_open_file_on_b_stays_readable_after_a_deletes_it(devices):
    a, b = devices.a, devices.b
    data = os.urandom(3 << 20)
    (a.path / "shared.bin").write_bytes(data)
    a.sync()
    eventually(lambda: (b.path / "shared.bin").exists(), "file on b")
    with open(b.path / "shared.bin", "rb") as f:
        head = f.read(1000)
        (a.path / "shared.bin").unlink()
        eventually(lambda: not (b.path / "shared.bin").exists(), "delete on b")
        rest = f.read()
    assert head + rest == data


def test_propagation_is_fast(devices):
    """The issue's target, loosely: a small file closed on a is readable on b within
    about a second (scripts/bench_sync.py measures the distribution)."""
    a, b = devices.a, devices.b
    (a.path / "warmup").write_text("w")
    eventually(lambda: (b.path / "warmup").exists(), "warm-up file")
    delays = []
    for i in range(5):
        start = time.monotonic()
        (a.path / f"quick{i}.txt").write_text(f"quick {i}")
        eventually(lambda: read(b.path / f"quick{i}.txt") == f"quick {i}".encode(), f"quick{i} on b")
        delays.append(time.monotonic() - start)
    assert sorted(delays)[2] < 3.0, delays


def test_two_device_scenario(devices, tmp_path):
    """The issue's done-when: a 2,000-file tree and a 200 MiB file copied into a arrive
    byte-identical on b; an edit on b shows up on a by itself."""
    import filecmp

    from tests.fuse.test_roundtrip import make_tree, tree_equal

    a, b = devices.a, devices.b
    src = tmp_path / "src"
    make_tree(src, 2000)
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        for _ in range(200):
            f.write(os.urandom(1 << 20))
    subprocess.run(["cp", "-a", str(src), str(a.path / "tree")], check=True, timeout=600)
    subprocess.run(["cp", str(big), str(a.path / "big.bin")], check=True, timeout=600)
    a.sync(timeout=600)
    eventually(lambda: (b.path / "big.bin").exists() and os.stat(b.path / "big.bin").st_size == 200 << 20,
               "big file on b", timeout=60)
    tree_equal(src, b.path / "tree")
    assert filecmp.cmp(big, b.path / "big.bin", shallow=False)

    (b.path / "tree" / "d1" / "e1" / "f1.txt").write_text("edited on b\n")
    eventually(lambda: read(a.path / "tree" / "d1" / "e1" / "f1.txt") == b"edited on b\n", "b's edit on a")


def test_a_mount_started_while_changes_wait_logs_no_errors(sync_server, tmp_path):
    """b is killed; a makes a burst of files in a directory b knows; b is mounted again
    and its follower applies them at once, maybe before the kernel's INIT reached the
    mount: the invalidations it asks for then must not be sent (the kernel answers
    ENOSYS, and pyfuse3 logged an ERROR with a traceback for each: found by the soak,
    seed 40063). Several rounds, as the race is the start's."""
    token = sync_server.add_user(f"u-{uuid.uuid4().hex[:10]}")
    with cloudfs_mount(sync_server, token, tmp_path / "a", tmp_path / "cache-a", device="dev-a") as a:
        (a.path / "d").mkdir()
        a.sync(timeout=60)
        for round_no in range(4):
            b = spawn_mount(sync_server, token, tmp_path / "b", tmp_path / "cache-b", device="dev-b")
            try:
                b.sync(timeout=60)
                os.listdir(b.path / "d")  # the kernel knows d's inode
                b.proc.send_signal(signal.SIGKILL)
                b.proc.wait(10)
                for i in range(40):
                    (a.path / "d" / f"r{round_no}-{i}.txt").write_text(f"{round_no}.{i}\n")
                a.sync(timeout=60)
            finally:
                unmount(b.path, b.proc)
        with cloudfs_mount(sync_server, token, tmp_path / "b", tmp_path / "cache-b", device="dev-b") as b:
            b.sync(timeout=60)
            assert len(os.listdir(b.path / "d")) == 160
            errors = [ln for ln in b.log().splitlines() if " ERROR " in ln or "Traceback" in ln]
            assert not errors, "\n".join(errors[:10])
