"""Shared fixtures: real servers on loopback sockets over real SQLite files."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from dramaverse.actors.room_snapshots import SnapshotWriter
from dramaverse.config import Settings
from dramaverse.runtime import ServerHandle, serve
from dramaverse.storage import open_storage

TEST_SECRET = "test-secret-" + "x" * 40


def sample_records() -> list[dict[str, Any]]:
    text = resources.files("dramaverse.data").joinpath("dramas.json").read_text("utf-8")
    records: list[dict[str, Any]] = json.loads(text)
    return records


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    base = Settings(
        env="test",
        host="127.0.0.1",
        port=0,
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'test.db'}",
        jwt_secret=TEST_SECRET,
        rate_limit_auth=None,
        rate_limit_user=None,
        bcrypt_rounds=4,
        catalog_poll_seconds=0.05,
        shutdown_grace_seconds=2.0,
    )
    return dataclasses.replace(base, **overrides)


@dataclass
class Server:
    handle: ServerHandle
    client: httpx.AsyncClient
    settings: Settings

    @property
    def url(self) -> str:
        return self.handle.binds[0]

    async def register(self, username: str, password: str = "secret-pw") -> str:
        response = await self.client.post(
            "/api/auth/register", json={"username": username, "password": password}
        )
        assert response.status_code == 201, response.text
        token: str = response.json()["token"]
        return token

    async def post_as(self, token: str, path: str, body: Any) -> httpx.Response:
        return await self.client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})

    async def get_as(self, token: str, path: str) -> httpx.Response:
        return await self.client.get(path, headers={"Authorization": f"Bearer {token}"})


@asynccontextmanager
async def running_server(
    settings: Settings, *, records: list[dict[str, Any]] | None = None
) -> AsyncIterator[Server]:
    """Seed ``records`` (the sample catalog by default), start a server, yield a client."""
    async with open_storage(settings) as storage:
        await storage.import_dramas(sample_records() if records is None else records)
    async with trio.open_nursery() as nursery:
        handle: ServerHandle = await nursery.start(serve, settings)
        async with httpx.AsyncClient(base_url=handle.binds[0], timeout=10) as client:
            yield Server(handle, client, settings)
        handle.stop()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[Server]:
    async with running_server(settings) as running:
        yield running


async def flushed(writer: SnapshotWriter) -> None:
    """Write every pending room snapshot now, without waiting for its delay, and wait until
    it is written (a test's way to see storage as the writer will leave it)."""
    await writer.expedite()
    await writer.settled()
