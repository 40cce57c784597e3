"""Retention and chunk collection on real servers (SQLite + local store, PostgreSQL +
moto S3). Time is moved with the server's hidden --clock-offset, never slept through."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
import uuid
from pathlib import Path
from typing import Iterator

import boto3
import pytest

from cloudfs.backend.stores.store import open_store
from tests.conftest import ENGINES, Api
from tests.harness import S3_ENV, ServerProcess, cloudfs_server, postgres_database
from tests.server.test_history import read

MONTH_S = 31 * 86_400


@contextlib.contextmanager
def collecting_server(kind: str, tmp: Path, request: pytest.FixtureRequest, *, offset: float,
                      interval: float = 0.2) -> Iterator[tuple[ServerProcess, object]]:
    """A server whose collector runs every `interval` s with its clock `offset` s ahead;
    yields it and a way to list the store's keys."""
    args = ["--collect-interval", str(interval), "--clock-offset", str(offset), "--retain-days", "30"]
    if kind == "sqlite-local":
        with cloudfs_server(tmp, extra_args=args) as srv:
            store = open_store(str(tmp / "chunks"), data_dir=tmp, secret=b"x" * 32)
            yield srv, lambda prefix: sorted(store.list(prefix))
        return
    bucket = f"cfs-{uuid.uuid4().hex[:10]}"
    moto = request.getfixturevalue("moto_url")
    with postgres_database(request.getfixturevalue("pg_admin_url")) as db_url, \
            cloudfs_server(tmp, db_url=db_url, store_url=f"s3://{bucket}?endpoint={moto}&region=us-east-1",
                           extra_args=args) as srv:
        s3 = boto3.client("s3", endpoint_url=moto, region_name="us-east-1",
                          aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"])

        def keys(prefix: str) -> list[str]:
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            return sorted(o["Key"] for page in pages for o in page.get("Contents", []))
        yield srv, keys


def upload(api: Api, path: str, data: bytes, *, base_rev: int = 0, deadline_s: float = 60) -> dict:
    """What a device does: prepare, PUT what is missing, commit; come back while the
    collector is busy with a chunk (503), upload again what it took meanwhile (422),
    and again after the store failed a PUT (moto answers 500 now and then to a PUT
    racing the collector's delete of the same key; the uploader retries those too)."""
    fp = hashlib.sha256(data).hexdigest()
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        prep = api.post("/uploads/prepare", json={"chunks": [{"fingerprint": fp, "length": len(data)}]})
        if prep.status_code == 503:
            time.sleep(0.05)
            continue
        assert prep.status_code == 200, prep.text
        stored = True
        for ticket in prep.json()["missing"]:
            up = ticket["upload"]
            r = api.request(up["method"], up["url"], content=data, headers={**up["headers"], "Authorization": ""})
            assert r.status_code < 300 or r.status_code >= 500, r.text
            stored = stored and r.status_code < 300
        if not stored:
            time.sleep(0.05)
            continue
        r = api.post("/files", json={"path": path, "base_rev": base_rev, "size": len(data),
                                     "mtime_ns": time.time_ns(), "chunks": [{"fingerprint": fp, "length": len(data)}]})
        if r.status_code in (422, 503) and r.json()["error"] in ("missing_chunks", "collecting", "store_unavailable"):
            continue
        assert r.status_code == 200, r.text
        return r.json()["node"]
    raise AssertionError(f"{path}: not committed within {deadline_s}s")


def wait_for(check, what: str, timeout: float = 30) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what}: not after {timeout}s")


@pytest.mark.parametrize("kind", ENGINES)
def test_history_is_kept_for_the_period_then_collected(kind: str, tmp_path: Path,
                                                       request: pytest.FixtureRequest) -> None:
    old, new, gone = os.urandom(2000), os.urandom(2000), os.urandom(3000)
    for offset, collected in ((0, False), (MONTH_S, True)):
        with collecting_server(kind, tmp_path / str(offset), request, offset=offset) as (srv, keys):
            api = Api(srv, srv.add_user("alice"))
            doc = upload(api, "/doc.txt", old)
            upload(api, "/doc.txt", new, base_rev=doc["rev"])
            trashed = upload(api, "/trashed.bin", gone)
            assert api.delete(f"/nodes/{trashed['id']}").status_code == 200
            owner = f"u{api.me['user_id']}/"
            if not collected:
                time.sleep(1.0)  # five passes of the collector: a month has not passed
                assert [v["rev"] for v in api.get(f"/files/{doc['id']}/versions").json()["versions"]] == [2, 1]
                assert len(api.get("/trash").json()["entries"]) == 1
                assert len(keys(owner)) == 3
                continue
            wait_for(lambda: len(keys(owner)) == 1, "the old version's and the deleted file's chunks deleted")
            assert [v["rev"] for v in api.get(f"/files/{doc['id']}/versions").json()["versions"]] == [2]
            assert api.get("/trash").json()["entries"] == []
            assert read(api, doc["id"]) == new
            # one pass or two: a pass may run between the second version and the delete
            purged = re.findall(r"collector: purged (\d+) old version\(s\) and (\d+) deleted node\(s\)", srv.log())
            assert [sum(int(p[i]) for p in purged) for i in (0, 1)] == [1, 1], purged


def test_an_account_keeps_its_own_period(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    with collecting_server("sqlite-local", tmp_path, request, offset=MONTH_S) as (srv, keys):
        import subprocess

        from tests.harness import CLOUDFS
        out = subprocess.run([*CLOUDFS, "user", "add", "keeper", "--data", str(tmp_path), "--retain-days", "90"],
                             capture_output=True, text=True, timeout=60)
        api = Api(srv, out.stdout.strip().splitlines()[-1])
        doc = upload(api, "/doc.txt", b"one")
        upload(api, "/doc.txt", b"two", base_rev=doc["rev"])
        time.sleep(1.0)
        assert [v["rev"] for v in api.get(f"/files/{doc['id']}/versions").json()["versions"]] == [2, 1]


@pytest.mark.parametrize("kind", ENGINES)
def test_collection_racing_uploads_never_loses_a_committed_chunk(kind: str, tmp_path: Path,
                                                                 request: pytest.FixtureRequest) -> None:
    """Files are written, deleted and written again with the same bytes (dedup) while the
    collector, a month ahead, deletes every chunk the moment nothing names it."""
    with collecting_server(kind, tmp_path, request, offset=MONTH_S, interval=0.02) as (srv, keys):
        api = Api(srv, srv.add_user("racer"))
        shared = [os.urandom(1500) for _ in range(4)]
        kept: dict[int, bytes] = {}
        for i in range(40):
            data = shared[i % len(shared)]
            node = upload(api, f"/f{i}", data)
            if i % 2:
                assert api.delete(f"/nodes/{node['id']}").status_code == 200  # its chunk is now unreferenced...
            else:
                kept[node["id"]] = data  # ...until the next file with the same bytes names it again
        time.sleep(0.5)
        for node_id, data in kept.items():
            assert read(api, node_id) == data, f"node {node_id} lost its bytes"
        deleted = [int(n) for n in re.findall(r"deleted (\d+) \(", srv.log())]
        assert sum(deleted) >= 5, "the collector did not race the uploads"
        assert "Traceback" not in srv.log()
