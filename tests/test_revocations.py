"""The revocation core: the in-memory tables, their message, the socket registry, the token
cache, the batched last-seen writer, and the task that keeps a process up to date.

Storage is a real SQLite file, the broker the in-process one or a real Redis; time is trio's
virtual clock wherever a period is waited for.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest
import trio
import trio_asyncio
from trio.testing import MockClock

from dramaverse.broker.base import Broker
from dramaverse.broker.memory import MemoryBroker
from dramaverse.broker.redis import open_redis_broker
from dramaverse.domain.sessions import new_session_id
from dramaverse.errors import Unauthorized
from dramaverse.http.auth import AuthUser, TokenService
from dramaverse.http.live_sockets import LiveSockets
from dramaverse.http.revocation_sync import Revoker
from dramaverse.http.revocations import TOPIC, Kind, Revocation, RevocationList
from dramaverse.http.session_activity import SessionActivity
from dramaverse.storage.accounts import RevocationSnapshot, SessionStart
from dramaverse.storage.sqlite import SqliteStorage, open_sqlite
from tests.conftest import TEST_SECRET
from tests.test_broker_contract import unique_prefix
from tests.test_broker_redis import FAST, OwnRedis

T0 = 1_700_000_000_000
TTL = 3600  # seconds


def user(user_id: int = 1, sid: str | None = None, issued: int = T0 // 1000) -> AuthUser:
    return AuthUser(user_id, "alice", issued + TTL, sid, issued)


# -- the message -----------------------------------------------------------------------------


def test_revocations_round_trip() -> None:
    sid = new_session_id()
    for revocation in (
        Revocation(Kind.ENDED, 7, T0, (sid, new_session_id())),
        Revocation(Kind.CUTOFF, 7, T0),
        Revocation(Kind.REMOVED, 2**53, 0),
    ):
        assert Revocation.decode(revocation.encode()) == revocation


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b'{"k":"nope","u":1,"t":0}',
        b'{"k":"ended","u":0,"t":0}',
        b'{"k":"ended","u":true,"t":0}',
        b'{"k":"ended","u":1,"t":1e400}',
        b'{"k":"ended","u":1,"t":-1}',
        b'{"k":"ended","u":1}',
        b'{"k":"ended","u":1,"t":0,"s":"abc"}',
        b'{"k":"ended","u":1,"t":0,"s":["../x"]}',
        b'{"k":"ended","u":1,"t":0,"s":[null]}',
        b"[" * 100_000,
        b'{"k":"cutoff","u":1,"t":0,"s":["' + b"a" * 600_000 + b'"]}',
    ],
)
def test_malformed_messages_are_ignored(raw: bytes) -> None:
    assert Revocation.decode(raw) is None


# -- the tables ------------------------------------------------------------------------------


def test_ended_sessions_and_cutoffs_refuse_exactly_what_they_name() -> None:
    now = [T0]
    revocations = RevocationList(TTL, lambda: now[0])
    ended, live = new_session_id(), new_session_id()
    revocations.apply(Revocation(Kind.ENDED, 1, T0, (ended,)))
    assert revocations.refuses(user(1, ended))
    assert not revocations.refuses(user(1, live))
    assert not revocations.refuses(user(1, None))  # a legacy token: only a cut-off reaches it

    revocations.apply(Revocation(Kind.CUTOFF, 1, T0 + 5000))
    second = (T0 + 5000) // 1000
    assert revocations.refuses(user(1, None, second - 1))
    assert revocations.refuses(user(1, live, second - 1))  # every token issued before it
    assert not revocations.refuses(user(1, live, second))  # issued again after the change
    assert not revocations.refuses(user(2, None, 0))  # another user
    revocations.apply(Revocation(Kind.CUTOFF, 1, T0))  # a cut-off never moves back
    assert revocations.refuses(user(1, None, second - 1))

    revocations.apply(Revocation(Kind.REMOVED, 3, T0))
    assert revocations.refuses(user(3, None, T0 // 1000 + TTL - 1))  # any token it can have

    # A token lifetime later, nothing they refuse can be unexpired: they are dropped.
    now[0] = T0 + TTL * 1000 + 4999
    assert revocations.prune() == 1  # the ended session
    now[0] = T0 + TTL * 1000 + 5001
    assert revocations.prune() == 1  # alice's cut-off
    assert len(revocations) == 1  # the removed user's outlives them: it was a lifetime ahead
    assert revocations.since() == T0 + 5001


def test_merging_what_storage_holds_loses_nothing_known() -> None:
    revocations = RevocationList(TTL, lambda: T0)
    a, b = new_session_id(), new_session_id()
    revocations.apply(Revocation(Kind.ENDED, 1, T0, (a,)))
    revocations.apply(Revocation(Kind.CUTOFF, 1, T0 + 9000))
    revocations.merge(RevocationSnapshot({b: (2, T0)}, {1: T0, 2: T0 + 3000}))
    assert revocations.refuses(user(1, a))
    assert revocations.refuses(user(2, b))
    assert revocations.refuses(user(1, None, (T0 + 8000) // 1000))  # the newer cut-off kept
    assert revocations.refuses(user(2, None, T0 // 1000))
    assert sorted(revocations.ended_sessions()) == sorted([a, b])


def test_a_remembered_token_is_refused_once_revoked() -> None:
    revocations = RevocationList(TTL)
    tokens = TokenService(TEST_SECRET, TTL, revocations=revocations)
    sid = new_session_id()
    token = tokens.issue(1, "alice", session_id=sid)
    legacy = tokens.issue(1, "alice", now=tokens.now() - 10)
    first = tokens.verify(token)
    assert (first.session_id, first.issued_at) == (sid, tokens.now())
    assert tokens.verify(legacy).session_id is None
    tokens.verify(token)  # remembered now
    revocations.apply(Revocation(Kind.ENDED, 1, T0, (sid,)))
    with pytest.raises(Unauthorized, match="Invalid or expired token"):
        tokens.verify(token)
    assert tokens.verify(legacy).id == 1
    revocations.apply(Revocation(Kind.CUTOFF, 1, tokens.now() * 1000))
    with pytest.raises(Unauthorized):
        tokens.verify(legacy)
    with pytest.raises(Unauthorized):
        tokens.verify_header(f"Bearer {legacy}")


@pytest.mark.parametrize(
    "claims",
    [
        {"sid": "short"},
        {"sid": 12345},
        {"sid": "x" * 65},
        {"sid": None},
        {"iat": -5},
        {"iat": 1e400},
        {"iat": "yesterday"},
    ],
)
def test_tokens_with_malformed_session_claims_are_refused(claims: dict[str, object]) -> None:
    body = {"id": 1, "username": "alice", "iat": 1, "exp": 2**40, **claims}
    token = jwt.encode(body, TEST_SECRET, algorithm="HS256")
    with pytest.raises(Unauthorized):
        TokenService(TEST_SECRET, TTL).verify(token)


# -- the sockets -----------------------------------------------------------------------------


def test_the_registry_closes_by_session_user_and_cutoff() -> None:
    sockets = LiveSockets()
    closed: list[str] = []
    a, b = new_session_id(), new_session_id()
    first = sockets.add(user(1, a), lambda: closed.append("a1"))
    sockets.add(user(1, a), lambda: closed.append("a2"))
    sockets.add(user(1, b, T0 // 1000 + 10), lambda: closed.append("b"))
    sockets.add(user(1, None), lambda: closed.append("legacy"))
    sockets.add(user(2, None), lambda: closed.append("bob"))
    assert sockets.count() == 5
    assert sorted(sockets.session_ids()) == sorted([a, b])

    assert sockets.close_sessions([a]) == 2
    assert sorted(closed) == ["a1", "a2"]
    revocations = RevocationList(TTL)
    revocations.apply(Revocation(Kind.CUTOFF, 1, T0 + 5000))
    assert sockets.close_refused(1, revocations.refuses) == 3  # a's (again), and the legacy one
    assert sorted(closed[2:]) == ["a1", "a2", "legacy"]  # b was issued after the cut-off
    assert sockets.sweep(revocations.refuses) == 3
    sockets.remove(first)
    sockets.remove(first)  # twice is harmless
    assert sockets.count(1) == 3
    assert sockets.count(3) == 0


# -- last seen -------------------------------------------------------------------------------


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SqliteStorage]:
    async with open_sqlite(tmp_path / "r.db") as opened:
        await opened.migrate()
        yield opened


def new_start(at: int = T0) -> SessionStart:
    return SessionStart(new_session_id(), at, at + TTL * 1000, "127.0.0.1", "curl", "curl/8")


async def test_last_seen_is_noted_in_memory_and_written_in_batches(storage: SqliteStorage) -> None:
    start = new_start()
    alice = await storage.create_user("alice", "h", now_ms=T0, session=start)
    now = [T0 + 100]
    activity = SessionActivity(lambda: now[0], limit=2)
    activity.note(user(alice, start.id))
    activity.note(user(alice, None))  # no session: nothing to note
    now[0] = T0 + 200
    activity.note(user(alice, start.id))
    activity.note(user(alice, new_session_id()))
    activity.note(user(alice, new_session_id()))  # over the limit: not noted this period
    assert activity.pending(start.id) == T0 + 200
    (stored,) = await storage.list_sessions(alice, T0)
    assert stored.last_seen_at == T0  # nothing written yet
    assert await activity.flush(storage) == 2
    assert activity.pending(start.id) is None
    (stored,) = await storage.list_sessions(alice, T0)
    assert stored.last_seen_at == T0 + 200
    # Sessions with a live socket count as seen at each write.
    now[0] = T0 + 900
    assert await activity.flush(storage, [start.id]) == 1
    (stored,) = await storage.list_sessions(alice, T0)
    assert stored.last_seen_at == T0 + 900


async def test_a_failed_write_is_dropped_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_sqlite(tmp_path / "gone.db") as closing:
        await closing.migrate()
    activity = SessionActivity(lambda: T0)
    activity.note(user(1, new_session_id()))
    assert await activity.flush(closing) == 0  # the storage is closed
    assert "could not write 1 last-seen times" in caplog.text


# -- the revoker -----------------------------------------------------------------------------


def revoker(storage: SqliteStorage, broker: Broker, refresh: float) -> Revoker:
    return Revoker(RevocationList(TTL), LiveSockets(), storage, broker, refresh)


async def test_revocations_in_storage_are_loaded_before_start(storage: SqliteStorage) -> None:
    start = new_start(_now_ms())
    alice = await storage.create_user("alice", "h", session=start)
    await storage.end_session(alice, start.id, _now_ms())
    core = revoker(storage, MemoryBroker(), 3600)
    async with trio.open_nursery() as nursery:
        await nursery.start(core.run)
        assert core.revocations.refuses(user(alice, start.id))
        nursery.cancel_scope.cancel()


def _now_ms() -> int:
    return int(time.time() * 1000)


async def test_a_published_revocation_closes_sockets_in_every_subscriber(
    storage: SqliteStorage,
) -> None:
    broker = MemoryBroker()
    here, there = revoker(storage, broker, 3600), revoker(storage, broker, 3600)
    sid = new_session_id()
    closed: list[str] = []
    there.sockets.add(user(1, sid), lambda: closed.append("there"))
    async with trio.open_nursery() as nursery:
        await nursery.start(here.run)
        await nursery.start(there.run)
        await here.end_sessions(1, [sid], T0)
        assert closed == ["there"]
        assert there.revocations.refuses(user(1, sid))
        assert (here.heard, there.heard) == (1, 1)
        await broker.publish(TOPIC, b"garbage")  # ignored, and nothing breaks
        await here.cut_off(2, T0)
        assert there.revocations.refuses(user(2, None, T0 // 1000 - 1))
        nursery.cancel_scope.cancel()


async def test_the_periodic_reload_closes_what_a_lost_message_left_open(
    storage: SqliteStorage, mock_clock: MockClock
) -> None:
    mock_clock.autojump_threshold = 0.5  # SQLite answers from threads: jump only when idle
    start = new_start(_now_ms())
    alice = await storage.create_user("alice", "h", session=start)
    core = revoker(storage, MemoryBroker(), 30)
    closed = trio.Event()
    core.sockets.add(user(alice, start.id, start.created_at // 1000), closed.set)
    async with trio.open_nursery() as nursery:
        await nursery.start(core.run)
        # Another process ended the session, and its message never came.
        await storage.end_session(alice, start.id, _now_ms())
        began = trio.current_time()
        with trio.fail_after(120):
            await closed.wait()
        assert 0 < trio.current_time() - began <= 30 + 1  # at the next period, not before
        assert core.refreshes == 2
        nursery.cancel_scope.cancel()


async def test_a_broker_gap_reloads_at_once(own_redis: OwnRedis, storage: SqliteStorage) -> None:
    start = new_start(_now_ms())
    alice = await storage.create_user("alice", "h", session=start)
    async with (
        trio_asyncio.open_loop(),
        open_redis_broker(own_redis.url, prefix=unique_prefix(), **FAST) as broker,
        trio.open_nursery() as nursery,
    ):
        core = Revoker(RevocationList(TTL), LiveSockets(), storage, broker, 3600)
        closed = trio.Event()
        core.sockets.add(user(alice, start.id, start.created_at // 1000), closed.set)
        await nursery.start(core.run)
        await own_redis.kill()
        with trio.fail_after(10):
            await broker.wait_for_state("reconnecting")
        # Ended elsewhere while Redis was down: the message is lost with it.
        await storage.end_session(alice, start.id, _now_ms())
        await own_redis.start()
        with trio.fail_after(10):  # the hour-long period is not what ends it
            await closed.wait()
        assert core.refreshes == 2
        nursery.cancel_scope.cancel()


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
