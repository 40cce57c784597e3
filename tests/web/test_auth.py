"""Passwords, sessions, CSRF and device tokens over real HTTP (issue 17, items 2 and 6)."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import anyio
import httpx

from tests.harness import CLOUDFS, ServerProcess
from tests.web.conftest import PASSWORD, Account, make_account, set_password


def login(server: ServerProcess, name: str, password: str) -> tuple[httpx.Client, httpx.Response]:
    client = httpx.Client(base_url=server.url, timeout=30)
    return client, client.post("/auth/login", json={"name": name, "password": password})


def test_user_add_reads_the_password_from_stdin(web_server: ServerProcess) -> None:
    name = f"new-{uuid.uuid4().hex[:8]}"
    done = subprocess.run([*CLOUDFS, "user", "add", name, "--password", "--data", str(web_server.data_dir)],
                          input="s3cret-enough\n", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("cfs_")  # the token stays the last line
    client, r = login(web_server, name, "s3cret-enough")
    assert r.status_code == 200, r.text
    assert client.get("/me").json()["name"] == name
    short = subprocess.run([*CLOUDFS, "user", "passwd", name, "--data", str(web_server.data_dir)], input="short\n",
                           capture_output=True, text=True, timeout=60)
    assert short.returncode == 1 and "at least 8 characters" in short.stderr
    nobody = set_password(web_server, "nobody-" + name, "long enough")
    assert nobody.returncode == 1 and "no user named" in nobody.stderr


def test_session_cookie_and_csrf(web_server: ServerProcess, account: Account) -> None:
    client, r = login(web_server, account.name, account.password)
    assert r.status_code == 200, r.text
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "path=/" in cookie
    assert "secure" not in cookie  # plain HTTP here; see the TLS test below
    session = r.json()
    root = session["root_id"]
    # A read needs no CSRF header; a change does.
    assert client.get(f"/nodes/{root}/children").status_code == 200
    refused = client.post("/dirs", json={"parent_id": root, "name": "x"})
    assert refused.status_code == 403 and refused.json()["field"] == "X-CSRF-Token"
    wrong = client.post("/dirs", json={"parent_id": root, "name": "x"}, headers={"X-CSRF-Token": "0" * 40})
    assert wrong.status_code == 403
    ok = client.post("/dirs", json={"parent_id": root, "name": "x"}, headers={"X-CSRF-Token": session["csrf"]})
    assert ok.status_code == 201, ok.text
    assert client.get("/auth/session").json()["csrf"] == session["csrf"]
    # Devices keep their bearer tokens, without any CSRF header.
    assert account.api.post("/dirs", json={"parent_id": root, "name": "y"}).status_code == 201
    # A session is not a bearer token, and a device token is not a session.
    session_token = client.cookies["cloudfs_session"]
    assert httpx.get(f"{web_server.url}/me", headers={"Authorization": f"Bearer {session_token}"}).status_code == 401
    assert httpx.get(f"{web_server.url}/me", cookies={"cloudfs_session": account.api.token}).status_code == 401
    # Sign-out ends the session on the server, not only in the browser.
    out = client.post("/auth/logout", headers={"X-CSRF-Token": session["csrf"]})
    assert out.status_code == 200
    assert httpx.get(f"{web_server.url}/me", cookies={"cloudfs_session": session_token}).status_code == 401


def test_wrong_password_and_unknown_user_look_alike(web_server: ServerProcess, account: Account) -> None:
    _, wrong = login(web_server, account.name, "not the password")
    _, unknown = login(web_server, "nobody-" + account.name, "not the password")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    _, ok = login(web_server, account.name, account.password)  # a success clears this address's count
    assert ok.status_code == 200


def test_cookie_is_secure_over_tls(tmp_path: Path) -> None:
    """`Secure` when the request came over TLS: the app called with an https scope."""
    from cloudfs.backend.stores.store import open_store
    from cloudfs.server.app import ServerContext, create_app
    from cloudfs.server.auth import set_password as set_pw
    from cloudfs.server.db import open_database
    from cloudfs.server.users import add_user

    db = open_database(tmp_path, None)
    try:
        add_user(db, "tls")
        set_pw(db, "tls", PASSWORD)
        app = create_app(ServerContext(db=db, store=open_store(str(tmp_path / "chunks"), data_dir=tmp_path,
                                                                secret=b"k" * 32)))

        async def run() -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://drive.test") as c:
                return await c.post("/auth/login", json={"name": "tls", "password": PASSWORD})

        # On trio: this worker may be inside Playwright's asyncio loop, where a second
        # asyncio loop refuses to start (the server is written against anyio: either runs it).
        r = anyio.run(run, backend="trio")
        assert r.status_code == 200, r.text
        assert "secure" in r.headers["set-cookie"].lower()
    finally:
        db.dispose()


def test_device_tokens_listed_and_revoked(web_server: ServerProcess, account: Account) -> None:
    r = httpx.post(f"{web_server.url}/auth/token", json={"name": account.name, "password": account.password,
                                                         "device": "laptop"})
    assert r.status_code == 201, r.text
    laptop = r.json()
    bearer = {"Authorization": f"Bearer {laptop['token']}", "X-Cloudfs-Device": "laptop"}
    assert httpx.get(f"{web_server.url}/me", headers=bearer).status_code == 200
    listed = account.api.get("/devices").json()["devices"]
    mine = next(d for d in listed if d["id"] == laptop["id"])
    assert mine["label"] == "laptop" and mine["kind"] == "device" and mine["last_seen_at"] is not None
    assert mine["last_device"] == "laptop"
    assert laptop["token"] not in str(listed)
    stranger = make_account(web_server, "stranger")  # another account neither sees nor revokes it
    assert laptop["id"] not in str(stranger.api.get("/devices").json())
    assert stranger.api.delete(f"/devices/{laptop['id']}").status_code == 404
    assert httpx.get(f"{web_server.url}/me", headers=bearer).status_code == 200
    assert account.api.delete(f"/devices/{laptop['id']}").status_code == 200
    refused = httpx.get(f"{web_server.url}/me", headers=bearer)
    assert refused.status_code == 401
    assert refused.json()["error"] == "token_revoked" and "revoked on" in refused.json()["detail"]
    assert laptop["id"] not in str(account.api.get("/devices").json())
    assert account.api.delete(f"/devices/{laptop['id']}").status_code == 404
    assert account.api.get("/me").status_code == 200  # the account's other token is untouched


def test_new_password_signs_browsers_out(web_server: ServerProcess, account: Account) -> None:
    client, r = login(web_server, account.name, account.password)
    assert r.status_code == 200
    assert set_password(web_server, account.name, "a brand new password").returncode == 0
    assert client.get("/me").status_code == 401
    _, old = login(web_server, account.name, account.password)
    assert old.status_code == 401
    _, new = login(web_server, account.name, "a brand new password")
    assert new.status_code == 200



def test_a_malformed_account_name_is_refused_as_such(server: ServerProcess) -> None:
    """A name no account can have (a NUL, which PostgreSQL cannot even compare) is a 422
    naming the field, on either engine, not a 500 (found by schemathesis on PostgreSQL)."""
    for route, extra in (("/auth/token", {"device": "laptop"}), ("/auth/login", {})):
        r = httpx.post(f"{server.url}{route}", json={"name": "a\u0000b", "password": "whatever it is", **extra})
        assert r.status_code == 422 and r.json()["field"] == "name", (route, r.text)
    assert "Traceback" not in server.log()
