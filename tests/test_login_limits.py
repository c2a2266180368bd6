"""Failed passwords limited per account (http/login_limits.py, routes/password_guard.py).

Over HTTP on a real server, clients "come from" many addresses through ``X-Forwarded-For`` with
``TRUST_PROXY`` on: spreading guesses over addresses does not help, an unknown username gets
the same answer as a known one, the owner's own addresses keep signing in while the account is
locked. The counters' windows are checked on the mock clock with the in-process broker, and
their sharing between processes on a real Redis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import trio
import trio_asyncio

from dramaverse.broker.base import BrokerUnavailable
from dramaverse.broker.memory import MemoryBroker
from dramaverse.broker.redis import open_redis_broker
from dramaverse.config import RateLimit
from dramaverse.http.auth import AuthUser
from dramaverse.http.login_limits import (
    PasswordLimits,
    account_key,
    address_key,
    credential_key,
)
from tests.conftest import Server, make_settings, running_server
from tests.postgres_tools import Proxy, fresh_schema
from tests.services import require_redis
from tests.test_broker_contract import RawRedis, unique_prefix
from tests.test_health import health_until
from tests.test_storage_postgres import with_port

LOCKED = {
    "message": "Too many failed password attempts for this account, please try again after "
    "15 minutes."
}


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    settings = make_settings(tmp_path, trust_proxy=1)  # RATE_LIMIT_LOGIN_ACCOUNT: 10/900
    async with running_server(settings) as running:
        yield running


async def attempt(server: Server, name: str, password: str, address: str) -> httpx.Response:
    return await server.client.post(
        "/api/auth/login",
        json={"username": name, "password": password},
        headers={"X-Forwarded-For": address},
    )


def address(n: int) -> str:
    return f"198.51.{n // 250}.{n % 250 + 1}"


async def test_guesses_spread_over_addresses_lock_the_account_alike_for_unknown_names(
    server: Server,
) -> None:
    await server.register("alice")
    for n in range(10):  # one guess per address: the per-address limit never sees two
        for name in ("alice", "nobody"):
            response = await attempt(server, name, f"guess-{n}", address(n))
            assert (response.status_code, response.json()) == (
                401,
                {"message": "Invalid credentials"},
            )
    answers = {}
    for name in ("alice", "nobody"):
        for password in ("guess-x", "secret-pw"):  # the right password too: no oracle
            response = await attempt(server, name, password, address(100))
            answers[name, password] = response
            assert (response.status_code, response.json()) == (429, LOCKED)
    seconds = {int(r.headers["Retry-After"]) for r in answers.values()}
    assert seconds <= set(range(898, 901))  # the windows started together, 15 minutes long
    # The same headers, existing account or not.
    assert {frozenset(k for k in r.headers if k.lower() != "date") for r in answers.values()} == {
        frozenset(k for k in answers["nobody", "guess-x"].headers if k.lower() != "date")
    }
    # Other accounts are not concerned.
    await server.register("bob")
    assert (await attempt(server, "bob", "secret-pw", address(100))).status_code == 200


async def test_the_owners_addresses_still_sign_in_while_the_account_is_locked(
    server: Server,
) -> None:
    home = "192.0.2.7"
    await server.register("alice")
    assert (await attempt(server, "alice", "secret-pw", home)).status_code == 200
    for n in range(11):
        await attempt(server, "alice", f"guess-{n}", address(n))
    assert (await attempt(server, "alice", "secret-pw", address(200))).status_code == 429
    assert (await attempt(server, "alice", "secret-pw", home)).status_code == 200
    # The address has a budget of its own for this account, not an unlimited one.
    for n in range(10):
        assert (await attempt(server, "alice", f"typo-{n}", home)).status_code == 401
    locked = await attempt(server, "alice", "secret-pw", home)
    assert (locked.status_code, locked.json()) == (429, LOCKED)


async def test_a_success_takes_back_its_own_attempt_only(server: Server) -> None:
    await server.register("alice")
    for n in range(9):
        assert (await attempt(server, "alice", f"guess-{n}", address(n))).status_code == 401
    # Nine failures: a right password from anywhere gets in (its own hit is taken back) ...
    assert (await attempt(server, "alice", "secret-pw", address(50))).status_code == 200
    # ... and does not wipe the nine: one more failure reaches the limit, the next is refused.
    assert (await attempt(server, "alice", "guess-9", address(51))).status_code == 401
    assert (await attempt(server, "alice", "secret-pw", address(52))).status_code == 429


async def test_parallel_guesses_cannot_all_slip_under_the_limit(server: Server) -> None:
    await server.register("alice")
    statuses: list[int] = []

    async def guess(n: int) -> None:
        statuses.append((await attempt(server, "alice", f"guess-{n}", address(n))).status_code)

    async with trio.open_nursery() as nursery:
        for n in range(30):
            nursery.start_soon(guess, n)
    assert sorted(statuses) == [401] * 10 + [429] * 20


async def test_the_limit_can_be_off(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, trust_proxy=1, rate_limit_login_account=None)
    async with running_server(settings) as server:
        await server.register("alice")
        for n in range(15):
            assert (await attempt(server, "alice", f"guess-{n}", address(n))).status_code == 401
        assert (await attempt(server, "alice", "secret-pw", address(99))).status_code == 200


async def test_a_login_the_database_could_not_judge_is_no_failure(tmp_path: Path) -> None:
    async with fresh_schema() as (url, _name), trio.open_nursery() as proxies:
        target = urlsplit(url)
        proxy = Proxy(target.hostname or "127.0.0.1", target.port or 5432)
        port = await proxies.start(proxy.run)
        settings = make_settings(
            tmp_path,
            database_url=with_port(url, port),
            trust_proxy=1,
            rate_limit_login_account=RateLimit(2, 900),
        )
        async with running_server(settings) as server:
            await server.register("alice")
            proxy.stop()  # PostgreSQL "goes away"
            for n in range(5):
                response = await attempt(server, "alice", "secret-pw", address(n))
                assert response.status_code == 503, response.text
            await proxies.start(proxy.run)  # back on the same port
            await health_until(server.client, 200)
            with trio.fail_after(30):  # until the pool has reconnected
                while True:
                    response = await attempt(server, "alice", "wrong", address(9))
                    if response.status_code != 503:
                        break
                    await trio.sleep(0.1)
            assert response.status_code == 401  # the first failure that counts
            assert (await attempt(server, "alice", "secret-pw", address(10))).status_code == 200
        proxies.cancel_scope.cancel()


# -- the counters --------------------------------------------------------------------------------


def test_keys_are_bounded_and_hold_nothing_in_clear() -> None:
    huge = "ü" * 100_000 + "\ud800"
    for key in (account_key(huge), address_key(huge, huge), account_key("alice")):
        assert len(key) <= 100
        assert "alice" not in key
    assert account_key("alice") != account_key("Alice")  # usernames are exact
    assert address_key("alice", "10.0.0.1") != address_key("alice", "10.0.0.2")
    assert credential_key(AuthUser(1, "a", 0, "S" * 20)) != credential_key(AuthUser(1, "a", 0))


async def test_windows_end_and_a_success_takes_back_one_hit(autojump_clock: trio.abc.Clock) -> None:
    limits = PasswordLimits(RateLimit(2, 60), MemoryBroker())
    hits = [await limits.spend("k") for _ in range(3)]
    assert [limits.over(hit) for hit in hits] == [False, False, True]
    assert hits[0].seconds_left == 60
    await limits.take_back(hits[2])
    assert (await limits.spend("k")).count == 3  # 3 - 1 + 1
    await trio.sleep(61)
    fresh = await limits.spend("k")
    assert (fresh.count, fresh.seconds_left) == (1, 60)


class Unreachable:
    """A broker whose Redis is down."""

    async def count_in_window(self, key: str, window_ms: int) -> tuple[int, int]:
        raise BrokerUnavailable("Redis is unreachable: test")

    async def uncount_in_window(self, key: str) -> None:
        raise BrokerUnavailable("Redis is unreachable: test")


async def test_without_the_broker_each_process_counts_alone_rather_than_not_at_all() -> None:
    limits = PasswordLimits(RateLimit(2, 60), Unreachable())
    hits = [await limits.spend("k") for _ in range(3)]
    assert all(hit.local for hit in hits)
    assert [limits.over(hit) for hit in hits] == [False, False, True]
    await limits.take_back(hits[2])
    assert (await limits.spend("k")).count == 3


async def test_processes_count_together_through_redis() -> None:
    url, prefix = require_redis(), unique_prefix()
    raw = RawRedis(url, prefix)
    rule = RateLimit(3, 60)
    try:
        async with (
            trio_asyncio.open_loop(),
            open_redis_broker(url, prefix=prefix) as one,
            open_redis_broker(url, prefix=prefix) as two,
        ):
            first, second = PasswordLimits(rule, one), PasswordLimits(rule, two)
            key = account_key("alice")
            hits = [await limits.spend(key) for limits in (first, second, first)]
            assert [hit.count for hit in hits] == [1, 2, 3]
            await second.take_back(hits[0])  # taken back where another process counted it
            over = await second.spend(key)
            assert (over.count, first.over(over)) == (3, False)
            assert first.over(await first.spend(key))
            assert not any(hit.local for hit in hits)
    finally:
        await trio.to_thread.run_sync(raw.close)
