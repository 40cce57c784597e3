"""A file deleted before its upload started never reaches the server: its queued upload
finds the inode gone and is skipped, and no delete is queued for a node the server never
had (drive.py `_forget`), so `rm -rf` of a fresh build directory sends no POST /files
and no DELETE for its files. Counted at a proxy between the mount and the server. (The
build directory itself may go at once, as a lone change after a silence does; then its
delete follows, and only its.)"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from tests.harness import cloudfs_mount, cloudfs_server
from tests.proxy import Proxy



def test_files_created_and_deleted_before_upload_never_reach_the_server(tmp_path: Path) -> None:
    with cloudfs_server(tmp_path / "srv") as srv:
        token = srv.add_user(f"u-{uuid.uuid4().hex[:8]}")
        proxy = Proxy(int(srv.url.rsplit(":", 1)[1]))
        try:
            with cloudfs_mount(proxy.front(srv), token, tmp_path / "a", tmp_path / "cache-a") as a:
                (a.path / "keep.txt").write_text("kept")
                a.sync(timeout=120)
                proxy.delay(rb"^(POST|PUT|DELETE|PATCH) ", 0.0)  # count every change sent from here on
                build = a.path / "build"
                for d in range(4):
                    (build / f"d{d}").mkdir(parents=True)
                    for i in range(25):
                        (build / f"d{d}" / f"f{i}.o").write_bytes(b"object %d %d\n" % (d, i) * 50)
                shutil.rmtree(build)
                (a.path / "after.txt").write_text("after")  # one change that must go
                a.sync(timeout=120)
                log = a.log()
            assert "Traceback" not in log, log[-5000:]
        finally:
            proxy.close()
    sent = [line.decode() for line, _, _ in proxy.delayed]
    files = [line for line in sent if line.startswith(("POST /files ", "POST /uploads/prepare "))]
    dirs = [line for line in sent if line.startswith("POST /dirs ")]
    deletes = [line for line in sent if line.startswith("DELETE ")]
    # after.txt is the one file sent; none of build/'s 100 files, and a delete only for a
    # directory that had been created on the server.
    assert len(files) <= 2 and sum(line.startswith("POST /files ") for line in files) == 1, sent[:20]
    assert len(deletes) <= len(dirs) <= 5, sent[:20]
