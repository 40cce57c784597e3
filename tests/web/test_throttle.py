"""Failed sign-ins are slowed per account and per address; so are wrong share-link
passwords (issue 17, items 2 and 7). Its own server: the locks it provokes on
127.0.0.1 must not slow the other tests' sign-ins."""

from __future__ import annotations

from typing import Iterator

import httpx
import pytest

from cloudfs.server.auth import FREE_FAILURES
from tests.harness import ServerProcess, cloudfs_server
from tests.web.conftest import make_account


@pytest.fixture(scope="module")
def lonely_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with cloudfs_server(tmp_path_factory.mktemp("throttle")) as srv:
        yield srv


def client_from(server: ServerProcess, address: str) -> httpx.Client:
    """A client whose requests come from `address` (any 127.x address is ours)."""
    return httpx.Client(base_url=server.url, transport=httpx.HTTPTransport(local_address=address), timeout=30)


def attempt(client: httpx.Client, name: str, password: str) -> httpx.Response:
    return client.post("/auth/login", json={"name": name, "password": password})


def test_guessing_one_account_is_slowed_from_any_address(lonely_server: ServerProcess) -> None:
    victim = make_account(lonely_server, "victim")
    other = make_account(lonely_server, "other")
    first, second = client_from(lonely_server, "127.0.0.2"), client_from(lonely_server, "127.0.0.3")
    for _ in range(FREE_FAILURES):
        assert attempt(first, victim.name, "guess guess").status_code == 401
    locked = attempt(first, victim.name, victim.password)  # even the right password, while locked
    assert locked.status_code == 429, locked.text
    assert int(locked.headers["Retry-After"]) >= 1
    assert locked.json()["error"] == "too_many_attempts"
    # The account is locked from another address too...
    assert attempt(second, victim.name, victim.password).status_code == 429
    # ... while another account signs in from there as usual.
    assert attempt(second, other.name, other.password).status_code == 200


def test_guessing_from_one_address_is_slowed_for_every_account(lonely_server: ServerProcess) -> None:
    accounts = [make_account(lonely_server, f"a{i}") for i in range(2)]
    guesser, elsewhere = client_from(lonely_server, "127.0.0.4"), client_from(lonely_server, "127.0.0.5")
    for i in range(FREE_FAILURES):
        assert attempt(guesser, f"made-up-{i}", "guess guess").status_code == 401
    assert attempt(guesser, accounts[0].name, accounts[0].password).status_code == 429
    assert attempt(elsewhere, accounts[0].name, accounts[0].password).status_code == 200


def test_share_link_password_is_slowed(lonely_server: ServerProcess) -> None:
    owner = make_account(lonely_server, "owner")
    r = owner.api.post("/dirs", json={"parent_id": owner.api.root_id, "name": "secret"})
    link = owner.api.post("/share-links", json={"node_id": r.json()["node"]["id"], "password": "open sesame"}).json()
    anon = client_from(lonely_server, "127.0.0.6")
    assert anon.get(f"/s/{link['id']}/list").status_code == 401
    for _ in range(FREE_FAILURES):
        assert anon.post(f"/s/{link['id']}/unlock", json={"password": "nope nope"}).status_code == 401
    assert anon.post(f"/s/{link['id']}/unlock", json={"password": "open sesame"}).status_code == 429
    other = client_from(lonely_server, "127.0.0.7")
    # The link is locked for everyone for a while; the lock says how long.
    assert other.post(f"/s/{link['id']}/unlock", json={"password": "open sesame"}).status_code == 429
