"""The device's LMDB cache: metadata mirror, dirty blocks, clean chunks, outbox.

One LMDB environment, several named databases, each owned by one concern:

    inodes     ino → Inode (JSON)            the local mirror of the tree
    dirents    parent ino + name → ino       lookups and sorted readdir; a hard link's
                                             extra name adds its alias record's ino (links.py)
    node_ids   server node id → ino          applying server answers and changes
    chunklists ino → base chunk list         the committed version a file overlays
    blocks32   ino + block_no → bytes        write-back data not yet committed (BLOCK_SIZE blocks)
    streams    ino → streamed prefix         chunks of a file being written, already in the store (prefix.py)
    settled    ino → bytes of its blocks     files whose blocks are their committed version's
                                             bytes, kept as its cached copy (`settle`)
    chunks     fingerprint → plain bytes     clean chunk cache (LRU, see chunkcache.py)
    outbox     seq → JSON op                 local changes the server has not seen, in order
    meta       key → value                   cursor, counters, identity
    pins       ino → b""                     files kept offline (opened and owned by pins.py)

Concurrency rules: every write transaction runs on the trio thread and never spans an
`await`, so each one is atomic with respect to every FUSE request and background task.
Worker threads only open read transactions. The environment is opened without fsync
on commit (a killed process loses nothing: committed pages are in the OS page cache);
`sync()` makes everything durable and is what fsync(2) on the mount calls.
"""

from __future__ import annotations

import contextlib
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import lmdb
import orjson

from ..errors import NotFoundError
from .lmdbmap import release_map_pages


class GoneError(NotFoundError):
    """An inode disappeared while someone was still working on it."""

ROOT_INO = 1
BLOCK_SIZE = 32 * 1024
"""Dirty data is kept in blocks of this size (128 KiB up to cache format 4). A write into a
block the file has not changed yet copies the block's base in first, and one into a
changed block rewrites the whole block in LMDB, so the block is what a random writer
pays per write: LMDB alone took 105 µs of CPU per 4 KiB write at 128 KiB, 41 at 32 KiB;
a 128 KiB sequential write costs the same either way (50 µs)."""
RELEASE_BYTES = 32 << 20
"""Bytes stepped over in the map between releases of its pages (`mapped`, lmdbmap.py)."""
_Q = struct.Struct(">Q")
_QQ = struct.Struct(">QQ")
_CHUNK = struct.Struct(">32sI")


def u64(n: int) -> bytes:
    return _Q.pack(n)


def from_u64(b: bytes) -> int:
    return _Q.unpack(b)[0]


@dataclass
class Inode:
    """One node of the local mirror.

    `srv_*` remember what the server last acknowledged, so the syncer can tell what
    to push. `base_len` is how much of the committed version still shows through
    (truncation hides the rest); `gen` bumps on every content change so the uploader
    can tell whether a file changed while it was being uploaded.
    """

    ino: int
    parent: int
    name: str
    kind: str  # file | dir | symlink | fifo | chr | blk | sock
    mode: int
    size: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    target: str = ""
    node_id: int = 0
    rev: int = 0
    base_len: int = 0
    dirty: bool = False
    gen: int = 0
    min_trunc: int = -1
    srv_parent: int = 0
    srv_name: str = ""
    srv_mode: int = 0
    srv_mtime_ns: int = 0
    extra: dict = field(default_factory=dict)
    uid: int = -1
    """-1 is the drive's owner: shown as the mounting user (the wire's convention)."""
    gid: int = -1
    rdev: int = 0
    atime_ns: int = 0
    """Moved by reads here (relatime), sent to the server only when set explicitly
    (`extra["atime_set"]`): reading on one device is not a change for all the others."""
    xattrs: dict = field(default_factory=dict)
    """name -> base64 value, as on the wire."""
    srv_uid: int = -1
    srv_gid: int = -1
    srv_xattrs: dict = field(default_factory=dict)

    @property
    def bound(self) -> bool:
        """Whether `node_id` is this node on the server: not before its create is answered
        (0), nor once the server has lost it (`Cache.detach`: a file keeps its old id, its
        unchanged bytes are read from that version, until it is created anew)."""
        return bool(self.node_id) and not self.extra.get("detached")

    def encode(self) -> bytes:
        return orjson.dumps(self.__dict__, option=orjson.OPT_NON_STR_KEYS)  # asdict() deep-copies

    @classmethod
    def decode(cls, raw: bytes) -> "Inode":
        return cls(**orjson.loads(raw))

    # The attributes a PATCH carries (wire.AttrRequest), local and as the server has them.
    _ATTRS = ("mode", "mtime_ns", "uid", "gid", "xattrs")

    def attrs_pending(self) -> dict:
        """Attributes changed here that the server has not acknowledged: the PATCH to send.
        An alias record (a hard link's extra name) has none: they are its inode's."""
        if self.kind == "link":
            return {}
        pending = {name: getattr(self, name) for name in self._ATTRS
                   if getattr(self, name) != getattr(self, "srv_" + name)}
        if self.extra.get("atime_set"):
            pending["atime_ns"] = self.atime_ns
        return pending

    def record_attrs(self, remote: Any, names: Iterable[str] = _ATTRS) -> None:
        """The server acknowledged `remote` (a wire.Node): remember its attributes, those
        `names` that our request set. The others may be another device's change, not yet
        applied here: recorded as the server's, the old value here looked like a change of
        ours and the next PATCH put it back over theirs (soak, seed 470199: a directory
        renamed here took away the xattr another device had just set on it)."""
        for name in set(self._ATTRS) & set(names):
            setattr(self, "srv_" + name, getattr(remote, name))
        if remote.atime_ns == self.atime_ns:
            self.extra.pop("atime_set", None)

    def adopt_attrs(self, remote: Any) -> None:
        """Take another device's attributes (a wire.Node) as ours and the server's."""
        for name in self._ATTRS:
            value = getattr(remote, name)
            setattr(self, name, dict(value) if name == "xattrs" else value)
            setattr(self, "srv_" + name, value)
        self.rdev = remote.rdev
        self.atime_ns = remote.atime_ns or remote.mtime_ns
        self.extra.pop("atime_set", None)


@dataclass(frozen=True)
class ChunkEntry:
    fingerprint: str
    length: int
    offset: int


def pack_chunklist(rev: int, chunks: list[tuple[str, int]]) -> bytes:
    return u64(rev) + b"".join(_CHUNK.pack(bytes.fromhex(fp), length) for fp, length in chunks)


def unpack_chunklist(raw: bytes) -> tuple[int, list[ChunkEntry]]:
    rev = from_u64(raw[:8])
    out, offset = [], 0
    for fp, length in _CHUNK.iter_unpack(raw[8:]):
        out.append(ChunkEntry(fp.hex(), length, offset))
        offset += length
    return rev, out


class Cache:
    """The LMDB environment and the metadata mirror's primitive operations."""

    def __init__(self, path: Path, *, map_size: int = 1 << 40) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        # readahead stays on: py-lmdb touches every page of a value it returns (so that
        # page faults happen without the GIL), and a 4 KiB read out of a 1 MiB cached
        # chunk then faulted 256 pages one by one (random 4 KiB reads of a 1 GiB file
        # whose cache was cold: 46 -> 9,300 per second with readahead).
        self.env = lmdb.open(str(path / "cache.lmdb"), map_size=map_size, max_dbs=16, subdir=True,
                             sync=False, metasync=False, writemap=False, readahead=True, max_readers=256)
        self.inodes = self.env.open_db(b"inodes")
        self.dirents = self.env.open_db(b"dirents")
        self.node_ids = self.env.open_db(b"node_ids")
        self.chunklists = self.env.open_db(b"chunklists")
        self.blocks = self.env.open_db(b"blocks32")  # cache_format 5: BLOCK_SIZE blocks
        self.chunks = self.env.open_db(b"chunk_pieces")  # cache_format 7: chunks in pieces (chunkcache.py)
        self.chunk_lengths = self.env.open_db(b"chunk_lengths")  # cache_format 7: each chunk's length
        self.outbox = self.env.open_db(b"outbox")
        self.meta = self.env.open_db(b"meta")
        self.streams = self.env.open_db(b"streams")
        self.settled_files = self.env.open_db(b"settled")  # cache_format 6
        self.settled: dict[int, int] = {}
        """Settled files (`settle`) and the bytes of their blocks, as LMDB has them."""
        self.settled_bytes = 0
        self._load_settled()
        self._memo: dict[int, tuple[Inode, int]] = {}
        """Decoded inodes, one object per inode, each with the `_aborts` count it was read at."""
        self._aborts = 0
        self._subdirs: dict[int, int] = {}
        """Directories in each directory, counted on demand and forgotten when an entry of
        that directory changes (link/unlink): a directory's st_nlink is 2 + this."""
        self.on_abort: list = []
        """Callables run when a write transaction fails: memos of other modules forget too."""
        self.unreleased_bytes = 0
        """Bytes read through the map by uploads since its pages were last given back (lmdbmap.py)."""
        self._deletes: dict[int, set[int]] = {}
        """The outbox seqs of the deletes queued for each node id (`queued_delete`)."""
        self._unlands: dict[tuple[int, str], set[int]] = {}
        """The outbox seqs of the unlands queued for each place (`unland_queued`)."""
        for seq, op in self.outbox_items(limit=1 << 62):
            self._index(seq, op)

    def close(self) -> None:
        self.env.sync(True)
        self.env.close()

    def sync(self) -> None:
        """Make every committed transaction durable (fsync)."""
        self.env.sync(True)

    @contextlib.contextmanager
    def write(self, *, buffers: bool = False) -> Iterator[lmdb.Transaction]:
        """A write transaction. If it fails, decoded inodes (which callers may have
        changed in place) are forgotten, so nothing ahead of LMDB is served later.
        With `buffers`, gets return memoryviews into the map (valid inside only)."""
        txn = self.env.begin(write=True, buffers=buffers)
        try:
            yield txn
        except BaseException:
            txn.abort()
            self._aborts += 1  # every decoded inode is read again from LMDB on its next get
            self._subdirs.clear()
            self._load_settled()
            for forget in self.on_abort:
                forget()
            raise
        txn.commit()

    def read(self, *, buffers: bool = False) -> lmdb.Transaction:
        return self.env.begin(buffers=buffers)

    # --- meta ---

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        with self.read() as txn:
            raw = txn.get(key.encode(), db=self.meta)
        return raw.decode() if raw is not None else default

    def set_meta(self, txn: lmdb.Transaction, key: str, value: str) -> None:
        txn.put(key.encode(), value.encode(), db=self.meta)

    def next_counter(self, txn: lmdb.Transaction, key: str, start: int) -> int:
        raw = txn.get(key.encode(), db=self.meta)
        value = int(bytes(raw)) if raw is not None else start
        txn.put(key.encode(), str(value + 1).encode(), db=self.meta)
        return value

    # --- inodes ---

    def get(self, ino: int, txn: lmdb.Transaction | None = None) -> Inode | None:
        """The inode, as committed, or as `txn` (a write transaction) has it so far.

        After a failed write transaction a decoded inode may be ahead of LMDB (callers
        change them in place before `put`): it is read again, into the same object. A
        fresh object instead was a second copy of the inode beside the one a task held
        across an await, and whichever was put last undid what the other stored."""
        known = self._memo.get(ino)
        if known is not None and known[1] == self._aborts:
            return known[0]
        if txn is not None:
            raw = txn.get(u64(ino), db=self.inodes)
        else:
            with self.read() as own:
                raw = own.get(u64(ino), db=self.inodes)
        if raw is None:
            self._memo.pop(ino, None)
            return None
        node = Inode.decode(raw)
        if known is not None:
            known[0].__dict__.update(node.__dict__)
            node = known[0]
        elif len(self._memo) > 200_000:
            self._memo.clear()
        self._memo[ino] = (node, self._aborts)
        return node

    def names_to(self, ino: int) -> list[str]:
        """The names leading from the root to `ino` (as far as its ancestors are linked)."""
        names: list[str] = []
        for _ in range(4096):
            node = self.get(ino)
            if node is None or node.ino == ROOT_INO or not node.parent:
                break
            names.append(node.name)
            ino = node.parent
        return names[::-1]

    def within(self, ino: int, top: int) -> bool:
        """`ino` is `top` or below it. A chain deeper than any tree may be (a cycle a bug
        made) counts as inside: callers refuse a move into it rather than loop."""
        for _ in range(4096):
            if ino == top:
                return True
            if ino in (ROOT_INO, 0):
                return False
            node = self.get(ino)
            if node is None:
                return False
            ino = node.parent
        return True

    def put(self, txn: lmdb.Transaction, node: Inode, *, create: bool = False) -> None:
        """Store `node`. Unless `create`, the inode must still exist: a task holding an
        Inode across an await must never bring back one that was deleted meanwhile."""
        key = u64(node.ino)
        if not create and txn.get(key, db=self.inodes) is None:
            self._memo.pop(node.ino, None)
            raise GoneError(f"inode {node.ino} ({node.name!r}) was removed meanwhile")
        txn.put(key, node.encode(), db=self.inodes)
        self._memo[node.ino] = (node, self._aborts)

    def drop(self, txn: lmdb.Transaction, node: Inode) -> None:
        """Remove an inode and everything keyed by it."""
        txn.delete(u64(node.ino), db=self.inodes)
        if node.node_id and txn.get(u64(node.node_id), db=self.node_ids) == u64(node.ino):
            txn.delete(u64(node.node_id), db=self.node_ids)  # unless the id moved on to a newer inode
        txn.delete(u64(node.ino), db=self.chunklists)
        txn.delete(u64(node.ino), db=self.streams)
        self.drop_blocks(txn, node.ino, from_block=0)
        self._memo.pop(node.ino, None)

    def new_ino(self, txn: lmdb.Transaction) -> int:
        return self.next_counter(txn, "next_ino", ROOT_INO + 1)

    def ino_for_node(self, node_id: int) -> int | None:
        with self.read() as txn:
            raw = txn.get(u64(node_id), db=self.node_ids)
        return from_u64(raw) if raw is not None else None

    def bind_node_id(self, txn: lmdb.Transaction, node: Inode, node_id: int) -> None:
        node.node_id = node_id
        node.extra.pop("first_try", None)  # syncer: a create whose answer may have been lost
        txn.put(u64(node_id), u64(node.ino), db=self.node_ids)

    def unbind_node_id(self, txn: lmdb.Transaction, node_id: int) -> None:
        txn.delete(u64(node_id), db=self.node_ids)

    def detach(self, txn: lmdb.Transaction, node: Inode, *, queue: bool) -> None:
        """The server no longer has `node`: forget its id so it is created anew (queued
        for the syncer when `queue`). A file keeps its node id and rev, which its
        unchanged bytes are read from until then."""
        if node.node_id and txn.get(u64(node.node_id), db=self.node_ids) == u64(node.ino):
            self.unbind_node_id(txn, node.node_id)  # unless the id moved on to a newer inode
        node.srv_parent, node.srv_name = 0, ""
        if node.kind == "file":
            node.extra["detached"] = True
            node.dirty = True
        else:
            node.node_id = 0
        if queue:
            self.enqueue(txn, {"op": "upload" if node.kind == "file" else "push", "ino": node.ino})
        self.put(txn, node)

    # --- directory entries ---

    @staticmethod
    def _dirent_key(parent: int, name: str) -> bytes:
        return u64(parent) + name.encode("utf-8", "surrogateescape")

    def _dirent(self, parent: int, name: str, txn: lmdb.Transaction | None) -> bytes | None:
        if txn is not None:
            return txn.get(self._dirent_key(parent, name), db=self.dirents)
        with self.read() as own:
            return own.get(self._dirent_key(parent, name), db=self.dirents)

    def lookup(self, parent: int, name: str, txn: lmdb.Transaction | None = None) -> int | None:
        """The inode a name stands for: what the kernel sees."""
        raw = self._dirent(parent, name, txn)
        return from_u64(raw[:8]) if raw is not None else None

    def record_at(self, parent: int, name: str, txn: lmdb.Transaction | None = None) -> int | None:
        """The record of a name: the inode itself, or the alias record of a hard link's
        extra name (links.py). Name-level operations (rename, unlink, sync) act on it."""
        raw = self._dirent(parent, name, txn)
        return from_u64(raw[-8:]) if raw is not None else None

    def link(self, txn: lmdb.Transaction, parent: int, name: str, ino: int, record: int = 0) -> None:
        """Name `ino` in `parent`; `record` is the alias record when the name is an extra one."""
        key = self._dirent_key(parent, name)
        if parent in self._subdirs:
            self._count_subdirs(txn, parent, txn.get(key, db=self.dirents), ino)
        txn.put(key, u64(ino) + (u64(record) if record else b""), db=self.dirents)

    def place(self, txn: lmdb.Transaction, node: Inode) -> None:
        """The directory entry of a record at its (parent, name): an alias record's entry
        names its target inode and carries the record."""
        if node.kind == "link":
            self.link(txn, node.parent, node.name, node.extra["target"], node.ino)
        else:
            self.link(txn, node.parent, node.name, node.ino)

    def unlink(self, txn: lmdb.Transaction, parent: int, name: str) -> None:
        key = self._dirent_key(parent, name)
        if parent in self._subdirs:
            self._count_subdirs(txn, parent, txn.get(key, db=self.dirents), 0)
        txn.delete(key, db=self.dirents)

    def _count_subdirs(self, txn: lmdb.Transaction, parent: int, old: bytes | None, new_ino: int) -> None:
        """Keep `parent`'s known count of subdirectories (its st_nlink) as its entry at one
        name goes from `old` (a dirent value) to `new_ino` (0: none). Counted again from
        scratch, each unlink in a directory of n entries cost O(n): the kernel asks the
        directory's attributes after every unlink, so `rm -rf` of n files was O(n^2)
        (2,000 fresh files: a third of the mount's time). Forgotten when a kind is unknown."""
        delta = 0
        for ino, sign in ((from_u64(old[:8]) if old else 0, -1), (new_ino, 1)):
            if not ino:
                continue
            node = self.get(ino, txn)
            if node is None:
                self._subdirs.pop(parent, None)
                return
            delta += sign * (node.kind == "dir")
        count = self._subdirs.get(parent)
        if count is not None:
            self._subdirs[parent] = count + delta

    def subdir_count(self, ino: int) -> int:
        count = self._subdirs.get(ino)
        if count is None:
            count = 0
            for _, child_ino in self.children(ino):
                child = self.get(child_ino)
                count += child is not None and child.kind == "dir"
            self._subdirs[ino] = count
        return count

    def children(self, parent: int) -> list[tuple[str, int]]:
        """(name, inode) of every entry: what readdir shows."""
        return [(name, from_u64(value[:8])) for name, value in self._entries(parent)]

    def entries(self, parent: int) -> list[tuple[str, int]]:
        """(name, record) of every entry: what walks of the tree work on (`record_at`)."""
        return [(name, from_u64(value[-8:])) for name, value in self._entries(parent)]

    def _entries(self, parent: int) -> list[tuple[str, bytes]]:
        prefix = u64(parent)
        out = []
        with self.read() as txn:
            cursor = txn.cursor(db=self.dirents)
            if cursor.set_range(prefix):
                for key, value in cursor:
                    if not key.startswith(prefix):
                        break
                    out.append((key[8:].decode("utf-8", "surrogateescape"), value))
        return out

    def has_children(self, parent: int) -> bool:
        prefix = u64(parent)
        with self.read() as txn:
            cursor = txn.cursor(db=self.dirents)
            return cursor.set_range(prefix) and cursor.key().startswith(prefix)

    # --- base chunk lists ---

    def chunklist(self, ino: int) -> tuple[int, list[ChunkEntry]] | None:
        with self.read() as txn:
            raw = txn.get(u64(ino), db=self.chunklists)
        return unpack_chunklist(raw) if raw is not None else None

    def set_chunklist(self, txn: lmdb.Transaction, ino: int, rev: int, chunks: list[tuple[str, int]]) -> None:
        txn.put(u64(ino), pack_chunklist(rev, chunks), db=self.chunklists)

    # --- dirty blocks ---

    def get_block(self, txn: lmdb.Transaction, ino: int, block_no: int) -> bytes | None:
        return txn.get(_QQ.pack(ino, block_no), db=self.blocks)

    def put_block(self, txn: lmdb.Transaction, ino: int, block_no: int, data: bytes) -> None:
        txn.put(_QQ.pack(ino, block_no), data, db=self.blocks)

    def any_block(self, txn: lmdb.Transaction, ino: int, first: int, last: int) -> bool:
        """Whether one file has a dirty block numbered first..last (one seek)."""
        cursor = txn.cursor(db=self.blocks)
        return cursor.set_range(_QQ.pack(ino, first)) and bytes(cursor.key()) <= _QQ.pack(ino, last)

    def blocks_in(self, txn: lmdb.Transaction, ino: int, first: int, last: int) -> set[int]:
        """The numbers of one file's blocks first..last that exist (one seek, keys only)."""
        out: set[int] = set()
        cursor = txn.cursor(db=self.blocks)
        if not cursor.set_range(_QQ.pack(ino, first)):
            return out
        high = _QQ.pack(ino, last)
        for key in cursor.iternext(keys=True, values=False):
            if bytes(key) > high:
                break
            out.add(_QQ.unpack(key)[1])
        return out

    def drop_blocks(self, txn: lmdb.Transaction, ino: int, *, from_block: int) -> int:
        """Delete blocks >= from_block of one file; returns the dirty bytes freed. A
        settled file's blocks were not dirty: it is unsettled first (`unsettle`), so
        what is returned is the change in dirty bytes either way (negative when blocks
        of a settled file stay: they count as dirty now). Deleting a block maps it (LMDB
        reads the first page of the record, and the kernel maps the page cache's whole
        folio): the pages go back as it goes (`mapped`), so dropping a 1 GiB file does not
        map 1 GiB into the mount."""
        freed = -self.unsettle(txn, ino)
        cursor = txn.cursor(db=self.blocks)
        if cursor.set_range(_QQ.pack(ino, from_block)):
            while True:
                key = cursor.key()
                if len(key) != 16 or _QQ.unpack(key)[0] != ino:
                    break
                size = len(cursor.value())
                freed += size
                self.mapped(size)
                if not cursor.delete():
                    break
        return freed

    def mapped(self, nbytes: int) -> None:
        """`nbytes` of the map were just stepped over: py-lmdb faults in every page of each
        value it returns or a cursor steps on, keys-only included, and they stay mapped
        (counted in RSS) until given back: a walk over a 256 MiB file's dirty blocks left
        256 MiB of RssFile at its close. Counted across callers (many short walks
        included, an upload's reads in another thread too), they go back every
        RELEASE_BYTES (lmdbmap.py: harmless to readers in other threads)."""
        self.unreleased_bytes += nbytes
        if self.unreleased_bytes >= RELEASE_BYTES:
            release_map_pages(self.env)
            self.unreleased_bytes = 0

    # --- settled files ---

    def settle(self, txn: lmdb.Transaction, ino: int) -> int:
        """A commit of `ino` that holds exactly what its blocks hold landed: the blocks
        stay as the cached copy of that version, clean (evictable, chunkcache.py), so a
        first upload writes each byte into the cache once instead of twice (blocks,
        then the sent chunks). Until a write or truncation unsettles it, a settled file
        is clean and its blocks are its committed bytes. Returns the dirty bytes that
        became clean."""
        nbytes = self._block_bytes(txn, ino)
        already = self.unsettle(txn, ino)
        txn.put(u64(ino), u64(nbytes), db=self.settled_files)
        self.settled[ino] = nbytes
        self.settled_bytes += nbytes
        return nbytes - already

    def unsettle(self, txn: lmdb.Transaction, ino: int) -> int:
        """Its blocks count as dirty again (a write, a truncation, a drop); returns their bytes."""
        nbytes = self.settled.pop(ino, None)
        if nbytes is None:
            return 0
        txn.delete(u64(ino), db=self.settled_files)
        self.settled_bytes -= nbytes
        return nbytes

    def _load_settled(self) -> None:
        with self.read() as txn:
            self.settled = {from_u64(k): from_u64(v) for k, v in txn.cursor(db=self.settled_files)}
        self.settled_bytes = sum(self.settled.values())

    def _block_bytes(self, txn: lmdb.Transaction, ino: int) -> int:
        total = 0
        cursor = txn.cursor(db=self.blocks)
        if cursor.set_range(_QQ.pack(ino, 0)):
            for key, value in cursor:
                if len(key) != 16 or _QQ.unpack(key)[0] != ino:
                    break
                total += len(value)
                self.mapped(len(value))
        return total

    def file_dirty_bytes(self, ino: int) -> int:
        """Bytes in one file's dirty blocks (measured, not copied)."""
        if ino in self.settled:
            return 0
        with self.read(buffers=True) as txn:
            return self._block_bytes(txn, ino)

    def dirty_bytes(self) -> int:
        with self.read(buffers=True) as txn:
            return sum(len(v) for _, v in txn.cursor(db=self.blocks)) - self.settled_bytes

    # --- outbox ---

    def enqueue(self, txn: lmdb.Transaction, op: dict) -> int:
        seq = self.next_counter(txn, "next_outbox", 1)
        txn.put(u64(seq), orjson.dumps(op, option=orjson.OPT_NON_STR_KEYS), db=self.outbox)
        self._index(seq, op)  # if `txn` fails, a seq that names nothing: the lookups check
        return seq

    def _index(self, seq: int, op: dict) -> None:
        if op.get("op") == "delete":
            self._deletes.setdefault(op["node_id"], set()).add(seq)
        elif op.get("op") == "unland":
            for parent_id, name in op["places"]:
                self._unlands.setdefault((parent_id, name), set()).add(seq)

    def _unindex(self, seq: int, op: dict) -> None:
        if op["op"] == "delete" and (left := self._deletes.get(op["node_id"])) is not None:
            left.discard(seq)
            if not left:
                del self._deletes[op["node_id"]]
        elif op["op"] == "unland":
            for parent_id, name in op["places"]:
                if (left := self._unlands.get((parent_id, name))) is not None:
                    left.discard(seq)
                    if not left:
                        del self._unlands[parent_id, name]

    def unland_queued(self, parent_id: int, name: str) -> bool:
        """An unland (syncer._unland) of a create that went to this place is still in
        the outbox. Indexed like the deletes: the follower asks for a node the mirror
        lacks whose create of ours came back unanswered."""
        seqs = self._unlands.get((parent_id, name))
        if not seqs:
            return False
        seqs &= self.outbox_present(seqs)  # applied, or its transaction failed
        if not seqs:
            del self._unlands[parent_id, name]
        return bool(seqs)

    def queued_delete(self, node_id: int) -> tuple[int, dict] | None:
        """The first delete of `node_id` still in the outbox, as (seq, entry). Asked for
        every change of a node the mirror lacks (follower: is it being deleted here?) and
        for every deferred one on each pass: a walk of the outbox each time cost as much
        as the deletes held in it (thousands after a mass delete), so they are indexed
        by node id when queued and the index is checked against the outbox when read."""
        seqs = self._deletes.get(node_id)
        if not seqs:
            return None
        found = None
        with self.read() as txn:
            for seq in sorted(seqs):
                raw = txn.get(u64(seq), db=self.outbox)
                op = orjson.loads(raw) if raw is not None else None
                if op is not None and op["op"] == "delete" and op["node_id"] == node_id:
                    found = seq, op
                    break
                seqs.discard(seq)  # applied, or its transaction failed
        if not seqs:
            del self._deletes[node_id]
        return found

    def outbox_items(self, limit: int = 1000, *, start: int = 0) -> list[tuple[int, dict]]:
        """The first `limit` entries from seq `start` on, in order."""
        out = []
        with self.read() as txn:
            cursor = txn.cursor(db=self.outbox)
            if not cursor.set_range(u64(start)):
                return out
            for key, value in cursor:
                out.append((from_u64(key), orjson.loads(value)))
                if len(out) >= limit:
                    break
        return out

    def outbox_present(self, seqs: Iterable[int]) -> set[int]:
        """Which of `seqs` are still queued."""
        with self.read() as txn:
            return {seq for seq in seqs if txn.get(u64(seq), db=self.outbox) is not None}

    def outbox_len(self) -> int:
        with self.read() as txn:
            return txn.stat(self.outbox)["entries"]

    def dequeue(self, *seqs: int) -> None:
        """Drop the entries `seqs` (applied, or dropped by the user), in one transaction."""
        gone = []
        with self.write() as txn:
            for seq in seqs:
                raw = txn.pop(u64(seq), db=self.outbox)
                if raw is not None:
                    gone.append((seq, orjson.loads(raw)))
        for seq, op in gone:  # once committed: a delete forgotten before would not be seen
            self._unindex(seq, op)

    def inode_count(self) -> int:
        with self.read() as txn:
            return txn.stat(self.inodes)["entries"]

    def iter_inodes(self) -> Iterator[Inode]:
        with self.read() as txn:
            for _, raw in txn.cursor(db=self.inodes):
                yield Inode.decode(raw)
