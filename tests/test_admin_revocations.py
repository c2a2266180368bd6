"""A ban, a password reset or a deletion cuts the user off: at the door, on every door, at once.

One process on a real SQLite file (revocations reloaded only every hour, so what closes a
socket is the revocation itself; ``revoker.refreshes`` checks it), the npm socket.io-client, and
``serve --workers 2`` on PostgreSQL and Redis, where the admin API on one worker and the
``dramaverse user`` command line in a process of its own both reach the other worker's sockets.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import trio
import trio.testing

from tests.cluster import Cluster, cluster_env, hello, open_worker_ws, running_cluster
from tests.conftest import Server, make_settings, running_server
from tests.node.driver import NodeDriver, open_driver, require_node
from tests.postgres_tools import fresh_schema
from tests.services import require_redis
from tests.test_broker_contract import unique_prefix
from tests.test_http_sessions import closed_with, live_socket, refused_everywhere
from tests.test_sessions_sockets import REFUSED, refused_by_both_workers

BANNED = {"message": "This account has been banned."}
INVALID_CREDENTIALS = {"message": "Invalid credentials"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def login(
    client: httpx.AsyncClient, name: str, password: str = "secret-pw"
) -> httpx.Response:
    return await client.post("/api/auth/login", json={"username": name, "password": password})


async def token_of(client: httpx.AsyncClient, name: str) -> str:
    response = await login(client, name)
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    settings = make_settings(tmp_path, revocation_refresh_seconds=3600)
    async with running_server(settings) as running:
        await running.register("alice")
        await running.register("bob")
        await running.handle.state.storage.set_admin(1, True)
        yield running


async def admin(server: Server, method: str, path: str) -> httpx.Response:
    alice = await token_of(server.client, "alice")
    response = await server.client.request(method, path, headers=bearer(alice))
    assert response.status_code == 200, response.text
    return response


# -- one process: HTTP and the native socket -----------------------------------------------------


async def test_a_ban_refuses_login_and_every_token_and_closes_live_sockets(server: Server) -> None:
    phone, laptop = await token_of(server.client, "bob"), await token_of(server.client, "bob")
    async with AsyncExitStack() as stack:
        sockets = [await live_socket(stack, server, token) for token in (phone, laptop)]
        await admin(server, "POST", "/api/admin/users/2/ban")
        for socket in sockets:
            assert await closed_with(socket) == (4100, "Invalid or expired token")
    for token in (phone, laptop):
        await refused_everywhere(server, token)
    # The password is right: the ban is said. Wrong: nothing is revealed.
    right = await login(server.client, "bob")
    assert (right.status_code, right.json()) == (403, BANNED)
    wrong = await login(server.client, "bob", "wrong-pw")
    assert (wrong.status_code, wrong.json()) == (401, INVALID_CREDENTIALS)
    assert server.handle.state.revoker.refreshes == 1  # the revocation closed them, not a reload
    assert server.handle.state.sockets.count() == 0
    # Unbanned: bob logs in again; the old tokens stay refused.
    await admin(server, "POST", "/api/admin/users/2/unban")
    again = await token_of(server.client, "bob")
    assert (await server.get_as(again, "/api/user/data")).status_code == 200
    await refused_everywhere(server, phone)


async def test_a_reset_signs_out_everywhere_and_answers_a_working_password(
    server: Server,
) -> None:
    before = await token_of(server.client, "bob")
    async with AsyncExitStack() as stack:
        socket = await live_socket(stack, server, before)
        answer = (await admin(server, "POST", "/api/admin/users/2/reset-password")).json()
        assert await closed_with(socket) == (4100, "Invalid or expired token")
    await refused_everywhere(server, before)
    assert answer["user"]["username"] == "bob"
    assert "shown only this once" in answer["message"]
    old = await login(server.client, "bob")
    assert (old.status_code, old.json()) == (401, INVALID_CREDENTIALS)
    fresh = await login(server.client, "bob", answer["password"])
    assert fresh.status_code == 200
    assert (await server.get_as(fresh.json()["token"], "/api/user/data")).status_code == 200


async def test_a_deletion_removes_the_user_and_cuts_them_off(server: Server) -> None:
    token = await token_of(server.client, "bob")
    async with AsyncExitStack() as stack:
        socket = await live_socket(stack, server, token)
        deleted = await admin(server, "DELETE", "/api/admin/users/2")
        assert deleted.json() == {"message": "bob and everything stored about them deleted."}
        assert await closed_with(socket) == (4100, "Invalid or expired token")
    await refused_everywhere(server, token)
    gone = await login(server.client, "bob")
    assert (gone.status_code, gone.json()) == (401, INVALID_CREDENTIALS)
    alice = await token_of(server.client, "alice")
    again = await server.client.delete("/api/admin/users/2", headers=bearer(alice))
    assert (again.status_code, again.json()) == (404, {"message": "User not found"})
    listed = await server.client.get("/api/admin/users", headers=bearer(alice))
    assert [u["username"] for u in listed.json()["users"]] == ["alice"]


@pytest.mark.parametrize("change", ["ban", "password"])
async def test_a_ban_or_reset_while_a_login_checks_the_password_refuses_that_login(
    server: Server, change: str
) -> None:
    state = server.handle.state
    limiter = state.passwords._limiter  # bcrypt's slots: taken, the login waits for one
    holders = [object() for _ in range(int(limiter.total_tokens))]
    for holder in holders:
        await limiter.acquire_on_behalf_of(holder)
    answers: list[httpx.Response] = []

    async def log_in() -> None:
        answers.append(await login(server.client, "bob"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(log_in)
        with trio.fail_after(30):  # a hang guard: the login reaches the password check
            while limiter.statistics().tasks_waiting == 0:
                await trio.testing.wait_all_tasks_blocked(0.01)
        if change == "ban":  # the admin API: no bcrypt needed
            await admin_without_bcrypt(server, "/api/admin/users/2/ban")
        else:  # a reset's storage step (the API's would wait for a bcrypt slot too)
            await state.storage.set_password_hash(2, "$2b$04$" + "x" * 53, state.clock_ms())
        for holder in holders:
            limiter.release_on_behalf_of(holder)
    (answer,) = answers
    expected = (403, BANNED) if change == "ban" else (401, INVALID_CREDENTIALS)
    assert (answer.status_code, answer.json()) == expected
    live = await state.storage.list_sessions(2, state.clock_ms())
    assert live == []  # the login's session was ended, not left behind


async def admin_without_bcrypt(server: Server, path: str) -> None:
    """An admin request with a token issued directly (no login, so no bcrypt slot needed)."""
    state = server.handle.state
    session = (await state.storage.list_sessions(1, state.clock_ms()))[0]
    token = state.tokens.issue(1, "alice", session_id=session.id)
    response = await server.client.post(path, headers=bearer(token))
    assert response.status_code == 200, response.text


# -- Socket.IO (the npm client) ----------------------------------------------------------------

ACTIONS: dict[str, tuple[str, str]] = {
    "ban": ("POST", "/api/admin/users/2/ban"),
    "reset-password": ("POST", "/api/admin/users/2/reset-password"),
    "delete": ("DELETE", "/api/admin/users/2"),
}


@pytest.fixture
async def node() -> AsyncIterator[NodeDriver]:
    require_node()
    async with open_driver() as driver:
        yield driver


@pytest.mark.parametrize("action", sorted(ACTIONS))
@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_socketio_sockets_of_a_cut_off_user_are_disconnected(
    node: NodeDriver, server: Server, action: str, transport: str
) -> None:
    victim = await token_of(server.client, "bob")
    options = {"auth": {"token": victim}, "transports": [transport], "reconnection": False}
    await node.send("connect", name="victim", url=server.url, options=options)
    await node.expect("connect", "victim")
    alice = await token_of(server.client, "alice")
    kept = {"auth": {"token": alice}, "transports": [transport], "reconnection": False}
    await node.send("connect", name="kept", url=server.url, options=kept)
    await node.expect("connect", "kept")

    await admin(server, *ACTIONS[action])
    closed = await node.expect("disconnect", "victim")
    assert closed["reason"] == "io server disconnect"
    await node.send("connect", name="again", url=server.url, options=options)
    assert (await node.expect("connect_error", "again"))["message"] == REFUSED
    assert (await node.state("kept"))["connected"] is True
    assert server.handle.state.revoker.refreshes == 1


# -- two workers over PostgreSQL and Redis -------------------------------------------------------


def cli(tmp_path: Path, env: dict[str, str], *args: str, stdin: str = "") -> str:
    result = subprocess.run(
        [sys.executable, "-m", "dramaverse", "user", *args],
        env={**env, "LOG_LEVEL": "WARNING"},
        cwd=tmp_path,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    return result.stdout


async def sockets_on_both_workers(stack: AsyncExitStack, cluster: Cluster, token: str) -> list[Any]:
    sockets = []
    for worker in (0, 1):
        ws = await stack.enter_async_context(open_worker_ws(cluster.socket(worker)))
        await hello(ws, token)
        sockets.append(ws)
    return sockets


@pytest.mark.slow
async def test_a_ban_from_the_api_or_the_command_line_reaches_every_worker(
    tmp_path: Path,
) -> None:
    redis_url = require_redis()
    prefix = unique_prefix()
    async with (
        fresh_schema() as (url, _name),
        running_cluster(
            tmp_path,
            database_url=url,
            redis_url=redis_url,
            redis_prefix=prefix,
            REVOCATION_REFRESH_SECONDS="3600",
        ) as cluster,
    ):
        env = cluster_env(tmp_path, DATABASE_URL=url, REDIS_URL=redis_url, REDIS_PREFIX=prefix)
        run = trio.to_thread.run_sync
        await run(lambda: cli(tmp_path, env, "create", "root", "--admin", stdin="secret-pw\n"))
        for name in ("bob", "carol"):
            await cluster.register(name)
        async with cluster.http(0) as client:
            root = await token_of(client, "root")
            bob, carol = await token_of(client, "bob"), await token_of(client, "carol")
        async with AsyncExitStack() as stack:
            bobs = await sockets_on_both_workers(stack, cluster, bob)
            carols = await sockets_on_both_workers(stack, cluster, carol)
            # bob: banned through worker 1's admin API; his socket on worker 0 closes too.
            bob_id = jwt.decode(bob, options={"verify_signature": False})["id"]
            async with cluster.http(1) as client:
                response = await client.post(f"/api/admin/users/{bob_id}/ban", headers=bearer(root))
            assert response.status_code == 200, response.text
            for ws in bobs:
                assert await closed_with(ws) == (4100, "Invalid or expired token")
            await refused_by_both_workers(cluster, bob)
            # carol: banned by the command line, a process of its own, through Redis.
            said = await run(lambda: cli(tmp_path, env, "ban", "carol"))
            assert said.splitlines()[-1] == "running servers were told through Redis"
            for ws in carols:
                assert await closed_with(ws) == (4100, "Invalid or expired token")
            await refused_by_both_workers(cluster, carol)
        for worker in (0, 1):
            async with cluster.http(worker) as client:
                for name in ("bob", "carol"):
                    refused = await login(client, name)
                    assert (refused.status_code, refused.json()) == (403, BANNED)
                stats = await client.get("/api/admin/stats", headers=bearer(root))
                assert stats.json()["worker"] == worker
