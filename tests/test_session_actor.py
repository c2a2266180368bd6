"""The UserSession actor: ordering, gap repair from the log, eviction, idle stop; the hub's
periodic check of every session's head against the log."""

from __future__ import annotations

from pathlib import Path

import trio

from dramaverse.actors.hub import SessionHub, open_hub
from dramaverse.actors.session import Device
from dramaverse.broker.memory import MemoryBroker
from dramaverse.domain.library import SetFavorite
from dramaverse.storage.sqlite import SqliteStorage, open_sqlite
from tests.conftest import make_settings, sample_records

URLS = [r["url"] for r in sample_records()]


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


async def test_idle_session_stops_after_grace_and_unsubscribes(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, session_grace_seconds=0.05)
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
            with trio.fail_after(5):
                await session.stopped.wait()
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

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def event_heads(self, user_ids: list[int]) -> dict[int, int]:
        self.calls["event_heads"] += 1
        if self.down:
            from dramaverse.errors import StorageUnavailable

            raise StorageUnavailable("database unavailable")
        return await self.inner.event_heads(user_ids)

    async def read_events(self, user_id: int, after: int, limit: int) -> object:
        self.calls["read_events"] += 1
        return await self.inner.read_events(user_id, after, limit)


async def test_hub_check_delivers_an_event_that_was_never_published(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    broker = MemoryBroker()
    async with open_sqlite(tmp_path / "x.db") as inner:
        await inner.migrate()
        await inner.import_dramas(sample_records())
        storage = CountingStorage(inner)
        users = [await inner.create_user(f"u{i}", "hash") for i in range(30)]
        async with trio.open_nursery() as nursery:
            hub = SessionHub(nursery, storage, broker, settings)  # type: ignore[arg-type]
            receivers = []
            for user in users:
                device, receive, _ = _device()
                await hub.attach(user, device, None, lambda head: f"ready {head}")
                assert _drain(receive) == ["ready 0"]
                receivers.append(receive)
            reads_after_attach = storage.calls["read_events"]
            nursery.start_soon(hub.run_checks, 0.05)
            # Committed, never published (its process died between the two, say).
            written = await inner.set_favorite(users[7], SetFavorite(URLS[0], True))
            assert written.event is not None
            with trio.fail_after(5):
                frame = await receivers[7].receive()
            assert '"seq":1' in frame
            assert URLS[0] in frame
            await trio.sleep(0.3)
            # One heads query per period for all 30 sessions; a log read only for the one behind.
            assert storage.calls["event_heads"] >= 3
            assert storage.calls["read_events"] - reads_after_attach == 1
            assert all(_drain(r) == [] for r in receivers)
            nursery.cancel_scope.cancel()


async def test_hub_check_survives_an_unreadable_log_and_repairs_after(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    broker = MemoryBroker()
    async with open_sqlite(tmp_path / "x.db") as inner:
        await inner.migrate()
        await inner.import_dramas(sample_records())
        storage = CountingStorage(inner)
        user = await inner.create_user("alice", "hash")
        async with trio.open_nursery() as nursery:
            hub = SessionHub(nursery, storage, broker, settings)  # type: ignore[arg-type]
            device, receive, evictions = _device()
            await hub.attach(user, device, None, lambda head: f"ready {head}")
            assert _drain(receive) == ["ready 0"]
            storage.down = True
            nursery.start_soon(hub.run_checks, 0.05)
            await inner.set_favorite(user, SetFavorite(URLS[1], True))
            await trio.sleep(0.3)  # several failing checks: no crash, nothing delivered
            assert _drain(receive) == []
            assert storage.calls["event_heads"] >= 3
            storage.down = False
            with trio.fail_after(5):
                frame = await receive.receive()
            assert URLS[1] in frame
            assert evictions == []
            nursery.cancel_scope.cancel()
