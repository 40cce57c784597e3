"""The server's token cache (app.ServerContext.authenticate): each device that polls
keeps its token there, so a cache smaller than the devices must drop the least
recently used token, not forget every one at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_async

from cloudfs.backend.stores.store import open_store
from cloudfs.server import app as server_app
from cloudfs.server import auth
from cloudfs.server import users
from cloudfs.server.app import ServerContext
from cloudfs.server.db import open_database


def test_a_full_token_cache_drops_the_least_recently_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    db = open_database(tmp_path / "db", None)
    tokens = [users.add_user(db, f"u{i}") for i in range(4)]
    ctx = ServerContext(db=db, store=open_store(str(tmp_path / "chunks"), data_dir=tmp_path, secret=b"s" * 32))
    lookups: list[str] = []
    real = auth.lookup_token
    monkeypatch.setattr(auth, "lookup_token",
                        lambda db, token, kind, device: lookups.append(token) or real(db, token, kind, device))
    monkeypatch.setattr(server_app, "TOKEN_CACHE_SIZE", 3)

    async def main() -> None:
        for token in tokens[:3]:
            assert (await ctx.authenticate(token)) is not None
        assert (await ctx.authenticate(tokens[0])) is not None  # a hit: now the most recent
        assert (await ctx.authenticate(tokens[3])) is not None  # drops tokens[1] only
        lookups.clear()
        for token in (tokens[0], tokens[2], tokens[3]):
            await ctx.authenticate(token)
        assert lookups == []
        await ctx.authenticate(tokens[1])
        assert lookups == [tokens[1]]
        assert await ctx.authenticate("not-a-token") is None

    try:
        run_async(main)
    finally:
        db.dispose()
