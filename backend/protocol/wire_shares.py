"""Wire models of shared folders: invitations, members and the multi-namespace feed.

A shared folder is a namespace (server/namespaces.py): its own tree, journal, versions
and chunks. A device follows every namespace its account can see with one long-poll
(`POST /sync`), one cursor per namespace.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from .names import PATH_MAX_BYTES, USER_NAME_RE
from .wire import INT64_MAX, Change, NodeId, Role, Strict

MemberState = Literal["invited", "accepted", "declined", "left", "removed"]
UserName = Annotated[str, Field(min_length=1, max_length=64, pattern=USER_NAME_RE.pattern,
                                 description="an account name")]
Path = Annotated[str, Field(min_length=1, max_length=PATH_MAX_BYTES)]
NsId = Annotated[int, Field(ge=1, le=INT64_MAX)]
Cursor = Annotated[int, Field(ge=0, le=INT64_MAX)]


class ShareRequest(Strict):
    """Share a folder (named by `node_id` or `path`) with another account."""

    node_id: NodeId | None = None
    path: Path | None = None
    user: UserName
    role: str = Field("editor", description="editor or viewer")


class MemberRequest(Strict):
    user: UserName
    role: str = Field("editor", description="editor or viewer")


class RoleRequest(Strict):
    role: str = Field(description="editor or viewer")


class AcceptRequest(Strict):
    path: Path | None = Field(None, description="where the folder appears in the drive; default /NAME")


class Member(BaseModel):
    user: str
    role: Role
    state: MemberState


class Share(BaseModel):
    """A shared folder as one account sees it."""

    id: int = Field(description="the namespace; what `accept`, `leave` and the member routes take")
    name: str
    owner: str
    role: Role
    state: MemberState
    path: str | None = Field(description="where it is mounted in this account's drive (accepted), else None")
    root_id: int
    members: list[Member] = []


class ShareList(BaseModel):
    shares: list[Share]


class SyncRequest(Strict):
    """One long-poll over several namespaces: `cursors` maps each namespace the device
    follows to the seq of the last entry it applied there (0: from the start)."""

    cursors: Annotated[dict[str, Cursor], Field(max_length=10_000)]
    wait: Annotated[float, Field(ge=0, le=60)] = 0
    limit: Annotated[int, Field(ge=1, le=5000)] = 1000


class NamespaceInfo(BaseModel):
    id: int
    root_id: int
    role: Role
    kind: Literal["root", "shared"]


class SyncResponse(BaseModel):
    changes: list[Change] = Field(description="entries of every namespace, in journal (seq) order")
    cursors: dict[str, int]
    has_more: bool
    gone: list[int] = Field(default=[], description="namespaces whose cursor is older than their retained journal "
                                                    "(410 for that namespace alone): resync them from /nodes?ns=")
    namespaces: list[NamespaceInfo] = Field(description="every namespace this account can see now")
