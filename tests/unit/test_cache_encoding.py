"""Inodes and outbox entries are written with orjson since 99f1fb7; a cache written before
(json.dumps: ASCII escapes, its own separators) reads back the same."""

from __future__ import annotations

import json
from pathlib import Path

from cloudfs.backend.local.cache import Cache, Inode, u64


def test_what_json_wrote_reads_back_the_same(tmp_path: Path) -> None:
    node = Inode(ino=7, parent=1, name="résumé ✓ 日本.txt", kind="file", mode=0o644, size=1 << 40,
                 mtime_ns=1_765_000_000_123_456_789, node_id=42, extra={"aliases": [9], "first_try": {"at": 1.5}},
                 xattrs={"user.note": "aGk="})
    op = {"op": "delete", "ino": 7, "node_id": 42, "rev": 3, "parent_node": 1, "name": "ñ", "t": 1765000000.25}
    cache = Cache(tmp_path)
    with cache.write() as txn:
        txn.put(u64(node.ino), json.dumps(node.__dict__).encode(), db=cache.inodes)
        txn.put(u64(cache.next_counter(txn, "next_outbox", 1)), json.dumps(op).encode(), db=cache.outbox)
    cache.close()

    cache = Cache(tmp_path)
    assert cache.get(7) == node
    assert cache.outbox_items() == [(1, op)]
    with cache.write() as txn:  # and what orjson writes now reads back too
        cache.put(txn, cache.get(7, txn))
        cache.enqueue(txn, op)
    cache.close()
    cache = Cache(tmp_path)
    assert cache.get(7) == node
    assert [o for _, o in cache.outbox_items()] == [op, op]
