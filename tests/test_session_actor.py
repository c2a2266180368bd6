"""The UserSession actor: ordering, gap repair from the log, eviction, idle stop; the hub's
periodic check of every session's head against the log; replays streamed at the device's pace;
supervision (restart with the devices, restart intensity).

Time that must pass (a grace period, a check period, a replay's patience) passes on the ``clock``
fixture: trio's mock clock, jumping once every task has been blocked for half a real second, so
SQLite's threads (real I/O) finish before virtual time moves. Tests in which no time has to pass
run on the real clock and wait on events or on the state of other tasks."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from dramaverse.actors.hub import SessionHub, open_hub
from dramaverse.actors.session import AttachResult, Device
from dramaverse.broker.memory import MemoryBroker
from dramaverse.config import Settings
from dramaverse.domain.library import SetFavorite
from dramaverse.storage.sqlite import SqliteStorage, open_sqlite
from tests.conftest import make_settings, sample_records

URLS = [r["url"] for r in sample_records()]


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Virtual time for tests that touch SQLite: see the module docstring."""
    return trio.testing.MockClock(autojump_threshold=0.5)


def _device(size: int = 64) -> tuple[Device, trio.MemoryReceiveChannel[str], list[tuple[int, str]]]:
    send, receive = trio.open_memory_channel[str](size)
    evictions: list[tuple[int, str]] = []
    return Device(send, lambda code, reason: evictions.append((code, reason))), receive, evictions


def _drain(receive: trio.MemoryReceiveChannel[str]) -> list[str]:
    frames = []
    while True:
        try:
            frames.append(receive.receive_nowait())
        except trio.WouldBlock:
            return frames


async def test_out_of_order_and_lost_broker_messages_are_repaired_from_the_log(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, session_grace_seconds=0.5)
    broker = MemoryBroker()
    async with open_sqlite(tmp_path / "x.db") as storage:
        await storage.migrate()
        await storage.import_dramas(sample_records())
        user = await storage.create_user("alice", "hash")
        async with open_hub(storage, broker, settings) as hub:
            device, receive, _ = _device()
            await hub.attach(user, device, None, lambda head: f"ready {head}")
            assert _drain(receive) == ["ready 0"]
            # Three writes; the broker only ever carries the last one (the others are "lost").
            results = [await storage.set_favorite(user, SetFavorite(url, True)) for url in URLS[:3]]
            last = results[-1].event
            assert last is not None
            await broker.publish(f"user:{user}", last.encode())
            with trio.fail_after(5):
                frames = [await receive.receive() for _ in range(3)]
            seqs = [int(frame.split('"seq":')[1].split(",")[0]) for frame in frames]
            assert seqs == [1, 2, 3]
            # A duplicate publish is ignored.
            await broker.publish(f"user:{user}", last.encode())
            await trio.testing.wait_all_tasks_blocked()
            assert _drain(receive) == []


async def test_full_outbox_evicts_only_that_device(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    broker = MemoryBroker()
    async with open_sqlite(tmp_path / "x.db") as storage:
        await storage.migrate()
        await storage.import_dramas(sample_records())
        user = await storage.create_user("alice", "hash")
        async with open_hub(storage, broker, settings) as hub:
            slow, _slow_inbox, evicted = _device(size=2)
            healthy, healthy_inbox, kept = _device(size=64)
            await hub.attach(user, slow, None, lambda head: "ready")
            await hub.attach(user, healthy, None, lambda head: "ready")
            for url in URLS[:5]:
                result = await storage.set_favorite(user, SetFavorite(url, True))
                assert result.event is not None
                await broker.publish(f"user:{user}", result.event.encode())
                await trio.testing.wait_all_tasks_blocked()
            assert evicted == [(4001, "slow consumer: outbox full")]
            assert kept == []
            assert len(_drain(healthy_inbox)) == 6  # ready + five events
            assert hub.sessions[user].devices == [healthy]


async def test_idle_session_stops_after_grace_and_unsubscribes(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    # Shorter than the hub's check period: one jump of the clock, not one per check.
    settings = make_settings(tmp_path, session_grace_seconds=3.0)
    broker = MemoryBroker()
    async with open_sqlite(tmp_path / "x.db") as storage:
        await storage.migrate()
        user = await storage.create_user("alice", "hash")
        async with open_hub(storage, broker, settings) as hub:
            device, _, _ = _device()
            await hub.attach(user, device, None, lambda head: "ready")
            assert broker.subscriber_count(f"user:{user}") == 1
            session = hub.sessions[user]
            hub.detach(user, device)
            detached_at = trio.current_time()
            with trio.fail_after(60):
                await session.stopped.wait()
            assert trio.current_time() - detached_at >= 3.0  # not before the grace is over
            assert user not in hub.sessions
            assert broker.subscriber_count(f"user:{user}") == 0
            # A new connection starts a fresh actor.
            again, receive, _ = _device()
            await hub.attach(user, again, None, lambda head: f"ready {head}")
            assert _drain(receive) == ["ready 0"]


class CountingStorage:
    """Counts the log reads that go to the real storage."""

    def __init__(self, inner: SqliteStorage) -> None:
        self.inner = inner
        self.calls: dict[str, int] = {"event_heads": 0, "read_events": 0}
        self.down = False
        self._heads_read = trio.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def event_heads(self, user_ids: list[int]) -> dict[int, int]:
        self.calls["event_heads"] += 1
        self._heads_read.set()
        self._heads_read = trio.Event()
        if self.down:
            from dramaverse.errors import StorageUnavailable

            raise StorageUnavailable("database unavailable")
        return await self.inner.event_heads(user_ids)

    async def read_events(self, user_id: int, after: int, limit: int) -> object:
        self.calls["read_events"] += 1
        return await self.inner.read_events(user_id, after, limit)

    async def heads_read(self, count: int) -> None:
        """Wait until the hub has asked for the heads ``count`` times in all."""
        while self.calls["event_heads"] < count:
            await self._heads_read.wait()


async def test_hub_check_delivers_an_event_that_was_never_published(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    settings = make_settings(tmp_path)
    broker = MemoryBroker()
    async with open_sqlite(tmp_path / "x.db") as inner:
        await inner.migrate()
        await inner.import_dramas(sample_records())
        storage = CountingStorage(inner)
        users = [await inner.create_user(f"u{i}", "hash") for i in range(30)]
        async with trio.open_nursery() as nursery:
            hub = SessionHub(nursery, storage, broker, settings)  # type: ignore[arg-type]
            await nursery.start(hub.run)
            receivers = []
            for user in users:
                device, receive, _ = _device()
                await hub.attach(user, device, None, lambda head: f"ready {head}")
                assert _drain(receive) == ["ready 0"]
                receivers.append(receive)
            reads_after_attach = storage.calls["read_events"]
            nursery.start_soon(hub.run_checks, 5.0)
            # Committed, never published (its process died between the two, say).
            written = await inner.set_favorite(users[7], SetFavorite(URLS[0], True))
            assert written.event is not None
            with trio.fail_after(60):
                frame = await receivers[7].receive()
            assert '"seq":1' in frame
            assert URLS[0] in frame
            with trio.fail_after(60):
                await storage.heads_read(3)
            # One heads query per period for all 30 sessions; a log read only for the one behind.
            assert storage.calls["read_events"] - reads_after_attach == 1
            assert all(_drain(r) == [] for r in receivers)
            nursery.cancel_scope.cancel()


async def test_hub_check_survives_an_unreadable_log_and_repairs_after(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    settings = make_settings(tmp_path)
    broker = MemoryBroker()
    async with open_sqlite(tmp_path / "x.db") as inner:
        await inner.migrate()
        await inner.import_dramas(sample_records())
        storage = CountingStorage(inner)
        user = await inner.create_user("alice", "hash")
        async with trio.open_nursery() as nursery:
            hub = SessionHub(nursery, storage, broker, settings)  # type: ignore[arg-type]
            await nursery.start(hub.run)
            device, receive, evictions = _device()
            await hub.attach(user, device, None, lambda head: f"ready {head}")
            assert _drain(receive) == ["ready 0"]
            storage.down = True
            nursery.start_soon(hub.run_checks, 5.0)
            await inner.set_favorite(user, SetFavorite(URLS[1], True))
            with trio.fail_after(60):
                await storage.heads_read(3)  # several failing checks: no crash, nothing delivered
            assert _drain(receive) == []
            storage.down = False
            with trio.fail_after(60):
                frame = await receive.receive()
            assert URLS[1] in frame
            assert evictions == []
            nursery.cancel_scope.cancel()


# -- replays streamed at the device's pace ------------------------------------------------------


@asynccontextmanager
async def _hub(
    tmp_path: Path, settings: Settings, **options: Any
) -> AsyncIterator[tuple[SessionHub, SqliteStorage, MemoryBroker, int, trio.Nursery]]:
    broker = MemoryBroker()
    async with open_sqlite(tmp_path / "x.db") as storage:
        await storage.migrate()
        await storage.import_dramas(sample_records())
        user = await storage.create_user("alice", "hash")
        async with trio.open_nursery() as nursery:
            hub = SessionHub(nursery, storage, broker, settings, **options)
            await nursery.start(hub.run)
            yield hub, storage, broker, user, nursery
            nursery.cancel_scope.cancel()


async def _write(storage: SqliteStorage, user: int, count: int) -> list[bytes]:
    """``count`` favorite changes in the log (not published); their encoded events."""
    encoded = []
    first = await storage.event_head(user)  # each URL alternates on, off, on...: always a change
    for n in range(first, first + count):
        result = await storage.set_favorite(user, SetFavorite(URLS[n % 2], n % 4 < 2))
        assert result.event is not None
        encoded.append(result.event.encode())
    return encoded


def _seqs(frames: list[str]) -> list[int]:
    return [json.loads(frame)["seq"] for frame in frames]


async def _until(condition: Callable[[], bool], within: float = 5.0) -> None:
    with trio.fail_after(within):
        while not condition():  # noqa: ASYNC110 (state of other tasks, no event to wait on)
            await trio.sleep(0.01)


async def _attach_in_background(
    nursery: trio.Nursery, attach: Callable[[], Awaitable[AttachResult]]
) -> list[AttachResult]:
    results: list[AttachResult] = []

    async def run() -> None:
        results.append(await attach())

    nursery.start_soon(run)
    return results


def _ready(head: int) -> str:
    return json.dumps({"type": "ready", "seq": head})


async def test_a_stalled_replay_holds_up_neither_the_actor_nor_other_devices(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, ws_heartbeat_timeout=60.0)
    async with _hub(tmp_path, settings) as (hub, storage, broker, user, nursery):
        await _write(storage, user, 50)
        slow, slow_inbox, evicted = _device(size=4)
        results = await _attach_in_background(nursery, lambda: hub.attach(user, slow, 0, _ready))
        # The replay fills the outbox to its high-water mark (3 of 4) and waits there.
        await _until(lambda: slow_inbox.statistics().current_buffer_used == 3)
        fast, fast_inbox, _ = _device()
        await hub.attach(user, fast, None, _ready)
        assert _seqs(_drain(fast_inbox)) == [50]
        published = await storage.set_favorite(user, SetFavorite(URLS[5], True))
        assert published.event is not None
        await broker.publish(f"user:{user}", published.event.encode())
        with trio.fail_after(5):
            assert _seqs([await fast_inbox.receive()]) == [51]
        assert results == []  # still replaying, and not evicted: it is slow, not stuck
        assert evicted == []
        # The slow device reads at last: everything, once, in order, then live.
        with trio.fail_after(5):
            frames = [await slow_inbox.receive() for _ in range(52)]
        assert _seqs(frames) == [50, *range(1, 52)]
        await _until(lambda: bool(results))
        assert results[0].replay
        assert evicted == []
        published = await storage.set_favorite(user, SetFavorite(URLS[6], True))
        assert published.event is not None
        await broker.publish(f"user:{user}", published.event.encode())
        with trio.fail_after(5):
            assert _seqs([await slow_inbox.receive()]) == [52]
            assert _seqs([await fast_inbox.receive()]) == [52]


async def test_a_replay_that_takes_nothing_for_the_patience_is_evicted_as_slow(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    settings = make_settings(tmp_path, ws_heartbeat_timeout=20.0)  # the replay's patience
    async with _hub(tmp_path, settings) as (hub, storage, _broker, user, nursery):
        await _write(storage, user, 20)
        stuck, stuck_inbox, evicted = _device(size=4)
        results = await _attach_in_background(nursery, lambda: hub.attach(user, stuck, 0, _ready))
        # The replay has read its one page of the log and filled the outbox to its high-water
        # mark: from here on no thread is involved, so the clock may jump at once.
        await _until(lambda: stuck_inbox.statistics().current_buffer_used == 3)
        full_at = trio.current_time()
        clock.autojump_threshold = 0
        await _until(lambda: bool(results), within=60.0)
        assert evicted == [(4001, "slow consumer: outbox full")]
        assert trio.current_time() - full_at >= 20.0  # not before its patience ran out
        assert stuck.gone


async def test_a_resume_the_log_no_longer_covers_gets_resync_and_no_replay(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path)
    async with _hub(tmp_path, settings) as (hub, storage, _broker, user, _nursery):
        await _write(storage, user, 10)
        assert await storage.prune_events(4, 0) == 6
        late, inbox, _ = _device()
        result = await hub.attach(user, late, 2, _ready)
        assert (result.resynced, result.replay) == (True, False)
        assert [json.loads(f)["type"] for f in _drain(inbox)] == ["ready", "resync"]
        kept, inbox, _ = _device()
        result = await hub.attach(user, kept, 6, _ready)  # 7..10 are still there
        assert (result.resynced, result.replay) == (False, True)
        assert _seqs(_drain(inbox)) == [10, 7, 8, 9, 10]


# -- supervision: a crashed session actor is restarted with its devices ------------------------


class FailingReads:
    """Fault injection: the next ``times`` log reads raise, as a bug or a driver error would."""

    def __init__(self, storage: SqliteStorage, monkeypatch: pytest.MonkeyPatch, times: int):
        self.left = times
        self.raised = 0
        real = storage.read_events

        async def read_events(user_id: int, after: int, limit: int) -> Any:
            if self.left > 0:
                self.left -= 1
                self.raised += 1
                raise RuntimeError("injected read failure")
            return await real(user_id, after, limit)

        monkeypatch.setattr(storage, "read_events", read_events)


def _crash_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "session actor of user" in r.getMessage()]


async def test_a_crashed_session_is_restarted_and_its_devices_miss_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path)
    async with _hub(tmp_path, settings) as (hub, storage, broker, user, _nursery):
        devices = [_device() for _ in range(2)]
        for device, inbox, _ in devices:
            await hub.attach(user, device, None, _ready)
            assert _seqs(_drain(inbox)) == [0]
        crashed = hub.sessions[user]
        faults = FailingReads(storage, monkeypatch, times=1)
        # Two writes, only the second published: the gap repair reads the log, and that read
        # raises: the actor crashes in the middle of delivering.
        encoded = await _write(storage, user, 2)
        with caplog.at_level(logging.ERROR):
            await broker.publish(f"user:{user}", encoded[1])
            for _, inbox, _ in devices:
                with trio.fail_after(5):
                    assert _seqs([await inbox.receive(), await inbox.receive()]) == [1, 2]
        assert faults.raised == 1
        [record] = _crash_records(caplog)
        assert f"user {user} crashed" in record.getMessage()
        assert "restarting it with its 2 device(s)" in record.getMessage()
        successor = hub.sessions[user]
        assert successor is not crashed
        assert successor.devices == [device for device, _, _ in devices]
        # Live delivery goes on from the successor, without a duplicate.
        [third] = await _write(storage, user, 1)
        await broker.publish(f"user:{user}", third)
        await broker.publish(f"user:{user}", encoded[1])  # a stale duplicate is skipped
        for _, inbox, evicted in devices:
            with trio.fail_after(5):
                assert _seqs([await inbox.receive()]) == [3]
            await trio.testing.wait_all_tasks_blocked()
            assert _drain(inbox) == []
            assert evicted == []


async def test_a_replay_survives_a_crash_of_its_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path, ws_heartbeat_timeout=60.0)
    async with _hub(tmp_path, settings) as (hub, storage, broker, user, nursery):
        await _write(storage, user, 30)
        replaying, inbox, evicted = _device(size=4)
        results = await _attach_in_background(
            nursery, lambda: hub.attach(user, replaying, 0, _ready)
        )
        await _until(lambda: inbox.statistics().current_buffer_used == 3)
        crashed = hub.sessions[user]
        FailingReads(storage, monkeypatch, times=1)
        encoded = await _write(storage, user, 2)  # 31, 32: only 32 is published
        await broker.publish(f"user:{user}", encoded[1])
        await _until(lambda: hub.sessions.get(user) not in (None, crashed))
        with trio.fail_after(5):
            frames = [await inbox.receive() for _ in range(33)]
        assert _seqs(frames) == [30, *range(1, 33)]
        await _until(lambda: bool(results))
        assert evicted == []
        [live] = await _write(storage, user, 1)
        await broker.publish(f"user:{user}", live)
        with trio.fail_after(5):
            assert _seqs([await inbox.receive()]) == [33]


async def test_a_session_that_keeps_crashing_closes_its_devices_with_a_reconnect_code(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    mock_clock: trio.testing.MockClock,
) -> None:
    # Virtual time for the restart back-off; the jump waits for SQLite's threads (real I/O).
    mock_clock.autojump_threshold = 0.5
    settings = make_settings(tmp_path)
    async with _hub(tmp_path, settings, restart_limit=2, restart_window=60.0) as (
        hub,
        storage,
        broker,
        user,
        _nursery,
    ):
        send, _receive = trio.open_memory_channel[str](64)
        evicted: list[tuple[int, str]] = []
        closed = trio.Event()

        def evict(code: int, reason: str) -> None:
            evicted.append((code, reason))
            closed.set()

        device = Device(send, evict)
        await hub.attach(user, device, None, _ready)
        faults = FailingReads(storage, monkeypatch, times=1_000)  # every read fails
        encoded = await _write(storage, user, 2)
        with caplog.at_level(logging.ERROR):
            await broker.publish(f"user:{user}", encoded[1])
            with trio.fail_after(30):
                await closed.wait()
        # The first crash and two restarts that crash at once (they start behind the log),
        # then no more restarts: the device is told to reconnect.
        assert evicted == [(1011, "session failed; reconnect")]
        assert faults.raised == 3
        records = _crash_records(caplog)
        assert len(records) == 3
        assert "giving up, closing its 1 device(s)" in records[-1].getMessage()
        assert user not in hub.sessions
        # Once the cause is gone, the user's next connection gets a working session.
        faults.left = 0
        again, inbox, _ = _device()
        await hub.attach(user, again, None, _ready)
        assert _seqs(_drain(inbox)) == [2]


# -- the actor shape: one attach attempt, no request lost to an actor stopping ---------------


class SlowUnsubscribe(MemoryBroker):
    """The in-process broker with an unsubscribe that takes time, as Redis's does (a round
    trip): the window in which a stopping session is still reachable."""

    def __init__(self) -> None:
        super().__init__()
        self.unsubscribing = trio.Event()
        self.release = trio.Event()

    @asynccontextmanager
    async def subscribe(  # type: ignore[override]
        self, topic: str, deliver: Any, *, on_gap: Any = None
    ) -> AsyncIterator[None]:
        async with super().subscribe(topic, deliver, on_gap=on_gap):
            try:
                yield
            finally:
                self.unsubscribing.set()
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await self.release.wait()


async def test_an_attach_while_the_idle_session_unsubscribes_is_served_by_a_fresh_one(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    settings = make_settings(tmp_path, session_grace_seconds=30.0)
    broker = SlowUnsubscribe()
    async with open_sqlite(tmp_path / "x.db") as storage:
        await storage.migrate()
        user = await storage.create_user("alice", "hash")
        async with trio.open_nursery() as nursery:
            hub = SessionHub(nursery, storage, broker, settings)
            await nursery.start(hub.run)
            first, _, _ = _device()
            await hub.attach(user, first, None, _ready)
            hub.detach(user, first)
            with trio.fail_after(60):
                await broker.unsubscribing.wait()  # idle past the grace: stopping
            second, inbox, _ = _device()
            attached = await _attach_in_background(
                nursery, lambda: hub.attach(user, second, None, _ready)
            )
            await trio.testing.wait_all_tasks_blocked()
            broker.release.set()
            await _until(lambda: bool(attached))
            assert _seqs(_drain(inbox)) == [0]
            assert hub.sessions[user].devices == [second]
            nursery.cancel_scope.cancel()
