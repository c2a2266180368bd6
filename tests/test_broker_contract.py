"""The Broker contract: every backend (memory, Redis) must pass the same tests.

The Redis backend runs against the real server at TEST_REDIS_URL with a fresh channel and key
prefix per test, so tests never see each other's traffic. Redis-only behaviour (several brokers
as several processes, a Redis restart, the server on Redis) is in ``test_broker_redis.py``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import trio
import trio_asyncio

from dramaverse.broker.base import Broker, BrokerUnavailable
from dramaverse.broker.memory import MemoryBroker
from dramaverse.broker.redis import open_redis_broker
from dramaverse.config import RateLimit
from dramaverse.http.security import SharedRateLimiter
from tests.services import require_redis

TTL_MS = 150


class Inbox:
    """A subscriber that records what it gets and lets a test wait for a count."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.gaps = 0
        self._changed = trio.Event()

    def __call__(self, message: bytes) -> None:
        self.messages.append(message)
        self._changed.set()

    def gap(self) -> None:
        self.gaps += 1
        self._changed.set()

    async def wait_for(self, count: int, *, gaps: int = 0) -> None:
        """Wait until ``count`` messages and ``gaps`` gap notices arrived (bounded: 10 s)."""
        with trio.fail_after(10):
            while len(self.messages) < count or self.gaps < gaps:
                self._changed = trio.Event()
                await self._changed.wait()


def unique_prefix() -> str:
    return f"dvtest:{uuid.uuid4().hex[:12]}:"


class RawRedis:
    """A plain (synchronous) client for looking behind the broker's back, run in a thread."""

    def __init__(self, url: str, prefix: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.prefix = prefix

    async def channels(self) -> set[str]:
        names = await trio.to_thread.run_sync(self.client.pubsub_channels, f"{self.prefix}*")
        assert isinstance(names, list)
        return {name.decode().removeprefix(self.prefix) for name in names}

    async def delete_lease(self, name: str) -> None:
        await trio.to_thread.run_sync(self.client.delete, f"{self.prefix}lease:{name}")

    async def lease_value(self, name: str) -> bytes | None:
        value = await trio.to_thread.run_sync(self.client.get, f"{self.prefix}lease:{name}")
        assert value is None or isinstance(value, bytes)
        return value

    def close(self) -> None:
        for key in self.client.scan_iter(f"{self.prefix}*"):
            self.client.delete(key)
        self.client.close()


@dataclass
class Backend:
    """A broker under test, plus what a test needs to reach behind its back."""

    name: str
    broker: Broker
    steal: Callable[[str], Awaitable[None]]
    raw: RawRedis | None = None


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        memory = MemoryBroker()

        async def break_memory_lease(name: str) -> None:
            assert memory.break_lease(name)

        yield Backend("memory", memory, break_memory_lease)
        return
    url = require_redis()
    prefix = unique_prefix()
    raw = RawRedis(url, prefix)
    try:
        async with trio_asyncio.open_loop(), open_redis_broker(url, prefix=prefix) as broker:
            yield Backend("redis", broker, raw.delete_lease, raw)
    finally:
        raw.close()


async def test_publish_reaches_local_subscribers_before_it_returns(backend: Backend) -> None:
    inbox = Inbox()
    async with backend.broker.subscribe("user:1", inbox):
        await backend.broker.publish("user:1", b"one")
        assert inbox.messages == [b"one"]
        await backend.broker.publish("user:1", b"two")
        assert inbox.messages == [b"one", b"two"]
    assert backend.broker.health()["status"] == "ok"


async def test_no_delivery_without_a_subscription(backend: Backend) -> None:
    other, after = Inbox(), Inbox()
    await backend.broker.publish("user:1", b"nobody listens")
    async with backend.broker.subscribe("user:1", after), backend.broker.subscribe("user:2", other):
        await backend.broker.publish("user:2", b"for two")
        await backend.broker.publish("user:1", b"for one")
        await backend.broker.flush()
    assert after.messages == [b"for one"]
    assert other.messages == [b"for two"]


async def test_unsubscribe_stops_delivery_and_leaves_the_redis_channel(backend: Backend) -> None:
    inbox = Inbox()
    async with backend.broker.subscribe("room:abc", inbox):
        if backend.raw is not None:
            # subscribe returns once Redis confirmed the subscription
            assert await backend.raw.channels() == {"room:abc"}
        await backend.broker.publish("room:abc", b"in")
    await backend.broker.publish("room:abc", b"out")
    await backend.broker.flush()
    assert inbox.messages == [b"in"]
    if backend.raw is not None:
        assert await backend.raw.channels() == set()


async def test_every_subscriber_gets_every_message_until_it_leaves(backend: Backend) -> None:
    first, second = Inbox(), Inbox()
    async with backend.broker.subscribe("movie:7", first):
        async with backend.broker.subscribe("movie:7", second):
            await backend.broker.publish("movie:7", b"both")
        await backend.broker.publish("movie:7", b"first only")
        await backend.broker.flush()
        if backend.raw is not None:
            assert await backend.raw.channels() == {"movie:7"}  # one subscriber is still here
    assert first.messages == [b"both", b"first only"]
    assert second.messages == [b"both"]


async def test_order_is_preserved_per_topic(backend: Backend) -> None:
    inbox = Inbox()
    sent = [f"m{i}".encode() for i in range(500)]
    async with backend.broker.subscribe("user:9", inbox):
        for message in sent:
            await backend.broker.publish("user:9", message)
    assert inbox.messages == sent


async def test_a_failing_subscriber_does_not_break_the_others(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(message: bytes) -> None:
        raise RuntimeError("subscriber bug")

    inbox = Inbox()
    with caplog.at_level(logging.ERROR):
        async with (
            backend.broker.subscribe("user:3", explode),
            backend.broker.subscribe("user:3", inbox),
        ):
            await backend.broker.publish("user:3", b"a")
            await backend.broker.publish("user:3", b"b")
    assert inbox.messages == [b"a", b"b"]
    assert "subscriber of user:3 failed" in caplog.text


async def test_lease_is_exclusive_and_release_hands_it_over(backend: Backend) -> None:
    lease = await backend.broker.acquire_lease("room:x", TTL_MS)
    assert lease is not None
    assert lease.held
    assert await backend.broker.acquire_lease("room:x", TTL_MS) is None
    assert await backend.broker.acquire_lease("room:y", TTL_MS) is not None  # other names are free
    await lease.release()
    assert not lease.held
    assert not lease.lost.is_set()
    again = await backend.broker.acquire_lease("room:x", TTL_MS)
    assert again is not None
    async with again:
        pass
    assert await backend.broker.acquire_lease("room:x", TTL_MS) is not None


async def test_renewal_keeps_the_lease_past_its_ttl(backend: Backend) -> None:
    ttl_ms = 300  # renewed every 100 ms: room for a busy machine's scheduling delays
    lease = await backend.broker.acquire_lease("room:x", ttl_ms)
    assert lease is not None
    await trio.sleep(4 * ttl_ms / 1000)  # time must pass: four ttls without a release
    assert lease.held
    assert await backend.broker.acquire_lease("room:x", ttl_ms) is None
    assert await lease.extend()
    await lease.release()


async def test_a_lease_expires_when_its_holder_stops_renewing(backend: Backend) -> None:
    lease = await backend.broker.acquire_lease("room:x", TTL_MS, renew=False)
    assert lease is not None
    assert await backend.broker.acquire_lease("room:x", TTL_MS) is None
    await trio.sleep(2 * TTL_MS / 1000)  # time must pass: the ttl runs out
    successor = await backend.broker.acquire_lease("room:x", TTL_MS)
    assert successor is not None
    assert not await lease.extend()  # too late: the key holds the successor's token
    assert lease.lost.is_set()
    await lease.release()  # must not delete the successor's key
    assert successor.held
    assert await backend.broker.acquire_lease("room:x", TTL_MS) is None
    await successor.release()


async def test_a_stolen_lease_is_lost_and_its_release_spares_the_thief(backend: Backend) -> None:
    lease = await backend.broker.acquire_lease("room:x", TTL_MS)
    assert lease is not None
    await backend.steal("room:x")
    thief = await backend.broker.acquire_lease("room:x", 10_000, renew=False)
    assert thief is not None
    with trio.fail_after(5):
        await lease.lost.wait()
    assert not lease.held
    await lease.release()
    assert await backend.broker.acquire_lease("room:x", TTL_MS) is None
    if backend.raw is not None:
        assert await backend.raw.lease_value("room:x") == thief.token.encode()
    await thief.release()


@pytest.mark.parametrize(
    ("name", "ttl_ms", "error"),
    [
        ("", 100, "lease name"),
        ("x" * 201, 100, "lease name"),
        ("room:x", 0, "ttl_ms must be from"),
        ("room:x", 1.5, "ttl_ms must be an integer"),
    ],
)
async def test_malformed_lease_requests_are_refused(
    backend: Backend, name: str, ttl_ms: int, error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        await backend.broker.acquire_lease(name, ttl_ms)


async def test_health_of_a_working_broker_is_ok(backend: Backend) -> None:
    health = backend.broker.health()
    assert health["status"] == "ok"
    assert health["backend"] == backend.name


async def test_window_counts_hits_per_key_and_restarts_after_the_window(backend: Backend) -> None:
    broker = backend.broker
    assert await broker.count_in_window("a", 300) == (1, pytest.approx(300, abs=50))
    hits, left = await broker.count_in_window("a", 300)
    assert hits == 2
    assert 0 < left <= 300
    assert (await broker.count_in_window("b", 300))[0] == 1  # keys count apart
    await trio.sleep(0.35)
    assert (await broker.count_in_window("a", 300))[0] == 1  # a new window


async def test_a_hit_taken_back_leaves_the_window_where_it_was(backend: Backend) -> None:
    broker = backend.broker
    await broker.count_in_window("a", 300)
    await broker.count_in_window("a", 300)
    await broker.uncount_in_window("a")
    hits, left = await broker.count_in_window("a", 300)
    assert hits == 2  # 2 - 1 + 1
    assert 0 < left <= 300  # the window did not restart
    for _ in range(3):
        await broker.uncount_in_window("a")  # never below zero
    assert (await broker.count_in_window("a", 300))[0] == 1
    await broker.uncount_in_window("never-counted")  # nothing to take back: no window made
    assert (await broker.count_in_window("never-counted", 300)) == (1, pytest.approx(300, abs=50))
    await trio.sleep(0.35)
    await broker.uncount_in_window("a")  # the window ended: nothing happens
    assert (await broker.count_in_window("a", 300))[0] == 1


async def test_a_shared_limit_is_counted_across_processes(tmp_path: Path) -> None:
    url, prefix = require_redis(), unique_prefix()
    raw = RawRedis(url, prefix)
    rule = RateLimit(3, 60)
    try:
        async with (
            trio_asyncio.open_loop(),
            open_redis_broker(url, prefix=prefix) as one,
            open_redis_broker(url, prefix=prefix) as two,
        ):
            first, second = (
                SharedRateLimiter(rule, one, "auth"),
                SharedRateLimiter(rule, two, "auth"),
            )
            allowed = [
                (await limiter.hit("10.0.0.1")).allowed
                for limiter in (first, second, first, second)
            ]
            assert allowed == [True, True, True, False]  # one budget, not one per process
            assert (await second.hit("10.0.0.2")).allowed  # per address
    finally:
        await trio.to_thread.run_sync(raw.close)


async def test_a_shared_limit_falls_back_to_a_local_one_without_redis() -> None:
    class Unreachable:
        async def count_in_window(self, key: str, window_ms: int) -> tuple[int, int]:
            raise BrokerUnavailable("Redis is unreachable: test")

    limiter = SharedRateLimiter(RateLimit(2, 60), Unreachable(), "auth")
    decisions = [await limiter.hit("10.0.0.1") for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]  # limited, never unlimited
    assert ("RateLimit-Limit", "2") in decisions[0].headers
