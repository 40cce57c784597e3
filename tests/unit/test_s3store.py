"""S3Store against a real moto server over HTTP: the idempotent object protocol, the
error vocabulary, presigned URLs used with httpx, and `head`'s SHA-256 fallback for
stores that neither verify nor report checksums."""

from __future__ import annotations

import hashlib
import os
import uuid
from typing import Iterator

import httpx
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)

from cloudfs.backend.stores.s3store import S3Store, _translate
from cloudfs.backend.stores.store import NoSuchKeyError, StoreError, TransientError, chunk_key, open_store
from tests.harness import S3_ENV, moto_server


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    with pytest.MonkeyPatch.context() as mp:
        for name, value in S3_ENV.items():
            mp.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(name, raising=False)
        with moto_server() as url:
            yield url


def new_bucket_name() -> str:
    return f"cfs-unit-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store(s3_endpoint: str) -> S3Store:
    s = S3Store(new_bucket_name(), endpoint=s3_endpoint, region="us-east-1")
    s.ensure_bucket()
    return s


def bucket_exists(s: S3Store) -> bool:
    try:
        s.client.head_bucket(Bucket=s.bucket)
    except ClientError:
        return False
    return True


# Buckets


def test_ensure_bucket_creates_the_bucket(s3_endpoint: str) -> None:
    s = S3Store(new_bucket_name(), endpoint=s3_endpoint)
    assert not bucket_exists(s)
    s.ensure_bucket()
    assert bucket_exists(s)
    s.ensure_bucket()  # idempotent
    assert bucket_exists(s)


def test_ensure_bucket_outside_us_east_1(s3_endpoint: str) -> None:
    """Outside us-east-1, S3 insists on a LocationConstraint matching the endpoint's region."""
    s = S3Store(new_bucket_name(), endpoint=s3_endpoint, region="eu-west-1")
    s.ensure_bucket()
    assert bucket_exists(s)
    assert s.client.get_bucket_location(Bucket=s.bucket)["LocationConstraint"] == "eu-west-1"
    s.ensure_bucket()
    s.put("k", b"v")
    assert s.get("k") == b"v"


def test_missing_bucket_is_no_such_key(s3_endpoint: str) -> None:
    s = S3Store(new_bucket_name(), endpoint=s3_endpoint)
    with pytest.raises(NoSuchKeyError):
        s.get("k")
    with pytest.raises(NoSuchKeyError):
        s.head("k")


def test_open_store_builds_s3_store(s3_endpoint: str, tmp_path) -> None:  # noqa: ANN001
    bucket = new_bucket_name()
    s = open_store(f"s3://{bucket}?endpoint={s3_endpoint}&region=us-east-1", data_dir=tmp_path, secret=b"s")
    assert isinstance(s, S3Store) and s.bucket == bucket
    s.ensure_bucket()
    s.put("k", b"v")
    assert s.get("k") == b"v"
    with pytest.raises(ValueError, match="unknown parameter"):
        open_store(f"s3://{bucket}?endpiont={s3_endpoint}", data_dir=tmp_path, secret=b"s")
    with pytest.raises(ValueError, match="no bucket"):
        open_store(f"s3://?endpoint={s3_endpoint}", data_dir=tmp_path, secret=b"s")


# The object protocol


def test_put_get_head(store: S3Store) -> None:
    data = os.urandom(3000)
    key = chunk_key(1, sha(data))
    store.put(key, data)
    assert store.get(key) == data
    info = store.head(key)
    assert info.size == len(data)
    assert info.sha256_hex == sha(data)
    assert not info.verified_on_write


def test_put_twice_is_fine(store: S3Store) -> None:
    store.put("k", b"same")
    store.put("k", b"same")
    assert store.get("k") == b"same"
    assert list(store.list()) == ["k"]


def test_put_empty_object(store: S3Store) -> None:
    store.put("empty", b"")
    assert store.get("empty") == b""
    info = store.head("empty")
    assert info.size == 0 and info.sha256_hex == sha(b"")


def test_missing_key_raises_no_such_key(store: S3Store) -> None:
    with pytest.raises(NoSuchKeyError):
        store.get("missing")
    with pytest.raises(NoSuchKeyError):
        store.head("missing")


def test_delete_is_idempotent(store: S3Store) -> None:
    store.delete("never-existed")
    store.put("k", b"x")
    store.delete("k")
    store.delete("k")
    with pytest.raises(NoSuchKeyError):
        store.get("k")
    with pytest.raises(NoSuchKeyError):
        store.head("k")
    assert list(store.list()) == []


def test_list_and_prefix(store: S3Store) -> None:
    keys = [chunk_key(1, sha(b"a")), chunk_key(1, sha(b"b")), chunk_key(2, sha(b"c")), "top"]
    for key in keys:
        store.put(key, key.encode())
    assert sorted(store.list()) == sorted(keys)
    assert sorted(store.list("u1/")) == sorted(keys[:2])
    assert list(store.list("u2/")) == [keys[2]]
    assert list(store.list("nothing")) == []
    store.delete(keys[0])
    assert sorted(store.list()) == sorted(keys[1:])


def test_errors_are_store_errors(store: S3Store) -> None:
    """Whatever goes wrong surfaces as the store's vocabulary, never a botocore error."""
    with pytest.raises(StoreError) as info:
        store.get("")  # botocore refuses the parameter: retrying cannot help
    assert not isinstance(info.value, TransientError)
    with pytest.raises(NoSuchKeyError):
        list(S3Store(new_bucket_name(), endpoint=store.client.meta.endpoint_url).list())


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


@pytest.mark.parametrize(("exc", "kind"), [
    (client_error("NoSuchKey", 404), NoSuchKeyError),
    (client_error("404", 404), NoSuchKeyError),
    (client_error("NoSuchBucket", 404), NoSuchKeyError),
    (client_error("SlowDown", 503), TransientError),
    (client_error("InternalError", 500), TransientError),
    (client_error("RequestTimeout", 400), TransientError),
    (client_error("AccessDenied", 403), StoreError),
    (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), TransientError),
    (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), TransientError),
    (ConnectionClosedError(endpoint_url="http://127.0.0.1:1"), TransientError),
    (ParamValidationError(report="bad key"), StoreError),
    (NoCredentialsError(), StoreError),
    (ValueError("odd"), StoreError),
])
def test_translate_vocabulary(exc: Exception, kind: type[StoreError]) -> None:
    translated = _translate(exc, "k")
    assert type(translated) is kind


# Presigned URLs, used the way a device uses them


def presigned_put(store: S3Store, key: str, signed_for: bytes, body: bytes) -> httpx.Response:
    req = store.presign_put(key, stored_length=len(signed_for), stored_sha256=sha(signed_for), expires=600,
                            base_url="unused")
    assert req.method == "PUT"
    assert "x-amz-checksum-sha256" in req.headers
    return httpx.put(req.url, content=body, headers=req.headers, timeout=30)


def test_presigned_put_then_head(store: S3Store) -> None:
    data = os.urandom(200_000)
    key = chunk_key(1, sha(data))
    response = presigned_put(store, key, data, data)
    assert response.status_code == 200, response.text
    info = store.head(key)
    assert info.size == len(data)
    assert info.sha256_hex == sha(data)
    assert store.get(key) == data


def test_presigned_get_returns_the_bytes(store: S3Store) -> None:
    data = os.urandom(50_000)
    store.put("k", data)
    req = store.presign_get("k", expires=600, base_url="unused")
    assert req.method == "GET"
    response = httpx.request(req.method, req.url, headers=req.headers, timeout=30)
    assert response.status_code == 200
    assert response.content == data


def test_presigned_get_of_missing_key_is_404(store: S3Store) -> None:
    req = store.presign_get("missing", expires=600, base_url="unused")
    assert httpx.get(req.url, timeout=30).status_code == 404


def test_head_hashes_bytes_it_has_no_checksum_for(store: S3Store) -> None:
    """moto neither checks the signed checksum of a presigned PUT nor keeps it, so `head`
    streams the object through SHA-256: replaced bytes must show up as a different hash."""
    good = os.urandom(3 * 1024 * 1024 + 17)  # several 1 MiB pieces of the streaming hash
    evil = bytearray(good)
    evil[len(evil) // 2] ^= 0xFF
    evil = bytes(evil)
    key = chunk_key(1, sha(good))

    assert presigned_put(store, key, good, good).status_code == 200
    assert store.head(key).sha256_hex == sha(good)

    # the same signed URL, different bytes: real S3 refuses this, moto stores it
    assert presigned_put(store, key, good, evil).status_code == 200
    raw = store.client.head_object(Bucket=store.bucket, Key=key, ChecksumMode="ENABLED")
    assert "ChecksumSHA256" not in raw, "moto reported a checksum: this test no longer covers the fallback"
    info = store.head(key)
    assert info.size == len(good)
    assert info.sha256_hex != sha(good)
    assert info.sha256_hex == sha(evil)


def test_head_fallback_of_a_fresh_unverified_upload(store: S3Store) -> None:
    signed_for = b"A" * 1000
    key = chunk_key(1, sha(signed_for))
    assert presigned_put(store, key, signed_for, b"B" * 1000).status_code == 200
    info = store.head(key)
    assert info.size == 1000
    assert info.sha256_hex == sha(b"B" * 1000) != sha(signed_for)


def test_delete_many_in_one_request_and_missing_keys_are_fine(store: S3Store) -> None:
    keys = [f"u1/aa/{i:064x}" for i in range(5)]
    for key in keys:
        store.put(key, b"x")
    store.delete_many(keys[:3] + ["u1/aa/never-there"])
    assert sorted(store.list("u1/")) == sorted(keys[3:])
    store.delete_many([])
