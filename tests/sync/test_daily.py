"""A drive people keep mounted every day (issue 14), on real mounts: files kept offline
(`cloudfs pin`), what each file is doing (`cloudfs ls`), and ignore rules."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import httpx

from tests.harness import ServerProcess, cloudfs_mount, cloudfs_server, wait_until
from tests.sync.conftest import two_devices


def eventually(check, what: str, timeout: float = 30):  # noqa: ANN001
    return wait_until(check, timeout=timeout, what=what, interval=0.1)


def ls(m, path: Path) -> dict[str, dict]:  # noqa: ANN001
    done = m.cli("ls", str(path), "--json", timeout=30)
    assert done.returncode == 0, done.stderr
    return {e["name"]: e for e in json.loads(done.stdout)}


def state(m, path: Path) -> str:  # noqa: ANN001
    return ls(m, path)[path.name]["state"] if path != m.path else "synced"


def pin(m, *paths: Path, wait: bool = True) -> None:  # noqa: ANN001
    done = m.cli("pin", *map(str, paths), *(["--wait"] if wait else []), timeout=120)
    assert done.returncode == 0, done.stderr + m.log()[-3000:]


def tree(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file below `root`, read in full."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def test_a_pinned_tree_is_read_whole_with_the_server_stopped_and_survives_a_remount(restartable, tmp_path):
    token = restartable.server.add_user("owner")
    with cloudfs_mount(restartable.server, token, tmp_path / "a", tmp_path / "cache-a", device="dev-a") as a:
        for d in ("docs", "docs/deep", "docs/deep/er"):
            (a.path / d).mkdir()
        for i, d in enumerate(("docs", "docs/deep", "docs/deep/er", "docs", "docs/deep")):
            (a.path / d / f"f{i}.bin").write_bytes(os.urandom(300_000 * (i + 1)))
        (a.path / "docs" / "small.txt").write_text("small\n")
        (a.path / "elsewhere.bin").write_bytes(os.urandom(500_000))
        a.sync()
        written = tree(a.path / "docs")
    with cloudfs_mount(restartable.server, token, tmp_path / "b", tmp_path / "cache-b", device="dev-b") as b:
        assert state(b, b.path / "docs" / "f0.bin") == "online-only"
        pin(b, b.path / "docs")
        entries = ls(b, b.path / "docs")
        assert {e["state"] for e in entries.values()} == {"pinned"}, entries
        assert state(b, b.path / "elsewhere.bin") == "online-only"
        status = b.status()
        assert status["pins"] == ["/docs"] and status["pinned_missing_bytes"] == 0
        assert status["pinned_bytes"] == sum(300_000 * (i + 1) for i in range(5)) + len("small\n")
        restartable.stop()
        assert tree(b.path / "docs") == written  # every pinned byte, the server stopped
    with cloudfs_mount(restartable.server, token, tmp_path / "b", tmp_path / "cache-b", device="dev-b") as b:
        assert b.status()["pins"] == ["/docs"]  # kept in the cache, the server still stopped
        assert tree(b.path / "docs") == written
        assert state(b, b.path / "docs" / "deep" / "f1.bin") == "pinned"
    assert "Traceback" not in b.log()


def test_a_file_added_to_a_pinned_directory_elsewhere_is_fetched_without_being_opened(devices):
    a, b = devices.a, devices.b
    (a.path / "shared").mkdir()
    (a.path / "shared" / "old.bin").write_bytes(os.urandom(200_000))
    a.sync()
    b.sync()
    pin(b, b.path / "shared")
    downloaded = b.status()["downloaded_bytes"]
    new = os.urandom(1_500_000)
    (a.path / "shared" / "new.bin").write_bytes(new)
    (a.path / "shared" / "old.bin").write_bytes(b"changed elsewhere " * 1000)
    a.sync()
    eventually(lambda: (b.path / "shared" / "new.bin").exists(), "new.bin on b")
    eventually(lambda: state(b, b.path / "shared" / "new.bin") == "pinned", "new.bin fetched on b")
    eventually(lambda: state(b, b.path / "shared" / "old.bin") == "pinned"
               and ls(b, b.path / "shared")["old.bin"]["size"] == 18_000, "the new old.bin fetched on b")
    assert b.status()["downloaded_bytes"] >= downloaded + len(new)  # fetched, not opened
    assert (b.path / "shared" / "new.bin").read_bytes() == new


def test_unpinned_files_can_be_evicted_again_pinned_ones_never(sync_server: ServerProcess, tmp_path):
    token = sync_server.add_user(f"u-{uuid.uuid4().hex[:10]}")
    with cloudfs_mount(sync_server, token, tmp_path / "a", tmp_path / "cache-a", device="dev-a") as a:
        for name in ("kept", "o1", "o2", "o3", "o4", "o5", "o6"):
            (a.path / f"{name}.bin").write_bytes(os.urandom(2_000_000))
        a.sync()
    with cloudfs_mount(sync_server, token, tmp_path / "b", tmp_path / "cache-b", device="dev-b",
                       extra_args=["--cache-size", "5M"]) as b:
        pin(b, b.path / "kept.bin")
        for name in ("o1", "o2", "o3"):  # each read once: the kernel's page cache answers a second read
            (b.path / f"{name}.bin").read_bytes()
        assert state(b, b.path / "kept.bin") == "pinned"
        assert b.status()["cache_bytes"] <= 5 << 20
        done = b.cli("unpin", str(b.path / "kept.bin"))
        assert done.returncode == 0, done.stderr
        assert state(b, b.path / "kept.bin") == "cached"
        for name in ("o4", "o5", "o6"):
            (b.path / f"{name}.bin").read_bytes()
        assert state(b, b.path / "kept.bin") in ("online-only", "partly-cached")
        assert b.status()["pins"] == []


def test_pinning_more_than_the_cache_holds_pins_nothing(sync_server: ServerProcess, tmp_path):
    token = sync_server.add_user(f"u-{uuid.uuid4().hex[:10]}")
    with cloudfs_mount(sync_server, token, tmp_path / "a", tmp_path / "cache-a",
                       extra_args=["--cache-size", "3M"]) as a:
        (a.path / "small.bin").write_bytes(os.urandom(100_000))
        (a.path / "big").mkdir()
        for i in range(2):
            (a.path / "big" / f"{i}.bin").write_bytes(os.urandom(2_000_000))
        a.sync()
        done = a.cli("pin", str(a.path / "small.bin"), str(a.path / "big"))
        assert done.returncode == 1 and done.stdout == ""
        assert "the pinned files would take 4100000 bytes" in done.stderr and "--cache-size" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        assert a.status()["pins"] == []  # not even small.bin
        assert state(a, a.path / "small.bin") != "pinned"


def resolves(server: ServerProcess, token: str, path: str) -> bool:
    answer = httpx.get(server.url + "/resolve", params={"path": path}, headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code in (200, 404), answer.text
    return answer.status_code == 200


def test_ignore_rules_keep_matching_files_on_this_device(sync_server: ServerProcess, tmp_path):
    token = sync_server.add_user(f"u-{uuid.uuid4().hex[:10]}")
    with two_devices(sync_server, token, tmp_path) as d:
        a, b = d.a, d.b
        # The rules first: they decide for what the server has not seen yet, so a directory
        # made before them may be sent before they exist (as with git, once sent it syncs).
        (a.path / "sub").mkdir()
        (a.path / ".cloudfsignore").write_text("# build output\n*.log\n[z-a]\nbuild/\n")
        (a.path / "sub" / ".cloudfsignore").write_text("!keep.log\nsecret/\n")
        (a.path / "sub" / "secret").mkdir()
        kept_here = ["a.log", "build/out.o", "sub/x.log", "sub/secret/y.txt", ".DS_Store", "notes.txt.swp"]
        synced = ["normal.txt", "sub/keep.log", "sub/n.txt", ".cloudfsignore", "sub/.cloudfsignore"]
        (a.path / "build").mkdir()
        for rel in kept_here + synced[:3]:
            (a.path / rel).write_text(f"{rel}\n")
        a.sync()
        b.sync()
        for rel in synced:
            eventually(lambda: (b.path / rel).exists(), f"{rel} on b")
            assert resolves(sync_server, token, "/" + rel)
        assert (b.path / "sub" / "keep.log").read_text() == "sub/keep.log\n"
        for rel in kept_here + ["build", "sub/secret"]:
            assert not (b.path / rel).exists(), rel
            assert not resolves(sync_server, token, "/" + rel), rel
            assert (a.path / rel).exists()
        assert (a.path / "sub" / "secret" / "y.txt").read_text() == "sub/secret/y.txt\n"  # normal here
        status = a.status()
        assert status["ignored_files"] == len(kept_here) and status["pending_files"] == 0, status
        assert status["pending_bytes"] == 0
        assert any("line 3" in p and "[z-a]" in p for p in status["ignore_problems"]), status
        assert any("[z-a]" in p for p in b.status()["ignore_problems"])  # read from the synced file
        assert ls(a, a.path)["a.log"]["state"] == "ignored"
        assert ls(a, a.path / "sub")["keep.log"]["state"] == "cached"
        # The defaults can be overridden: a negation lets swap files through.
        (a.path / ".cloudfsignore").write_text("*.log\nbuild/\n!*.swp\n")
        (a.path / "again.swp").write_text("now synced\n")
        # A file renamed out of a rule's reach is sent; one a rule stops matching, at the next sync.
        (a.path / "a.log").rename(a.path / "a-renamed.txt")
        a.sync()
        eventually(lambda: (b.path / "again.swp").exists(), "again.swp on b")
        assert b.status()["ignore_problems"] == []
        eventually(lambda: (b.path / "notes.txt.swp").exists(), "notes.txt.swp, no longer ignored, on b")
        eventually(lambda: (b.path / "a-renamed.txt").exists(), "a.log renamed to a-renamed.txt on b")
        assert (b.path / "a-renamed.txt").read_text() == "a.log\n"
        assert a.status()["ignored_files"] == len(kept_here) - 2  # a.log renamed, notes.txt.swp sent


def test_pending_bytes_fall_part_way_through_a_1_gib_upload(tmp_path):
    """The issue's own check: a 1 GiB file, written and closed on a real mount against a
    server of its own (the 2 GiB of store and cache go with the test), reports its pending
    bytes falling on the way to zero, never rising, with the upload as a transfer."""
    from cloudfs.backend.daily import control
    size = 1 << 30
    try:
        with cloudfs_server(tmp_path / "srv") as srv, \
                cloudfs_mount(srv, srv.add_user("big"), tmp_path / "a", tmp_path / "cache-a",
                              extra_args=["--cache-size", "1400M"]) as a:
            with open(a.path / "big.bin", "wb") as f:
                for _ in range(size >> 20):
                    f.write(os.urandom(1 << 20))
            seen, ups = [], []
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                progress = control.request(a.path, {"command": "progress"}, timeout=30)
                seen.append(progress["pending_bytes"])
                up = [t for t in progress["transfers"] if t["direction"] == "up"]
                ups += up
                if progress["pending_bytes"] == 0 and not up:
                    break
                time.sleep(0.2)
            assert seen[-1] == 0, seen
            between = sorted({p for p in seen if 0 < p < size * 0.9}, reverse=True)
            assert len(between) >= 3, f"pending bytes did not fall part way through: {seen}"
            assert seen == sorted(seen, reverse=True), seen
            assert ups and all(t["path"] == "/big.bin" and t["total_bytes"] == size for t in ups), ups[:3]
            assert a.status()["pending_files"] == 0
    finally:
        for scratch in ("srv", "cache-a"):
            shutil.rmtree(tmp_path / scratch, ignore_errors=True)


def test_pending_bytes_fall_chunk_by_chunk_while_a_file_uploads(sync_server: ServerProcess, tmp_path, monkeypatch):
    """Behind a slow link (4 MB/s through the proxy), a 16 MiB file of 1 MiB chunks
    takes seconds to upload: the mount must report its pending bytes falling on the
    way (before, they dropped only at the commit), the transfer with a speed and time
    left, and `ls` the bytes sent so far. Asked over the control socket, as the CLI
    does, to poll often."""
    from cloudfs.backend.daily import control
    from tests.proxy import Faults, Proxy

    monkeypatch.setenv("CLOUDFS_CHUNK_AVG_MIB", "1")
    token = sync_server.add_user(f"u-{uuid.uuid4().hex[:10]}")
    proxy = Proxy(int(sync_server.url.rsplit(":", 1)[1]), Faults(rate=4e6))
    proxied = proxy.front(sync_server)
    size = 16 << 20
    try:
        with cloudfs_mount(proxied, token, tmp_path / "a", tmp_path / "cache-a") as a:
            (a.path / "big.bin").write_bytes(os.urandom(size))
            seen, transfers, sent = [], [], []
            for _ in range(3000):
                progress = control.request(a.path, {"command": "progress"}, timeout=10)
                seen.append(progress["pending_bytes"])
                transfers += progress["transfers"]
                entries = control.request(a.path, {"command": "ls", "path": "/"}, timeout=10)["entries"]
                sent.append(next(e for e in entries if e["name"] == "big.bin").get("uploaded_bytes", 0))
                if progress["pending_bytes"] == 0:
                    break
                time.sleep(0.05)
            assert seen[-1] == 0
            between = sorted({p for p in seen if 0 < p < size * 0.9}, reverse=True)
            assert len(between) >= 3, f"pending bytes did not fall chunk by chunk: {seen}"
            assert seen == sorted(seen, reverse=True), seen  # only ever falling
            up = [t for t in transfers if t["direction"] == "up" and t["path"] == "/big.bin"]
            assert up and up[0]["total_bytes"] == size
            assert any(t["speed_bps"] > 0 and t["eta_s"] is not None and 0 < t["done_bytes"] < size for t in up), up
            assert any(0 < s < size for s in sent), sent
            a.sync(timeout=60)  # every byte is sent; the commit may still be on its way
            assert a.status()["pending_files"] == 0 and ls(a, a.path)["big.bin"]["state"] == "cached"
    finally:
        proxy.close()


def test_pinned_files_download_chunk_by_chunk_as_a_transfer(sync_server: ServerProcess, tmp_path, monkeypatch):
    """Downloads of pinned files count as progress too: behind a 2 MB/s link, the bytes
    still to fetch fall chunk by chunk (not per batch of chunks) and `status` shows the
    download with a speed and the time left."""
    from cloudfs.backend.daily import control
    from tests.proxy import Faults, Proxy

    monkeypatch.setenv("CLOUDFS_CHUNK_AVG_MIB", "1")
    token = sync_server.add_user(f"u-{uuid.uuid4().hex[:10]}")
    size = 12 << 20
    with cloudfs_mount(sync_server, token, tmp_path / "a", tmp_path / "cache-a") as a:
        (a.path / "big.bin").write_bytes(os.urandom(size))
        a.sync()
    proxy = Proxy(int(sync_server.url.rsplit(":", 1)[1]), Faults(rate=2e6))  # 6 s, polled under any load
    proxied = proxy.front(sync_server)
    try:
        with cloudfs_mount(proxied, token, tmp_path / "b", tmp_path / "cache-b", device="dev-b") as b:
            pin(b, b.path / "big.bin", wait=False)
            seen, downs, said = [], [], []

            def told(line: str) -> bool:
                return re.search(rf"of {size} bytes at [1-9]\d* bytes/s, \d+s left", line) is not None

            for _ in range(3000):
                progress = control.request(b.path, {"command": "progress"}, timeout=10)
                seen.append(progress["pinned_missing_bytes"])
                downs += [t for t in progress["transfers"] if t["direction"] == "down"]
                if downs and not any(map(told, said)) and len(seen) % 10 == 0 and len(said) < 12:
                    said += [line for line in b.cli("status", str(b.path), timeout=30).stdout.splitlines()
                             if "downloading pinned files" in line]  # what a person reads
                if downs and progress["pinned_missing_bytes"] == 0:
                    break
                time.sleep(0.05)
            assert seen[-1] == 0
            between = sorted({p for p in seen if 0 < p < size * 0.9}, reverse=True)
            assert len(between) >= 3, f"the bytes still to fetch did not fall chunk by chunk: {seen}"
            assert seen[seen.index(max(seen)):] == sorted(seen[seen.index(max(seen)):], reverse=True), seen
            assert any(t["speed_bps"] > 0 and t["eta_s"] is not None and 0 < t["done_bytes"] < size
                       for t in downs), downs
            assert downs[0]["total_bytes"] == size and downs[0]["path"] == "pinned files"
            assert any(map(told, said)), said
            assert state(b, b.path / "big.bin") == "pinned"
    finally:
        proxy.close()


def test_ls_names_conflicts_and_what_the_quota_holds_back(restartable, offline_devices, tmp_path):
    from tests.harness import CLOUDFS
    from tests.sync.test_conflicts import copy_name, offline_edit, settle

    d = offline_devices
    (d.a.path / "notes.txt").write_text("base\n")
    settle(d)
    offline_edit(restartable, d, lambda root: (root / "notes.txt").write_text("edited on a\n"),
                 lambda root: (root / "notes.txt").write_text("edited on b, which came second\n"))
    copy = next(name for name in os.listdir(d.a.path) if name.startswith("notes (conflicted copy"))
    assert copy in (copy_name("notes.txt", "dev-a"), copy_name("notes.txt", "dev-b"))
    for m in (d.a, d.b):
        entries = ls(m, m.path)
        assert entries[copy]["state"] == "conflict", entries
        assert entries["notes.txt"]["state"] in ("cached", "online-only"), entries
    # A quota of 1 MiB: a 2 MiB file is refused by the server and held back here.
    added = subprocess.run([*CLOUDFS, "user", "add", "small", "--data", str(restartable.server.data_dir),
                            "--quota", str(1 << 20)], capture_output=True, text=True, timeout=60, check=True)
    with cloudfs_mount(restartable.server, added.stdout.strip().splitlines()[-1], tmp_path / "q",
                       tmp_path / "cache-q", device="dev-q") as q:
        (q.path / "small.txt").write_text("fits\n")
        try:
            (q.path / "big.bin").write_bytes(os.urandom(2 << 20))
        except OSError as exc:  # the mount knows the quota already: EDQUOT at close, the bytes kept
            assert exc.errno == errno.EDQUOT, exc
        assert q.cli("sync", str(q.path), "--timeout", "20", timeout=60).returncode == 1
        entries = ls(q, q.path)
        assert entries["big.bin"]["state"] == "over-quota" and entries["small.txt"]["state"] == "cached", entries
        assert entries["big.bin"]["pending_bytes"] == 2 << 20


def test_hard_links_in_a_pinned_directory_are_pinned_under_their_own_names(devices):
    """A hard link into a pinned directory pins its file: fetched without being opened,
    and `ls` lists the link under its own name (it used to show the file's first name),
    pinned (it used to say cached: only the first name's directories were asked)."""
    a, b = devices.a, devices.b
    (a.path / "pinned").mkdir()
    (a.path / "other").mkdir()
    content = os.urandom(700_000)
    (a.path / "other" / "x.bin").write_bytes(content)
    a.sync()
    b.sync()
    pin(b, b.path / "pinned")
    assert state(b, b.path / "other" / "x.bin") == "online-only"
    os.link(a.path / "other" / "x.bin", a.path / "pinned" / "y.bin")
    entries = ls(a, a.path / "pinned")
    assert set(entries) == {"y.bin"} and entries["y.bin"]["size"] == len(content), entries
    a.sync()
    eventually(lambda: (b.path / "pinned" / "y.bin").exists(), "the link on b")
    eventually(lambda: ls(b, b.path / "pinned").get("y.bin", {}).get("state") == "pinned", "the link's file fetched")
    assert state(b, b.path / "other" / "x.bin") == "pinned"  # the same file, under its first name
    assert ls(b, b.path / "pinned" / "y.bin")["y.bin"]["state"] == "pinned"
    assert (b.path / "pinned" / "y.bin").read_bytes() == content
