"""Fixtures: real server processes on both metadata engines and both stores."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.harness import ServerProcess, cloudfs_server, moto_server, postgres_database

ENGINES = ["sqlite-local", "postgres-s3"]


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    url = os.environ.get("CLOUDFS_TEST_PG")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("CLOUDFS_TEST_PG is not set: scripts/test.sh starts PostgreSQL and sets it")
        pytest.skip("no PostgreSQL (run through scripts/test.sh)")
    return url


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


def start_server(kind: str, tmp: Path, request: pytest.FixtureRequest, extra_args: list[str] = ()):  # noqa: ANN201
    if kind == "sqlite-local":
        return cloudfs_server(tmp, extra_args=list(extra_args))
    pg = request.getfixturevalue("pg_admin_url")
    moto = request.getfixturevalue("moto_url")
    bucket = f"cfs-{uuid.uuid4().hex[:10]}"

    class _Both:
        def __enter__(self) -> ServerProcess:
            self.db = postgres_database(pg)
            db_url = self.db.__enter__()
            self.server = cloudfs_server(tmp, db_url=db_url, store_url=f"s3://{bucket}?endpoint={moto}&region=us-east-1",
                                         extra_args=list(extra_args))
            return self.server.__enter__()

        def __exit__(self, *exc: object) -> None:
            try:
                self.server.__exit__(*exc)
            finally:
                self.db.__exit__(*exc)

    return _Both()


@pytest.fixture(scope="module", params=ENGINES)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with start_server(request.param, tmp_path_factory.mktemp(request.param), request) as srv:
        yield srv
        assert "Traceback" not in srv.log(), srv.log()


class Api(httpx.Client):
    """A test client logged in as one user; raises nothing, tests check statuses."""

    def __init__(self, server: ServerProcess, token: str | None, device: str = "test-device") -> None:
        headers = {"X-Cloudfs-Device": device}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        super().__init__(base_url=server.url, headers=headers, timeout=90)
        self.token = token
        self.server = server
        if token:
            self.me = self.get("/me").json()
            self.root_id = self.me["root_id"]

    def __enter__(self) -> "Api":  # already opened by the /me request above
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def alice(server: ServerProcess) -> Iterator[Api]:
    api = Api(server, server.add_user(f"alice-{uuid.uuid4().hex[:8]}"))
    yield api
    api.close()


@pytest.fixture
def bob(server: ServerProcess) -> Iterator[Api]:
    api = Api(server, server.add_user(f"bob-{uuid.uuid4().hex[:8]}"))
    yield api
    api.close()


def run_async(main, *args):  # noqa: ANN001, ANN201 - an async function and its arguments; its result
    """`anyio.run(main)` on a thread of its own: a browser test before it on the same
    xdist worker (Playwright's sync API) can leave an asyncio loop marked as running on
    the worker's thread, and asyncio refuses to start another there."""
    import concurrent.futures

    import anyio

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(anyio.run, main, *args).result()
