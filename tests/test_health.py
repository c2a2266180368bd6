"""``/api/health``: the database's reachability (probed at most once a second) and the
supervisor's word on crash-looping sibling workers; the plain ``{"status":"ok"}`` otherwise.

The probe against a fake storage on virtual time (how often it asks, what it says when the
database refuses or hangs); the status file as the supervisor writes it and a worker reads it;
and a real server on the real PostgreSQL behind a proxy that the test unplugs and plugs back.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import trio
import trio.testing

from dramaverse.errors import StorageUnavailable
from dramaverse.http.health import StorageProbe
from dramaverse.storage.base import Storage
from dramaverse.worker_status import CrashLoop, StatusReader, StatusWriter
from tests.conftest import make_settings, running_server
from tests.postgres_tools import Proxy, fresh_schema
from tests.test_faults import with_port


class FakeStorage:
    """Only what the probe calls: ``catalog_revision``, answering as ``mode`` says."""

    def __init__(self) -> None:
        self.calls = 0
        self.mode = "ok"  # "ok" | "down" | "hang"

    async def catalog_revision(self) -> int:
        self.calls += 1
        if self.mode == "down":
            raise StorageUnavailable("PostgreSQL at db:5432/app is unavailable (test).")
        if self.mode == "hang":
            await trio.sleep_forever()
        return 1


def probe_of(storage: FakeStorage) -> StorageProbe:
    fake: Storage = storage  # type: ignore[assignment]
    return StorageProbe(fake, every=1.0, timeout=2.0)


async def test_the_database_is_probed_at_most_once_a_second(autojump_clock: trio.abc.Clock) -> None:
    storage = FakeStorage()
    probe = probe_of(storage)
    for _ in range(1000):
        assert await probe.check() is None
    assert storage.calls == 1
    await trio.sleep(1.0)
    assert await probe.check() is None
    assert storage.calls == 2


async def test_an_unreachable_database_is_reported_and_its_return_too(
    autojump_clock: trio.abc.Clock,
) -> None:
    storage = FakeStorage()
    probe = probe_of(storage)
    storage.mode = "down"
    assert await probe.check() == "PostgreSQL at db:5432/app is unavailable (test)."
    storage.mode = "ok"
    assert await probe.check() is not None  # still the last probe's word, within the second
    await trio.sleep(1.0)
    assert await probe.check() is None


async def test_a_database_that_hangs_is_reported_after_the_timeout_and_others_do_not_wait(
    autojump_clock: trio.abc.Clock,
) -> None:
    storage = FakeStorage()
    probe = probe_of(storage)
    storage.mode = "hang"
    results: list[str | None] = []

    async def check() -> None:
        results.append(await probe.check())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(check)
        await trio.testing.wait_all_tasks_blocked()
        # While the one probe waits, other health requests answer at once, from what is known.
        assert await probe.check() is None
    assert results == ["the database did not answer within 2 s"]
    assert storage.calls == 1


def test_the_status_file_carries_crash_loops_from_the_supervisor_to_the_workers(
    tmp_path: Path,
) -> None:
    path = tmp_path / "supervisor.json"
    reader = StatusReader(path, read_every=0)
    assert reader.crash_loops() == []  # no file: nothing to say
    writer = StatusWriter(path)
    writer.write([CrashLoop(0, 4, "exit status 1", 0.8, 0.0)])
    assert reader.crash_loops() == [
        {
            "worker": 0,
            "crashes": 4,
            "lastExit": "exit status 1",
            "restartInSeconds": 0.8,
            "since": "1970-01-01T00:00:00Z",
        }
    ]
    writer.write([])
    assert reader.crash_loops() == []
    for garbage in (b"", b"[]", b'{"crashLooping": 3}', b"\xff"):
        path.write_bytes(garbage)
        assert reader.crash_loops() == []
    writer.remove()
    assert list(tmp_path.iterdir()) == []


def test_a_worker_reads_the_status_file_at_most_once_a_second(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.json"
    reader = StatusReader(path)  # the default: trusts a read for a second
    assert reader.crash_loops() == []
    StatusWriter(path).write([CrashLoop(1, 3, "killed by SIGSEGV", 0.4, 0.0)])
    assert reader.crash_loops() == []  # the file is not read again within the second
    assert json.loads(path.read_bytes())["crashLooping"][0]["worker"] == 1


async def health_until(client: httpx.AsyncClient, status: int) -> httpx.Response:
    """Ask /api/health until it answers ``status`` (the server's probe runs on its own clock)."""
    with trio.fail_after(30):
        while True:
            response = await client.get("/api/health")
            if response.status_code == status:
                return response
            await trio.sleep(0.1)


async def test_health_is_503_while_postgresql_is_unreachable_and_ok_again_after(
    tmp_path: Path,
) -> None:
    async with fresh_schema() as (url, _name), trio.open_nursery() as proxies:
        target = urlsplit(url)
        proxy = Proxy(target.hostname or "127.0.0.1", target.port or 5432)
        port = await proxies.start(proxy.run)
        settings = make_settings(tmp_path, database_url=with_port(url, port))
        async with running_server(settings) as server:
            response = await server.client.get("/api/health")
            assert (response.status_code, response.content) == (200, b'{"status":"ok"}')

            proxy.stop()  # PostgreSQL "goes away"
            # The last probe's word holds for up to a second.
            response = await health_until(server.client, 503)
            body = response.json()
            assert body["status"] == "unavailable"
            assert body["storage"]["status"] == "unavailable"
            assert f"PostgreSQL at 127.0.0.1:{port}/" in body["storage"]["error"]
            catalog = await server.client.get("/api/dramas", params={"limit": 1})
            assert catalog.status_code == 200  # this process still serves what it can

            await proxies.start(proxy.run)  # back on the same port
            response = await health_until(server.client, 200)
            assert (response.status_code, response.content) == (200, b'{"status":"ok"}')
        proxies.cancel_scope.cancel()
