"""`Cache.queued_delete`: the follower asks it for every change of a node the mirror
lacks, the syncer for every name the server refuses. It answers from an index kept beside
the outbox, so it must agree with a walk of the outbox whatever happened to it: entries
applied, dropped by the user, queued in a transaction that failed, a cache opened again."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudfs.backend.local.cache import Cache


def walked(cache: Cache, node_id: int) -> tuple[int, dict] | None:
    """What the follower did before: the first delete of `node_id` in a walk of the outbox."""
    for seq, op in cache.outbox_items(limit=1 << 62):
        if op["op"] == "delete" and op["node_id"] == node_id:
            return seq, op
    return None


def delete(node_id: int) -> dict:
    return {"op": "delete", "ino": node_id + 100, "node_id": node_id, "rev": 1}


class Failed(Exception):
    pass


steps = st.lists(st.one_of(
    st.tuples(st.just("delete"), st.integers(1, 6)),
    st.tuples(st.just("upload"), st.integers(1, 6)),
    st.tuples(st.just("failed delete"), st.integers(1, 6)),
    st.tuples(st.just("applied"), st.integers(0, 20)),
    st.tuples(st.just("reopen"), st.just(0)),
    st.tuples(st.just("ask"), st.integers(1, 6)),
), max_size=40)


@settings(max_examples=60, deadline=None)
@given(steps=steps)
def test_it_agrees_with_a_walk_of_the_outbox(tmp_path_factory: pytest.TempPathFactory, steps: list) -> None:
    path = tmp_path_factory.mktemp("cache")
    cache = Cache(path)
    try:
        for step, arg in steps:
            if step == "delete":
                with cache.write() as txn:
                    cache.enqueue(txn, delete(arg))
            elif step == "upload":
                with cache.write() as txn:
                    cache.enqueue(txn, {"op": "upload", "ino": arg})
            elif step == "failed delete":  # its seq is given out again by the next entry
                with pytest.raises(Failed), cache.write() as txn:
                    cache.enqueue(txn, delete(arg))
                    raise Failed
            elif step == "applied":
                queued = cache.outbox_items(limit=1 << 62)
                if queued:
                    cache.dequeue(queued[arg % len(queued)][0])
            elif step == "reopen":
                cache.close()
                cache = Cache(path)
            else:  # asked now and then: a failed seq given out again may be asked about only later
                assert cache.queued_delete(arg) == walked(cache, arg), steps
        for node_id in range(1, 7):
            assert cache.queued_delete(node_id) == walked(cache, node_id), steps
    finally:
        cache.close()


def test_a_pass_costs_nothing_like_the_held_deletes(tmp_path: Path) -> None:
    """30,000 held deletes (a mass delete the guard holds): asking about 1,000 other nodes
    (another device's new files arriving) reads none of them."""
    cache = Cache(tmp_path)
    with cache.write() as txn:
        for node_id in range(1, 30_001):
            cache.enqueue(txn, delete(node_id))
    started = time.process_time()
    assert all(cache.queued_delete(node_id) is None for node_id in range(50_000, 51_000))
    index_s = time.process_time() - started
    started = time.process_time()
    assert walked(cache, 50_000) is None  # one walk, for the scale
    walk_s = time.process_time() - started
    assert index_s < walk_s, f"1,000 questions took {index_s:.3f} s, one walk {walk_s:.3f} s"
    assert cache.queued_delete(29_999) == walked(cache, 29_999)
    cache.dequeue(*(seq for seq, _ in cache.outbox_items(limit=1 << 62)))
    assert cache.queued_delete(29_999) is None
    assert not cache._deletes, "the index keeps only what is queued (memory)"
    cache.close()
