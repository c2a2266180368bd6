"""Redis-only broker behaviour: several processes, a Redis restart, and the server on Redis.

Two :class:`RedisBroker` instances in one test stand for two processes (each has its own node
id and connections). Tests that kill Redis start their own ``redis-server`` on a free port; the
shared server at TEST_REDIS_URL is never restarted, and every test uses its own prefix there.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio_asyncio
from trio_websocket import WebSocketConnection

from dramaverse.actors.session import Attach, Device, UserSession, user_topic
from dramaverse.broker.base import BrokerUnavailable
from dramaverse.broker.redis import RedisBroker, backoff_delay, open_redis_broker, redact
from dramaverse.config import load_settings
from dramaverse.domain.library import SetFavorite
from dramaverse.errors import ConfigError
from dramaverse.storage import open_storage
from dramaverse.storage.sqlite import open_sqlite
from tests.conftest import Server, make_settings, running_server, sample_records
from tests.services import require_redis
from tests.test_broker_contract import Inbox, RawRedis, unique_prefix
from tests.wsclient import open_client

URLS = [r["url"] for r in sample_records()]
FAST = {"reconnect_base": 0.02, "reconnect_max": 0.2}


class OwnRedis:
    """A private redis-server on a free port that a test may kill and restart."""

    def __init__(self, directory: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self.directory = directory
        self.process: trio.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.process = await trio.lowlevel.open_process(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
        )
        with trio.fail_after(10):
            while True:  # an external process: nothing to wait on but its port
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                except OSError:
                    await trio.sleep(0.02)
                    continue
                await stream.aclose()
                return

    async def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        await self.process.wait()
        self.process = None


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[OwnRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = OwnRedis(tmp_path)
    await server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            await server.kill()


# -- several processes --------------------------------------------------------------------------


async def test_two_processes_see_each_others_messages_and_never_their_own_twice() -> None:
    url = require_redis()
    prefix = unique_prefix()
    seen_a, seen_b = Inbox(), Inbox()
    async with (
        trio_asyncio.open_loop(),
        open_redis_broker(url, prefix=prefix) as a,
        open_redis_broker(url, prefix=prefix) as b,
        a.subscribe("user:1", seen_a),
        b.subscribe("user:1", seen_b),
    ):
        assert a.node != b.node
        from_a = [f"a{i}".encode() for i in range(50)]
        from_b = [f"b{i}".encode() for i in range(50)]
        for mine, theirs in zip(from_a, from_b, strict=True):
            await a.publish("user:1", mine)
            await b.publish("user:1", theirs)
        await seen_a.wait_for(100)
        await seen_b.wait_for(100)
        # Redis delivers in the order it received: once each side sees the other's marker,
        # any echo of its own earlier messages would already have arrived.
        await a.flush()
        await b.flush()
        await a.publish("user:1", b"a-end")
        await b.publish("user:1", b"b-end")
        await seen_a.wait_for(102)
        await seen_b.wait_for(102)
        for seen in (seen_a, seen_b):
            assert sorted(seen.messages) == sorted([*from_a, *from_b, b"a-end", b"b-end"])
            assert [m for m in seen.messages if m.startswith(b"a")] == [*from_a, b"a-end"]
            assert [m for m in seen.messages if m.startswith(b"b")] == [*from_b, b"b-end"]
        assert a.received == b.received == 51


async def test_a_topic_without_local_subscribers_is_not_subscribed_in_redis() -> None:
    url = require_redis()
    prefix = unique_prefix()
    raw = RawRedis(url, prefix)
    seen = Inbox()
    try:
        async with (
            trio_asyncio.open_loop(),
            open_redis_broker(url, prefix=prefix) as a,
            open_redis_broker(url, prefix=prefix) as b,
        ):
            async with b.subscribe("room:r1", seen):
                assert await raw.channels() == {"room:r1"}
                await a.publish("room:r1", b"hello")
                await a.publish("room:r2", b"to nobody")
                await seen.wait_for(1)
            await b.flush()
            assert await raw.channels() == set()
            await a.publish("room:r1", b"after")
            await a.flush()
            assert seen.messages == [b"hello"]
            assert b.subscriber_count("room:r1") == 0
    finally:
        raw.close()


async def test_messages_without_the_envelope_are_ignored_and_counted() -> None:
    url = require_redis()
    prefix = unique_prefix()
    raw = RawRedis(url, prefix)
    seen = Inbox()
    try:
        async with (
            trio_asyncio.open_loop(),
            open_redis_broker(url, prefix=prefix) as a,
            open_redis_broker(url, prefix=prefix) as b,
            a.subscribe("user:5", seen),
        ):
            await trio.to_thread.run_sync(raw.client.publish, f"{prefix}user:5", b"not ours")
            await b.publish("user:5", b"ours")
            await seen.wait_for(1)
            assert seen.messages == [b"ours"]
            assert a.foreign == 1
    finally:
        raw.close()


# -- Redis down, Redis back -----------------------------------------------------------------------


async def test_a_redis_restart_degrades_then_resubscribes_and_recovers(own_redis: OwnRedis) -> None:
    prefix = unique_prefix()
    remote, local = Inbox(), Inbox()
    raw = RawRedis(own_redis.url, prefix)
    try:
        async with (
            trio_asyncio.open_loop(),
            open_redis_broker(own_redis.url, prefix=prefix, **FAST) as a,
            open_redis_broker(own_redis.url, prefix=prefix, **FAST) as b,
            a.subscribe("user:1", local),
            b.subscribe("user:1", remote, on_gap=remote.gap),
        ):
            await a.publish("user:1", b"before")
            await remote.wait_for(1)

            # Kill Redis while a publishes steadily; publish never raises nor waits for Redis.
            sent: list[bytes] = []
            async with trio.open_nursery() as nursery:

                async def traffic() -> None:
                    while True:
                        message = f"m{len(sent)}".encode()
                        await a.publish("user:1", message)
                        sent.append(message)
                        await trio.sleep(0.001)

                nursery.start_soon(traffic)
                await remote.wait_for(5)
                await own_redis.kill()
                with trio.fail_after(10):
                    await a.wait_for_state("reconnecting")
                    await b.wait_for_state("reconnecting")
                nursery.cancel_scope.cancel()
            for _ in range(20):  # and while it is down
                message = f"m{len(sent)}".encode()
                await a.publish("user:1", message)
                sent.append(message)

            assert local.messages == [b"before", *sent]  # local delivery missed nothing
            health = a.health()
            assert health["status"] == "degraded"
            assert health["redis"] == "reconnecting"
            assert "Connection" in str(health["detail"])
            assert isinstance(health["dropped"], int)
            assert health["dropped"] >= 20
            assert remote.gaps == 0
            with pytest.raises(BrokerUnavailable):
                await a.acquire_lease("room:x", 1000)

            await own_redis.start()  # same port, empty server
            with trio.fail_after(10):
                await a.wait_for_state("connected")
                await b.wait_for_state("connected")
            await remote.wait_for(0, gaps=1)  # b resubscribed and told its subscriber
            assert await raw.channels() == {"user:1"}
            received = len(remote.messages)
            await a.publish("user:1", b"after")
            await remote.wait_for(received + 1)
            assert remote.messages[-1] == b"after"
            assert a.health()["status"] == "ok"
            assert a.reconnects == 1
    finally:
        raw.close()


async def test_a_broker_starts_degraded_when_redis_is_down(own_redis: OwnRedis) -> None:
    await own_redis.kill()
    seen = Inbox()
    async with (
        trio_asyncio.open_loop(),
        open_redis_broker(own_redis.url, prefix=unique_prefix(), **FAST) as broker,
    ):
        health = broker.health()
        assert health["status"] == "degraded"
        assert isinstance(health["attempts"], int)
        assert health["attempts"] >= 1
        async with broker.subscribe("user:1", seen, on_gap=seen.gap):
            await broker.publish("user:1", b"local")
            assert seen.messages == [b"local"]
            await own_redis.start()
            await seen.wait_for(1, gaps=1)  # the late subscription is confirmed, with a gap
            assert broker.health()["status"] == "ok"


async def test_a_unix_socket_url_works(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    path = tmp_path / "redis.sock"
    command = ["redis-server", "--port", "0", "--unixsocket", str(path), "--save", ""]
    process = await trio.lowlevel.open_process(
        [*command, "--dir", str(tmp_path)], stdout=subprocess.DEVNULL
    )
    try:
        with trio.fail_after(10):
            while True:  # an external process: nothing to wait on but its socket file
                if path.exists():
                    break
                await trio.sleep(0.02)
        seen = Inbox()
        prefix = unique_prefix()
        async with (
            trio_asyncio.open_loop(),
            open_redis_broker(f"unix://{path}", prefix=prefix) as a,
            open_redis_broker(f"unix://{path}", prefix=prefix) as b,
            b.subscribe("user:1", seen),
        ):
            assert a.health()["status"] == "ok"
            await a.publish("user:1", b"over a unix socket")
            await seen.wait_for(1)
    finally:
        process.kill()
        await process.wait()


async def test_a_lease_is_lost_when_redis_cannot_renew_it(own_redis: OwnRedis) -> None:
    async with (
        trio_asyncio.open_loop(),
        open_redis_broker(own_redis.url, prefix=unique_prefix(), **FAST) as broker,
    ):
        lease = await broker.acquire_lease("room:x", 300)
        assert lease is not None
        await own_redis.kill()
        with trio.fail_after(5):
            await lease.lost.wait()
        await own_redis.start()
        with trio.fail_after(10):
            await broker.wait_for_state("connected")
        successor = await broker.acquire_lease("room:x", 300)
        assert successor is not None
        await lease.release()
        assert successor.held


async def test_closing_the_broker_releases_its_leases() -> None:
    url = require_redis()
    prefix = unique_prefix()
    async with trio_asyncio.open_loop():
        async with open_redis_broker(url, prefix=prefix) as first:
            lease = await first.acquire_lease("room:x", 60_000)
            assert lease is not None
        assert lease.lost.is_set() or lease.released
        async with open_redis_broker(url, prefix=prefix) as second:
            taken = await second.acquire_lease("room:x", 60_000)
            assert taken is not None
            await taken.release()


async def test_a_session_repairs_at_once_when_the_broker_reconnects(
    own_redis: OwnRedis, tmp_path: Path
) -> None:
    async with open_sqlite(tmp_path / "x.db") as storage:
        await storage.migrate()
        await storage.import_dramas(sample_records())
        user = await storage.create_user("alice", "hash")
        async with (
            trio_asyncio.open_loop(),
            open_redis_broker(own_redis.url, prefix=unique_prefix(), **FAST) as broker,
            trio.open_nursery() as nursery,
        ):
            # No periodic check within the test: only the gap notice can trigger the repair.
            session = UserSession(user, storage, broker, grace=60, check_interval=3600)
            nursery.start_soon(session.run)
            outbox, frames = trio.open_memory_channel[str](64)
            request = Attach(Device(outbox, lambda code, reason: None), None, lambda h: f"r{h}")
            await session.inbox.send(request)
            await request.reply.wait()
            assert frames.receive_nowait() == "r0"

            await own_redis.kill()
            with trio.fail_after(10):
                await broker.wait_for_state("reconnecting")
            # Another process writes while Redis is down: its publish never arrives.
            written = await storage.set_favorite(user, SetFavorite(URLS[0], True))
            assert written.event is not None
            await own_redis.start()
            with trio.fail_after(10):
                frame = json.loads(await frames.receive())
            assert frame["seq"] == 1
            assert frame["data"] == {"dramaUrl": URLS[0], "isFavorite": True}
            nursery.cancel_scope.cancel()


# -- the server on Redis --------------------------------------------------------------------------


def ws_url(server: Server) -> str:
    return server.url.replace("http://", "ws://") + "/api/ws"


async def next_frame(ws: WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(10):
        frame: dict[str, Any] = json.loads(await ws.get_message())
    return frame


async def favorite(server: Server, token: str, url: str) -> httpx.Response:
    return await server.post_as(token, "/api/user/favorites", {"dramaUrl": url, "isFavorite": True})


async def test_the_server_on_redis_syncs_devices_across_processes(tmp_path: Path) -> None:
    prefix = unique_prefix()
    settings = make_settings(tmp_path, redis_url=require_redis(), redis_prefix=prefix)
    async with running_server(settings) as server:
        assert (await server.client.get("/api/health")).json() == {"status": "ok"}
        token = await server.register("alice")
        async with open_client(ws_url(server), subprotocols=["dramaverse.v1"]) as ws:
            await ws.send_message(json.dumps({"type": "hello", "token": token}))
            assert (await next_frame(ws))["type"] == "ready"
            assert (await favorite(server, token, URLS[0])).status_code == 200
            event = await next_frame(ws)
            assert (event["seq"], event["event"]) == (1, "favorite_updated")

            # Another process (its own storage handle and broker) writes and publishes.
            async with (
                open_storage(settings) as storage,
                trio_asyncio.open_loop(),
                open_redis_broker(settings.redis_url or "", prefix=prefix) as other,
            ):
                alice = await storage.get_user_by_username("alice")
                assert alice is not None
                written = await storage.set_favorite(alice.id, SetFavorite(URLS[1], True))
                assert written.event is not None
                await other.publish(user_topic(alice.id), written.event.encode())
                event = await next_frame(ws)
                assert (event["seq"], event["data"]["dramaUrl"]) == (2, URLS[1])
        broker = server.handle.state.broker
        assert isinstance(broker, RedisBroker)
        assert broker.received >= 1  # the second event came through Redis


async def test_the_server_without_redis_serves_and_says_degraded(
    tmp_path: Path, own_redis: OwnRedis
) -> None:
    await own_redis.kill()
    settings = make_settings(
        tmp_path,
        redis_url=own_redis.url,
        redis_prefix=unique_prefix(),
        redis_reconnect_max_seconds=0.2,
    )
    async with running_server(settings) as server:
        response = await server.client.get("/api/health")
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "degraded"
        assert body["broker"]["backend"] == "redis"
        assert body["broker"]["redis"] == "reconnecting"
        assert "Connection" in body["broker"]["detail"]
        token = await server.register("alice")  # HTTP and storage work without Redis
        async with open_client(ws_url(server), subprotocols=["dramaverse.v1"]) as ws:
            await ws.send_message(json.dumps({"type": "hello", "token": token}))
            assert (await next_frame(ws))["type"] == "ready"
            assert (await favorite(server, token, URLS[0])).status_code == 200
            event = await next_frame(ws)  # local delivery needs no Redis
            assert (event["seq"], event["event"]) == (1, "favorite_updated")
        await own_redis.start()
        broker = server.handle.state.broker
        assert isinstance(broker, RedisBroker)
        with trio.fail_after(10):
            await broker.wait_for_state("connected")
        assert (await server.client.get("/api/health")).json() == {"status": "ok"}


# -- settings and helpers -------------------------------------------------------------------------


def test_redis_settings_defaults_and_values() -> None:
    settings = load_settings({}, dotenv_path=None)
    assert (settings.redis_url, settings.redis_prefix) == (None, "dramaverse:")
    assert settings.redis_reconnect_max_seconds == 10.0
    settings = load_settings(
        {
            "REDIS_URL": "redis://:pw@cache:6380/2",
            "REDIS_PREFIX": "dv-staging:",
            "REDIS_RECONNECT_MAX_SECONDS": "2.5",
        },
        dotenv_path=None,
    )
    assert settings.redis_url == "redis://:pw@cache:6380/2"
    assert settings.redis_prefix == "dv-staging:"
    assert settings.redis_reconnect_max_seconds == 2.5


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"REDIS_URL": "redis://:secret@cache:99999"}, "REDIS_URL is not a valid Redis URL"),
        ({"REDIS_URL": "unix://"}, "must name a socket"),
        ({"REDIS_PREFIX": "has space"}, "REDIS_PREFIX must be"),
        ({"REDIS_PREFIX": "x" * 65}, "REDIS_PREFIX must be"),
        ({"REDIS_RECONNECT_MAX_SECONDS": "0"}, "REDIS_RECONNECT_MAX_SECONDS must be"),
        ({"REDIS_RECONNECT_MAX_SECONDS": "soon"}, "REDIS_RECONNECT_MAX_SECONDS must be"),
    ],
)
def test_bad_redis_settings_are_one_line_errors(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ, dotenv_path=None)
    assert message in raised.value.message
    assert "\n" not in raised.value.message
    assert "secret" not in raised.value.message


def test_backoff_grows_is_capped_and_jittered() -> None:
    delays = [backoff_delay(attempt, 0.1, 2.0) for attempt in range(1, 30)]
    assert all(0 < delay <= 2.0 for delay in delays)
    assert 0.05 <= delays[0] <= 0.1
    assert all(delay >= 1.0 for delay in delays[5:])  # capped ceiling, half of it fixed
    assert len({backoff_delay(10, 0.1, 2.0) for _ in range(20)}) > 1


def test_redact_hides_the_password() -> None:
    assert redact("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"
    assert redact("redis://user:pw@host/0") == "redis://user:***@host/0"
    assert redact("redis://host:6379") == "redis://host:6379"


async def test_open_redis_broker_needs_the_asyncio_loop() -> None:
    with pytest.raises(RuntimeError, match="open_loop"):
        async with open_redis_broker("redis://127.0.0.1:6379/0"):
            pass
