"""Faults with several workers: Redis restarting mid-traffic, PostgreSQL going away.

The promise under test: nothing acknowledged is ever lost. A write answered 200 (or acked on the
socket) reaches every device of its user, live or through ``resume``; while Redis is down the
workers keep serving and say "degraded"; while PostgreSQL is down requests answer 503 with a
message naming it, no process or actor crashes, and everything recovers by itself.

Redis faults use a private ``redis-server`` on a free port (the shared one is never restarted);
PostgreSQL faults put ``tests/postgres_tools.Proxy`` between the workers and the server and
unplug it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from dramaverse.actors.session import Attach, Device, SessionGone, UserSession
from dramaverse.broker.memory import MemoryBroker
from dramaverse.domain.events import EventRange
from dramaverse.domain.library import SetFavorite
from dramaverse.errors import StorageUnavailable
from dramaverse.storage.postgres import describe_url
from dramaverse.storage.sqlite import open_sqlite
from tests.cluster import (
    Cluster,
    cluster_env,
    free_port,
    hello,
    next_frame,
    open_worker_ws,
    poll,
    running_cluster,
)
from tests.conftest import sample_records
from tests.postgres_tools import Proxy, fresh_schema
from tests.services import require_redis
from tests.test_broker_contract import unique_prefix
from tests.test_broker_redis import OwnRedis

URLS = [r["url"] for r in sample_records()]


def with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[OwnRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    (tmp_path / "redis").mkdir()
    server = OwnRedis(tmp_path / "redis")
    await server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            await server.kill()


# -- the session actor through an outage (no servers needed) ------------------------------------


class FlakyStorage:
    """The real SQLite storage, except that the event log reads fail while ``down``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.down = False
        self.refused = 0
        self._refusing = trio.Event()

    def _check(self) -> None:
        if self.down:
            self.refused += 1
            self._refusing.set()
            self._refusing = trio.Event()
            raise StorageUnavailable("PostgreSQL at db:5432/app is unavailable (test).")

    async def event_head(self, user_id: int) -> int:
        self._check()
        head: int = await self.inner.event_head(user_id)
        return head

    async def read_events(self, user_id: int, after: int, limit: int) -> EventRange:
        self._check()
        found: EventRange = await self.inner.read_events(user_id, after, limit)
        return found

    async def refusals(self, count: int) -> None:
        """Wait until ``count`` reads in all have been refused."""
        while self.refused < count:
            await self._refusing.wait()


def drain(receive: trio.MemoryReceiveChannel[str]) -> list[str]:
    frames = []
    while True:
        try:
            frames.append(receive.receive_nowait())
        except trio.WouldBlock:
            return frames


async def test_a_session_keeps_its_devices_through_a_database_outage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mock_clock: trio.testing.MockClock
) -> None:
    # Virtual time for the periodic checks; the jump waits for SQLite's threads (real I/O).
    mock_clock.autojump_threshold = 0.5
    caplog.set_level(logging.INFO, "dramaverse.actors.session")
    broker = MemoryBroker()
    async with open_sqlite(tmp_path / "x.db") as inner, trio.open_nursery() as nursery:
        await inner.migrate()
        await inner.import_dramas(sample_records())
        user = await inner.create_user("alice", "hash")
        storage = FlakyStorage(inner)
        session = UserSession(user, storage, broker, grace=600, check_interval=5.0)  # type: ignore[arg-type]
        nursery.start_soon(session.run)
        send, receive = trio.open_memory_channel[str](64)
        evicted: list[int] = []
        phone = Attach(Device(send, lambda code, _: evicted.append(code)), None, lambda h: f"r{h}")
        await session.inbox.send(phone)
        await phone.reply.wait()
        assert drain(receive) == ["r0"]

        storage.down = True
        # Two writes land in the log; the broker carries only the second: a gap to repair.
        first = await inner.set_favorite(user, SetFavorite(URLS[0], True))
        second = await inner.set_favorite(user, SetFavorite(URLS[1], True))
        assert first.event is not None
        assert second.event is not None
        await broker.publish(f"user:{user}", second.event.encode())
        with trio.fail_after(60):
            await storage.refusals(3)  # the gap repair and periodic checks, each failing
        assert drain(receive) == []

        # A device resuming now (its replay needs the log) is refused without a single frame;
        # the phone is not disturbed.
        tablet_send, tablet_receive = trio.open_memory_channel[str](64)
        tablet = Attach(Device(tablet_send, lambda code, _: None), 1, lambda h: f"r{h}")
        await session.inbox.send(tablet)
        with trio.fail_after(5), pytest.raises(SessionGone):
            await tablet.reply.wait()
        assert drain(tablet_receive) == []
        assert not session.stopped.is_set()
        assert evicted == []

        storage.down = False
        with trio.fail_after(60):
            frames = [json.loads(await receive.receive()) for _ in range(2)]
        assert [frame["seq"] for frame in frames] == [1, 2]
        assert not session.stopped.is_set()
        nursery.cancel_scope.cancel()
    messages = [record.getMessage() for record in caplog.records]
    assert sum("event log unreadable" in message for message in messages) == 1
    assert any("event log readable again" in message for message in messages)
    assert not any(record.levelno >= logging.ERROR for record in caplog.records)


def test_serve_reports_an_unreachable_database_on_one_line(tmp_path: Path) -> None:
    url = f"postgresql://dv:hunter2@127.0.0.1:{free_port()}/x"
    result = subprocess.run(
        [sys.executable, "-m", "dramaverse", "serve", "--port", "0"],
        env=cluster_env(tmp_path, DATABASE_URL=url),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    assert last.startswith("dramaverse: error: Cannot connect to PostgreSQL at 127.0.0.1:")
    assert "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr


# -- Redis restarting in the middle of traffic --------------------------------------------------


class Traffic:
    """Favorite toggles on one drama, one at a time, alternating between the two workers.

    Write ``k`` sets ``isFavorite = k % 2 == 0``, so each changes the library and is event
    ``seq = k + 1``. ``acked`` counts the writes answered 200; any other answer fails the test.
    """

    def __init__(self, cluster: Cluster, token: str) -> None:
        self.cluster = cluster
        self.token = token
        self.acked = 0
        self.progress = trio.Condition()
        self.stop = trio.Event()
        self.stopped = trio.Event()

    async def run(self) -> None:
        clients = [self.cluster.http(0), self.cluster.http(1)]
        try:
            while not self.stop.is_set():
                k = self.acked
                response = await clients[k % 2].post(
                    "/api/user/favorites",
                    json={"dramaUrl": URLS[0], "isFavorite": k % 2 == 0},
                    headers={"Authorization": f"Bearer {self.token}"},
                )
                assert response.status_code == 200, response.text
                async with self.progress:
                    self.acked += 1
                    self.progress.notify_all()
                await trio.sleep(0.01)  # steady traffic, not a flood
        finally:
            for client in clients:
                await client.aclose()
            self.stopped.set()

    async def wait_for(self, count: int) -> None:
        with trio.fail_after(60):
            async with self.progress:
                while self.acked < count:
                    await self.progress.wait()


async def worker_health(cluster: Cluster, worker: int) -> dict[str, Any]:
    async with cluster.http(worker) as client:
        response = await client.get("/api/health")
    assert response.status_code == 200  # degraded still serves
    body: dict[str, Any] = response.json()
    return body


async def wait_health(cluster: Cluster, status: str) -> list[dict[str, Any]]:
    bodies = []
    with trio.fail_after(30):
        for worker in range(cluster.workers):
            while True:  # another process: nothing to wait on but polling
                body = await worker_health(cluster, worker)
                if body["status"] == status:
                    bodies.append(body)
                    break
                await trio.sleep(0.05)
    return bodies


async def receive_events(ws: WebSocketConnection, into: list[dict[str, Any]]) -> None:
    """Append every event frame to ``into`` until the connection closes or we are cancelled."""
    try:
        while True:
            frame = await next_frame(ws, within=120)
            if frame["type"] == "event":
                into.append(frame)
    except ConnectionClosed:
        return


def check_stream(frames: list[dict[str, Any]], first: int, last: int) -> None:
    """Exactly the events ``first..last``, in order, each with the data of its write."""
    assert [frame["seq"] for frame in frames] == list(range(first, last + 1))
    for frame in frames:
        k = frame["seq"] - 1
        assert frame["event"] == "favorite_updated"
        assert frame["data"] == {"dramaUrl": URLS[0], "isFavorite": k % 2 == 0}


@pytest.mark.slow
async def test_a_redis_restart_mid_traffic_loses_no_event_after_resume(
    tmp_path: Path, own_redis: OwnRedis
) -> None:
    async with (
        fresh_schema() as (url, _name),
        running_cluster(
            tmp_path, database_url=url, redis_url=own_redis.url, redis_prefix=unique_prefix()
        ) as cluster,
    ):
        token = await cluster.register("alice")
        phone_events: list[dict[str, Any]] = []
        laptop_events: list[dict[str, Any]] = []
        traffic = Traffic(cluster, token)
        async with (
            open_worker_ws(cluster.socket(0)) as phone,
            trio.open_nursery() as nursery,
        ):
            await hello(phone, token)
            nursery.start_soon(receive_events, phone, phone_events)
            async with open_worker_ws(cluster.socket(1)) as laptop:
                await hello(laptop, token)
                async with trio.open_nursery() as laptop_nursery:
                    laptop_nursery.start_soon(receive_events, laptop, laptop_events)
                    nursery.start_soon(traffic.run)
                    await traffic.wait_for(10)

                    await own_redis.kill()  # mid-traffic
                    for body in await wait_health(cluster, "degraded"):
                        assert body["broker"]["redis"] == "reconnecting"
                        assert body["broker"]["detail"]
                    laptop_nursery.cancel_scope.cancel()  # the laptop drops off in the outage
            seen_by_laptop = laptop_events[-1]["seq"] if laptop_events else 0
            resume_from = traffic.acked
            await traffic.wait_for(resume_from + 10)  # writes keep being served without Redis

            await own_redis.start()
            assert await wait_health(cluster, "ok") == [{"status": "ok"}] * 2
            await traffic.wait_for(traffic.acked + 10)
            traffic.stop.set()
            with trio.fail_after(30):
                await traffic.stopped.wait()  # after the write in flight, if any
            total = traffic.acked

            # The phone stayed on worker 0 throughout: it saw every event, live, in order.
            await poll(lambda: len(phone_events) >= total, 30)
            check_stream(phone_events, 1, total)

            # The laptop comes back to worker 1 and resumes from the last event it saw.
            async with open_worker_ws(cluster.socket(1)) as laptop:
                ready = await hello(laptop, token, resume=seen_by_laptop)
                assert ready["seq"] == total
                replayed = [await next_frame(laptop) for _ in range(total - seen_by_laptop)]
            check_stream(laptop_events + replayed, 1, total)
            nursery.cancel_scope.cancel()
        assert "Redis reconnected" in cluster.log_tail(400)


# -- PostgreSQL going away ------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_database_outage_answers_503_and_everything_recovers_by_itself(
    tmp_path: Path,
) -> None:
    redis_url = require_redis()
    async with fresh_schema() as (url, _name), trio.open_nursery() as proxies:
        target = urlsplit(url)
        proxy = Proxy(target.hostname or "127.0.0.1", target.port or 5432)
        port = await proxies.start(proxy.run)
        async with running_cluster(
            tmp_path,
            database_url=with_port(url, port),
            seed_url=url,
            redis_url=redis_url,
            redis_prefix=unique_prefix(),
        ) as cluster:
            await outage_and_recovery(cluster, proxy, proxies, with_port(url, port))
        proxies.cancel_scope.cancel()


async def outage_and_recovery(
    cluster: Cluster, proxy: Proxy, proxies: trio.Nursery, proxied_url: str
) -> None:
    token = await cluster.register("alice")
    auth = {"Authorization": f"Bearer {token}"}
    favorite = {"dramaUrl": URLS[0], "isFavorite": True}
    unavailable = f"PostgreSQL at {describe_url(proxied_url)} is unavailable"
    pids = cluster.worker_pids()
    async with (
        open_worker_ws(cluster.socket(0)) as phone,
        open_worker_ws(cluster.socket(1)) as laptop,
    ):
        await hello(phone, token)
        await hello(laptop, token)
        proxy.stop()  # PostgreSQL "goes away": connections dropped, new ones refused
        started = trio.current_time()

        for worker in (0, 1):
            async with cluster.http(worker) as client:
                write = await client.post("/api/user/favorites", json=favorite, headers=auth)
                assert write.status_code == 503
                assert unavailable in write.json()["message"]
                data = await client.get("/api/user/data", headers=auth)
                assert data.status_code == 503
                assert "PostgreSQL at" in data.json()["message"]
                login = await client.post(
                    "/api/auth/login", json={"username": "alice", "password": "secret-pw"}
                )
                assert login.status_code == 503
                catalog = await client.get("/api/dramas", params={"limit": 3})
                assert catalog.status_code == 200  # served from memory
                assert catalog.json()["totalItems"] == len(URLS)

        # The health check says so (within the second its probe is trusted), on both workers.
        for worker in (0, 1):
            async with cluster.http(worker) as client:
                with trio.fail_after(10):
                    while True:
                        health = await client.get("/api/health")
                        if health.status_code != 200:
                            break
                        await trio.sleep(0.1)
                assert health.status_code == 503
                assert health.json()["status"] == "unavailable"

        # On the socket: the request gets a 503 error frame, the connection stays.
        await phone.send_message(json.dumps({"type": "favorite.set", "id": "w", "data": favorite}))
        error = await next_frame(phone)
        assert (error["type"], error["id"], error["status"]) == ("error", "w", 503)
        assert unavailable in error["message"]
        # A new connection is told to come back later.
        async with open_worker_ws(cluster.socket(1)) as late:
            await late.send_message(json.dumps({"type": "hello", "token": token}))
            with pytest.raises(ConnectionClosed) as closed:
                await next_frame(late)
            assert closed.value.reason.code == 1011
            assert "database unavailable" in (closed.value.reason.reason or "")

        # Worker 1 dies during the outage: it cannot start again until the database is back.
        os.kill(pids[1], signal.SIGKILL)
        with pytest.raises(ConnectionClosed):
            await next_frame(laptop)
        await poll(lambda: "worker 1 could not reach a backend" in cluster.log_tail(400), 30)

        # Long enough for the phone's session to run its periodic log check, and fail it.
        await trio.sleep_until(started + 6)
        await phone.send_message('{"type":"ping"}')
        assert (await next_frame(phone))["type"] == "pong"

        await proxies.start(proxy.run)  # PostgreSQL is back on the same address
        async with cluster.http(0) as client:
            with trio.fail_after(30):
                while True:
                    write = await client.post("/api/user/favorites", json=favorite, headers=auth)
                    if write.status_code == 200:
                        break
                    assert write.status_code == 503
                    await trio.sleep(0.1)
        event = await next_frame(phone)
        assert (event["type"], event["seq"]) == ("event", 1)  # the failed writes took no number
        assert event["data"] == favorite

        await cluster.wait_worker(1, within=60)  # restarted by itself once it could connect
        async with open_worker_ws(cluster.socket(1)) as laptop_again:
            ready = await hello(laptop_again, token, resume=0)
            assert ready["seq"] == 1
            replayed = await next_frame(laptop_again)
            assert (replayed["seq"], replayed["data"]) == (1, favorite)

    assert cluster.worker_pids()[0] == pids[0]  # worker 0 never crashed
    log = cluster.log_tail(1000)
    assert "event log unreadable" in log  # the periodic check failed, and nothing crashed
    assert "crashed" not in log
    assert "Traceback" not in log
