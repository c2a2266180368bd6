"""The Redis broker: pub/sub between processes, leases, and a connection that heals itself.

This is the only module that touches redis-py (its asyncio client), always through
``trio_asyncio.aio_as_trio``. Each crossing costs tens of microseconds, so the work is batched:
the **reader** task crosses once per batch of pub/sub messages (everything already buffered, up
to ``max_batch``) and delivers them in Trio; the **writer** task crosses once per batch of queued
work: pending SUBSCRIBE/UNSUBSCRIBE changes plus up to ``max_batch`` PUBLISHes in one pipeline.

Topics and channels: topic ``user:42`` is the Redis channel ``<prefix>user:42``. A process is
subscribed in Redis exactly to the topics that have a live local subscriber: the first local
subscriber of a topic causes a SUBSCRIBE, the last one leaving an UNSUBSCRIBE, all on one pub/sub
connection. Changes are reconciled (a topic that comes and goes between two writer batches costs
nothing), and ``subscribe`` returns once Redis confirmed the subscription.

Local delivery never needs Redis: ``publish`` calls this process's subscribers synchronously,
then queues the message for Redis wrapped in an envelope, ``dv1:<node id>:<payload>`` (the node
id is 16 random hex characters per broker). The reader drops its own node's messages, so nothing
is delivered twice, and drops (and counts) messages without the envelope.

Failure: a Redis error on either connection ends the *link* (the command client and the pub/sub
connection of one connection attempt). Every queued or in-flight publish is then dropped and
counted, ``publish`` keeps delivering locally and drops the remote copy until the next link, and
the supervisor reconnects with capped exponential backoff and jitter. The new link subscribes
every topic that has local subscribers; when Redis confirms a topic, its subscribers' ``on_gap``
is called so they repair from the durable log at once. A pub/sub connection that stays silent
for ``keepalive`` seconds is pinged; no reply within another ``keepalive`` ends the link.

Resource handling: :func:`open_redis_broker` owns a nursery with the link supervisor (which owns
each link's reader and writer and closes the link's connections, shielded and bounded) and the
renewal task of every renewing lease. On exit it flushes and releases leases (bounded), then
cancels the nursery. It must run inside ``trio_asyncio.open_loop()``.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit, urlunsplit

import trio
import trio_asyncio
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from dramaverse.broker.base import BrokerUnavailable, Deliver, GapNotice, Health
from dramaverse.broker.lease import Lease, check_lease_request

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_PREFIX = "dramaverse:"
ENVELOPE_MAGIC = b"dv1:"
NODE_ID_LENGTH = 16
HEADER_LENGTH = len(ENVELOPE_MAGIC) + NODE_ID_LENGTH + 1
CLOSE_TIMEOUT = 2.0
STABLE_LINK_SECONDS = 5.0  # a link that lived this long resets the backoff

# Extend / delete the lease key only while it still holds our token.
RENEW_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""

# One more hit in a fixed window: the first hit starts the window (its expiry), every hit
# returns the count and the time left, in one round trip.
COUNT_SCRIPT = """
local hits = redis.call('incr', KEYS[1])
if hits == 1 then
  redis.call('pexpire', KEYS[1], ARGV[1])
end
local left = redis.call('pttl', KEYS[1])
if left < 0 then
  redis.call('pexpire', KEYS[1], ARGV[1])
  left = tonumber(ARGV[1])
end
return {hits, left}
"""

# Only an existing key (a window still running) is decremented, never below zero; its expiry
# stays where the first hit put it.
UNCOUNT_SCRIPT = """
local hits = tonumber(redis.call('get', KEYS[1]) or '0')
if hits > 0 then
  redis.call('decr', KEYS[1])
end
return 0
"""

UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError, trio.TooSlowError)


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Delay before reconnect ``attempt`` (1, 2, ...): exponential, capped, half of it jittered."""
    ceiling = min(cap, base * float(2 ** min(attempt - 1, 32)))
    return ceiling / 2 + random.random() * ceiling / 2


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def _describe(exc: BaseException) -> str:
    text = str(exc) or "no detail"
    return f"{type(exc).__name__}: {text}"


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


# -- asyncio side: every function below runs inside the trio-asyncio loop ----------------------


async def _aio_connect(
    url: str, options: dict[str, Any], channels: list[bytes]
) -> tuple[Redis, PubSub]:
    client = Redis.from_url(url, **options)
    try:
        await client.ping()
        pubsub = client.pubsub()
        try:
            await pubsub.connect()
            if channels:
                await pubsub.subscribe(*channels)
        except BaseException:
            await pubsub.aclose()
            raise
    except BaseException:
        await client.aclose()
        raise
    return client, pubsub


async def _aio_read(pubsub: PubSub, keepalive: float, limit: int) -> list[dict[str, Any]]:
    """Wait for one pub/sub message, then take whatever else is already buffered."""
    message = await pubsub.get_message(timeout=keepalive)
    if message is None:
        await pubsub.ping()
        message = await pubsub.get_message(timeout=keepalive)
        if message is None:
            raise RedisTimeoutError(f"no reply to PING within {keepalive:g} s")
    batch = [message]
    while len(batch) < limit:
        message = await pubsub.get_message(timeout=0)
        if message is None:
            break
        batch.append(message)
    return batch


async def _aio_flush(
    client: Redis,
    pubsub: PubSub,
    subscribe: list[bytes],
    unsubscribe: list[bytes],
    messages: list[tuple[bytes, bytes]],
) -> None:
    if unsubscribe:
        await pubsub.unsubscribe(*unsubscribe)
    if subscribe:
        await pubsub.subscribe(*subscribe)
    if messages:
        async with client.pipeline(transaction=False) as pipe:
            for channel, data in messages:
                pipe.publish(channel, data)
            await pipe.execute()


async def _aio_close(client: Redis, pubsub: PubSub) -> None:
    try:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    finally:
        await client.aclose()


async def _aio_set_nx(client: Redis, key: str, token: str, ttl_ms: int) -> bool:
    return bool(await client.set(key, token, nx=True, px=ttl_ms))


async def _aio_eval(client: Redis, script: str, key: str, *args: str) -> int:
    result = await client.eval(script, 1, key, *args)  # type: ignore[misc]
    return int(result)


async def _aio_count(client: Redis, key: str, window_ms: int) -> tuple[int, int]:
    hits, left = await client.eval(COUNT_SCRIPT, 1, key, str(window_ms))  # type: ignore[misc]
    return int(hits), int(left)


async def _aio_uncount(client: Redis, key: str) -> None:
    await client.eval(UNCOUNT_SCRIPT, 1, key)  # type: ignore[misc]


async def _cross(fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run an asyncio coroutine function from Trio (one crossing)."""
    result: T = await trio_asyncio.aio_as_trio(fn)(*args, **kwargs)
    return result


# -- Trio side ----------------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Subscriber:
    deliver: Deliver
    on_gap: GapNotice | None


@dataclass(eq=False, slots=True)
class _Topic:
    name: str
    subscribers: list[_Subscriber] = field(default_factory=list)
    # Set once Redis confirmed the subscription, or once there is no link to wait for.
    ready: trio.Event = field(default_factory=trio.Event)
    # Messages may have been missed: tell the subscribers when the subscription is active again.
    gap: bool = False


@dataclass(eq=False)
class _Link:
    """One successful connection attempt: its two connections and what Redis was asked."""

    client: Redis
    pubsub: PubSub
    sent: set[bytes]  # channels SUBSCRIBEd on this link (and not UNSUBSCRIBEd since)
    sub_acks: dict[bytes, int]  # SUBSCRIBE confirmations still to come, per channel
    unacked: int  # every (UN)SUBSCRIBE confirmation still to come
    inflight: int = 0  # publishes inside the writer's current crossing
    error: str | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


class RedisBroker:
    """The broker for many processes. Create it with :func:`open_redis_broker`."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        reconnect_base: float = 0.1,
        reconnect_max: float = 10.0,
        connect_timeout: float = 5.0,
        command_timeout: float = 5.0,
        keepalive: float = 15.0,
        max_pending: int = 10_000,
        max_batch: int = 512,
    ) -> None:
        self.node = secrets.token_hex(NODE_ID_LENGTH // 2)
        self.prefix = prefix
        self._url = url
        self._node = self.node.encode()
        self._options: dict[str, Any] = {
            "retry": Retry(NoBackoff(), 0),  # reconnecting is ours, with backoff
            "socket_connect_timeout": connect_timeout,
            "socket_timeout": command_timeout,
        }
        if not url.startswith("unix:"):
            self._options["socket_keepalive"] = True  # TCP only
        self._reconnect_base = reconnect_base
        self._reconnect_max = reconnect_max
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._keepalive = keepalive
        self._max_pending = max_pending
        self._max_batch = max_batch

        self._channels: dict[bytes, _Topic] = {}
        self._dirty: set[bytes] = set()
        self._outbox: deque[tuple[bytes, bytes]] = deque()
        self._wake = trio.Event()
        self._progress = trio.Event()
        self._state_changed = trio.Event()
        self._link: _Link | None = None
        self._leases: set[Lease] = set()
        self._nursery: trio.Nursery | None = None
        self._closed = False

        self.state = "reconnecting"
        self._detail = "not connected yet"
        self._since = time.time()
        self._attempts = 0
        self._ever_connected = False
        self.reconnects = 0
        self.dropped = 0  # publishes that never reached Redis
        self.received = 0  # messages from other processes delivered here
        self.foreign = 0  # messages without our envelope, ignored
        self._enqueued = 0
        self._settled = 0

    # -- publish / subscribe ------------------------------------------------------------------

    def _channel(self, topic: str) -> bytes:
        return (self.prefix + topic).encode()

    async def publish(self, topic: str, message: bytes) -> None:
        channel = self._channel(topic)
        local = self._channels.get(channel)
        if local is not None:
            self._deliver(local, message)
        if self._link is None or len(self._outbox) >= self._max_pending:
            self.dropped += 1
            return
        self._outbox.append((channel, ENVELOPE_MAGIC + self._node + b":" + message))
        self._enqueued += 1
        self._wake.set()

    @asynccontextmanager
    async def subscribe(
        self, topic: str, deliver: Deliver, *, on_gap: GapNotice | None = None
    ) -> AsyncIterator[None]:
        channel = self._channel(topic)
        entry = self._channels.get(channel)
        if entry is None:
            entry = self._channels[channel] = _Topic(topic)
            self._dirty.add(channel)
            self._wake.set()
            link = self._link
            if link is None:
                # Nothing to wait for; the next link subscribes and then reports the gap.
                entry.gap = True
                entry.ready.set()
            elif channel in link.sent and not link.sub_acks.get(channel):
                entry.ready.set()  # Redis is still subscribed from a moment ago
        subscriber = _Subscriber(deliver, on_gap)
        entry.subscribers.append(subscriber)
        try:
            with trio.move_on_after(self._command_timeout):
                await entry.ready.wait()
            yield
        finally:
            entry.subscribers.remove(subscriber)
            if not entry.subscribers and self._channels.get(channel) is entry:
                del self._channels[channel]
                self._dirty.add(channel)
                self._wake.set()

    def subscriber_count(self, topic: str) -> int:
        entry = self._channels.get(self._channel(topic))
        return 0 if entry is None else len(entry.subscribers)

    def _deliver(self, topic: _Topic, message: bytes) -> None:
        # Iterate over a copy: a callback may (indirectly) unsubscribe.
        for subscriber in tuple(topic.subscribers):
            try:
                subscriber.deliver(message)
            except Exception:  # one broken subscriber must not stop the others
                log.exception("subscriber of %s failed", topic.name)

    def _report_gap(self, topic: _Topic) -> None:
        topic.gap = False
        for subscriber in tuple(topic.subscribers):
            if subscriber.on_gap is None:
                continue
            try:
                subscriber.on_gap()
            except Exception:
                log.exception("gap callback of %s failed", topic.name)

    async def flush(self) -> None:
        """Wait until queued publishes are written and (un)subscriptions are confirmed.

        Returns at once when Redis is unreachable (what was queued has been dropped).
        """
        await trio.lowlevel.checkpoint()
        target = self._enqueued
        while True:
            link = self._link
            if link is None or self._closed:
                return
            if self._settled >= target and not self._dirty and link.unacked == 0:
                return
            await self._progress.wait()

    def _notify_progress(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    # -- health -------------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """Reconnects, publishes that never reached Redis, messages received from other
        processes, and messages without our envelope (``metrics.py``)."""
        return {
            "reconnects": self.reconnects,
            "dropped": self.dropped,
            "received": self.received,
            "foreign": self.foreign,
        }

    def health(self) -> Health:
        ok = self.state == "connected"
        health: Health = {
            "status": "ok" if ok else "degraded",
            "backend": "redis",
            "redis": self.state,
            "since": _iso(self._since),
            "dropped": self.dropped,
        }
        if not ok:
            health["detail"] = self._detail
            health["attempts"] = self._attempts
        return health

    async def wait_for_state(self, state: str) -> None:
        """Wait until the link state is ``state`` ("connected", "reconnecting" or "closed")."""
        while self.state != state:
            await self._state_changed.wait()

    def _set_state(self, state: str, detail: str) -> None:
        if state != self.state:
            self._since = time.time()
        self.state = state
        self._detail = detail
        self._state_changed.set()
        self._state_changed = trio.Event()
        self._notify_progress()

    # -- the link -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a link to Redis until cancelled; report started after the first attempt."""
        started = False
        failures = 0
        while True:
            link = await self._connect()
            if not started:
                task_status.started()
                started = True
            if link is not None:
                began = trio.current_time()
                await self._run_link(link)
                if trio.current_time() - began >= STABLE_LINK_SECONDS:
                    failures = 0
                    continue  # a link that worked for a while: try again at once
            # A failed attempt, or a link that broke right away: back off.
            failures += 1
            await trio.sleep(backoff_delay(failures, self._reconnect_base, self._reconnect_max))

    async def _connect(self) -> _Link | None:
        channels = list(self._channels)
        self._dirty.clear()  # the new link starts from exactly the current topics
        try:
            with trio.fail_after(self._connect_timeout + self._command_timeout):
                client, pubsub = await _cross(_aio_connect, self._url, self._options, channels)
        except Exception as exc:
            self._attempts += 1
            if self._attempts == 1:
                log.warning("Redis at %s unreachable: %s", redact(self._url), _describe(exc))
            self._set_state("reconnecting", _describe(exc))
            return None
        link = _Link(client, pubsub, set(channels), dict.fromkeys(channels, 1), len(channels))
        self._link = link
        self._attempts = 0
        if self._ever_connected:
            self.reconnects += 1
            log.info("Redis reconnected; resubscribing %d topic(s)", len(channels))
        else:
            log.info("Redis connected at %s (node %s)", redact(self._url), self.node)
        self._ever_connected = True
        self._set_state("connected", "")
        self._wake.set()  # topics that changed during the connect crossing
        return link

    async def _run_link(self, link: _Link) -> None:
        try:
            with link.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read_loop, link)
                    nursery.start_soon(self._write_loop, link)
        finally:
            self._link = None
            lost = len(self._outbox) + link.inflight
            self._outbox.clear()
            self.dropped += lost
            self._settled += lost
            for topic in self._channels.values():
                topic.gap = True
                topic.ready.set()  # nobody waits for a confirmation that cannot come
            detail = link.error or "closed"
            self._set_state("closed" if self._closed else "reconnecting", detail)
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                try:
                    await _cross(_aio_close, link.client, link.pubsub)
                except Exception as exc:
                    log.debug("closing a Redis link failed: %s", _describe(exc))

    def _link_failed(self, link: _Link, exc: Exception) -> None:
        if link.error is None:
            link.error = _describe(exc)
            if isinstance(exc, UNAVAILABLE):
                log.warning("Redis link lost: %s", link.error)
            else:
                log.error("Redis link failed unexpectedly", exc_info=exc)
        link.scope.cancel()

    async def _read_loop(self, link: _Link) -> None:
        try:
            while True:
                batch = await _cross(_aio_read, link.pubsub, self._keepalive, self._max_batch)
                for message in batch:
                    self._dispatch(link, message)
        except Exception as exc:
            self._link_failed(link, exc)

    def _dispatch(self, link: _Link, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "message":
            data: bytes = message["data"]
            if len(data) < HEADER_LENGTH or not data.startswith(ENVELOPE_MAGIC):
                self.foreign += 1
                return
            if data[len(ENVELOPE_MAGIC) : HEADER_LENGTH - 1] == self._node:
                return  # ours: delivered locally when it was published
            topic = self._channels.get(message["channel"])
            if topic is not None:
                self.received += 1
                self._deliver(topic, data[HEADER_LENGTH:])
        elif kind == "subscribe":
            channel: bytes = message["channel"]
            link.unacked -= 1
            left = link.sub_acks.get(channel, 0) - 1
            if left > 0:
                link.sub_acks[channel] = left
            else:
                link.sub_acks.pop(channel, None)
                topic = self._channels.get(channel)
                if topic is not None and channel in link.sent:
                    topic.ready.set()
                    if topic.gap:
                        self._report_gap(topic)
            self._notify_progress()
        elif kind == "unsubscribe":
            link.unacked -= 1
            self._notify_progress()

    def _reconcile(self, link: _Link) -> tuple[list[bytes], list[bytes]]:
        """Turn the topics that changed into SUBSCRIBE and UNSUBSCRIBE lists for Redis."""
        subscribe: list[bytes] = []
        unsubscribe: list[bytes] = []
        for channel in self._dirty:
            wanted = channel in self._channels
            if wanted and channel not in link.sent:
                link.sent.add(channel)
                link.sub_acks[channel] = link.sub_acks.get(channel, 0) + 1
                subscribe.append(channel)
            elif not wanted and channel in link.sent:
                link.sent.discard(channel)
                unsubscribe.append(channel)
        self._dirty.clear()
        link.unacked += len(subscribe) + len(unsubscribe)
        return subscribe, unsubscribe

    async def _write_loop(self, link: _Link) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                while self._dirty or self._outbox:
                    subscribe, unsubscribe = self._reconcile(link)
                    count = min(len(self._outbox), self._max_batch)
                    batch = [self._outbox.popleft() for _ in range(count)]
                    link.inflight = count
                    await _cross(
                        _aio_flush, link.client, link.pubsub, subscribe, unsubscribe, batch
                    )
                    link.inflight = 0
                    self._settled += count
                    self._notify_progress()
        except Exception as exc:
            self._link_failed(link, exc)

    # -- leases -------------------------------------------------------------------------------

    def _lease_key(self, name: str) -> str:
        return f"{self.prefix}lease:{name}"

    async def _command(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """One crossing on the command client; unreachable Redis -> BrokerUnavailable."""
        link = self._link
        if link is None:
            raise BrokerUnavailable(f"Redis is unreachable: {self._detail}")
        try:
            with trio.fail_after(self._command_timeout):
                return await _cross(fn, *args, **kwargs)
        except UNAVAILABLE as exc:
            raise BrokerUnavailable(f"Redis is unreachable: {_describe(exc)}") from exc

    def _client(self) -> Redis:
        link = self._link
        if link is None:
            raise BrokerUnavailable(f"Redis is unreachable: {self._detail}")
        return link.client

    async def count_in_window(self, key: str, window_ms: int) -> tuple[int, int]:
        return await self._command(
            _aio_count, self._client(), f"{self.prefix}window:{key}", window_ms
        )

    async def uncount_in_window(self, key: str) -> None:
        await self._command(_aio_uncount, self._client(), f"{self.prefix}window:{key}")

    async def acquire_lease(self, name: str, ttl_ms: int, *, renew: bool = True) -> Lease | None:
        check_lease_request(name, ttl_ms)
        token = secrets.token_hex(16)
        taken = await self._command(
            _aio_set_nx, self._client(), self._lease_key(name), token, ttl_ms
        )
        if not taken:
            return None
        lease = Lease(name, token, ttl_ms, self)
        if renew:
            assert self._nursery is not None, "use open_redis_broker"
            self._leases.add(lease)
            self._nursery.start_soon(self._renew, lease)
        return lease

    async def _renew(self, lease: Lease) -> None:
        try:
            await lease.keep_renewed()
        finally:
            self._leases.discard(lease)

    async def extend_lease(self, lease: Lease) -> bool:
        key = self._lease_key(lease.name)
        extended = await self._command(
            _aio_eval, self._client(), RENEW_SCRIPT, key, lease.token, str(lease.ttl_ms)
        )
        return extended == 1

    async def release_lease(self, lease: Lease) -> None:
        key = self._lease_key(lease.name)
        await self._command(_aio_eval, self._client(), RELEASE_SCRIPT, key, lease.token)

    async def _close(self) -> None:
        """Flush, release the leases this process renews, then mark the broker closed."""
        with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
            await self.flush()
            for lease in list(self._leases):
                await lease.release()
        for lease in list(self._leases):
            if not lease.released:
                lease.lost.set()  # nobody renews it any more
        self._closed = True


@asynccontextmanager
async def open_redis_broker(url: str, **options: Any) -> AsyncIterator[RedisBroker]:
    """Open a :class:`RedisBroker` on ``url``; ``options`` go to its constructor.

    Returns after the first connection attempt, connected or not: an unreachable Redis makes the
    broker degraded (see ``health()``), not the process unable to start.
    """
    if trio_asyncio.current_loop.get() is None:
        raise RuntimeError("open_redis_broker needs trio_asyncio.open_loop() around it")
    broker = RedisBroker(url, **options)
    try:
        async with trio.open_nursery() as nursery:
            broker._nursery = nursery
            await nursery.start(broker.run)
            try:
                yield broker
            finally:
                await broker._close()
                nursery.cancel_scope.cancel()
    finally:
        broker._set_state("closed", "the broker was closed")
