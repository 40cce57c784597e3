#!/usr/bin/env python
"""Benchmark the web page's upload and download against the mount's, on this machine.

One run starts a real `cloudfs server` (SQLite, local chunk store) and a user with a
password, then moves the same file of `--mib` MiB of random bytes (200) four ways:

  - page upload: a headless Chromium (Debian's, through Playwright) signed in to the
    page picks the file; timed from the pick to the page saying "1 of 1 uploaded"
    (chunked, fingerprinted in the browser, prepared, PUT, committed);
  - page download: the page fetches /files/ID/content and reads it to the end;
  - mount upload: `cp` of the file into a `cloudfs mount`, then `cloudfs sync`; timed
    from the start of the copy until the sync returns (the bytes are on the server);
  - mount download: a second mount with an empty cache reads the file to the end.

Each is run `--runs` times (2) with a fresh file each time (no dedup), and the best is
kept. Prints a table and a JSON line; `--json FILE` writes it too. Everything started is
stopped at the end, also on failure.

    .venv/bin/python scripts/bench_web.py [--mib 200] [--runs 2] [--json FILE]

Target (issue 17): the page reaches at least half the mount's upload throughput.
Exit status 0 when it does, 1 when not, 2 when the run broke.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.harness import CLOUDFS, cloudfs_mount, cloudfs_server  # noqa: E402
from tests.web.conftest import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

PASSWORD = "bench password"


def make_file(path: Path, mib: int) -> Path:
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    return path


def best(values: list[float]) -> float:
    return min(values)


def run(mib: int, runs: int) -> dict:
    from playwright.sync_api import sync_playwright

    results: dict[str, list[float]] = {"page_upload": [], "page_download": [], "mount_upload": [], "mount_download": []}
    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp_s:
        tmp = Path(tmp_s)
        with cloudfs_server(tmp / "server") as server:
            name = f"bench-{uuid.uuid4().hex[:6]}"
            done = subprocess.run([*CLOUDFS, "user", "add", name, "--password", "--data", str(server.data_dir)],
                                  input=PASSWORD + "\n", capture_output=True, text=True, timeout=60, check=True)
            token = done.stdout.strip().splitlines()[-1]
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    page = browser.new_page()
                    page.set_default_timeout(600_000)
                    page.goto(server.url + "/")
                    page.fill("#signin-name", name)
                    page.fill("#signin-password", PASSWORD)
                    page.click("#signin button[type=submit]")
                    page.wait_for_selector("#listing")
                    for i in range(runs):
                        source = make_file(tmp / f"page-{i}.bin", mib)
                        page.reload()  # a fresh page: a batch of its own
                        page.wait_for_selector("#listing")
                        started = time.perf_counter()
                        page.set_input_files("#pick-files", str(source))
                        page.wait_for_selector("#batch-status:text-is('1 of 1 uploaded')")
                        results["page_upload"].append(time.perf_counter() - started)
                        node = _resolve(server.url, token, f"/page-{i}.bin")
                        elapsed = page.evaluate("""async (url) => {
                            const t0 = performance.now();
                            const r = await fetch(url);
                            const reader = r.body.getReader();
                            let n = 0;
                            for (;;) { const { done, value } = await reader.read(); if (done) break; n += value.length; }
                            return [n, (performance.now() - t0) / 1000];
                        }""", f"/files/{node}/content")
                        assert elapsed[0] == mib << 20, elapsed
                        results["page_download"].append(elapsed[1])
                        source.unlink()
                finally:
                    browser.close()
            with cloudfs_mount(server, token, tmp / "mnt-a", tmp / "cache-a", device="bench-a") as a:
                for i in range(runs):
                    source = make_file(tmp / f"mount-{i}.bin", mib)
                    started = time.perf_counter()
                    subprocess.run(["cp", str(source), str(a.path / source.name)], check=True)
                    a.sync(timeout=600)
                    results["mount_upload"].append(time.perf_counter() - started)
                    source.unlink()
            for i in range(runs):
                with cloudfs_mount(server, token, tmp / f"mnt-b{i}", tmp / f"cache-b{i}", device="bench-b") as b:
                    started = time.perf_counter()
                    with open(b.path / f"mount-{i}.bin", "rb") as f:
                        while f.read(1 << 20):
                            pass
                    results["mount_download"].append(time.perf_counter() - started)
    figures = {k: round(mib * 1.048576 / best(v), 1) for k, v in results.items()}  # MB/s
    return {"mib": mib, "runs": runs, "mb_per_s": figures, "seconds": {k: [round(x, 2) for x in v] for k, v in results.items()},
            "upload_ratio": round(figures["page_upload"] / figures["mount_upload"], 2),
            "machine": f"{platform.node()} {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}",
            "date": datetime.date.today().isoformat()}


def _resolve(url: str, token: str, path: str) -> int:
    import httpx

    r = httpx.get(f"{url}/resolve", params={"path": path}, headers={"Authorization": f"Bearer {token}"})
    r.raise_for_status()
    return r.json()["node"]["id"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=200)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(2))  # unwinds: the mounts, the server, the browser stop
    try:
        result = run(args.mib, args.runs)
    except Exception as exc:  # noqa: BLE001 - a broken run is exit 2, with its reason
        print(f"bench_web: the run broke: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    f = result["mb_per_s"]
    print(f"{args.mib} MiB, best of {args.runs}, MB/s")
    print(f"  upload    page {f['page_upload']:8.1f}   mount {f['mount_upload']:8.1f}   page/mount {result['upload_ratio']:.2f}")
    print(f"  download  page {f['page_download']:8.1f}   mount {f['mount_download']:8.1f}")
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["upload_ratio"] >= 0.5 else 1


if __name__ == "__main__":
    sys.exit(main())
