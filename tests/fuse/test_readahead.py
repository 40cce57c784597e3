"""A cold sequential read keeps a window of chunk downloads in flight: through a store
with a round trip's latency per request, reading N chunks costs about N / window round
trips, not N. Counted at the proxy (how many chunk GETs wait there at once, how many
URL batches were asked for), not timed, so a loaded machine does not make it flaky."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

from cloudfs.fs.readahead import READ_AHEAD_KB, bdi_of
from tests.harness import MountProcess, cloudfs_mount, cloudfs_server, wait_until
from tests.proxy import Proxy

MiB = 1 << 20
LATENCY_S = 0.4



def test_cold_sequential_read_keeps_a_window_of_chunks_in_flight(tmp_path: Path) -> None:
    data = os.urandom(72 * MiB)  # default chunking: a dozen or more chunks of 4-8 MiB
    with cloudfs_server(tmp_path / "srv") as srv:
        token = srv.add_user(f"u-{uuid.uuid4().hex[:8]}")
        with cloudfs_mount(srv, token, tmp_path / "a", tmp_path / "cache-a") as a:
            (a.path / "big.bin").write_bytes(data)
            a.sync(timeout=300)
        proxy = Proxy(int(srv.url.rsplit(":", 1)[1]))
        try:
            # The local store signs chunk URLs on the address the request came to: chunk GETs pass the proxy too.
            with cloudfs_mount(proxy.front(srv), token, tmp_path / "b", tmp_path / "cache-b",
                               device="dev-b") as b:
                proxy.delay(rb"^(GET /blobs/|POST /downloads/prepare )", LATENCY_S)
                digest = hashlib.sha256()
                with open(b.path / "big.bin", "rb", buffering=0) as f:
                    while piece := f.read(MiB):
                        digest.update(piece)
                assert digest.digest() == hashlib.sha256(data).digest()
                log = b.log()
            assert "Traceback" not in log, log[-5000:]
        finally:
            proxy.close()
    chunks = sum(1 for line, _, _ in proxy.delayed if line.startswith(b"GET /blobs/"))
    in_flight = proxy.most_at_once(b"GET /blobs/")
    url_requests = len(proxy.delayed) - chunks
    assert chunks >= 10, f"{chunks} chunk downloads: the file is too small to show a window"
    # A read that fetched one chunk at a time (or a 16 MiB window: 2-3 chunks) never has
    # more than a few waiting at once; a window of 8 has them all waiting together.
    assert in_flight >= 6, (f"at most {in_flight} chunk downloads in flight at once "
                            f"({chunks} chunk GETs, {url_requests} URL requests)")
    # Signed URLs come in batches, not one server round trip per chunk ahead: the first
    # chunk's, then the window's and the reader's next chunk's (at once) for all the rest.
    assert url_requests <= 3, f"{url_requests} POST /downloads/prepare for {chunks} chunks"


def test_the_kernel_reads_ahead_in_1_mib_requests(mount: MountProcess) -> None:
    """The kernel's default window (128 KiB) made a sequential read eight 128 KiB READs
    per MiB; the mount widens its window once INIT is answered (a wider window set
    before that is taken back by the INIT reply), and the kernel then sends 1 MiB READs."""
    setting = bdi_of(mount.path) / "read_ahead_kb"
    wait_until(lambda: int(setting.read_text()) == READ_AHEAD_KB, timeout=20,
               what=f"{setting} at {READ_AHEAD_KB} (it is {setting.read_text().strip()})")
    assert f"the kernel reads ahead {READ_AHEAD_KB} KiB" in mount.log()
