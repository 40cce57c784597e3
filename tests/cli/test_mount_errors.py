"""`cloudfs mount`, `umount`, `status` and `sync` against real background mounts
(issue 19): what the mount process finds is printed by the command the user typed;
umount and status tell the truth about dead mounts, pending changes and a server
that is gone; a warm cache comes up offline and says so.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from pathlib import Path

from tests.cli.conftest import alive, cleanup_mount, mount_pid
from tests.harness import cloudfs_server, is_mounted, wait_until

FAILED = 1


def test_mount_refusals_found_by_the_mount_process_are_printed_by_mount(cli, server, tmp_path):
    alice, bob = (server.add_user(f"{who}-{uuid.uuid4().hex[:8]}") for who in ("alice", "bob"))
    a, b, cache = tmp_path / "a", tmp_path / "b", tmp_path / "cache"
    a.mkdir()
    b.mkdir()
    with cleanup_mount(a, cache), cleanup_mount(b, cache):
        done = cli.ok("mount", server.url, a, "--cache", cache, "--token", alice)
        assert done.stdout == done.stderr == ""
        assert json.loads(cli.ok("status", a, "--json").stdout)["online"] is True
        cli.fails("mount", server.url, a, "--token", alice, cause=[str(a), "already a cloudfs mount", "umount"],
                  code=FAILED)
        cli.fails("mount", server.url, b, "--cache", cache, "--token", alice,
                  cause=[str(cache), "in use by the mount on", str(a), "--cache"], code=FAILED)
        cli.ok("umount", a)
        assert not is_mounted(a)
        # Only the mount process opens the cache and knows whose it is: its refusal is relayed.
        cli.fails("mount", server.url, b, "--cache", cache, "--token", bob,
                  cause=[str(cache), "belongs to account", "alice-", "bob-", "--cache"], code=FAILED)
        assert not is_mounted(b)
        assert "belongs to account" in (cache / "mount.log").read_text()
        damaged = tmp_path / "damaged"
        (damaged / "cache.lmdb").mkdir(parents=True)
        (damaged / "cache.lmdb" / "data.mdb").write_bytes(os.urandom(64 << 10))
        cli.fails("mount", server.url, b, "--cache", damaged, "--token", bob,
                  cause=[str(damaged), "damaged or not a cloudfs cache", "another --cache"], code=FAILED)
        assert not is_mounted(b)


def test_a_full_quota_is_said_by_mount_umount_and_sync(cli, server, tmp_path):
    name = f"full-{uuid.uuid4().hex[:8]}"
    token = cli.ok("user", "add", name, "--data", server.data_dir, "--quota", "0").stdout.splitlines()[-1]
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    mnt.mkdir()
    with cleanup_mount(mnt, cache):
        done = cli.ok("mount", server.url, mnt, "--cache", cache, "--token", token)
        assert "at its quota" in done.stderr and name in done.stderr
        try:
            (mnt / "data.bin").write_bytes(os.urandom(64 << 10))
        except OSError:
            pass  # EDQUOT at close, once the mount has learnt the quota: the bytes are kept either way
        wait_until(lambda: json.loads(cli.ok("status", mnt, "--json").stdout)["over_quota_files"] == 1,
                   timeout=30, what="the upload refused for the quota")
        cli.fails("umount", mnt, cause=["1 file would go over the account's quota", "stays mounted", "--force"],
                  code=FAILED)
        assert is_mounted(mnt)
        cli.fails("sync", mnt, "--timeout", "3", cause=["over the account's quota"], code=FAILED)
        cli.ok("umount", "--force", mnt)
        assert not is_mounted(mnt)


def test_without_its_server_a_warm_mount_comes_up_offline_and_umount_says_what_waits(cli, tmp_path):
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    mnt.mkdir()
    with cleanup_mount(mnt, cache):
        with cloudfs_server(tmp_path / "server") as srv:
            url, token = srv.url, srv.add_user("owner")
            cli.ok("mount", url, mnt, "--cache", cache, "--token", token)
            (mnt / "before.txt").write_text("uploaded\n")
            cli.ok("sync", mnt)
            cli.ok("umount", mnt)
            assert not is_mounted(mnt)
        # The server is gone. A first mount cannot work; this device's cache can.
        fresh = tmp_path / "fresh"
        fresh.mkdir()
        cli.fails("mount", url, fresh, "--cache", tmp_path / "cold", "--token", token,
                  cause=[f"nothing answers at {url}", "first mount needs the server", str(tmp_path / "cold")],
                  code=FAILED)
        assert not is_mounted(fresh)
        done = cli.ok("mount", url, mnt, "--cache", cache, "--token", token)
        assert "offline" in done.stderr and url in done.stderr and "connection refused" in done.stderr
        assert (mnt / "before.txt").read_text() == "uploaded\n"
        assert json.loads(cli.ok("status", mnt, "--json").stdout)["online"] is False
        (mnt / "later.txt").write_text("written offline\n")
        cli.fails("umount", mnt, cause=["1 file waits for upload", f"nothing answers at {url}", "stays mounted",
                                        f"cloudfs umount --force {mnt}"], code=FAILED)
        assert is_mounted(mnt) and (mnt / "later.txt").read_text() == "written offline\n"
        cli.fails("sync", mnt, "--timeout", "60", cause=["1 file waits for upload", url], code=FAILED)
        cli.fails("fsck", mnt, cause=[str(mnt), "fsck needs the server", f"nothing answers at {url}"], code=FAILED)
        # Back after more than the give-up time: the mount's own idea that it is offline is
        # stale until its next request, so a sync at once must ask the server, not give up.
        with cloudfs_server(tmp_path / "server", port=int(url.rsplit(":", 1)[1])):
            cli.ok("sync", mnt)
            assert json.loads(cli.ok("status", mnt, "--json").stdout)["pending_files"] == 0
            cli.ok("umount", mnt)
        assert not is_mounted(mnt)
        cli.fails("umount", "--force", mnt, cause=[str(mnt), "not a cloudfs mount"], code=FAILED)


def test_a_mount_whose_process_died(cli, server, tmp_path):
    token = server.add_user(f"crash-{uuid.uuid4().hex[:8]}")
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    mnt.mkdir()
    with cleanup_mount(mnt, cache):
        for clear in (["mount", server.url, mnt, "--cache", cache, "--token", token], ["umount", "--force", mnt]):
            cli.ok("mount", server.url, mnt, "--cache", cache, "--token", token)
            pid = mount_pid(cache)
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not alive(pid), timeout=10, what="the killed mount process")
            for verb in (["status", mnt], ["sync", mnt], ["umount", mnt]):
                cli.fails(*verb, cause=[str(mnt), "lost its process", f"cloudfs umount --force {mnt}"], code=FAILED)
            cli.ok(*clear)  # mounting again clears the dead mount, as umount --force does
            if clear[0] == "mount":
                assert json.loads(cli.ok("status", mnt, "--json").stdout)["online"] is True
                cli.ok("umount", mnt)
            assert not is_mounted(mnt)


def test_umount_of_a_busy_mount_says_so(cli, server, tmp_path):
    token = server.add_user(f"busy-{uuid.uuid4().hex[:8]}")
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    mnt.mkdir()
    with cleanup_mount(mnt, cache):
        cli.ok("mount", server.url, mnt, "--cache", cache, "--token", token)
        with open(mnt / "open.txt", "w") as held:
            held.write("held open")
            cli.fails("umount", mnt, cause=[str(mnt), "busy", "fuser"], code=FAILED)
        cli.ok("umount", mnt)
        assert not is_mounted(mnt)


def test_status_names_its_server(cli, server, tmp_path):
    token = server.add_user(f"st-{uuid.uuid4().hex[:8]}")
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    mnt.mkdir()
    with cleanup_mount(mnt, cache):
        cli.ok("mount", server.url, mnt, "--cache", cache, "--token", token)
        status = json.loads(cli.ok("status", Path(os.path.relpath(mnt)), "--json").stdout)
        assert status["server_url"] == server.url and status["mountpoint"] == str(mnt)
        cli.ok("umount", mnt)
