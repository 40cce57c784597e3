"""`cloudfs devices` and `cloudfs login` (issue 17, item 6: the page's devices operations
for the CLI too), against a real server and a real mount."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx

from tests.harness import CLOUDFS, ServerProcess, cloudfs_mount, wait_until
from tests.web.conftest import Account


def run(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLOUDFS, *args], input=stdin, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def me(server: ServerProcess, token: str) -> httpx.Response:
    return httpx.get(f"{server.url}/me", headers={"Authorization": f"Bearer {token}"}, timeout=30)


def test_list_add_and_revoke_devices_from_a_mount(web_server: ServerProcess, account: Account, tmp_path: Path) -> None:
    browser = httpx.Client(base_url=web_server.url, timeout=30)
    assert browser.post("/auth/login", json={"name": account.name, "password": account.password}).status_code == 200
    with cloudfs_mount(web_server, account.api.token, tmp_path / "mnt", tmp_path / "cache", device="desk") as mount:
        listed = run("devices", str(mount.path), "--json")
        assert listed.returncode == 0, listed.stderr
        rows = json.loads(listed.stdout)
        assert sorted(r["kind"] for r in rows) == ["device", "session"]
        mine = next(r for r in rows if r["kind"] == "device")
        assert mine["current"] and mine["last_seen_at"] is not None
        text = run("devices", "list", str(mount.path)).stdout
        assert "(this mount)" in text and "session" in text

        added = run("devices", "add", "phone", str(mount.path))
        assert added.returncode == 0, added.stderr
        token = added.stdout.strip().splitlines()[-1]
        assert "--device phone --token " + token in added.stdout
        assert me(web_server, token).status_code == 200
        rows = json.loads(run("devices", str(mount.path), "--json").stdout)
        phone = next(r for r in rows if r["label"] == "phone")
        assert not phone["current"]
        bad = run("devices", "add", "no spaces/here", str(mount.path))
        assert bad.returncode == 1 and "device name" in bad.stderr

        revoked = run("devices", "revoke", phone["id"], str(mount.path))
        assert revoked.returncode == 0, revoked.stderr
        refused = me(web_server, token)
        assert refused.status_code == 401 and refused.json()["error"] == "token_revoked"
        unknown = run("devices", "revoke", "0123456789abcdef", str(mount.path))
        assert unknown.returncode == 1 and "no device or session" in unknown.stderr
        # The mount's own token only with --force: without, nothing changes.
        own = run("devices", "revoke", mine["id"], str(mount.path))
        assert own.returncode == 1 and "--force" in own.stderr
        assert me(web_server, account.api.token).status_code == 200
        # The browser's session, from the terminal: signed out.
        session = next(r for r in rows if r["kind"] == "session")
        assert run("devices", "revoke", session["id"], str(mount.path)).returncode == 0
        assert browser.get("/me").status_code == 401
        forced = run("devices", "revoke", mine["id"], str(mount.path), "--force")
        assert forced.returncode == 0, forced.stderr
        wait_until(lambda: "TOKEN REFUSED" in run("status", str(mount.path)).stdout, timeout=30,
                   what="the mount saying its token was revoked", interval=0.5)
    browser.close()
    outside = run("devices", str(tmp_path))
    assert outside.returncode == 1 and "not on a mounted cloudfs drive" in outside.stderr


def test_login_trades_a_password_for_a_device_token(web_server: ServerProcess, account: Account,
                                                    tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    credentials = tmp_path / "config" / "cloudfs" / "credentials.toml"
    wrong = run("login", web_server.url, account.name, "--device", "tablet", stdin="not it\n", env=env)
    assert wrong.returncode == 1 and "HTTP 401" in wrong.stderr and not wrong.stdout
    nobody = run("login", "http://127.0.0.1:9", account.name, stdin="x\n", env=env)
    assert nobody.returncode == 1 and "does not answer" in nobody.stderr
    assert not credentials.exists()  # nothing saved by a refusal
    done = run("login", web_server.url, account.name, "--device", "tablet", stdin=account.password + "\n", env=env)
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip().splitlines()[-1]
    assert me(web_server, token).json()["name"] == account.name
    labels = [d["label"] for d in account.api.get("/devices").json()["devices"]]
    assert "tablet" in labels
    assert token in credentials.read_text()  # signed in once: `cloudfs mount MOUNTPOINT` finds it
    both = run("login", web_server.url, account.name, "--token", token, env=env)
    assert both.returncode == 2 and "not both" in both.stderr
