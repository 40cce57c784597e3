"""A name the kernel still shows with a file's old version (bug 40, soak seed 820070).

b appended to y; a's follower put b's version under y as a new inode and told the kernel
to forget the name, which it does when pyfuse3's notify worker gets to it. a's `rm y` came
16 ms later, through the dentry the kernel still had: UNLINK carries the name alone, and
the mount removed b's version, which a had never shown, with a delete guarded by b's
revision: the server took it, and b's append was gone. The same for another file b
renamed over y: a's unlink took that file, and for a file b exchanged with y
(RENAME_EXCHANGE) the other file, which a still showed under z.

The kernel's side of that race cannot be timed from outside a real mount, so device a
here is the mount's session in this process (the real cache, follower, syncer, against
the real server), its kernel the test: it looks y up, lets the follower apply b's
version without forgetting anything, and unlinks the name as a stale dentry would. b
is a real mount.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Awaitable, Callable

import httpx
import pytest
import trio

from cloudfs.backend.local.cache import ROOT_INO, Inode
from cloudfs.backend.session import Session, SessionOptions, open_session
from cloudfs.fs.operations import Operations
from cloudfs.fs.pagecache import ReadAround
from tests.fuse.test_posix import RENAME_EXCHANGE, renameat2
from tests.harness import MountProcess, ServerProcess, cloudfs_mount


def run_trio(main: Callable[[], Awaitable[None]]) -> None:
    """trio.run on a thread of its own (a browser test on the same worker may leave an
    asyncio loop marked as running on this one)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(trio.run, main).result()


async def until(check: Callable[[], object], what: str, timeout: float = 20) -> None:
    deadline = trio.current_time() + timeout
    while not check():
        if trio.current_time() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        await trio.sleep(0.05)


def y_here(session: Session) -> Inode | None:
    ino = session.cache.lookup(ROOT_INO, "y")
    return session.cache.get(ino) if ino is not None else None


def changed(now: Inode | None, before: Inode) -> bool:
    """y holds another version than `before`. A rename over y is applied as the old
    y's removal and then the move, so for a moment there is no y: not changed yet."""
    return now is not None and (now.node_id, now.rev) != (before.node_id, before.rev)


def server_y(server: ServerProcess, token: str) -> bytes | None:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as api:
        found = api.get("/resolve", params={"path": "/y"})
        if found.status_code == 404:
            return None
        found.raise_for_status()
        return api.get(f"/files/{found.json()['node']['id']}/content").content


def options_of_a(server: ServerProcess, token: str, tmp_path: Path) -> SessionOptions:
    return SessionOptions(server_url=server.url, token=token, cache_dir=tmp_path / "cache-a",
                          cache_size=256 * 1024 * 1024, device="dev-a")


async def unlink_y_and_see_it_back(session: Session, ops: Operations, winner: bytes) -> None:
    """a's unlink of y through the kernel's stale dentry: refused by the server, and the
    file that won the name comes back under it."""
    await ops.unlink(ROOT_INO, b"y", None)
    with trio.fail_after(30):
        await session.sync()
    await until(lambda: y_here(session) is not None, "y back on a")
    assert await session.drive.read(y_here(session).ino, 0, 100) == winner


def assert_both_kept(server: ServerProcess, token: str, b: Path, winner: bytes, copy: bytes) -> None:
    assert server_y(server, token) == winner
    copies = [p for p in b.iterdir() if p.name != "y"]
    assert [p.read_bytes() for p in copies] == [copy], copies


def y_written_on(b: MountProcess, content: bytes) -> Callable[[], None]:
    def write() -> None:
        (b.path / "y").write_bytes(content)
        b.sync()
    return write


def append_to_y(root: Path) -> None:
    with open(root / "y", "ab") as f:
        f.write(b"two\n")


def rename_z_over_y(root: Path) -> None:
    os.rename(root / "z", root / "y")


def exchange_y_and_z(root: Path) -> None:
    renameat2(root / "z", root / "y", RENAME_EXCHANGE)


ELSEWHERE = {"appends to it": (append_to_y, b"one\ntwo\n"), "renames another file over it": (rename_z_over_y, b"zzz\n"),
             "exchanges it with another file": (exchange_y_and_z, b"zzz\n")}


@pytest.mark.parametrize("kernel", ["still shows the old file", "looked the name up again",
                                    "read the directory again"])
@pytest.mark.parametrize("elsewhere", list(ELSEWHERE))
def test_an_unlink_through_a_name_the_kernel_has_not_renewed_keeps_what_it_never_showed(
        sync_server: ServerProcess, tmp_path: Path, elsewhere: str, kernel: str) -> None:
    """b `elsewhere` y; a's follower puts that under y; a unlinks y, its kernel showing
    the old file or (renewed) what came. Only the file shown goes."""
    change, after = ELSEWHERE[elsewhere]
    token = sync_server.add_user(f"u-{uuid.uuid4().hex[:10]}")
    with cloudfs_mount(sync_server, token, tmp_path / "b", tmp_path / "cache-b", device="dev-b") as b:
        (b.path / "y").write_bytes(b"one\n")
        (b.path / "z").write_bytes(b"zzz\n")
        b.sync()
        options = options_of_a(sync_server, token, tmp_path)

        def change_on_b() -> None:
            change(b.path)
            b.sync()

        async def device_a() -> None:
            async with open_session(options) as session, trio.open_nursery() as nursery:
                await session.start(nursery)
                ops = Operations(session.drive, around=ReadAround(), on_init=lambda: None)
                await until(lambda: session.cache.lookup(ROOT_INO, "z") is not None and y_here(session), "y and z on a")
                old = (await ops.lookup(ROOT_INO, b"y")).st_ino  # the kernel's dentry
                old_node = y_here(session)
                await trio.to_thread.run_sync(change_on_b)
                await until(lambda: changed(y_here(session), old_node), "b's change on a")
                new = session.cache.lookup(ROOT_INO, "y")
                assert new != old  # the kernel's dentry is stale
                if kernel == "looked the name up again":
                    await ops.lookup(ROOT_INO, b"y")
                elif kernel == "read the directory again":  # readdirplus hands the kernel the new inode
                    session.drive.referenced(new, ROOT_INO, "y")
                if kernel == "still shows the old file":  # the delete is meant for what it showed
                    await unlink_y_and_see_it_back(session, ops, after)
                else:
                    await ops.unlink(ROOT_INO, b"y", None)
                    with trio.fail_after(30):
                        await session.sync()
                nursery.cancel_scope.cancel()

        run_trio(device_a)
        b.sync()
        if kernel == "still shows the old file":
            assert server_y(sync_server, token) == after
            assert (b.path / "y").read_bytes() == after
        else:  # the kernel showed b's change when a removed it: removed for good
            assert server_y(sync_server, token) is None
            deadline = time.monotonic() + 10
            while (b.path / "y").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not (b.path / "y").exists()


def test_an_unlink_of_a_file_made_here_whose_name_another_device_took_first_keeps_theirs(
        sync_server: ServerProcess, tmp_path: Path) -> None:
    """a made y (not sent yet) and b made y too, sent first: a's follower keeps a's as a
    conflicted copy and puts b's under y. a's unlink of y, through the kernel's dentry of
    its own file, must not take b's, which it never showed: refused, and b's comes back."""
    token = sync_server.add_user(f"u-{uuid.uuid4().hex[:10]}")
    with cloudfs_mount(sync_server, token, tmp_path / "b", tmp_path / "cache-b", device="dev-b") as b:
        b.sync()
        options = options_of_a(sync_server, token, tmp_path)

        async def device_a() -> None:
            async with open_session(options) as session, trio.open_nursery() as nursery:
                await nursery.start(session.follower.run)  # no syncer yet: a's y waits here
                ops = Operations(session.drive, around=ReadAround(), on_init=lambda: None)
                ctx = SimpleNamespace(uid=os.getuid(), gid=os.getgid(), umask=0o022)
                info, _ = await ops.create(ROOT_INO, b"y", 0o100644, os.O_WRONLY, ctx)  # the kernel's dentry
                await ops.write(info.fh, 0, b"mine\n")
                await ops.release(info.fh)
                await trio.to_thread.run_sync(y_written_on(b, b"theirs\n"))
                await until(lambda: y_here(session) is not None and y_here(session).node_id, "b's y under y on a")
                await nursery.start(session.syncer.run)
                await unlink_y_and_see_it_back(session, ops, b"theirs\n")
                nursery.cancel_scope.cancel()

        run_trio(device_a)
        b.sync()
        assert_both_kept(sync_server, token, b.path, b"theirs\n", b"mine\n")


def test_an_unlink_through_the_name_of_an_edit_that_lost_a_conflict_keeps_the_winner(
        sync_server: ServerProcess, tmp_path: Path) -> None:
    """a edited y while b's edit of it went first: a's syncer keeps a's as a conflicted
    copy and the follower brings b's under y. a's unlink of y through the kernel's dentry
    (a's own version) is meant for the revision a built on: refused, b's edit stays."""
    token = sync_server.add_user(f"u-{uuid.uuid4().hex[:10]}")
    with cloudfs_mount(sync_server, token, tmp_path / "b", tmp_path / "cache-b", device="dev-b") as b:
        (b.path / "y").write_bytes(b"v1\n")
        b.sync()
        options = options_of_a(sync_server, token, tmp_path)

        async def device_a() -> None:
            async with open_session(options) as session, trio.open_nursery() as nursery:
                await nursery.start(session.follower.run)  # no syncer yet: a's edit waits here
                ops = Operations(session.drive, around=ReadAround(), on_init=lambda: None)
                await until(lambda: y_here(session) is not None and y_here(session).rev == 1, "y on a")
                ino = (await ops.lookup(ROOT_INO, b"y")).st_ino  # the kernel's dentry
                info = await ops.open(ino, os.O_WRONLY | os.O_TRUNC, SimpleNamespace(uid=os.getuid(), gid=os.getgid()))
                await ops.write(info.fh, 0, b"a's edit\n")
                await ops.release(info.fh)
                await trio.to_thread.run_sync(y_written_on(b, b"b's edit\n"))
                await nursery.start(session.syncer.run)  # a's commit is refused: a conflicted copy
                await until(lambda: y_here(session) is not None and y_here(session).ino != ino
                            and y_here(session).rev == 2, "b's y under y on a")
                await unlink_y_and_see_it_back(session, ops, b"b's edit\n")
                nursery.cancel_scope.cancel()

        run_trio(device_a)
        b.sync()
        assert_both_kept(sync_server, token, b.path, b"b's edit\n", b"a's edit\n")
