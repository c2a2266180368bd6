"""The user's own account with ``serve --workers 2`` on PostgreSQL and Redis.

A password change made through one worker closes the other sessions' native sockets on both
workers and their Socket.IO socket (on the shared port), and both workers refuse their tokens;
failed logins spread over both workers and many addresses lock the account alike for a name
that does not exist; a deletion through the other worker closes every socket of the user on
both. Revocations are reloaded from the database only every hour here, so what closes the
sockets is the broker's message.
"""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from tests.cluster import Cluster, hello, open_worker_ws, running_cluster
from tests.node.driver import open_driver, require_node
from tests.postgres_tools import fresh_schema
from tests.services import require_redis
from tests.test_broker_contract import unique_prefix
from tests.test_sessions_sockets import bearer, login, refused_by_both_workers

LOCKED = "Too many failed password attempts for this account, please try again after 15 minutes."


async def closed_with(ws: WebSocketConnection) -> tuple[int, str]:
    with trio.fail_after(15):  # a hang guard: the close is pushed, not polled
        try:
            while True:
                frame = json.loads(await ws.get_message())
                assert frame["type"] in ("ready", "ping"), frame
        except ConnectionClosed as closed:
            return closed.reason.code, closed.reason.reason or ""


async def sockets_on_both(stack: AsyncExitStack, cluster: Cluster, token: str) -> list[Any]:
    sockets = []
    for worker in (0, 1):
        ws = await stack.enter_async_context(open_worker_ws(cluster.socket(worker)))
        await hello(ws, token)
        sockets.append(ws)
    return sockets


async def login_from(
    client: httpx.AsyncClient, name: str, password: str, address: str
) -> httpx.Response:
    return await client.post(
        "/api/auth/login",
        json={"username": name, "password": password},
        headers={"X-Forwarded-For": address},
    )


@pytest.mark.slow
async def test_password_change_login_limits_and_deletion_across_workers(tmp_path: Path) -> None:
    require_node()
    redis_url = require_redis()
    async with (
        fresh_schema() as (url, _name),
        running_cluster(
            tmp_path,
            database_url=url,
            redis_url=redis_url,
            redis_prefix=unique_prefix(),
            REVOCATION_REFRESH_SECONDS="3600",
            TRUST_PROXY="1",
        ) as cluster,
        open_driver() as node,
    ):
        await cluster.register("alice")
        async with cluster.http(0) as client:
            other, current = await login(client), await login(client)

        # -- a password change through worker 0 ------------------------------------------------
        async with AsyncExitStack() as stack:
            doomed = await sockets_on_both(stack, cluster, other)
            options: dict[str, Any] = {
                "auth": {"token": other},
                "transports": ["websocket"],
                "reconnection": False,
            }
            await node.send("connect", name="other", url=cluster.url, options=options)
            await node.expect("connect", "other", within=30)

            async with cluster.http(0) as client:
                response = await client.post(
                    "/api/user/password",
                    json={"currentPassword": "secret-pw", "newPassword": "brand-new-pw"},
                    headers=bearer(current),
                )
            assert response.status_code == 200, response.text
            fresh = response.json()["token"]
            for ws in doomed:
                assert await closed_with(ws) == (4100, "Invalid or expired token")
            closed = await node.expect("disconnect", "other", within=15)
            assert closed["reason"] == "io server disconnect"
            await refused_by_both_workers(cluster, other)
            for worker in (0, 1):
                async with cluster.http(worker) as client:
                    data = await client.get("/api/user/data", headers=bearer(fresh))
                    assert data.status_code == 200, (worker, data.text)
                    for name in ("alice", "nobody"):  # two failures each, counted below
                        old = await login_from(client, name, "secret-pw", "192.0.2.1")
                        assert old.status_code == 401

        # -- failed logins over both workers and many addresses ---------------------------------
        for n in range(8):  # 2 + 8 = 10 failures: the limit
            async with cluster.http(n % 2) as client:
                for name in ("alice", "nobody"):
                    guess = await login_from(client, name, f"guess-{n}", f"198.51.100.{n + 1}")
                    assert guess.status_code == 401, (n, name, guess.text)
        for worker in (0, 1):
            async with cluster.http(worker) as client:
                for name in ("alice", "nobody"):
                    locked = await login_from(client, name, "brand-new-pw", "203.0.113.5")
                    assert (locked.status_code, locked.json()) == (429, {"message": LOCKED})
                    assert "Retry-After" in locked.headers

        # -- the export, read from PostgreSQL -------------------------------------------------
        async with cluster.http(1) as client:
            export = await client.get("/api/user/export", headers=bearer(fresh))
        assert export.status_code == 200, export.text
        assert export.json()["user"]["username"] == "alice"
        assert [s["endedAt"] is None for s in export.json()["sessions"]].count(True) == 1

        # -- a deletion through worker 1 ---------------------------------------------------------
        async with AsyncExitStack() as stack:
            doomed = await sockets_on_both(stack, cluster, fresh)
            async with cluster.http(1) as client:
                response = await client.request(
                    "DELETE",
                    "/api/user",
                    content=json.dumps({"password": "brand-new-pw"}).encode(),
                    headers={**bearer(fresh), "Content-Type": "application/json"},
                )
            assert response.status_code == 200, response.text
            for ws in doomed:
                assert await closed_with(ws) == (4100, "Invalid or expired token")
            await refused_by_both_workers(cluster, fresh)
