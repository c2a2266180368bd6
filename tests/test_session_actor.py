"""The UserSession actor: ordering, gap repair from the log, eviction, idle stop."""

from __future__ import annotations

from pathlib import Path

import trio

from dramaverse.actors.hub import open_hub
from dramaverse.actors.session import Device
from dramaverse.broker.memory import MemoryBroker
from dramaverse.domain.library import SetFavorite
from dramaverse.storage.sqlite import open_sqlite
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
