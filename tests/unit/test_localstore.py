"""LocalStore, the embedded content-addressed directory: the idempotent object protocol,
key validation, BlobWriter's verify-then-publish, and the signed /blobs URLs."""

from __future__ import annotations

import hashlib
import os
import time
import tracemalloc
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
import zstandard
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cloudfs.backend.stores.localstore import BlobWriter, LocalStore, check_key
from cloudfs.backend.stores.store import CorruptChunkError, NoSuchKeyError, StoreError, chunk_key, open_store

SECRET = b"unit-test-secret"
FP = hashlib.sha256(b"chunk").hexdigest()
KEY = chunk_key(1, FP)

INVALID_KEYS = [
    "",
    "..",
    "../x",
    "a/../b",
    "a/..",
    "/abs",
    "/etc/passwd",
    "a//b",
    ".tmp/x",
    ".hidden",
    "a\\b",
    "a b",
    "abc\n",
    "a\nb",
    "x" * 256,
]


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store", secret=SECRET)


def tmp_files(store: LocalStore) -> list[str]:
    return sorted(os.listdir(store.root / ".tmp"))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# The object protocol


def test_put_get_head(store: LocalStore) -> None:
    store.put(KEY, b"hello")
    assert store.get(KEY) == b"hello"
    info = store.head(KEY)
    assert info.size == 5
    assert info.verified_on_write
    assert (store.root / KEY).read_bytes() == b"hello"
    assert tmp_files(store) == []


def test_put_twice_is_fine(store: LocalStore) -> None:
    store.put(KEY, b"same bytes")
    store.put(KEY, b"same bytes")
    assert store.get(KEY) == b"same bytes"
    assert list(store.list()) == [KEY]
    assert tmp_files(store) == []


def test_put_empty_object(store: LocalStore) -> None:
    store.put("empty", b"")
    assert store.get("empty") == b""
    assert store.head("empty").size == 0


def test_missing_key_raises_no_such_key(store: LocalStore) -> None:
    with pytest.raises(NoSuchKeyError):
        store.get(KEY)
    with pytest.raises(NoSuchKeyError):
        store.head(KEY)
    with pytest.raises(NoSuchKeyError):
        store.open_path(KEY)


def test_delete_is_idempotent(store: LocalStore) -> None:
    store.delete(KEY)  # never existed
    store.put(KEY, b"x")
    store.delete(KEY)
    store.delete(KEY)
    with pytest.raises(NoSuchKeyError):
        store.get(KEY)
    with pytest.raises(NoSuchKeyError):
        store.head(KEY)
    assert list(store.list()) == []


def test_directories_are_not_objects(store: LocalStore) -> None:
    """`u1/ab/<fp>` creates directories `u1` and `u1/ab`; they are not keys."""
    store.put(KEY, b"x")
    parent, grandparent = KEY.rsplit("/", 1)[0], KEY.split("/", 1)[0]
    for key in (parent, grandparent):
        with pytest.raises(NoSuchKeyError):
            store.get(key)
        with pytest.raises(NoSuchKeyError):
            store.head(key)
        with pytest.raises(NoSuchKeyError):
            store.open_path(key)
        store.delete(key)  # no object there: nothing to do
    # a key "below" an object is not an object either
    with pytest.raises(NoSuchKeyError):
        store.head(KEY + "/below")
    store.delete(KEY + "/below")
    assert store.get(KEY) == b"x"


def test_list_and_prefix(store: LocalStore) -> None:
    keys = [chunk_key(1, sha(b"a")), chunk_key(1, sha(b"b")), chunk_key(2, sha(b"c")), "top"]
    for key in keys:
        store.put(key, key.encode())
    assert sorted(store.list()) == sorted(keys)
    assert sorted(store.list("u1/")) == sorted(keys[:2])
    assert list(store.list("u2/")) == [keys[2]]
    assert list(store.list("nothing")) == []
    store.delete(keys[0])
    assert sorted(store.list()) == sorted(keys[1:])


def test_list_skips_uploads_in_progress(store: LocalStore) -> None:
    writer = BlobWriter(store, KEY, expected_sha256=None, expected_length=3)
    try:
        writer.write(b"abc")
        assert len(tmp_files(store)) == 1
        assert list(store.list()) == []
    finally:
        writer.abort()
    assert tmp_files(store) == []


def test_list_finds_keys_with_dot_segments(store: LocalStore) -> None:
    """Only the top-level .tmp is private; a key may contain a `.tmp` segment deeper down."""
    store.put("a/.tmp/x", b"1")
    store.put("a/.hidden", b"2")
    assert sorted(store.list()) == ["a/.hidden", "a/.tmp/x"]


def test_open_store_builds_local_store(tmp_path: Path) -> None:
    s = open_store("blobs", data_dir=tmp_path, secret=SECRET)
    assert isinstance(s, LocalStore) and s.root == tmp_path / "blobs"
    s = open_store(f"file://{tmp_path}/other", data_dir=tmp_path, secret=SECRET)
    assert isinstance(s, LocalStore) and s.root == tmp_path / "other"
    with pytest.raises(ValueError):
        open_store("ftp://x", data_dir=tmp_path, secret=SECRET)


# Keys


@pytest.mark.parametrize("key", INVALID_KEYS)
def test_invalid_keys_are_refused(tmp_path: Path, store: LocalStore, key: str) -> None:
    with pytest.raises(StoreError):
        check_key(key)
    with pytest.raises(StoreError):
        store.put(key, b"x")
    with pytest.raises(StoreError):
        store.get(key)
    with pytest.raises(StoreError):
        store.head(key)
    with pytest.raises(StoreError):
        store.delete(key)
    with pytest.raises(StoreError):
        BlobWriter(store, key, expected_sha256=None, expected_length=1)
    with pytest.raises(StoreError):
        store.presign_put(key, stored_length=1, stored_sha256=sha(b"x"), expires=60, base_url="http://h")
    with pytest.raises(StoreError):
        store.presign_get(key, expires=60, base_url="http://h")
    assert sorted(os.listdir(tmp_path)) == ["store"]  # nothing escaped the root
    assert list(store.list()) == []
    assert tmp_files(store) == []


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.text(alphabet=st.sampled_from("ab0./\\-_\n \x00~:"), max_size=12) | st.text(max_size=12))
@example(key="0\n")
@example(key="a/.")
@example(key="a/./b")
def test_accepted_keys_stay_inside_the_root(tmp_path: Path, key: str) -> None:
    root = (tmp_path / "store").resolve()
    try:
        check_key(key)
    except NoSuchKeyError:
        return
    target = (root / key).resolve()
    assert target.is_relative_to(root) and target != root
    assert not target.is_relative_to(root / ".tmp")
    assert "\n" not in key and "\x00" not in key


# BlobWriter: verify, then publish


def upload(store: LocalStore, key: str, body: bytes, *, piece: int = 65536, **kwargs: object) -> None:
    """Drive a BlobWriter the way the /blobs route does: stream, finish, always abort."""
    writer = BlobWriter(store, key, **kwargs)  # type: ignore[arg-type]
    try:
        for start in range(0, len(body), piece):
            writer.write(body[start:start + piece])
        writer.finish()
    finally:
        writer.abort()


def assert_nothing_left(store: LocalStore, key: str) -> None:
    assert not (store.root / key).exists()
    assert tmp_files(store) == []
    with pytest.raises(NoSuchKeyError):
        store.head(key)


def test_blob_writer_publishes_a_verified_body(store: LocalStore) -> None:
    body = os.urandom(200_000)
    key = chunk_key(1, sha(body))
    upload(store, key, body, expected_sha256=sha(body), expected_length=len(body))
    assert store.get(key) == body
    assert tmp_files(store) == []


def test_blob_writer_refuses_wrong_sha256(store: LocalStore) -> None:
    body = os.urandom(100_000)
    key = chunk_key(1, sha(body))
    with pytest.raises(CorruptChunkError):
        upload(store, key, body[:-1] + bytes([body[-1] ^ 1]), expected_sha256=sha(body), expected_length=len(body))
    assert_nothing_left(store, key)


def test_blob_writer_refuses_short_body(store: LocalStore) -> None:
    body = os.urandom(100_000)
    key = chunk_key(1, sha(body))
    with pytest.raises(CorruptChunkError):
        upload(store, key, body[:-10], expected_sha256=sha(body), expected_length=len(body))
    assert_nothing_left(store, key)


def test_blob_writer_refuses_long_body(store: LocalStore) -> None:
    body = os.urandom(100_000)
    key = chunk_key(1, sha(body))
    with pytest.raises(CorruptChunkError):
        upload(store, key, body + b"x", expected_sha256=sha(body), expected_length=len(body))
    assert_nothing_left(store, key)


def test_failed_upload_keeps_the_existing_object(store: LocalStore) -> None:
    body = b"good bytes"
    key = chunk_key(1, sha(body))
    store.put(key, body)
    with pytest.raises(CorruptChunkError):
        upload(store, key, b"evil bytes", expected_sha256=sha(body), expected_length=len(body))
    assert store.get(key) == body
    assert tmp_files(store) == []


def test_abort_before_finish_leaves_nothing(store: LocalStore) -> None:
    writer = BlobWriter(store, KEY, expected_sha256=None, expected_length=10)
    writer.write(b"12345")
    writer.abort()
    writer.abort()  # idempotent
    assert_nothing_left(store, KEY)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=5000), piece=st.integers(1, 6000), flip=st.integers(0, 5000),
       drop=st.integers(0, 3))
def test_blob_writer_property(tmp_path: Path, body: bytes, piece: int, flip: int, drop: int) -> None:
    """Published if and only if the body is exactly what the writer was opened for."""
    store = LocalStore(tmp_path / f"s{os.urandom(4).hex()}", secret=SECRET)
    sent = bytearray(body)
    if sent and flip < len(sent):
        sent[flip] ^= 0x80
    sent = bytes(sent[:len(sent) - drop] if drop <= len(sent) else b"")
    key = chunk_key(1, sha(body))
    if sent == body:
        upload(store, key, sent, piece=piece, expected_sha256=sha(body), expected_length=len(body))
        assert store.get(key) == body
        assert tmp_files(store) == []
    else:
        with pytest.raises(CorruptChunkError):
            upload(store, key, sent, piece=piece, expected_sha256=sha(body), expected_length=len(body))
        assert_nothing_left(store, key)


# zstd bodies: stored bytes are checked against the signed stored hash/length, the
# decompressed bytes against the plain fingerprint/length.


def zstd_upload(store: LocalStore, key: str, stored: bytes, *, plain_sha256: str | None, plain_length: int | None,
                piece: int = 65536) -> None:
    upload(store, key, stored, piece=piece, expected_sha256=sha(stored), expected_length=len(stored),
           compression="zstd", plain_sha256=plain_sha256, plain_length=plain_length)


PLAIN = b"compressible " * 20_000


def test_zstd_body_verified_against_plain_fingerprint(store: LocalStore) -> None:
    stored = zstandard.ZstdCompressor().compress(PLAIN)
    assert len(stored) < len(PLAIN)
    key = chunk_key(1, sha(PLAIN))
    zstd_upload(store, key, stored, plain_sha256=sha(PLAIN), plain_length=len(PLAIN), piece=1000)
    assert store.get(key) == stored  # stored as uploaded, compressed
    assert zstandard.ZstdDecompressor().decompress(store.get(key)) == PLAIN
    assert tmp_files(store) == []


def test_zstd_streamed_frame_without_content_size(store: LocalStore) -> None:
    cobj = zstandard.ZstdCompressor().compressobj()
    stored = cobj.compress(PLAIN) + cobj.flush()
    key = chunk_key(1, sha(PLAIN))
    zstd_upload(store, key, stored, plain_sha256=sha(PLAIN), plain_length=len(PLAIN), piece=333)
    assert store.get(key) == stored


@pytest.mark.parametrize("case", ["wrong_plain_sha", "plain_longer", "plain_shorter", "other_plain"])
def test_zstd_body_refused_when_plain_does_not_match(store: LocalStore, case: str) -> None:
    key = chunk_key(1, sha(PLAIN))
    plain_sha, plain_len, plain = sha(PLAIN), len(PLAIN), PLAIN
    if case == "wrong_plain_sha":
        plain_sha = sha(b"something else")
    elif case == "plain_longer":
        plain = PLAIN + b"x"
    elif case == "plain_shorter":
        plain = PLAIN[:-1]
    else:
        plain = PLAIN[:-1] + b"?"
    stored = zstandard.ZstdCompressor().compress(plain)
    with pytest.raises(CorruptChunkError):
        zstd_upload(store, key, stored, plain_sha256=plain_sha, plain_length=plain_len)
    assert_nothing_left(store, key)


@pytest.mark.parametrize("case", ["not_zstd", "truncated", "trailing_junk", "two_frames", "empty"])
def test_zstd_malformed_body_refused(store: LocalStore, case: str) -> None:
    """Anything but exactly one complete frame is a corrupt chunk, never another error."""
    frame = zstandard.ZstdCompressor(write_checksum=True).compress(PLAIN)
    stored = {
        "not_zstd": os.urandom(5000),
        "truncated": frame[:-4],
        "trailing_junk": frame + b"junk",
        "two_frames": frame + frame,
        "empty": b"",
    }[case]
    key = chunk_key(1, sha(PLAIN))
    with pytest.raises(CorruptChunkError):
        zstd_upload(store, key, stored, plain_sha256=sha(PLAIN), plain_length=len(PLAIN))
    assert_nothing_left(store, key)


def test_zstd_bomb_refused_without_inflating_in_memory(store: LocalStore) -> None:
    """A small body that expands to 256 MiB must be refused without holding the output."""
    cobj = zstandard.ZstdCompressor(level=19).compressobj()
    zeros = bytes(16 * 1024 * 1024)
    bomb = b"".join(cobj.compress(zeros) for _ in range(16)) + cobj.flush()
    del zeros
    assert len(bomb) < 64 * 1024
    key = chunk_key(1, sha(PLAIN))
    tracemalloc.start()
    try:
        with pytest.raises(CorruptChunkError):
            zstd_upload(store, key, bomb, plain_sha256=sha(PLAIN), plain_length=len(PLAIN))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 * 1024, f"decompression held {peak >> 20} MiB"
    assert_nothing_left(store, key)


# Signed URLs


def split_signed(url: str) -> tuple[str, str, dict[str, str], str]:
    parts = urlsplit(url)
    assert parts.path.startswith("/blobs/")
    params = dict(parse_qsl(parts.query, strict_parsing=True))
    sig = params.pop("sig")
    return parts.netloc, parts.path[len("/blobs/"):], params, sig


def signed_put(store: LocalStore, expires: int = 600) -> tuple[str, dict[str, str], str]:
    req = store.presign_put(KEY, stored_length=1234, stored_sha256=sha(b"stored"), expires=expires,
                            base_url="http://server:8080/", compression="zstd", plain_length=5000)
    assert req.method == "PUT"
    netloc, key, params, sig = split_signed(req.url)
    assert netloc == "server:8080"
    return key, params, sig


def test_presign_put_is_accepted(store: LocalStore) -> None:
    key, params, sig = signed_put(store)
    assert key == KEY
    assert params == {"exp": params["exp"], "sha": sha(b"stored"), "len": "1234", "c": "zstd", "plen": "5000"}
    assert int(params["exp"]) >= time.time() + 590
    assert store.check_signature("PUT", key, params, sig)


def test_presign_put_defaults_plain_length_to_stored_length(store: LocalStore) -> None:
    req = store.presign_put(KEY, stored_length=7, stored_sha256=sha(b"x"), expires=60, base_url="http://h")
    _, key, params, sig = split_signed(req.url)
    assert params["c"] == "none" and params["plen"] == "7"
    assert store.check_signature("PUT", key, params, sig)


def test_presign_get_is_accepted(store: LocalStore) -> None:
    req = store.presign_get(KEY, expires=600, base_url="http://server:8080")
    assert req.method == "GET"
    _, key, params, sig = split_signed(req.url)
    assert key == KEY and set(params) == {"exp"}
    assert store.check_signature("GET", key, params, sig)
    assert not store.check_signature("PUT", key, params, sig)


@pytest.mark.parametrize("name", ["exp", "sha", "len", "c", "plen"])
def test_tampered_param_is_refused(store: LocalStore, name: str) -> None:
    key, params, sig = signed_put(store)
    replacement = {"exp": str(int(params["exp"]) + 3600), "sha": sha(b"other"), "len": "1235", "c": "none",
                   "plen": "4999"}[name]
    assert not store.check_signature("PUT", key, {**params, name: replacement}, sig)
    without = {k: v for k, v in params.items() if k != name}
    assert not store.check_signature("PUT", key, without, sig)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["exp", "sha", "len", "c", "plen", "extra"]), value=st.text(max_size=80))
def test_any_tampering_is_refused(store: LocalStore, name: str, value: str) -> None:
    key, params, sig = signed_put(store)
    if params.get(name) == value:
        return
    assert not store.check_signature("PUT", key, {**params, name: value}, sig)


def test_tampered_key_method_signature_or_secret_is_refused(store: LocalStore) -> None:
    key, params, sig = signed_put(store)
    assert not store.check_signature("PUT", chunk_key(2, FP), params, sig)
    assert not store.check_signature("PUT", key + "x", params, sig)
    assert not store.check_signature("GET", key, params, sig)
    assert not store.check_signature("PUT", key, params, sig[:-1])
    assert not store.check_signature("PUT", key, params, sig[:-1] + ("A" if sig[-1] != "A" else "B"))
    assert not store.check_signature("PUT", key, params, "")
    assert not store.check_signature("PUT", key, params, "é" * len(sig))
    other = LocalStore(store.root, secret=b"another secret")
    assert not other.check_signature("PUT", key, params, sig)


def test_expired_signature_is_refused(store: LocalStore) -> None:
    key, params, sig = signed_put(store, expires=-1)
    assert int(params["exp"]) < time.time()
    assert not store.check_signature("PUT", key, params, sig)
    req = store.presign_get(KEY, expires=-1, base_url="http://h")
    _, key, params, sig = split_signed(req.url)
    assert not store.check_signature("GET", key, params, sig)


@pytest.mark.parametrize("exp", [None, "", "soon", "1e20", "-5"])
def test_bad_expiry_is_refused(store: LocalStore, exp: str | None) -> None:
    """Even a correctly signed set of params is refused when exp is missing or not a future time."""
    params = {"sha": sha(b"x")} if exp is None else {"exp": exp, "sha": sha(b"x")}
    assert not store.check_signature("PUT", KEY, params, store.sign("PUT", KEY, params))


def test_delete_many_is_idempotent(store: LocalStore) -> None:
    store.put(KEY, b"x")
    store.delete_many([KEY, KEY, "u1/ab/" + "cd" * 32])
    assert list(store.list()) == []
