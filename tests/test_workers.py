"""``dramaverse serve --workers N``: the supervisor, its workers, and live sync across them.

Real process trees on the real PostgreSQL (a fresh schema per test) and Redis (a fresh prefix
per test): two devices of one user on two different workers receive each other's events, the
shared port is served by every worker, a worker that dies is restarted, workers never outlive
their supervisor, SIGTERM stops everything in time. The configuration checks and the crash-loop
policy need neither server.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from dramaverse.config import load_settings
from dramaverse.storage import open_storage
from dramaverse.supervisor import RestartPolicy, Supervisor, bind_listener
from tests.cluster import (
    GRACE,
    Cluster,
    alive,
    cluster_env,
    hello,
    next_frame,
    open_worker_ws,
    poll,
    running_cluster,
)
from tests.conftest import sample_records
from tests.postgres_tools import fresh_schema
from tests.services import require_redis
from tests.test_broker_contract import unique_prefix

URLS = [r["url"] for r in sample_records()]


def run_serve(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = cluster_env(tmp_path, **env)
    for name in ("DATABASE_URL", "REDIS_URL", "WORKERS"):
        if name not in env:
            environ.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "dramaverse", "serve", *args],
        env=environ,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# -- configuration ------------------------------------------------------------------------------

NO_PG = "postgresql://dv:hunter2@127.0.0.1:1/x"  # never contacted: the checks come first


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--workers", "2"], {}, "2 workers need PostgreSQL (DATABASE_URL=postgresql://...)"),
        ([], {"WORKERS": "3"}, "3 workers need PostgreSQL"),
        (["--workers", "2"], {"DATABASE_URL": NO_PG}, "2 workers need Redis (REDIS_URL="),
        (["--workers", "0"], {}, "--workers must be from 1 to 64 (got 0)."),
        ([], {"WORKERS": "many"}, "WORKERS must be an integer from 1 to 64 (got 'many')."),
        (
            ["--workers", "2"],
            {
                "DATABASE_URL": NO_PG,
                "REDIS_URL": "redis://127.0.0.1:1/0",
                "WORKER_SOCKET_DIR": "/tmp/" + "d" * 110,
            },
            "set WORKER_SOCKET_DIR to a shorter directory",
        ),
    ],
)
def test_workers_without_shared_backends_are_a_one_line_error(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    result = run_serve(tmp_path, "--port", "0", *args, **env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("dramaverse: error: ")
    assert message in result.stderr
    assert result.stderr.count("\n") == 1
    assert "hunter2" not in result.stderr
    assert not (tmp_path / "w").exists()  # refused before anything was created


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_port_in_use_is_a_one_line_error(tmp_path: Path, workers: int) -> None:
    env: dict[str, str] = {}
    async with contextlib.AsyncExitStack() as stack:
        if workers > 1:
            url, _name = await stack.enter_async_context(fresh_schema())
            env = {"DATABASE_URL": url, "REDIS_URL": require_redis()}
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            args = ("--host", "127.0.0.1", "--port", str(port), "--workers", str(workers))
            result = await trio.to_thread.run_sync(partial(run_serve, tmp_path, *args, **env))
    assert result.returncode == 1, result.stderr
    line = f"dramaverse: error: Cannot listen on 127.0.0.1:{port}: Address already in use.\n"
    assert result.stderr.endswith(line), result.stderr
    assert "Traceback" not in result.stderr


def test_the_worker_settings_come_from_the_environment(tmp_path: Path) -> None:
    settings = load_settings(
        {"WORKERS": "4", "WORKER_SOCKET_DIR": "/run/dv", "DRAMAVERSE_DATA_DIR": str(tmp_path)},
        dotenv_path=None,
    )
    assert (settings.workers, settings.worker_id) == (4, None)
    assert str(settings.worker_socket_dir) == "/run/dv"
    default = load_settings({"DRAMAVERSE_DATA_DIR": str(tmp_path)}, dotenv_path=None)
    assert default.workers == 1
    assert replace(default, worker_id=3).worker_socket_path == tmp_path / "workers" / "3.sock"


def test_restart_delays_double_up_to_the_cap() -> None:
    policy = RestartPolicy(first_delay=0.5, max_delay=4)
    assert [policy.delay(n) for n in range(1, 7)] == [0.5, 1, 2, 4, 4, 4]


# -- a crash-looping worker -----------------------------------------------------------------------


@pytest.mark.slow
async def test_a_crash_looping_worker_is_retried_while_the_healthy_one_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env = cluster_env(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path / 'x.db'}")
    env.pop("REDIS_URL", None)
    settings = load_settings({**env, "WORKERS": "2"}, dotenv_path=None)
    # Migrated first, as `serve --workers` does before starting workers: otherwise the two
    # workers race to migrate the same SQLite file and a "database is locked" start failure
    # counts as one more crash.
    async with open_storage(settings):
        pass
    # Worker 0 cannot bind its private socket (a directory is in the way): it fails at start,
    # every time. Worker 1 is fine.
    (tmp_path / "w" / "0.sock").mkdir(parents=True)
    listener = bind_listener("127.0.0.1", 0)
    policy = RestartPolicy(first_delay=0.05, max_delay=0.4, stable_after=60, loop_after=3)
    supervisor = Supervisor(settings, listener, env=env, policy=policy)
    healthy = httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(uds=str(tmp_path / "w" / "1.sock")),
        base_url="http://worker",
        timeout=10,
    )
    try:
        async with trio.open_nursery() as nursery, healthy:
            await nursery.start(partial(supervisor.run, handle_signals=False))
            await poll_answers(healthy)
            first = supervisor.processes[1].pid
            answers: list[dict[str, Any]] = []
            with trio.fail_after(120):
                while len(supervisor.delays[0]) < 6:  # worker 0 crashed six times, and counting
                    response = await healthy.get("/api/health")  # served throughout
                    assert response.status_code == 200
                    answers.append(response.json())
                    await trio.sleep(0.05)
                # Once it is a crash loop, the healthy worker says so (within the file's second).
                while answers[-1]["status"] == "ok":
                    response = await healthy.get("/api/health")
                    assert response.status_code == 200
                    answers.append(response.json())
                    await trio.sleep(0.05)
            assert supervisor.processes[1].pid == first  # never stopped, never restarted
            assert supervisor.restarts[1] == 0
            assert supervisor.delays[1] == []
            assert supervisor.delays[0][:6] == [0.05, 0.1, 0.2, 0.4, 0.4, 0.4]  # capped, not over
            (loop,) = answers[-1]["workers"]["crashLooping"]
            assert answers[-1]["status"] == "degraded"
            assert (loop["worker"], loop["lastExit"]) == (0, "exit status 1")
            assert loop["crashes"] >= 3
            assert {a["status"] for a in answers} <= {"ok", "degraded"}
            supervisor.stop()
    finally:
        for process in supervisor.processes.values():
            if process.returncode is None:
                process.kill()
        listener.close()
    assert supervisor.processes[1].returncode == 0  # stopped gracefully, at the end
    assert listener.fileno() == -1
    assert not (tmp_path / "w" / "supervisor.json").exists()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "worker 0 exited (exit status 1) after" in errors[0]
    assert errors[0].endswith("restarting it in 0.05 s")
    assert "crash loop, 3 crashes in a row" in errors[2]
    assert errors[2].endswith("restarting it in 0.2 s, the other workers keep serving")
    assert not any("worker 1" in message for message in errors)


async def poll_answers(client: httpx.AsyncClient) -> None:
    """Until the worker behind ``client`` answers /api/health (another process: polling)."""
    with trio.fail_after(60):
        while True:
            try:
                if (await client.get("/api/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await trio.sleep(0.05)


# -- live sync across workers -------------------------------------------------------------------


async def subscribers(url: str, prefix: str) -> dict[str, int]:
    """Channel (without the prefix) -> number of Redis subscribers, for our prefix."""

    def query() -> dict[str, int]:
        with redis.Redis.from_url(url) as client:
            names = client.pubsub_channels(f"{prefix}*")
            counts = client.pubsub_numsub(*names) if names else []
        return {name.decode().removeprefix(prefix): count for name, count in counts}

    return await trio.to_thread.run_sync(query)


async def collect(ws: WebSocketConnection, count: int) -> list[dict[str, Any]]:
    return [await next_frame(ws) for _ in range(count)]


def events(frames: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(f["seq"], f["event"]) for f in frames if f["type"] == "event"]


@pytest.mark.slow
async def test_two_devices_of_one_user_on_different_workers_receive_each_others_events(
    tmp_path: Path,
) -> None:
    redis_url = require_redis()
    prefix = unique_prefix()
    async with (
        fresh_schema() as (url, _name),
        running_cluster(tmp_path, database_url=url, redis_url=redis_url, redis_prefix=prefix) as (
            cluster
        ),
    ):
        token = await cluster.register("alice")
        async with (
            open_worker_ws(cluster.socket(0)) as phone,
            open_worker_ws(cluster.socket(1)) as laptop,
        ):
            assert (b"x-dramaverse-worker", b"0") in phone.handshake_headers
            assert (b"x-dramaverse-worker", b"1") in laptop.handshake_headers
            assert (await hello(phone, token))["seq"] == 0
            assert (await hello(laptop, token))["seq"] == 0
            # Both workers listen to the user's channel in Redis: that is the way across (and
            # to the revocations of sign-in sessions, docs/auth.md).
            assert await subscribers(redis_url, prefix) == {"user:1": 2, "auth:revocations": 2}

            # The phone writes over its socket (worker 0): the laptop (worker 1) hears of it.
            await phone.send_message(
                json.dumps(
                    {
                        "type": "favorite.set",
                        "id": "r1",
                        "data": {"dramaUrl": URLS[0], "isFavorite": True},
                    }
                )
            )
            mine = await collect(phone, 2)  # the ack and the event, in either order
            assert {f["type"] for f in mine} == {"ack", "event"}
            assert events(mine) == [(1, "favorite_updated")]
            assert events(await collect(laptop, 1)) == [(1, "favorite_updated")]

            # And the other way round.
            await laptop.send_message(
                json.dumps(
                    {
                        "type": "status.set",
                        "id": 2,
                        "data": {"dramaUrl": URLS[1], "status": "Watching", "currentEpisode": 3},
                    }
                )
            )
            assert {f["type"] for f in await collect(laptop, 2)} == {"ack", "event"}
            event = await next_frame(phone)
            assert (event["seq"], event["event"]) == (2, "status_updated")
            assert event["data"]["statusInfo"] == {"status": "Watching", "currentEpisode": 3}

            # An HTTP write through the shared port, whichever worker takes it.
            async with cluster.http() as client:
                response = await client.post(
                    "/api/user/favorites",
                    json={"dramaUrl": URLS[2], "isFavorite": True},
                    headers={"Authorization": f"Bearer {token}"},
                )
            assert response.status_code == 200
            assert response.headers["x-dramaverse-worker"] in ("0", "1")
            assert events(await collect(phone, 1)) == [(3, "favorite_updated")]
            assert events(await collect(laptop, 1)) == [(3, "favorite_updated")]

            await every_worker_answers_on_the_shared_port(cluster)

            # SIGTERM: every device is told to reconnect (1001), the tree exits in time.
            pids = cluster.worker_pids()
            assert sorted(pids) == [0, 1]
            started = trio.current_time()
            cluster.process.send_signal(signal.SIGTERM)
            for ws in (phone, laptop):
                with pytest.raises(ConnectionClosed) as closed:
                    await next_frame(ws, within=GRACE + 5)
                assert closed.value.reason.code == 1001
            with trio.fail_after(GRACE + 10):
                assert await cluster.process.wait() == 0
            assert trio.current_time() - started < GRACE + 8
        assert not any(alive(pid) for pid in pids.values())
        assert not list(cluster.socket_dir.glob("*.sock"))  # removed by the supervisor


async def every_worker_answers_on_the_shared_port(cluster: Cluster) -> None:
    """New connections on the shared port are accepted by every worker, not just one."""
    seen: set[str] = set()
    with trio.fail_after(60):
        while seen != {"0", "1"}:
            async with cluster.http() as client:  # a new connection each time
                response = await client.get("/api/health")
            assert response.status_code == 200
            seen.add(response.headers["x-dramaverse-worker"])


@pytest.mark.slow
async def test_a_worker_that_dies_is_restarted_and_workers_never_outlive_the_supervisor(
    tmp_path: Path,
) -> None:
    redis = require_redis()
    async with (
        fresh_schema() as (url, _name),
        running_cluster(
            tmp_path, database_url=url, redis_url=redis, redis_prefix=unique_prefix()
        ) as cluster,
    ):
        token = await cluster.register("alice")
        before = cluster.worker_pids()
        async with open_worker_ws(cluster.socket(0)) as phone:
            await hello(phone, token)
            os.kill(before[1], signal.SIGKILL)
            await poll(lambda: cluster.worker_pids().get(1) not in (None, before[1]), 30)
            await cluster.wait_worker(1, within=30)
            after = cluster.worker_pids()
            assert after[0] == before[0]  # the other worker was not disturbed
            assert "worker 1 exited (killed by SIGKILL)" in cluster.log_tail(200)

            # The restarted worker takes writes, and they reach the device on worker 0.
            async with cluster.http(1) as client:
                response = await client.post(
                    "/api/user/favorites",
                    json={"dramaUrl": URLS[0], "isFavorite": True},
                    headers={"Authorization": f"Bearer {token}"},
                )
            assert response.status_code == 200, response.text
            event = await next_frame(phone)
            assert (event["seq"], event["event"]) == (1, "favorite_updated")

            # The supervisor dies without a word: its workers notice and shut down gracefully.
            cluster.process.kill()
            with pytest.raises(ConnectionClosed) as closed:
                await next_frame(phone, within=GRACE + 10)
            assert closed.value.reason.code == 1001
        await poll(lambda: not any(alive(pid) for pid in after.values()), GRACE + 10)
        with pytest.raises(httpx.TransportError):
            async with cluster.http() as client:
                await client.get("/api/health")
