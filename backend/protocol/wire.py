"""Wire models: the JSON shapes the server speaks and the device client reads.

Both sides import these, so a field renamed here is renamed everywhere and the OpenAPI
document always matches what the client sends. Bounds on every number keep values
inside a 64-bit column, so bad input is a 422 and never a database error.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Base64Bytes, BaseModel, ConfigDict, Field, model_validator

from ..model import xattrs as xattr_rules
from .names import PATH_MAX_BYTES, check_name, check_text

INT64_MAX = 2**63 - 1
MAX_CHUNK_BYTES = 64 * 1024 * 1024
MAX_CHUNKS_PER_VERSION = 100_000
INLINE_MAX_BYTES = 64 * 1024
"""A file up to this size travels inside its commit (CommitRequest.inline)."""

Name = Annotated[str, Field(min_length=1, max_length=255), AfterValidator(check_name)]
Target = Annotated[
    str,
    Field(min_length=1, max_length=PATH_MAX_BYTES),
    AfterValidator(lambda v: check_text(v, max_bytes=PATH_MAX_BYTES, what="a symlink target")),
]
NodeId = Annotated[int, Field(ge=1, le=INT64_MAX)]
Rev = Annotated[int, Field(ge=0, le=INT64_MAX)]
Size = Annotated[int, Field(ge=0, le=INT64_MAX)]
MtimeNs = Annotated[int, Field(ge=0, le=INT64_MAX)]
Mode = Annotated[int, Field(ge=0, le=0o7777)]
FINGERPRINT_RE = re.compile(r"^[0-9a-f]{64}$")
Fingerprint = Annotated[str, Field(pattern=FINGERPRINT_RE.pattern, description="SHA-256 of the plain bytes, lowercase hex")]
Compression = Literal["none", "zstd"]
Kind = Literal["file", "dir", "symlink", "fifo", "chr", "blk", "sock", "link"]
"""`link`: an extra name of another node (a hard link), see Node.link_to."""
SpecialKind = Literal["fifo", "chr", "blk", "sock"]
Role = Literal["owner", "editor", "viewer"]
"""A member's role in a shared folder: a viewer reads, an editor also writes, the owner
also decides who is a member."""
"""Special files: synced as metadata (kind, mode, owner, rdev), no content."""
Op = Literal["create", "modify", "move", "delete", "attr", "exchange"]
"""`exchange`: the node took the place of the one at its new name, which moved to the node's
old place (RENAME_EXCHANGE); that other node's own `move` entry follows."""
SERVER_DEVICE = "(server)"
"""The device of journal entries the server made on its own: when a file's own name is
deleted while it has other names, it takes the place of its oldest other name (a
`delete` of that alias, then a `move` of the file). Every device applies them, the one
whose request caused them too. No real device can have this name (app.DEVICE_RE)."""
Owner = Annotated[int, Field(ge=-1, le=2**32 - 2, description="a uid or gid; -1 is the drive's owner, shown as "
                                                              "whoever mounts the drive on each device")]
Rdev = Annotated[int, Field(ge=0, le=INT64_MAX)]
Xattrs = Annotated[dict[str, str], Field(max_length=10_000, description="extended attributes: name -> base64 value"),
                   AfterValidator(xattr_rules.check_all)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ChunkRef(Strict):
    """One chunk of a version, in file order."""

    fingerprint: Fingerprint
    length: Annotated[int, Field(ge=1, le=MAX_CHUNK_BYTES)]


class ChunkUpload(ChunkRef):
    """A chunk the device wants to store; `stored_*` describe the bytes as uploaded."""

    compression: Compression = "none"
    stored_length: Annotated[int, Field(ge=1, le=MAX_CHUNK_BYTES + 65536)] | None = None
    stored_sha256: Fingerprint | None = None


class Node(BaseModel):
    id: int
    parent_id: int | None
    name: str
    kind: Kind
    mode: int
    mtime_ns: int
    size: int
    rev: int
    target: str | None = None
    deleted: bool = False
    uid: int = -1
    gid: int = -1
    rdev: int = 0
    atime_ns: int = 0
    """0: never set apart from mtime."""
    xattrs: dict[str, str] = {}
    link_to: int | None = None
    """Kind `link` (an alias row): the id of the node this name stands for. An alias has
    a name and a place of its own and nothing else: content, versions and attributes are
    its node's, and every content or attribute call on an alias id acts on that node."""
    ns: int | None = None
    """A shared folder as its member sees it (kind `dir`, the shared namespace's root
    node placed where this member mounted it): the namespace. None everywhere else."""
    role: Role | None = None
    """With `ns`: this member's role in the shared folder."""


class SignedRequest(BaseModel):
    """A request the device makes straight to the object store."""

    method: Literal["GET", "PUT"]
    url: str
    headers: dict[str, str] = {}


class PrepareUploadRequest(Strict):
    chunks: Annotated[list[ChunkUpload], Field(max_length=10_000)]
    node_id: NodeId | None = Field(None, description="the file, or the directory a new file goes into: the chunks "
                                                     "are prepared in its namespace (a shared folder); default the "
                                                     "account's own tree")


class ChunkTicket(BaseModel):
    fingerprint: str
    upload: SignedRequest


class PrepareUploadResponse(BaseModel):
    missing: list[ChunkTicket]
    present: list[str]
    check_after_put: bool = Field(False, description="the store keeps no checksum it checked on PUT, so verifying "
                                                     "a chunk means reading it back: ask POST /chunks/check once a "
                                                     "batch is PUT, and the read-back overlaps the next batches")


class CheckChunksRequest(Strict):
    fingerprints: Annotated[list[Fingerprint], Field(max_length=1000)]
    node_id: NodeId | None = Field(None, description="as for /uploads/prepare: the namespace the chunks went to")


class CheckChunksResponse(BaseModel):
    verified: list[str] = Field(description="chunks found in the store with exactly their bytes (now, or before)")
    problems: dict[str, str] = Field(description="chunk -> why it is not good yet; PUT it again (the commit would "
                                                 "refuse it)")


class PrepareDownloadRequest(Strict):
    fingerprints: Annotated[list[Fingerprint], Field(max_length=10_000)]


class ChunkDownload(BaseModel):
    fingerprint: str
    length: int
    compression: Compression
    download: SignedRequest


class PrepareDownloadResponse(BaseModel):
    chunks: list[ChunkDownload]


class InlineChunk(Strict):
    """A small chunk's bytes, sent with its commit instead of PUT to a signed URL: the
    server hashes and stores them itself, so a small file costs one round trip."""

    fingerprint: Fingerprint
    compression: Compression = "none"
    data: Annotated[Base64Bytes, Field(strict=False, description="the bytes to store (zstd body if compressed), base64")]


class CommitRequest(Strict):
    """Commit a new version of a file.

    Name the file by `node_id` (an existing file), or by `parent_id` + `name` or
    `path` (which creates it when `base_rev` is 0). `base_rev` is the revision the device
    started from; if the server has moved on, the commit is refused with 409.
    """

    node_id: NodeId | None = None
    parent_id: NodeId | None = None
    name: Name | None = None
    path: Annotated[str, Field(min_length=1, max_length=PATH_MAX_BYTES)] | None = None
    base_rev: Rev
    size: Size
    mtime_ns: MtimeNs
    mode: Mode | None = Field(default=None, description="permission bits; default 0o644 for a new file, unchanged otherwise")
    chunks: Annotated[list[ChunkRef], Field(max_length=MAX_CHUNKS_PER_VERSION)]
    inline: list[InlineChunk] | None = Field(
        default=None, description=f"bytes of some of `chunks`, at most {INLINE_MAX_BYTES} in all; stored by the server")

    @model_validator(mode="after")
    def _inline_fits(self) -> "CommitRequest":
        if self.inline and sum(len(c.data) for c in self.inline) > INLINE_MAX_BYTES:
            raise ValueError(f"inline: at most {INLINE_MAX_BYTES} bytes in all; PUT bigger files' chunks to signed URLs")
        return self


class VersionChunk(BaseModel):
    fingerprint: str
    length: int
    offset: int
    compression: Compression = "none"
    download: SignedRequest | None = None


class Version(BaseModel):
    rev: int
    size: int
    mtime_ns: int
    device: str
    created_at: float
    user_id: int | None = None
    """The account that made it (None on a server before shared folders): in a shared
    folder two accounts may each have a device of the same name."""


class FileInfo(BaseModel):
    node: Node
    version: Version | None
    chunks: list[VersionChunk]
    cursor: int


class CommitResponse(BaseModel):
    node: Node
    version: Version
    cursor: int


class MkdirRequest(Strict):
    parent_id: NodeId
    name: Name
    mode: Mode = 0o755
    mtime_ns: MtimeNs | None = None


class SymlinkRequest(Strict):
    parent_id: NodeId
    name: Name
    target: Target
    mtime_ns: MtimeNs | None = None


class MknodRequest(Strict):
    """A FIFO, socket or device node: a name with attributes and no content."""

    parent_id: NodeId
    name: Name
    kind: SpecialKind
    mode: Mode = 0o644
    rdev: Rdev = 0
    mtime_ns: MtimeNs | None = None


class LinkRequest(Strict):
    """A hard link: one more name for `node_id` (a file, symlink or special file; a link to
    an alias links to the node it names)."""

    parent_id: NodeId
    name: Name
    node_id: NodeId


class MoveRequest(Strict):
    """Rename or move. With `replace`, rename(2) over an existing node; with `exchange`,
    RENAME_EXCHANGE: the node at the destination takes this node's place."""

    parent_id: NodeId
    name: Name
    replace: bool = False
    exchange: bool = False


class AttrRequest(Strict):
    """Change attributes; a field left out stays as it is. `xattrs` replaces the whole set."""

    mode: Mode | None = None
    mtime_ns: MtimeNs | None = None
    atime_ns: MtimeNs | None = None
    uid: Owner | None = None
    gid: Owner | None = None
    xattrs: Xattrs | None = None


class RestoreRequest(Strict):
    rev: Annotated[int, Field(ge=1, le=INT64_MAX)]
    base_rev: Rev | None = None


class NodeResponse(BaseModel):
    node: Node
    cursor: int


class Linked(BaseModel):
    """A node with more than one name (hard links), as a listing of names shows it."""

    node: Node
    names: int = Field(description="how many live names the node has (st_nlink)")


class Listing(BaseModel):
    entries: list[Node]
    next_after: str | None = Field(description="pass as `after` for the next page; null on the last page")
    linked: list[Linked] = Field([], description="only when asked for (`linked=true`): each node an entry of this "
                                                 "page stands for that has more than one name; an alias entry "
                                                 "(kind `link`) has no size or dates of its own, its node does")


class Snapshot(BaseModel):
    nodes: list[Node]
    next_after_id: int | None
    cursor: int = Field(description="journal position this snapshot is at least as new as")


class VersionList(BaseModel):
    node_id: int
    versions: list[Version]


class Change(BaseModel):
    seq: int
    op: Op
    node: Node
    old_parent_id: int | None = None
    old_name: str | None = None
    device: str
    user_id: int | None = None
    """The account that made the change (None: before shared folders, always the reader's)."""
    ns: int | None = None
    """The namespace the entry belongs to (in a multi-namespace feed)."""
    to_ns: int | None = None
    """A `delete` of a node that moved to another namespace and lives on there: a device
    that follows that namespace too ignores this entry (the move reaches it there)."""


class ChangesResponse(BaseModel):
    changes: list[Change]
    cursor: int
    has_more: bool


class Me(BaseModel):
    user_id: int
    name: str
    root_id: int
    cursor: int
    quota_bytes: int | None
    used_bytes: int = 0
    """Sum of the sizes of this user's live files, what the quota counts (those of the
    folders it shares with others included)."""
    cursors: dict[str, int] = {}
    """The newest position of every namespace the account sees (its own tree, and each
    shared folder it has accepted), by namespace id."""


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer. Some errors add fields: `node` (409s), `current_rev`
    (stale revision), `chunks` (missing chunks), `floor` (expired cursor)."""

    model_config = ConfigDict(extra="allow")
    error: str
    detail: str
    field: str | None = None


class ChunkReport(BaseModel):
    fingerprint: str
    state: Literal["bad", "verified"]
    problem: str | None = None


class BadChunk(BaseModel):
    fingerprint: str
    problem: str
    node_ids: list[int]
    """Live files that use the chunk."""


class FsckReport(BaseModel):
    checked: int
    bad: list[BadChunk]


class TrashEntry(BaseModel):
    """One delete: the node it took (a directory stands for everything in it)."""

    node: Node
    path: str
    deleted_at: float | None
    device: str | None
    inside: int = Field(0, description="nodes that went with it (a directory's contents)")


class TrashList(BaseModel):
    entries: list[TrashEntry]


class PathRequest(Strict):
    """A node named by its path in the drive (`/` is the root)."""

    path: Annotated[str, Field(min_length=1, max_length=PATH_MAX_BYTES)]


class RestoreAtRequest(PathRequest):
    at: Annotated[float, Field(ge=0, le=1e11, description="unix time (seconds) to put the path back to")]


class RestoreReport(BaseModel):
    at: float
    reverted: int = Field(0, description="files whose content went back to the version of then")
    undeleted: int = 0
    moved: int = 0
    trashed: int = Field(0, description="nodes made since, moved to the trash")
    cursor: int = 0


class PurgeReport(BaseModel):
    purged: int
