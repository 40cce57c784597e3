"""In-process fixtures for tests of server internals (the HTTP fixtures are in tests/conftest.py)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import pytest

from cloudfs.server.db import Database, open_database
from tests.harness import postgres_database


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh, empty metadata database on each engine, used in this process."""
    with contextlib.ExitStack() as stack:
        url = None
        if request.param == "postgres":
            url = stack.enter_context(postgres_database(request.getfixturevalue("pg_admin_url")))
        db = open_database(tmp_path / "db", url)
        stack.callback(db.dispose)
        yield db
