"""Revoked sessions on the sockets: the npm socket.io-client, and two workers over Redis.

Logout, ``DELETE /api/user/sessions/<id>`` and ``logout-others`` each end a session; its
Socket.IO sockets are disconnected by the server (``io server disconnect``: the client does not
reconnect by itself) and a new connect with its token is refused with the original message. With
``serve --workers 2`` the revocation crosses to the other worker through Redis: the native
sockets of that session on both workers close with 4100, and both workers refuse the token.
Revocations are reloaded from the database only every hour here (``REVOCATION_REFRESH_SECONDS``),
so what closes the sockets is the broker's message.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from tests.cluster import Cluster, hello, open_worker_ws, running_cluster
from tests.conftest import TEST_SECRET, Server, make_settings, running_server
from tests.node.driver import NodeDriver, open_driver, require_node
from tests.postgres_tools import fresh_schema
from tests.services import require_redis
from tests.test_broker_contract import unique_prefix

REFUSED = "Authentication error: Invalid token."


def sid_of(token: str) -> str:
    sid: str = jwt.decode(token, TEST_SECRET, algorithms=["HS256"])["sid"]
    return sid


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# An operation that ends ``victim``'s session, done with the client given (any worker), the
# victim's token and a second token of the same user. Each returns the HTTP answer.
Operation = Callable[[httpx.AsyncClient, str, str], Awaitable[httpx.Response]]


async def logout(client: httpx.AsyncClient, victim: str, other: str) -> httpx.Response:
    return await client.post("/api/auth/logout", headers=bearer(victim))


async def delete_it(client: httpx.AsyncClient, victim: str, other: str) -> httpx.Response:
    return await client.delete(f"/api/user/sessions/{sid_of(victim)}", headers=bearer(other))


async def logout_others(client: httpx.AsyncClient, victim: str, other: str) -> httpx.Response:
    return await client.post("/api/user/sessions/logout-others", headers=bearer(other))


OPERATIONS: dict[str, Operation] = {
    "logout": logout,
    "delete": delete_it,
    "logout-others": logout_others,
}


async def login(client: httpx.AsyncClient, name: str = "alice") -> str:
    response = await client.post(
        "/api/auth/login", json={"username": name, "password": "secret-pw"}
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


# -- Socket.IO, one process ----------------------------------------------------------------------


@pytest.fixture
async def node() -> AsyncIterator[NodeDriver]:
    require_node()
    async with open_driver() as driver:
        yield driver


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    settings = make_settings(tmp_path, revocation_refresh_seconds=3600)
    async with running_server(settings) as running:
        yield running


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_socketio_sockets_of_an_ended_session_are_disconnected(
    node: NodeDriver, server: Server, operation: str, transport: str
) -> None:
    await server.register("alice")
    victim, other = await login(server.client), await login(server.client)
    options = {"auth": {"token": victim}, "transports": [transport], "reconnection": False}
    await node.send("connect", name="victim", url=server.url, options=options)
    await node.expect("connect", "victim")
    kept = {"auth": {"token": other}, "transports": [transport], "reconnection": False}
    await node.send("connect", name="kept", url=server.url, options=kept)
    await node.expect("connect", "kept")

    response = await OPERATIONS[operation](server.client, victim, other)
    assert response.status_code == 200, response.text
    closed = await node.expect("disconnect", "victim")
    assert closed["reason"] == "io server disconnect"  # the client must log in again

    await node.send("connect", name="again", url=server.url, options=options)
    assert (await node.expect("connect_error", "again"))["message"] == REFUSED
    assert (await node.state("kept"))["connected"] is True
    assert node.of("disconnect", "kept") == []
    assert server.handle.state.revoker.refreshes == 1


# -- two workers over Redis ----------------------------------------------------------------------


async def closed_with(ws: WebSocketConnection) -> tuple[int, str]:
    with trio.fail_after(15):  # a hang guard: the close is pushed, not polled
        try:
            while True:
                frame = json.loads(await ws.get_message())
                assert frame["type"] in ("ready", "ping"), frame
        except ConnectionClosed as closed:
            return closed.reason.code, closed.reason.reason or ""


async def refused_by_both_workers(cluster: Cluster, token: str) -> None:
    for worker in (0, 1):
        async with cluster.http(worker) as client:
            response = await client.get("/api/user/data", headers=bearer(token))
            assert response.status_code == 401, (worker, response.text)
            assert response.json() == {"message": "Invalid or expired token"}
        async with open_worker_ws(cluster.socket(worker)) as ws:
            await ws.send_message(json.dumps({"type": "hello", "token": token}))
            assert await closed_with(ws) == (4100, "Invalid or expired token")


@pytest.mark.slow
async def test_ended_sessions_close_their_sockets_on_every_worker(tmp_path: Path) -> None:
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
        ) as cluster,
        open_driver() as node,
    ):
        await cluster.register("alice")
        for round_, (name, operation) in enumerate(sorted(OPERATIONS.items())):
            async with cluster.http(round_ % 2) as client:
                victim, other = await login(client), await login(client)
            # The victim's session has a native socket on each worker and a Socket.IO client
            # on the shared port (whichever worker took it); the other session one socket.
            async with AsyncExitStack() as stack:
                sockets = []
                for worker in (0, 1):
                    ws = await stack.enter_async_context(open_worker_ws(cluster.socket(worker)))
                    await hello(ws, victim)
                    sockets.append(ws)
                kept = await stack.enter_async_context(open_worker_ws(cluster.socket(1)))
                await hello(kept, other)
                options: dict[str, Any] = {
                    "auth": {"token": victim},
                    "transports": ["websocket"],
                    "reconnection": False,
                }
                await node.send("connect", name=name, url=cluster.url, options=options)
                await node.expect("connect", name, within=30)

                # Ended through worker 1 (logout, delete) or worker 0 (logout-others).
                async with cluster.http(1 - round_ % 2) as client:
                    response = await operation(client, victim, other)
                assert response.status_code == 200, (name, response.text)
                for ws in sockets:
                    assert await closed_with(ws) == (4100, "Invalid or expired token"), name
                closed = await node.expect("disconnect", name, within=15)
                assert closed["reason"] == "io server disconnect"
                await refused_by_both_workers(cluster, victim)
                await node.send("connect", name=f"{name}-again", url=cluster.url, options=options)
                refused = await node.expect("connect_error", f"{name}-again", within=30)
                assert refused["message"] == REFUSED

                # The other session lives on, on both workers.
                await kept.send_message('{"type":"ping"}')
                with trio.fail_after(15):
                    while json.loads(await kept.get_message())["type"] != "pong":
                        pass
                for worker in (0, 1):
                    async with cluster.http(worker) as client:
                        response = await client.get("/api/user/data", headers=bearer(other))
                    assert response.status_code == 200
