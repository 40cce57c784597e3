"""The outbox's order under the mass-delete guard (backend/sync/outbox_order.py): what may
go while deletes are held is what a plain walk of the whole outbox says, pass after pass,
while that walk is no longer made: a held burst is read once, not again for every change
queued behind it."""

from __future__ import annotations

import collections
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudfs.backend.local.cache import ROOT_INO, Cache, Inode
from cloudfs.backend.sync.delete_guard import DeleteGuard
from cloudfs.backend.sync.outbox_order import Entry, OutboxOrder, due

DIRS = 3
FILES = 8


def a_drive(path: Path) -> Cache:
    """A root with DIRS directories and FILES files spread over them, all on the server."""
    cache = Cache(path)
    with cache.write() as txn:
        cache.put(txn, Inode(ino=ROOT_INO, parent=0, name="", kind="dir", mode=0o755), create=True)
        for i in range(DIRS):
            d = Inode(ino=cache.new_ino(txn), parent=ROOT_INO, name=f"d{i}", kind="dir", mode=0o755)
            cache.bind_node_id(txn, d, 100 + i)
            cache.put(txn, d, create=True)
            cache.place(txn, d)
        for i in range(FILES):
            f = Inode(ino=cache.new_ino(txn), parent=ROOT_INO + 1 + i % DIRS, name=f"f{i % 3}", kind="file", mode=0o644)
            if cache.record_at(f.parent, f.name, txn):
                f.name = f"g{i}"
            cache.bind_node_id(txn, f, 200 + i)
            cache.put(txn, f, create=True)
            cache.place(txn, f)
    return cache


def the_plain_walk(cache: Cache, items: list[Entry], cleared: int, guard: DeleteGuard) -> list[Entry]:
    """What `OutboxOrder.passable` answered before it kept its walk: every delete and
    every entry after the first delete read again on each pass."""
    first = next((i for i, (_, op) in enumerate(items) if op["op"] == "delete"), None)
    if first is None or items[first][0] <= cleared:
        return items
    queued = [(seq, op.get("t", 0.0)) for seq, op in cache.outbox_items(limit=10_000_000) if op["op"] == "delete"]
    judge = DeleteGuard(max_files=guard.max_files, confirmed=guard.confirmed, sent=collections.deque(guard.sent))
    if guard.due(items[first][1]) and judge.check(len(queued), cache.inode_count()):
        return items
    freed: set = set()
    out = []
    for seq, op in cache.outbox_items(limit=10_000_000, start=items[first][0]):
        if op["op"] == "delete" and seq > cleared:
            if "name" not in op:
                break
            freed.add((op.get("parent_node"), op["name"]))
            continue
        node = cache.get(op["ino"])
        parent = cache.get(node.parent) if node is not None else None
        if parent is not None and (parent.node_id, node.name) in freed:
            break
        out.append((seq, op))
    return items[:first] + due(out)


step = st.one_of(
    st.tuples(st.just("delete"), st.integers(0, FILES - 1)),
    st.tuples(st.just("delete"), st.integers(0, FILES - 1)),
    st.tuples(st.just("pass"), st.sets(st.integers(0, 12), max_size=6)),
    st.tuples(st.just("upload"), st.integers(0, FILES - 1)),
    st.tuples(st.just("move"), st.integers(0, FILES - 1), st.integers(0, DIRS - 1), st.sampled_from(["f0", "f1", "f2", "n"])),
    st.tuples(st.just("pass"), st.sets(st.integers(0, 40), max_size=6)),
    st.tuples(st.just("confirm")),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step, min_size=8, max_size=60))
def test_what_may_go_is_what_the_plain_walk_says(tmp_path_factory, steps) -> None:  # noqa: ANN001
    """Random deletes (held past 3), uploads, local moves onto the names deletes free,
    confirms, and passes of the run loop that apply some of what may go: every pass
    answers what the plain walk of the whole outbox answers."""
    cache = a_drive(tmp_path_factory.mktemp("cache"))
    order = OutboxOrder(cache)
    order.guard.max_files = 2
    settled = time.time() - 5
    for what, *args in steps:
        if what in ("delete", "upload", "move"):
            node = cache.get(ROOT_INO + 1 + DIRS + args[0])
            if not node.parent:
                continue  # removed already
        if what in ("delete", "upload"):
            with cache.write() as txn:
                if what == "delete":  # removed here, as rm does: its name is free
                    parent = cache.get(node.parent, txn)
                    cache.unlink(txn, node.parent, node.name)
                    node.parent = 0
                    cache.put(txn, node)
                    cache.enqueue(txn, {"op": "delete", "ino": node.ino, "node_id": node.node_id, "rev": 1,
                                        "parent_node": parent.node_id, "name": node.name, "t": settled})
                else:
                    cache.enqueue(txn, {"op": "upload", "ino": node.ino})
        elif what == "move":
            parent, name = ROOT_INO + 1 + args[1], args[2]
            with cache.write() as txn:
                if cache.record_at(parent, name, txn) is None:
                    cache.unlink(txn, node.parent, node.name)
                    node.parent, node.name = parent, name
                    cache.put(txn, node)
                    cache.place(txn, node)
                    cache.enqueue(txn, {"op": "move", "ino": node.ino})
        elif what == "confirm":
            order.guard.confirm()
        else:  # a pass of the run loop
            items = due(cache.outbox_items(limit=500))
            cleared = order._cleared_upto
            want = the_plain_walk(cache, items, cleared, order.guard)
            got = order.passable(items)
            assert got == want
            for i, (seq, op) in enumerate(got):
                if i in args[0]:
                    cache.dequeue(seq)  # applied; the others failed and stay queued
                    if op["op"] == "delete":
                        order.guard.record_sent(1)


def count_reads(cache: Cache) -> list[int]:
    """From now on, how many entries each read of `cache`'s outbox returned."""
    read: list[int] = []
    items_of = cache.outbox_items

    def counted(limit: int = 1000, *, start: int = 0) -> list[Entry]:
        out = items_of(limit, start=start)
        read.append(len(out))
        return out

    cache.outbox_items = counted  # type: ignore[method-assign]
    return read


def held_burst(tmp_path: Path) -> tuple[Cache, OutboxOrder]:
    """A drive with 3,000 deletes queued a while ago (an `rm -rf`: the guard will hold them)."""
    cache = a_drive(tmp_path / "cache")
    settled = time.time() - 5
    with cache.write() as txn:
        for i in range(3000):
            cache.enqueue(txn, {"op": "delete", "ino": 10_000 + i, "node_id": 10_000 + i, "rev": 1,
                                "parent_node": 100, "name": f"gone-{i}", "t": settled})
    return cache, OutboxOrder(cache)


def test_a_held_burst_is_read_once_not_for_every_change_after_it(tmp_path: Path) -> None:
    """3,000 held deletes, then a file saved after them, pass after pass: each pass reads
    the new entries only (before, two walks of the whole outbox per pass: 150 ms of the
    mount's CPU per saved file in scripts/bench.py's propagation row)."""
    cache, order = held_burst(tmp_path)
    assert order.passable(due(cache.outbox_items(limit=500))) == []
    assert order.guard.held == 3000

    items_of = cache.outbox_items
    read = count_reads(cache)
    f = cache.get(ROOT_INO + 1 + DIRS)
    for _ in range(5):
        with cache.write() as txn:
            seq = cache.enqueue(txn, {"op": "upload", "ino": f.ino})
        read.clear()
        got = order.passable(due(items_of(limit=500)))
        assert [s for s, _ in got] == [seq]
        assert sum(read) <= 2, f"a pass read {sum(read)} outbox entries"
        cache.dequeue(seq)
    assert order.guard.held == 3000


def test_a_long_queue_behind_a_held_burst_is_read_a_page_at_a_time(tmp_path: Path) -> None:
    """20,000 new files queued behind 3,000 held deletes (`cp -r` after a held `rm -rf`):
    each pass goes on where the last stopped, reading about what it lets through, not the
    whole rest of the queue (before: 20,000 entries decoded for every 500 let through)."""
    cache, order = held_burst(tmp_path)
    with cache.write() as txn:
        for i in range(20_000):
            cache.enqueue(txn, {"op": "upload", "ino": 50_000 + i})
    items_of = cache.outbox_items
    read = count_reads(cache)
    order.passable(due(items_of(limit=500)))  # the first pass reads the held burst
    assert order.guard.held == 3000
    let_through = 0
    for _ in range(10):
        read.clear()
        got = order.passable(due(items_of(limit=500)))
        assert len(got) == 500 and all(op["op"] == "upload" for _, op in got)
        assert sum(read) <= 2_000, f"a pass read {sum(read)} outbox entries to let 500 through"
        cache.dequeue(*(seq for seq, _ in got))
        let_through += len(got)
    assert let_through == 5_000


def test_a_held_delete_of_an_older_release_holds_everything_after_it(tmp_path: Path) -> None:
    """A delete queued by a release that did not note the name it freed: nothing after
    it can tell whether it needs that name, so everything after it waits, pass after pass."""
    cache = a_drive(tmp_path / "cache")
    order = OutboxOrder(cache)
    order.guard.max_files = 2
    f = cache.get(ROOT_INO + 1 + DIRS)
    with cache.write() as txn:
        before = cache.enqueue(txn, {"op": "upload", "ino": f.ino})
        for i in range(3):
            cache.enqueue(txn, {"op": "delete", "ino": 10_000 + i, "node_id": 10_000 + i, "rev": 1,
                                "parent_node": 100, "name": f"gone-{i}", "t": time.time() - 5})
        old = cache.enqueue(txn, {"op": "delete", "ino": 999, "node_id": 999, "rev": 1, "t": time.time() - 5})
        after = cache.enqueue(txn, {"op": "upload", "ino": f.ino})
    for _ in range(2):
        assert [seq for seq, _ in order.passable(due(cache.outbox_items(limit=500)))] == [before]
        assert order.stuck_at == old
    order.guard.confirm()
    assert [seq for seq, _ in order.passable(due(cache.outbox_items(limit=500)))][-1] == after


def test_an_entry_read_before_is_judged_again_by_what_was_queued_before_it(tmp_path: Path) -> None:
    """Held deletes free d0/f0; a file's upload queued after them passes and fails (stays
    queued); the file is then moved onto d0/f0: its upload now waits, with everything after
    it. Its upload queued between the held deletes, before the one that frees d0/f0, does
    not wait for it."""
    cache = a_drive(tmp_path / "cache")
    order = OutboxOrder(cache)
    order.guard.max_files = 1
    x, y, z = (cache.get(ROOT_INO + 1 + DIRS + i) for i in (1, 0, 3))  # d1/f1, d0/f0, d0/g3
    settled = time.time() - 5

    def queue(op: dict) -> int:
        with cache.write() as txn:
            return cache.enqueue(txn, op)

    def remove(node: Inode) -> int:
        with cache.write() as txn:
            cache.unlink(txn, node.parent, node.name)
            return cache.enqueue(txn, {"op": "delete", "ino": node.ino, "node_id": node.node_id, "rev": 1,
                                       "parent_node": cache.get(node.parent, txn).node_id, "name": node.name,
                                       "t": settled})

    def move(node: Inode, parent: int, name: str) -> int:
        with cache.write() as txn:
            cache.unlink(txn, node.parent, node.name)
            node.parent, node.name = parent, name
            cache.put(txn, node)
            cache.place(txn, node)
            return cache.enqueue(txn, {"op": "move", "ino": node.ino})

    def a_pass() -> list[int]:
        items = due(cache.outbox_items(limit=500))
        want = the_plain_walk(cache, items, order._cleared_upto, order.guard)
        got = order.passable(items)
        assert got == want
        return [seq for seq, _ in got]

    remove(z)
    early = queue({"op": "upload", "ino": x.ino})
    remove(y)  # frees d0/f0
    assert a_pass() == [early]
    upload = queue({"op": "upload", "ino": x.ino})
    assert a_pass() == [early, upload]  # neither applied: both stay queued
    moved = move(x, ROOT_INO + 1, "f0")
    assert a_pass() == [early]  # the early upload came before the delete: it may go
    assert order.stuck_at == upload
    cache.dequeue(early)
    assert a_pass() == []
    assert order.stuck_at == upload and moved > upload
