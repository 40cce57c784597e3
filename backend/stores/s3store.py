"""S3 (or any S3-compatible store) through boto3.

Devices talk to S3 directly on SigV4 presigned URLs; the presigned PUT signs the
SHA-256 checksum header, so real S3 refuses a body that does not match. Stores that
do not check or report checksums (moto, some S3 clones) are still verified: `head`
falls back to streaming the object through SHA-256 without holding it in memory.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Iterator

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError
from botocore.exceptions import ConnectionError as BotoConnectionError

from ..protocol.wire import SignedRequest
from .store import NoSuchKeyError, ObjectInfo, StoreError, TransientError

_NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}


def _translate(exc: Exception, key: str) -> StoreError:
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _NOT_FOUND:
            return NoSuchKeyError(key)
        if status >= 500 or code in ("SlowDown", "RequestTimeout", "InternalError"):
            return TransientError(f"{key}: {code} ({status})")
        return StoreError(f"{key}: {code} ({status})")
    if isinstance(exc, (BotoConnectionError, HTTPClientError, IncompleteReadError)):
        return TransientError(f"{key}: {exc}")
    # other BotoCoreErrors (bad parameters, no credentials) fail the same way on every retry
    return StoreError(f"{key}: {exc}")


class S3Store:
    def __init__(self, bucket: str, *, endpoint: str | None = None, region: str | None = None) -> None:
        self.bucket = bucket
        self.reads_back = True
        """Until a HEAD shows a checksum the store checked on PUT (real S3), verifying an
        object means reading it back (moto does not keep one)."""
        self.region = region or "us-east-1"
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=self.region,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"mode": "standard", "max_attempts": 5},
                connect_timeout=5,
                read_timeout=30,
                max_pool_connections=32,
            ),
        )

    def ensure_bucket(self) -> None:
        """Create the bucket when it does not exist yet (first start of a server)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) not in ("404", "NoSuchBucket", "NotFound"):
                raise _translate(exc, self.bucket) from exc
        # outside us-east-1, S3 refuses a bucket without a LocationConstraint for its region
        where = {} if self.region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": self.region}}
        try:
            self.client.create_bucket(Bucket=self.bucket, **where)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) != "BucketAlreadyOwnedByYou":  # lost a race: fine
                raise _translate(exc, self.bucket) from exc

    def put(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ChecksumAlgorithm="SHA256")
        except Exception as exc:
            raise _translate(exc, key) from exc

    def get(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception as exc:
            raise _translate(exc, key) from exc

    def head(self, key: str) -> ObjectInfo:
        try:
            meta = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except Exception as exc:
            raise _translate(exc, key) from exc
        checksum = meta.get("ChecksumSHA256")
        if checksum and "-" not in checksum:
            self.reads_back = False
            return ObjectInfo(size=meta["ContentLength"], sha256_hex=base64.b64decode(checksum).hex())
        return ObjectInfo(size=meta["ContentLength"], sha256_hex=self._stream_sha256(key))

    def stream(self, key: str) -> Iterator[bytes]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            yield from body.iter_chunks(1 << 20)
        except Exception as exc:
            raise _translate(exc, key) from exc

    def _stream_sha256(self, key: str) -> str:
        digest = hashlib.sha256()
        for piece in self.stream(key):
            digest.update(piece)
        return digest.hexdigest()

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            raise _translate(exc, key) from exc

    def delete_many(self, keys: list[str]) -> None:
        if not keys:
            return
        try:
            answer = self.client.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": key} for key in keys], "Quiet": True})
        except Exception as exc:
            raise _translate(exc, keys[0]) from exc
        errors = [e for e in answer.get("Errors", []) if e.get("Code") not in _NOT_FOUND]
        if errors:
            raise TransientError(f"{len(errors)} of {len(keys)} deletes failed, e.g. {errors[0].get('Key')}: "
                                 f"{errors[0].get('Code')}")

    def list(self, prefix: str = "") -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield item["Key"]
        except Exception as exc:
            raise _translate(exc, prefix) from exc

    def presign_put(self, key: str, *, stored_length: int, stored_sha256: str, expires: int, base_url: str,
                    compression: str = "none", plain_length: int | None = None) -> SignedRequest:
        checksum = base64.b64encode(bytes.fromhex(stored_sha256)).decode()
        url = self.client.generate_presigned_url(
            "put_object",
            Params={"Bucket": self.bucket, "Key": key, "ChecksumSHA256": checksum, "ContentLength": stored_length},
            ExpiresIn=expires,
        )
        return SignedRequest(method="PUT", url=url, headers={"x-amz-checksum-sha256": checksum})

    def presign_get(self, key: str, *, expires: int, base_url: str) -> SignedRequest:
        url = self.client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires)
        return SignedRequest(method="GET", url=url)
