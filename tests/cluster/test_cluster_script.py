"""`scripts/cluster.sh up 2` and `down`, as a user runs them: the balancer's URL on the
last line, a device's requests answered through it by both replicas, and nothing left
running afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import httpx

from tests.harness import CLOUDFS, REPO


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_cluster_up_and_down(tmp_path: Path, pg_admin_url: str):
    env = {**os.environ, "CLOUDFS_CLUSTER_DIR": str(tmp_path / "state"),
           "CLOUDFS_CLUSTER_DB": f"cloudfs_cl_{uuid.uuid4().hex[:8]}"}
    script = str(REPO / "scripts" / "cluster.sh")
    started = subprocess.run([script, "up", "2"], capture_output=True, text=True, timeout=300, env=env)
    state_file = tmp_path / "state" / "cluster.json"
    pids = json.loads(state_file.read_text())["pids"] if state_file.exists() else {}
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        url = started.stdout.strip().splitlines()[-1]
        assert url.startswith("http://127.0.0.1:"), started.stdout
        assert set(pids) == {"moto", "r1", "r2", "haproxy"}
        state = json.loads(state_file.read_text())
        again = subprocess.run([script, "up"], capture_output=True, text=True, timeout=120, env=env)
        assert again.returncode == 1 and "already up" in again.stderr

        token = subprocess.run([*CLOUDFS, "user", "add", "someone", "--db", state["db_url"]], capture_output=True,
                               text=True, timeout=60, check=True).stdout.strip().splitlines()[-1]
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as api:
            root = api.get("/me").json()["root_id"]
            for i in range(6):
                assert api.post("/dirs", json={"parent_id": root, "name": f"d{i}"}).status_code == 201
        served = [httpx.get(replica + "/metrics").text for replica in state["replicas"].values()]
        assert all('route="/dirs",status="201"' in text for text in served), "one replica served nothing"
    finally:
        stopped = subprocess.run([script, "down"], capture_output=True, text=True, timeout=120, env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert not [name for name, pid in pids.items() if _alive(pid)]
    assert not state_file.exists()
