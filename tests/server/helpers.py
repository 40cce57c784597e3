"""Small synchronous helpers on top of the test `Api` client."""

from __future__ import annotations

import hashlib
import os
import time

from tests.conftest import Api


def mkdir(api: Api, parent_id: int, name: str) -> dict:
    r = api.post("/dirs", json={"parent_id": parent_id, "name": name})
    assert r.status_code == 201, r.text
    return r.json()["node"]


def put_file(api: Api, path: str, data: bytes | None = None, *, base_rev: int = 0) -> dict:
    """Upload `data` as one chunk (the local store's blob route or S3) and commit it."""
    data = os.urandom(64) if data is None else data
    chunks = []
    if data:
        fp = hashlib.sha256(data).hexdigest()
        prep = api.post("/uploads/prepare", json={"chunks": [{"fingerprint": fp, "length": len(data)}]})
        assert prep.status_code == 200, prep.text
        for ticket in prep.json()["missing"]:
            up = ticket["upload"]
            r = api.request(up["method"], up["url"], content=data, headers={**up["headers"], "Authorization": ""})
            assert r.status_code < 300, r.text
        chunks = [{"fingerprint": fp, "length": len(data)}]
    r = api.post("/files", json={"path": path, "base_rev": base_rev, "size": len(data), "mtime_ns": time.time_ns(),
                                 "chunks": chunks})
    assert r.status_code == 200, r.text
    return r.json()["node"]


def names(api: Api, dir_id: int) -> list[str]:
    r = api.get(f"/nodes/{dir_id}/children")
    assert r.status_code == 200, r.text
    return [e["name"] for e in r.json()["entries"]]


def cursor(api: Api) -> int:
    return api.get("/me").json()["cursor"]


def changes(api: Api, after: int, **params) -> dict:
    r = api.get("/changes", params={"cursor": after, **params})
    assert r.status_code == 200, r.text
    return r.json()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text exposition (0 if absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        sample, _, rest = key.partition("{")
        got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if sample == name and got == want:
            return float(value)
    return 0.0
