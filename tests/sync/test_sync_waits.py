"""`cloudfs sync` returns only once every remote change known when it was asked is in
the tree, also one whose pull was put off (deferred) while a local program held the
file open for writing and is under way at that moment: sync returned while that pull
was in flight, and the file showed its old bytes for a moment after (found by the soak,
seed 90140: right after two rounds of syncs one device lacked a file the others had,
and had it a moment later)."""

from __future__ import annotations

import os
import threading
import time

from tests.harness import MountProcess
from tests.proxy import Proxy
from tests.sync.conftest import a_behind_a_proxy, hold_the_change_feed, wait_for_cursor, wait_until_held


def sync_waits_for_the_release(mount: MountProcess, proxy: Proxy, hold_s: float, what: str) -> None:
    """`cloudfs sync` on `mount`, with what `proxy` holds let go `hold_s` seconds later:
    the sync must not return before that (`what`: what it waits for)."""
    returned: list[float] = []
    syncing = threading.Thread(target=lambda: (mount.sync(timeout=60), returned.append(time.monotonic())))
    syncing.start()
    time.sleep(hold_s)
    released = time.monotonic()
    proxy.release()
    syncing.join(90)
    assert returned, f"cloudfs sync on {mount.device} did not finish"
    assert returned[0] >= released, f"cloudfs sync returned {released - returned[0]:.1f} s before {what}"


def test_sync_waits_for_a_deferred_pull_under_way(sync_server, tmp_path):
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        (a.path / "x.txt").write_text("v1\n")
        a.sync(timeout=60)
        b.sync(timeout=60)
        fd = os.open(a.path / "x.txt", os.O_WRONLY)  # open for writing: a change from b waits
        try:
            (b.path / "x.txt").write_text("v2 from b\n")
            b.sync(timeout=60)
            wait_for_cursor(a, b.status()["cursor"])
            assert (a.path / "x.txt").read_text() == "v1\n", "b's change should wait while x.txt is open here"
            proxy.hold(rb"^GET /nodes/\d+ ")  # the pull of x.txt, once it is closed
        finally:
            os.close(fd)
        wait_until_held(proxy, "the pull of x.txt")
        sync_waits_for_the_release(a, proxy, 3, "the pull ended")
        assert (a.path / "x.txt").read_text() == "v2 from b\n"


def test_sync_right_after_a_first_mount_waits_for_the_change_feed(sync_server, tmp_path):
    """A first mount (empty cache) takes the tree from a snapshot and then long-polls the
    change feed, which stays silent while nothing happens. Until that first long-poll
    answered, the mount did not know which namespaces it follows, and `cloudfs sync`
    waited for none of them: it returned at once without the change another device had
    just made (seen as a flaky test: a's listing right after a sync lacked b's file)."""
    with a_behind_a_proxy(sync_server, tmp_path) as (d, proxy):
        a, b = d.a, d.b
        hold_the_change_feed(proxy)  # a's first long-poll, silent so far, and what follows it
        (b.path / "x.txt").write_text("from b\n")
        b.sync(timeout=60)
        sync_waits_for_the_release(a, proxy, 2, "the change feed answered")
        assert (a.path / "x.txt").read_text() == "from b\n"
