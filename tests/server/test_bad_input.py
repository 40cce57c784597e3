"""Bad input on a real server: every malformed request is a 4xx with a JSON body
`{"error", "detail", "field"}` naming the problem, never a 500, and never a write.

The tables below are the contract (ARCHITECTURE.md, "Names, limits and bad input"):
malformed JSON, wrong types, floats and strings where integers belong, integers past
64 bits, oversized bodies, unknown ids, `..`, `/` and NUL in names, names of 256 bytes
in every UTF-8 width, lone surrogates, bad or missing tokens, negative or non-numeric
cursors. After each rejected request the user's whole visible state (snapshot, journal,
versions of a file) is compared with what it was before.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from dataclasses import field as default
from typing import Any, Callable, Iterator

import httpx
import pytest

from tests.conftest import Api, start_server
from tests.server.helpers import put_file

UNKNOWN = 2**62  # a valid id that no node will ever have in a test database
INT64_MAX = 2**63 - 1
MIB = 1024 * 1024

NAME_MAX_OK = {  # exactly 255 bytes of UTF-8, one per encoded width
    "ascii": "a" * 255,
    "2-byte": "é" * 127 + "a",
    "3-byte": "€" * 85,
    "4-byte": "😀" * 63 + "abc",
}
BAD_NAMES = {  # label -> (name, what the detail must say about it)
    "empty": ("", "at least 1"),
    "dot": (".", "'.'"),
    "dotdot": ("..", "'..'"),
    "slash": ("a/b", "'/'"),
    "only-slash": ("/", "'/'"),
    "nul": ("a\x00b", "NUL"),
    "only-nul": ("\x00", "NUL"),
    "256-ascii": ("a" * 256, "255"),
    "256-bytes-2-byte": ("é" * 128, "this one is 256"),
    "256-bytes-3-byte": ("€" * 85 + "a", "this one is 256"),
    "256-bytes-4-byte": ("😀" * 64, "this one is 256"),
    "128-chars-of-4-bytes": ("😀" * 128, "this one is 512"),
}
LONE_SURROGATES = {"high": r"\ud800", "low": r"\udfff", "high-then-text": r"a\ud83db", "reversed-pair": r"\ude00\ud83d"}


# --- fixtures and helpers ----------------------------------------------------------------


@pytest.fixture(scope="module")
def carol(server) -> Iterator[Api]:  # noqa: ANN001
    """One user per server for the whole table (creating a user costs a process start):
    a directory `d`, a file `d/f` at revision 2, a symlink `d/l` and an empty dir `e`."""
    api = Api(server, server.add_user(f"carol-{uuid.uuid4().hex[:8]}"))
    d = api.post("/dirs", json={"parent_id": api.root_id, "name": "d"}).json()["node"]
    e = api.post("/dirs", json={"parent_id": api.root_id, "name": "e"}).json()["node"]
    put_file(api, "/d/f", b"first")
    f = put_file(api, "/d/f", b"second", base_rev=1)
    link = api.post("/symlinks", json={"parent_id": d["id"], "name": "l", "target": "f"}).json()["node"]
    api.ids = {"root": api.root_id, "dir": d["id"], "empty_dir": e["id"], "file": f["id"], "link": link["id"],
               "unknown": UNKNOWN}
    yield api
    api.close()


def state(api: Api) -> tuple:
    """Everything a rejected request could have changed, as this user sees it."""
    snap = api.get("/nodes", params={"limit": 10_000})
    feed = api.get("/changes", params={"cursor": 0, "limit": 5000})
    assert snap.status_code == 200 and feed.status_code == 200, (snap.text, feed.text)
    versions = api.get(f"/files/{api.ids['file']}/versions")
    return snap.json()["nodes"], snap.json()["cursor"], feed.json()["changes"], versions.json()


def assert_problem(r: httpx.Response, status: int, error: str | None, field: str | None) -> dict:
    """A 4xx whose JSON body names the problem (and the field, when given)."""
    assert r.status_code == status, f"{r.request.method} {r.request.url}: {r.status_code} {r.text[:500]}"
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json()
    assert {"error", "detail", "field"} <= body.keys(), body
    assert isinstance(body["error"], str) and isinstance(body["detail"], str) and body["detail"], body
    if error is not None:
        assert body["error"] == error, body
    assert body["field"] == field, body
    return body


@dataclass
class Bad:
    """One bad request. `path`, string `params` values and `body` (a callable of the
    fixture's ids, or raw bytes) may name ids as {root}, {dir}, {file}, {link} ..."""

    method: str
    path: str
    status: int
    error: str | None
    field: str | None
    body: Callable[[dict], Any] | bytes | None = None
    params: dict[str, Any] = default(default_factory=dict)
    headers: dict[str, Any] = default(default_factory=dict)
    says: str | None = None  # a substring the detail must contain
    xfail: str | None = None  # a known server bug, reported; remove when fixed


def send(api: Api, case: Bad) -> httpx.Response:
    ids = api.ids
    params = {k: (v.format(**ids) if isinstance(v, str) else v) for k, v in case.params.items()}
    kwargs: dict[str, Any] = {"params": params, "headers": case.headers}
    body = case.body(ids) if callable(case.body) else case.body
    if isinstance(body, bytes):
        kwargs["content"] = body
        kwargs["headers"] = {"content-type": "application/json", **case.headers}
    elif body is not None:
        kwargs["json"] = body
    return api.request(case.method, case.path.format(**ids), **kwargs)


def raw(template: str) -> Callable[[dict], bytes]:
    return lambda ids: template.format(**ids).encode()


def mkdir_body(**over: Any) -> Callable[[dict], dict]:
    return lambda ids: {"parent_id": ids["root"], "name": "new", **over}


def commit_body(**over: Any) -> Callable[[dict], dict]:
    return lambda ids: {"path": "/d/new", "base_rev": 0, "size": 0, "mtime_ns": 1, "chunks": [], **over}


FP = "ab" * 32


# --- the table -------------------------------------------------------------------------

CASES: dict[str, Bad] = {
    # Not JSON, or not an object.
    "json-truncated": Bad("POST", "/dirs", 422, "invalid", "body", b'{"parent_id": ', says="not valid JSON"),
    "json-garbage": Bad("POST", "/dirs", 422, "invalid", "body", b"parent_id=1&name=x"),
    "json-trailing-comma": Bad("POST", "/dirs", 422, "invalid", "body", b'{"parent_id": 1, "name": "x",}'),
    "json-single-quotes": Bad("POST", "/dirs", 422, "invalid", "body", b"{'parent_id': 1, 'name': 'x'}"),
    "json-not-utf8": Bad("POST", "/dirs", 422, "invalid", "body", b'{"parent_id": 1, "name": "\xff\xfe"}'),
    "json-empty-body": Bad("POST", "/dirs", 422, "invalid", "body", b"", says="body is required"),
    "json-array": Bad("POST", "/dirs", 422, "invalid", "body", b"[]"),
    "json-null": Bad("POST", "/dirs", 422, "invalid", "body", b"null"),
    "json-string": Bad("POST", "/dirs", 422, "invalid", "body", b'"x"'),
    "json-nested-100k-deep": Bad("POST", "/dirs", 422, "invalid", "body", b"[" * 100_000 + b"]" * 100_000,
                                 says="not valid JSON"),
    "json-int-5000-digits": Bad("POST", "/dirs", 422, "invalid", "body",
                                b'{"parent_id": 1, "name": "x", "mtime_ns": 1' + b"0" * 5000 + b"}"),
    "json-NaN": Bad("POST", "/dirs", 422, "invalid", "mtime_ns", raw('{{"parent_id": {root}, "name": "x", "mtime_ns": NaN}}')),
    "json-Infinity": Bad("POST", "/dirs", 422, "invalid", "mtime_ns",
                         raw('{{"parent_id": {root}, "name": "x", "mtime_ns": Infinity}}')),
    # Wrong types and missing or extra fields.
    "missing-name": Bad("POST", "/dirs", 422, "invalid", "name", lambda ids: {"parent_id": ids["root"]}),
    "missing-parent": Bad("POST", "/dirs", 422, "invalid", "parent_id", lambda ids: {"name": "x"}),
    "extra-field": Bad("POST", "/dirs", 422, "invalid", "owner_id", mkdir_body(owner_id=1)),
    "name-not-string": Bad("POST", "/dirs", 422, "invalid", "name", mkdir_body(name=5)),
    "name-null": Bad("POST", "/dirs", 422, "invalid", "name", mkdir_body(name=None)),
    "name-list": Bad("POST", "/dirs", 422, "invalid", "name", mkdir_body(name=["a"])),
    "parent-string": Bad("POST", "/dirs", 422, "invalid", "parent_id", lambda ids: {"parent_id": str(ids["root"]), "name": "x"}),
    "parent-float": Bad("POST", "/dirs", 422, "invalid", "parent_id", lambda ids: {"parent_id": ids["root"] + 0.5, "name": "x"}),
    "parent-integral-float": Bad("POST", "/dirs", 422, "invalid", "parent_id", lambda ids: {"parent_id": float(ids["root"]), "name": "x"}),
    "parent-bool": Bad("POST", "/dirs", 422, "invalid", "parent_id", lambda ids: {"parent_id": True, "name": "x"}),
    "parent-2**64": Bad("POST", "/dirs", 422, "invalid", "parent_id", lambda ids: {"parent_id": 2**64, "name": "x"}),
    "parent-2**63": Bad("POST", "/dirs", 422, "invalid", "parent_id", lambda ids: {"parent_id": 2**63, "name": "x"}),
    "parent-zero": Bad("POST", "/dirs", 422, "invalid", "parent_id", lambda ids: {"parent_id": 0, "name": "x"}),
    "parent-negative": Bad("POST", "/dirs", 422, "invalid", "parent_id", lambda ids: {"parent_id": -1, "name": "x"}),
    "mode-2**64": Bad("POST", "/dirs", 422, "invalid", "mode", mkdir_body(mode=2**64)),
    "mode-past-7777": Bad("POST", "/dirs", 422, "invalid", "mode", mkdir_body(mode=0o10000)),
    "mode-string": Bad("POST", "/dirs", 422, "invalid", "mode", mkdir_body(mode="755")),
    "mtime-2**64": Bad("POST", "/dirs", 422, "invalid", "mtime_ns", mkdir_body(mtime_ns=2**64)),
    "mtime-float": Bad("POST", "/dirs", 422, "invalid", "mtime_ns", mkdir_body(mtime_ns=1.5e18)),
    "mtime-negative": Bad("POST", "/dirs", 422, "invalid", "mtime_ns", mkdir_body(mtime_ns=-1)),
    "symlink-target-nul": Bad("POST", "/symlinks", 422, "invalid", "target",
                              lambda ids: {"parent_id": ids["root"], "name": "s", "target": "a\x00b"}, says="NUL"),
    "symlink-target-4096": Bad("POST", "/symlinks", 422, "invalid", "target",
                               lambda ids: {"parent_id": ids["root"], "name": "s", "target": "a" * 4096}),
    "symlink-target-4096-bytes": Bad("POST", "/symlinks", 422, "invalid", "target",
                                     lambda ids: {"parent_id": ids["root"], "name": "s", "target": "é" * 2048}),
    "symlink-target-empty": Bad("POST", "/symlinks", 422, "invalid", "target",
                                lambda ids: {"parent_id": ids["root"], "name": "s", "target": ""}),
    "symlink-target-surrogate": Bad("POST", "/symlinks", 422, "invalid", "target",
                                    raw(r'{{"parent_id": {root}, "name": "s", "target": "\udc80"}}')),
    "move-name-int": Bad("POST", "/nodes/{file}/move", 422, "invalid", "name", lambda ids: {"parent_id": ids["root"], "name": 1}),
    "move-parent-string": Bad("POST", "/nodes/{file}/move", 422, "invalid", "parent_id",
                              lambda ids: {"parent_id": "root", "name": "x"}),
    "move-replace-string": Bad("POST", "/nodes/{file}/move", 422, "invalid", "replace",
                               lambda ids: {"parent_id": ids["root"], "name": "x", "replace": "yes"}),
    "attr-mode-negative": Bad("PATCH", "/nodes/{file}", 422, "invalid", "mode", lambda ids: {"mode": -1}),
    "attr-mode-float": Bad("PATCH", "/nodes/{file}", 422, "invalid", "mode", lambda ids: {"mode": 420.0}),
    "attr-mtime-2**64": Bad("PATCH", "/nodes/{file}", 422, "invalid", "mtime_ns", lambda ids: {"mtime_ns": 2**64}),
    "attr-unknown-field": Bad("PATCH", "/nodes/{file}", 422, "invalid", "size", lambda ids: {"size": 0}),
    # Commits.
    "commit-size-string": Bad("POST", "/files", 422, "invalid", "size", commit_body(size="0")),
    "commit-size-2**64": Bad("POST", "/files", 422, "invalid", "size", commit_body(size=2**64)),
    "commit-size-mismatch": Bad("POST", "/files", 422, "invalid", "size", commit_body(size=5)),
    "commit-base-rev-negative": Bad("POST", "/files", 422, "invalid", "base_rev", commit_body(base_rev=-1)),
    "commit-base-rev-float": Bad("POST", "/files", 422, "invalid", "base_rev", commit_body(base_rev=0.0)),
    "commit-missing-mtime": Bad("POST", "/files", 422, "invalid", "mtime_ns",
                                lambda ids: {"path": "/d/new", "base_rev": 0, "size": 0, "chunks": []}),
    "commit-chunks-not-list": Bad("POST", "/files", 422, "invalid", "chunks", commit_body(chunks={"fingerprint": FP})),
    "commit-fingerprint-upper": Bad("POST", "/files", 422, "invalid", "chunks[0].fingerprint",
                                    commit_body(size=1, chunks=[{"fingerprint": FP.upper(), "length": 1}])),
    "commit-fingerprint-short": Bad("POST", "/files", 422, "invalid", "chunks[0].fingerprint",
                                    commit_body(size=1, chunks=[{"fingerprint": "ab", "length": 1}])),
    "commit-chunk-length-zero": Bad("POST", "/files", 422, "invalid", "chunks[0].length",
                                    commit_body(chunks=[{"fingerprint": FP, "length": 0}])),
    "commit-chunk-length-huge": Bad("POST", "/files", 422, "invalid", "chunks[1].length",
                                    commit_body(size=2**40, chunks=[{"fingerprint": FP, "length": 1},
                                                                    {"fingerprint": FP, "length": 2**40 - 1}])),
    "commit-no-target": Bad("POST", "/files", 422, "invalid", "node_id",
                            lambda ids: {"base_rev": 0, "size": 0, "mtime_ns": 1, "chunks": []}),
    "commit-two-targets": Bad("POST", "/files", 422, "invalid", "node_id", commit_body(node_id=1)),
    "commit-path-relative": Bad("POST", "/files", 422, "invalid", "path", commit_body(path="d/new")),
    "commit-path-dotdot": Bad("POST", "/files", 422, "invalid", "path", commit_body(path="/d/../new"), says="'..'"),
    "commit-path-dot": Bad("POST", "/files", 422, "invalid", "path", commit_body(path="/d/./new")),
    "commit-path-nul": Bad("POST", "/files", 422, "invalid", "path", commit_body(path="/d/ne\x00w"), says="NUL"),
    "commit-path-4096": Bad("POST", "/files", 422, "invalid", "path", commit_body(path="/" + "a/" * 2047 + "b")),
    "commit-path-component-256-bytes": Bad("POST", "/files", 422, "invalid", "path", commit_body(path="/d/" + "é" * 128)),
    "commit-path-root": Bad("POST", "/files", 409, "is_a_directory", "path", commit_body(path="/")),
    "commit-path-surrogate": Bad("POST", "/files", 422, "invalid", "path",
                                 raw(r'{{"path": "/d/\ud800", "base_rev": 0, "size": 0, "mtime_ns": 1, "chunks": []}}')),
    "commit-into-a-file": Bad("POST", "/files", 409, "not_a_directory", "path", commit_body(path="/d/f/new")),
    "commit-over-a-dir": Bad("POST", "/files", 409, "is_a_directory", "path", commit_body(path="/d")),
    "commit-over-a-dir-by-name": Bad("POST", "/files", 409, "is_a_directory", "name",
                                     lambda ids: {"parent_id": ids["root"], "name": "d", "base_rev": 0, "size": 0,
                                                  "mtime_ns": 1, "chunks": []}),
    "commit-stale-base-rev": Bad("POST", "/files", 409, "stale_revision", "base_rev",
                                 lambda ids: {"node_id": ids["file"], "base_rev": 1, "size": 0, "mtime_ns": 1, "chunks": []}),
    "commit-new-file-with-base-rev": Bad("POST", "/files", 404, "not_found", "base_rev", commit_body(base_rev=3)),
    "commit-to-a-dir-by-id": Bad("POST", "/files", 409, "is_a_directory", "node_id",
                                 lambda ids: {"node_id": ids["dir"], "base_rev": 1, "size": 0, "mtime_ns": 1, "chunks": []}),
    "commit-missing-chunk": Bad("POST", "/files", 422, "missing_chunks", "chunks",
                                commit_body(size=3, chunks=[{"fingerprint": FP, "length": 3}])),
    # Upload and download preparation.
    "prepare-compression-unknown": Bad("POST", "/uploads/prepare", 422, "invalid", "chunks[0].compression",
                                       lambda ids: {"chunks": [{"fingerprint": FP, "length": 1, "compression": "gzip"}]}),
    "prepare-zstd-without-stored": Bad("POST", "/uploads/prepare", 422, "invalid", "chunks[0]",
                                       lambda ids: {"chunks": [{"fingerprint": FP, "length": 1, "compression": "zstd"}]}),
    "prepare-two-lengths": Bad("POST", "/uploads/prepare", 422, "invalid", "chunks[1]",
                               lambda ids: {"chunks": [{"fingerprint": FP, "length": 1}, {"fingerprint": FP, "length": 2}]}),
    "prepare-too-many": Bad("POST", "/uploads/prepare", 422, "invalid", "chunks",
                            lambda ids: {"chunks": [{"fingerprint": f"{i:064x}", "length": 1} for i in range(10_001)]}),
    "prepare-length-string": Bad("POST", "/uploads/prepare", 422, "invalid", "chunks[0].length",
                                 lambda ids: {"chunks": [{"fingerprint": FP, "length": "1"}]}),
    "prepare-stored-mismatch": Bad("POST", "/uploads/prepare", 422, "invalid", "chunks[0]",
                                   lambda ids: {"chunks": [{"fingerprint": FP, "length": 1, "stored_length": 2}]}),
    "download-bad-fingerprint": Bad("POST", "/downloads/prepare", 422, "invalid", "fingerprints[1]",
                                    lambda ids: {"fingerprints": [FP, "../../etc/passwd"]}),
    "download-not-list": Bad("POST", "/downloads/prepare", 422, "invalid", "fingerprints", lambda ids: {"fingerprints": FP}),
    "download-unknown": Bad("POST", "/downloads/prepare", 404, "not_found", "fingerprints", lambda ids: {"fingerprints": [FP]}),
    "restore-rev-zero": Bad("POST", "/files/{file}/restore", 422, "invalid", "rev", lambda ids: {"rev": 0}),
    "restore-rev-string": Bad("POST", "/files/{file}/restore", 422, "invalid", "rev", lambda ids: {"rev": "1"}),
    "restore-rev-unknown": Bad("POST", "/files/{file}/restore", 404, "not_found", "rev", lambda ids: {"rev": 99}),
    "restore-stale": Bad("POST", "/files/{file}/restore", 409, "stale_revision", "base_rev", lambda ids: {"rev": 1, "base_rev": 1}),
    # Query parameters: cursors, limits, paths.
    "cursor-negative": Bad("GET", "/changes", 422, "invalid", "cursor", params={"cursor": -1}),
    "cursor-non-numeric": Bad("GET", "/changes", 422, "invalid", "cursor", params={"cursor": "abc"}),
    "cursor-empty": Bad("GET", "/changes", 422, "invalid", "cursor", params={"cursor": ""}),
    "cursor-float": Bad("GET", "/changes", 422, "invalid", "cursor", params={"cursor": "1.5"}),
    "cursor-exponent": Bad("GET", "/changes", 422, "invalid", "cursor", params={"cursor": "1e3"}),
    "cursor-2**64": Bad("GET", "/changes", 422, "invalid", "cursor", params={"cursor": str(2**64)}),
    "cursor-hex": Bad("GET", "/changes", 422, "invalid", "cursor", params={"cursor": "0x10"}),
    "cursor-nul": Bad("GET", "/changes", 422, "invalid", "cursor", params={"cursor": "1\x00"}),
    "cursor-ahead": Bad("GET", "/changes", 410, "cursor_expired", "cursor", params={"cursor": str(INT64_MAX)}),
    "changes-limit-zero": Bad("GET", "/changes", 422, "invalid", "limit", params={"limit": 0}),
    "changes-limit-huge": Bad("GET", "/changes", 422, "invalid", "limit", params={"limit": 2**64}),
    "changes-wait-negative": Bad("GET", "/changes", 422, "invalid", "wait", params={"wait": -1}),
    "changes-wait-too-long": Bad("GET", "/changes", 422, "invalid", "wait", params={"wait": 61}),
    "changes-wait-nan": Bad("GET", "/changes", 422, "invalid", "wait", params={"wait": "nan"}),
    "changes-wait-inf": Bad("GET", "/changes", 422, "invalid", "wait", params={"wait": "inf"}),
    "snapshot-after-negative": Bad("GET", "/nodes", 422, "invalid", "after_id", params={"after_id": -1}),
    "snapshot-limit-string": Bad("GET", "/nodes", 422, "invalid", "limit", params={"limit": "all"}),
    "children-after-256": Bad("GET", "/nodes/{root}/children", 422, "invalid", "after", params={"after": "a" * 256}),
    "children-limit-zero": Bad("GET", "/nodes/{root}/children", 422, "invalid", "limit", params={"limit": 0}),
    "resolve-missing-path": Bad("GET", "/resolve", 422, "invalid", "path"),
    "resolve-relative": Bad("GET", "/resolve", 422, "invalid", "path", params={"path": "d/f"}),
    "resolve-dotdot": Bad("GET", "/resolve", 422, "invalid", "path", params={"path": "/d/../d"}, says="'..'"),
    "resolve-nul": Bad("GET", "/resolve", 422, "invalid", "path", params={"path": "/d\x00"}, says="NUL"),
    "resolve-4096": Bad("GET", "/resolve", 422, "invalid", "path", params={"path": "/" + "a" * 4095}),
    "resolve-component-256-bytes": Bad("GET", "/resolve", 422, "invalid", "path", params={"path": "/" + "€" * 85 + "a"}),
    "resolve-through-a-file": Bad("GET", "/resolve", 409, "not_a_directory", "path", params={"path": "/d/f/x"}),
    "file-rev-zero": Bad("GET", "/files/{file}", 422, "invalid", "rev", params={"rev": 0}),
    "file-rev-unknown": Bad("GET", "/files/{file}", 404, "not_found", "rev", params={"rev": 99}),
    "file-urls-not-bool": Bad("GET", "/files/{file}", 422, "invalid", "urls", params={"urls": "maybe"}),
    "delete-recursive-not-bool": Bad("DELETE", "/nodes/{dir}", 422, "invalid", "recursive", params={"recursive": "maybe"}),
    "versions-limit-negative": Bad("GET", "/files/{file}/versions", 422, "invalid", "limit", params={"limit": -5}),
    # Ids in the path.
    "path-id-zero": Bad("GET", "/nodes/0", 422, "invalid", "node_id"),
    "path-id-negative": Bad("GET", "/nodes/-1", 422, "invalid", "node_id"),
    "path-id-text": Bad("GET", "/nodes/abc", 422, "invalid", "node_id"),
    "path-id-float": Bad("GET", "/nodes/1.5", 422, "invalid", "node_id"),
    "path-id-2**64": Bad("GET", f"/nodes/{2**64}", 422, "invalid", "node_id"),
    "path-id-exponent": Bad("GET", "/files/1e3", 422, "invalid", "node_id"),
    "path-id-text-delete": Bad("DELETE", "/nodes/abc", 422, "invalid", "node_id"),
    "path-id-text-move": Bad("POST", "/nodes/abc/move", 422, "invalid", "node_id",
                             lambda ids: {"parent_id": ids["root"], "name": "x"}),
    # Unknown ids, and ids of the wrong kind.
    "unknown-node": Bad("GET", "/nodes/{unknown}", 404, "not_found", "id"),
    "unknown-children": Bad("GET", "/nodes/{unknown}/children", 404, "not_found", "id"),
    "unknown-file": Bad("GET", "/files/{unknown}", 404, "not_found", "id"),
    "unknown-versions": Bad("GET", "/files/{unknown}/versions", 404, "not_found", "id"),
    "unknown-restore": Bad("POST", "/files/{unknown}/restore", 404, "not_found", "id", lambda ids: {"rev": 1}),
    "unknown-patch": Bad("PATCH", "/nodes/{unknown}", 404, "not_found", "id", lambda ids: {"mode": 0o600}),
    "unknown-delete": Bad("DELETE", "/nodes/{unknown}", 404, "not_found", "id"),
    "unknown-move": Bad("POST", "/nodes/{unknown}/move", 404, "not_found", "id", lambda ids: {"parent_id": ids["root"], "name": "x"}),
    "unknown-move-target": Bad("POST", "/nodes/{file}/move", 404, "not_found", "parent_id",
                               lambda ids: {"parent_id": ids["unknown"], "name": "x"}),
    "unknown-mkdir-parent": Bad("POST", "/dirs", 404, "not_found", "parent_id", lambda ids: {"parent_id": ids["unknown"], "name": "x"}),
    "unknown-symlink-parent": Bad("POST", "/symlinks", 404, "not_found", "parent_id",
                                  lambda ids: {"parent_id": ids["unknown"], "name": "x", "target": "y"}),
    "unknown-commit-parent": Bad("POST", "/files", 404, "not_found", "parent_id",
                                 lambda ids: {"parent_id": ids["unknown"], "name": "x", "base_rev": 0, "size": 0,
                                              "mtime_ns": 1, "chunks": []}),
    "unknown-commit-node": Bad("POST", "/files", 404, "not_found", "node_id",
                               lambda ids: {"node_id": ids["unknown"], "base_rev": 1, "size": 0, "mtime_ns": 1, "chunks": []}),
    "unknown-commit-path": Bad("POST", "/files", 404, "not_found", "path", commit_body(path="/nowhere/new")),
    "mkdir-under-a-file": Bad("POST", "/dirs", 409, "not_a_directory", "parent_id", lambda ids: {"parent_id": ids["file"], "name": "x"}),
    "mkdir-name-taken": Bad("POST", "/dirs", 409, "name_exists", "name", lambda ids: {"parent_id": ids["root"], "name": "d"}),
    "list-a-file": Bad("GET", "/nodes/{file}/children", 409, "not_a_directory", "id"),
    "versions-of-a-dir": Bad("GET", "/files/{dir}/versions", 409, "is_a_directory", "id"),
    "move-into-itself": Bad("POST", "/nodes/{dir}/move", 409, "invalid_move", "parent_id",
                            lambda ids: {"parent_id": ids["dir"], "name": "x"}),
    "move-root": Bad("POST", "/nodes/{root}/move", 409, "invalid_move", "id", lambda ids: {"parent_id": ids["dir"], "name": "x"}),
    "move-onto-existing": Bad("POST", "/nodes/{link}/move", 409, "name_exists", "name",
                              lambda ids: {"parent_id": ids["dir"], "name": "f"}),
    "move-file-over-dir": Bad("POST", "/nodes/{link}/move", 409, "is_a_directory", "name",
                              lambda ids: {"parent_id": ids["root"], "name": "e", "replace": True}),
    "move-dir-over-nonempty": Bad("POST", "/nodes/{empty_dir}/move", 409, "not_empty", "name",
                                  lambda ids: {"parent_id": ids["root"], "name": "d", "replace": True}),
    "delete-root": Bad("DELETE", "/nodes/{root}", 409, "invalid_move", "id"),
    "delete-nonempty": Bad("DELETE", "/nodes/{dir}", 409, "not_empty", "id"),
    # Tokens and headers.
    "token-missing": Bad("GET", "/me", 401, "unauthorized", "Authorization", headers={"Authorization": ""}),
    "token-unknown": Bad("POST", "/dirs", 401, "unauthorized", "Authorization", mkdir_body(),
                         headers={"Authorization": "Bearer cfs_" + "A" * 43}),
    "token-basic-scheme": Bad("POST", "/dirs", 401, "unauthorized", "Authorization", mkdir_body(),
                              headers={"Authorization": "Basic YWxpY2U6c2VjcmV0"}),
    "token-no-credentials": Bad("GET", "/me", 401, "unauthorized", "Authorization", headers={"Authorization": "Bearer"}),
    "token-too-long": Bad("GET", "/me", 401, "unauthorized", "Authorization", headers={"Authorization": "Bearer " + "a" * 5000}),
    "token-not-ascii": Bad("GET", "/me", 401, "unauthorized", "Authorization",
                           headers={"Authorization": "Bearer caf\xc3\xa9".encode("latin-1")}),
    "token-bad-on-delete": Bad("DELETE", "/nodes/{empty_dir}", 401, "unauthorized", "Authorization",
                               headers={"Authorization": "Bearer nope"}),
    "device-slash": Bad("POST", "/dirs", 422, "invalid", "X-Cloudfs-Device", mkdir_body(), headers={"X-Cloudfs-Device": "a/b"}),
    "device-too-long": Bad("POST", "/dirs", 422, "invalid", "X-Cloudfs-Device", mkdir_body(),
                           headers={"X-Cloudfs-Device": "d" * 65}),
    "device-not-ascii": Bad("POST", "/dirs", 422, "invalid", "X-Cloudfs-Device", mkdir_body(),
                            headers={"X-Cloudfs-Device": "caf\xc3\xa9".encode("latin-1")}),
    # Account names and link ids reach the database only when they could be real (PostgreSQL
    # refuses NUL in text: it was a 500).
    "share-user-nul": Bad("POST", "/shares", 422, "invalid", "user", lambda ids: {"node_id": ids["dir"], "user": "a\x00b"}),
    "share-user-newline": Bad("POST", "/shares", 422, "invalid", "user", lambda ids: {"node_id": ids["dir"], "user": "bob\n"}),
    "share-member-nul": Bad("DELETE", "/shares/1/members/a%00b", 422, "invalid", "name"),
    "link-id-nul": Bad("GET", "/s/" + "A" * 20 + "%00/info", 422, "invalid", "link_id"),
    "link-id-short": Bad("DELETE", "/share-links/abc", 422, "invalid", "link_id"),
    "route-unknown": Bad("GET", "/nodes/{root}/parents", 404, "not_found", None),
    "method-not-allowed": Bad("PUT", "/nodes/{root}", 405, "method_not_allowed", None, mkdir_body()),
}
for _label, (_name, _says) in BAD_NAMES.items():
    CASES[f"mkdir-name-{_label}"] = Bad("POST", "/dirs", 422, "invalid", "name", mkdir_body(name=_name), says=_says)
    CASES[f"symlink-name-{_label}"] = Bad("POST", "/symlinks", 422, "invalid", "name",
                                          lambda ids, n=_name: {"parent_id": ids["root"], "name": n, "target": "x"},
                                          says=_says)
    CASES[f"move-name-{_label}"] = Bad("POST", "/nodes/{link}/move", 422, "invalid", "name",
                                       lambda ids, n=_name: {"parent_id": ids["root"], "name": n}, says=_says)
    CASES[f"commit-name-{_label}"] = Bad("POST", "/files", 422, "invalid", "name",
                                         lambda ids, n=_name: {"parent_id": ids["dir"], "name": n, "base_rev": 0,
                                                               "size": 0, "mtime_ns": 1, "chunks": []}, says=_says)
for _label, _escape in LONE_SURROGATES.items():
    CASES[f"mkdir-name-surrogate-{_label}"] = Bad("POST", "/dirs", 422, "invalid", "name",
                                                  raw('{{"parent_id": {root}, "name": "%s"}}' % _escape))
    CASES[f"move-name-surrogate-{_label}"] = Bad("POST", "/nodes/{link}/move", 422, "invalid", "name",
                                                 raw('{{"parent_id": {root}, "name": "%s"}}' % _escape))


def _params() -> list:
    return [pytest.param(case, id=label, marks=[pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else [])
            for label, case in CASES.items()]


@pytest.mark.parametrize("case", _params())
def test_bad_request_is_a_4xx_naming_the_field_and_writes_nothing(carol, case: Bad):
    before = state(carol)
    r = send(carol, case)
    assert r.status_code < 500, f"{r.status_code} {r.text[:300]}"
    body = assert_problem(r, case.status, case.error, case.field)
    if case.says is not None:
        assert case.says in body["detail"], body
    assert not body["detail"].startswith("Value error"), body
    assert state(carol) == before, "a rejected request changed something"


# --- cases that need more than one request -----------------------------------------------


def test_listing_after_a_name_with_nul_is_refused(carol, request: pytest.FixtureRequest, tmp_path):  # noqa: ANN001
    """On a server of its own: on PostgreSQL the bug logs a traceback, which would fail
    the shared server's teardown check for every other test of this module."""
    kind = "postgres-s3" if carol.server.db_url else "sqlite-local"
    with start_server(kind, tmp_path, request) as srv:
        api = Api(srv, srv.add_user("nul"))
        try:
            r = api.get(f"/nodes/{api.root_id}/children", params={"after": "a\x00"})
        finally:
            api.close()
    assert_problem(r, 422, "invalid", "after")


@pytest.mark.parametrize("label", NAME_MAX_OK)
def test_names_of_exactly_255_bytes_are_accepted(carol, label: str):
    name = NAME_MAX_OK[label]
    assert len(name.encode()) == 255
    r = carol.post("/dirs", json={"parent_id": carol.ids["empty_dir"], "name": name})
    assert r.status_code == 201, r.text
    node = r.json()["node"]
    assert node["name"] == name
    assert carol.get("/resolve", params={"path": f"/e/{name}"}).json()["node"]["id"] == node["id"]
    r = carol.post(f"/nodes/{node['id']}/move", json={"parent_id": carol.ids["empty_dir"], "name": name[:-1] + "Z"})
    assert r.status_code == 200, r.text
    assert carol.delete(f"/nodes/{node['id']}").status_code == 200


def test_surrogate_pair_escapes_are_a_valid_name(carol):
    r = carol.post("/dirs", content=b'{"parent_id": %d, "name": "\\ud83d\\ude00"}' % carol.ids["empty_dir"],
                   headers={"content-type": "application/json"})
    assert r.status_code == 201, r.text
    assert r.json()["node"]["name"] == "😀"
    assert carol.delete(f"/nodes/{r.json()['node']['id']}").status_code == 200


@pytest.mark.parametrize("how", ["content-length", "chunked"])
@pytest.mark.parametrize("endpoint", ["/dirs", "/files", "/uploads/prepare"])
def test_oversized_json_body_is_413(carol, endpoint: str, how: str):
    """Just over 16 MiB of otherwise valid JSON: refused before it is parsed."""
    pad = 16 * MIB + 1
    body = {
        "/dirs": {"parent_id": carol.root_id, "name": "x" * pad},
        "/files": {"path": "/" + "x" * pad, "base_rev": 0, "size": 0, "mtime_ns": 1, "chunks": []},
        "/uploads/prepare": {"chunks": [{"fingerprint": FP, "length": 1}] * (pad // 90)},
    }[endpoint]
    data = json.dumps(body).encode()
    assert len(data) > 16 * MIB
    content: Any = data if how == "content-length" else (data[i:i + MIB] for i in range(0, len(data), MIB))
    before = state(carol)
    r = carol.post(endpoint, content=content, headers={"content-type": "application/json"})
    assert_problem(r, 413, "payload_too_large", "body")
    assert state(carol) == before


def test_a_body_just_under_the_limit_is_parsed(carol):
    """The limit is on bytes, not on what is in them: 16 MiB minus a little of padding
    is read and then refused for what it says (the name is too long), not for its size."""
    data = json.dumps({"parent_id": carol.root_id, "name": "x" * (16 * MIB - 100)}).encode()
    r = carol.post("/dirs", content=data, headers={"content-type": "application/json"})
    assert_problem(r, 422, "invalid", "name")


PUBLIC_ROUTES = ("/health", "/auth/login", "/auth/token", "/s/")
"""What answers without a token: the health check, signing in (a browser, or a script
trading a password for a device token) and a share link's public side, which the link
itself opens (tests/web/test_share_links.py)."""


def test_missing_token_is_401_on_every_operation(server, carol):
    """Every operation in the OpenAPI document but the public ones answers 401 without a
    token, even with a body it would accept; the public ones answer without asking for one."""
    spec = httpx.get(server.url + "/openapi.json").json()
    anonymous = Api(server, None)
    checked = public = 0
    try:
        for path, ops in spec["paths"].items():
            for method in ops:
                url = path.replace("{node_id}", str(carol.ids["file"]))
                body = {} if method in ("post", "patch", "put") else None
                r = anonymous.request(method.upper(), url, json=body)
                if path == "/health":
                    assert r.status_code == 200
                    continue
                if path.startswith(PUBLIC_ROUTES):
                    assert r.status_code in (404, 422), (method, path, r.status_code, r.text)  # no such link; no name
                    public += 1
                    continue
                if method == "head":  # the same answer, without its body
                    assert r.status_code == 401, (path, r.status_code)
                else:
                    assert_problem(r, 401, "unauthorized", "Authorization")
                checked += 1
    finally:
        anonymous.close()
    assert checked >= 15 and public >= 5


def test_missing_chunks_commit_writes_nothing(carol):
    """One chunk uploaded, one not: 422 names only the missing one, no node appears,
    and the uploaded one still commits afterwards."""
    there, missing = os.urandom(100), os.urandom(100)
    fp_there, fp_missing = hashlib.sha256(there).hexdigest(), hashlib.sha256(missing).hexdigest()
    prep = carol.post("/uploads/prepare", json={"chunks": [{"fingerprint": fp_there, "length": 100}]})
    for ticket in prep.json()["missing"]:
        up = ticket["upload"]
        assert carol.request(up["method"], up["url"], content=there, headers={**up["headers"], "Authorization": ""}).status_code < 300
    before = state(carol)
    r = carol.post("/files", json={"path": "/d/partial", "base_rev": 0, "size": 200, "mtime_ns": 1,
                                   "chunks": [{"fingerprint": fp_there, "length": 100},
                                              {"fingerprint": fp_missing, "length": 100}]})
    body = assert_problem(r, 422, "missing_chunks", "chunks")
    assert [c["fingerprint"] for c in body["chunks"]] == [fp_missing]
    assert state(carol) == before
    r = carol.post("/files", json={"path": "/d/partial", "base_rev": 0, "size": 100, "mtime_ns": 1,
                                   "chunks": [{"fingerprint": fp_there, "length": 100}]})
    assert r.status_code == 200, r.text
    assert carol.delete(f"/nodes/{r.json()['node']['id']}").status_code == 200


def test_prepare_upload_refused_half_way_records_nothing(carol):
    """The second chunk contradicts one already stored (another length): the whole
    prepare is refused and the first chunk is not remembered as pending either, so a
    commit names it "not uploaded" rather than "not in the store"."""
    known = os.urandom(50)
    fp_known = hashlib.sha256(known).hexdigest()
    prep = carol.post("/uploads/prepare", json={"chunks": [{"fingerprint": fp_known, "length": 50}]})
    for ticket in prep.json()["missing"]:
        up = ticket["upload"]
        carol.request(up["method"], up["url"], content=known, headers={**up["headers"], "Authorization": ""})
    r = carol.post("/files", json={"path": "/d/known", "base_rev": 0, "size": 50, "mtime_ns": 1,
                                   "chunks": [{"fingerprint": fp_known, "length": 50}]})
    assert r.status_code == 200, r.text  # now the server knows it as verified, with length 50
    # Control: a chunk that *was* prepared, and never sent, is "not in the store".
    prepared = hashlib.sha256(os.urandom(10)).hexdigest()
    assert carol.post("/uploads/prepare", json={"chunks": [{"fingerprint": prepared, "length": 10}]}).status_code == 200
    r = carol.post("/files", json={"path": "/d/never", "base_rev": 0, "size": 10, "mtime_ns": 1,
                                   "chunks": [{"fingerprint": prepared, "length": 10}]})
    assert assert_problem(r, 422, "missing_chunks", "chunks")["chunks"][0]["problem"] == "not in the store"

    fresh = hashlib.sha256(os.urandom(10)).hexdigest()
    r = carol.post("/uploads/prepare", json={"chunks": [{"fingerprint": fresh, "length": 10},
                                                        {"fingerprint": fp_known, "length": 51}]})
    assert_problem(r, 422, "invalid", "chunks")
    r = carol.post("/files", json={"path": "/d/never", "base_rev": 0, "size": 10, "mtime_ns": 1,
                                   "chunks": [{"fingerprint": fresh, "length": 10}]})
    body = assert_problem(r, 422, "missing_chunks", "chunks")
    assert body["chunks"] == [{"fingerprint": fresh, "problem": "not uploaded"}]


def test_replace_refused_leaves_both_sides(carol):
    """A refused rename-with-replace tombstones nothing and moves nothing."""
    d = carol.ids["dir"]
    src = carol.post("/dirs", json={"parent_id": d, "name": "src-dir"}).json()["node"]
    dst = carol.post("/dirs", json={"parent_id": d, "name": "dst-dir"}).json()["node"]
    carol.post("/dirs", json={"parent_id": dst["id"], "name": "inside"})
    before = state(carol)
    r = carol.post(f"/nodes/{src['id']}/move", json={"parent_id": d, "name": "dst-dir", "replace": True})
    assert_problem(r, 409, "not_empty", "name")
    assert state(carol) == before
    assert carol.delete(f"/nodes/{src['id']}").status_code == 200
    assert carol.delete(f"/nodes/{dst['id']}", params={"recursive": "true"}).status_code == 200


def test_no_traceback_in_the_server_log(server, carol):
    """Everything above was answered without an unhandled exception."""
    time.sleep(0.2)
    log = server.log()
    assert "unhandled error" not in log and "Traceback" not in log, log[-5000:]
