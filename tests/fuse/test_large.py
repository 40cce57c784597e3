"""Large-file behaviour through a real mount: chunks of compressible files are stored
compressed (and media plain), everything reads back byte-identical on a fresh cache,
and an edit near the start of a large file re-uploads only a chunk or two."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import httpx

from cloudfs.backend.chunker import average_size, max_size

from tests.harness import MountProcess, ServerProcess, cloudfs_mount

MiB = 1024 * 1024
JPEG_HEAD = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"


def python_source(size: int) -> bytes:
    """Real source code (the standard library's), repeated with a counter so no two
    repetitions dedup."""
    files = sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py")))
    out = bytearray()
    round_no = 0
    while len(out) < size:
        for path in files:
            out += f"# round {round_no} {path}\n".encode() + Path(path).read_bytes()
            if len(out) >= size:
                break
        round_no += 1
    return bytes(out[:size])


def stored_chunks(server: ServerProcess, token: str, path: str) -> list[tuple[int, str, int]]:
    """(plain length, compression, stored size in the local store dir) per chunk of `path`."""
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as api:
        user_id = api.get("/me").json()["user_id"]
        node = api.get("/resolve", params={"path": path}).json()["node"]
        info = api.get(f"/files/{node['id']}", params={"urls": "false"}).json()
    out = []
    for c in info["chunks"]:
        fp = c["fingerprint"]
        obj = server.data_dir / "chunks" / f"u{user_id}" / fp[:2] / fp
        out.append((c["length"], c["compression"], obj.stat().st_size))
    return out


def test_compressible_files_are_stored_compressed(fuse_server: ServerProcess, account: str, tmp_path: Path) -> None:
    source = python_source(20 * MiB)  # several chunks at the 4 MiB average
    photo = JPEG_HEAD + os.urandom(3 * MiB)
    noise = os.urandom(2 * MiB)  # no extension, no magic: the probe says no
    small = b"hello world, " * 400  # one small chunk, compressed before the first prepare
    files = {"src.py": source, "photo.jpg": photo, "noise": noise, "small.txt": small}
    with cloudfs_mount(fuse_server, account, tmp_path / "mnt", tmp_path / "cache1") as m:
        for name, data in files.items():
            (m.path / name).write_bytes(data)
        m.sync()
        status = m.status()

    src = stored_chunks(fuse_server, account, "/src.py")
    assert len(src) >= 3 and all(comp == "zstd" for _, comp, _ in src), src
    assert sum(stored for _, _, stored in src) < 0.4 * len(source), src
    for name in ("photo.jpg", "noise"):
        chunks = stored_chunks(fuse_server, account, f"/{name}")
        assert all(comp == "none" and stored == length for length, comp, stored in chunks), (name, chunks)
    [(length, comp, stored)] = stored_chunks(fuse_server, account, "/small.txt")
    assert comp == "zstd" and stored < length // 4
    plain_total = sum(len(d) for d in files.values())
    assert status["uploaded_bytes"] < plain_total - 0.5 * len(source), status

    with cloudfs_mount(fuse_server, account, tmp_path / "mnt", tmp_path / "fresh-cache") as m:
        for name, data in files.items():
            assert (m.path / name).read_bytes() == data, name
        assert "Traceback" not in m.log()


def uploaded(m: MountProcess) -> int:
    return m.status()["uploaded_bytes"]


def test_insert_near_start_reuploads_a_chunk_or_two(fuse_server: ServerProcess, account: str, tmp_path: Path) -> None:
    data = os.urandom(128 * MiB)
    edited = data[:1000] + b"inserted" + data[1000:]
    with cloudfs_mount(fuse_server, account, tmp_path / "mnt", tmp_path / "cache1") as m:
        (m.path / "big.bin").write_bytes(data)
        m.sync()
        before = uploaded(m)
        assert before >= len(data)
        with open(m.path / "big.bin", "r+b") as f:  # rewrite in place: every block dirty
            f.write(edited)
        m.sync()
        again = uploaded(m) - before
    # the one or two chunks around the insert (4 MiB average, 16 MiB largest), not the file
    assert 0 < again <= 2 * max_size(average_size(len(edited))), \
        f"re-uploaded {again / MiB:.1f} MiB of {len(edited) / MiB:.0f} MiB"
    with cloudfs_mount(fuse_server, account, tmp_path / "mnt", tmp_path / "fresh-cache") as m:
        assert (m.path / "big.bin").read_bytes() == edited
