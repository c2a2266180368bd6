"""A real ``dramaverse serve --workers N`` process tree for tests, on PostgreSQL and Redis.

:func:`running_cluster` seeds the sample catalog, starts the supervisor on a free loopback port
and waits until every worker answers ``/api/health`` on its private Unix socket. Tests reach a
chosen worker through that socket (``cluster.http(i)``, :func:`open_worker_ws`), which puts two
devices on two different workers deterministically; ``cluster.http()`` goes through the shared
port, where any worker may answer (``X-Dramaverse-Worker`` says which).

Every wait is bounded. On the way out the whole tree is killed (supervisor first, so that it
cannot restart the workers, then every worker it had), whatever the test did.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio
import trio_websocket
from trio_websocket import WebSocketConnection

from dramaverse.storage import open_storage
from tests.conftest import TEST_SECRET, make_settings, sample_records

PROTOCOL = "dramaverse.v1"
GRACE = 2.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (Linux /proc)."""
    found: list[int] = []
    with suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with suppress(OSError):
                found.extend(int(child) for child in (task / "children").read_text().split())
    return found


def worker_id_of(pid: int) -> int | None:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if b"--worker-id" not in argv:
        return None
    return int(argv[argv.index(b"--worker-id") + 1])


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@dataclass
class Cluster:
    process: trio.Process
    port: int
    socket_dir: Path
    workers: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def socket(self, worker: int) -> Path:
        return self.socket_dir / f"{worker}.sock"

    def http(self, worker: int | None = None) -> httpx.AsyncClient:
        """A client for the shared port, or for ``worker``'s private socket."""
        if worker is None:
            return httpx.AsyncClient(base_url=self.url, timeout=10)
        transport = httpx.AsyncHTTPTransport(uds=str(self.socket(worker)))
        return httpx.AsyncClient(transport=transport, base_url="http://worker", timeout=10)

    def worker_pids(self) -> dict[int, int]:
        """Worker id -> pid of the workers running now."""
        pids = {}
        for pid in children(self.process.pid):
            worker = worker_id_of(pid)
            if worker is not None and alive(pid):
                pids[worker] = pid
        return pids

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text("utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    async def wait_worker(self, worker: int, within: float = 60) -> None:
        """Until ``worker`` answers /api/health 200 on its own socket."""
        with trio.fail_after(within):
            async with self.http(worker) as client:
                while True:
                    if self.process.returncode is not None:
                        raise AssertionError(f"the supervisor exited:\n{self.log_tail()}")
                    try:
                        response = await client.get("/api/health")
                    except httpx.TransportError:
                        await trio.sleep(0.1)  # another process: nothing to wait on but polling
                        continue
                    if response.status_code == 200:
                        assert response.headers["x-dramaverse-worker"] == str(worker)
                        return
                    await trio.sleep(0.1)

    async def wait_ready(self, within: float = 60) -> None:
        try:
            for worker in range(self.workers):
                await self.wait_worker(worker, within)
        except trio.TooSlowError:
            raise AssertionError(f"workers not ready in {within} s:\n{self.log_tail()}") from None

    async def register(self, username: str) -> str:
        async with self.http() as client:
            response = await client.post(
                "/api/auth/register", json={"username": username, "password": "secret-pw"}
            )
        assert response.status_code == 201, response.text
        token: str = response.json()["token"]
        return token

    async def stop(self, signum: int = signal.SIGTERM, within: float = GRACE + 10) -> int:
        self.process.send_signal(signum)
        with trio.fail_after(within):
            return await self.process.wait()

    def kill_all(self) -> None:
        pids = children(self.process.pid)
        if self.process.returncode is None:
            self.process.kill()
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def poll(condition: Callable[[], bool], within: float) -> None:
    """Until ``condition()``: for other processes' state there is nothing to wait on but polling."""
    with trio.fail_after(within):
        while True:
            if condition():
                return
            await trio.sleep(0.05)


def cluster_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DRAMAVERSE_DATA_DIR": str(tmp_path),
        "WORKER_SOCKET_DIR": str(tmp_path / "w"),
        "JWT_SECRET": TEST_SECRET,
        "BCRYPT_ROUNDS": "4",
        "RATE_LIMIT_AUTH": "off",
        "RATE_LIMIT_USER": "off",
        "SHUTDOWN_GRACE_SECONDS": str(GRACE),
        "REDIS_RECONNECT_MAX_SECONDS": "0.5",
    }
    env.update(extra)
    return env


@asynccontextmanager
async def running_cluster(
    tmp_path: Path,
    *,
    database_url: str,
    redis_url: str,
    redis_prefix: str,
    workers: int = 2,
    seed_url: str | None = None,
    **extra_env: str,
) -> AsyncIterator[Cluster]:
    """Seed the sample catalog (through ``seed_url`` if given), start, wait for every worker."""
    settings = make_settings(tmp_path, database_url=seed_url or database_url)
    async with open_storage(settings) as storage:
        await storage.import_dramas(sample_records())
    port = free_port()
    env = cluster_env(
        tmp_path,
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        REDIS_PREFIX=redis_prefix,
        **extra_env,
    )
    command = [sys.executable, "-m", "dramaverse", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", str(workers)]
    log_path = tmp_path / "cluster.log"
    with log_path.open("wb") as log:
        process = await trio.lowlevel.open_process(
            command, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT
        )
    cluster = Cluster(process, port, tmp_path / "w", workers, log_path)
    try:
        await cluster.wait_ready()
        yield cluster
    finally:
        cluster.kill_all()
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            await process.wait()


# -- native WebSocket devices -----------------------------------------------------------------


@asynccontextmanager
async def open_worker_ws(path: Path) -> AsyncIterator[WebSocketConnection]:
    """A ``dramaverse.v1`` WebSocket to one worker's private Unix socket."""
    stream = await trio.open_unix_socket(str(path))
    try:
        async with trio.open_nursery() as nursery:
            ws = await trio_websocket.wrap_client_stream(
                nursery, stream, "localhost", "/api/ws", subprotocols=[PROTOCOL]
            )
            try:
                yield ws
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def next_frame(ws: WebSocketConnection, within: float = 15) -> dict[str, Any]:
    """The next frame that is not a heartbeat ping (answered)."""
    with trio.fail_after(within):
        while True:
            frame: dict[str, Any] = json.loads(await ws.get_message())
            if frame.get("type") == "ping":
                await ws.send_message('{"type":"pong"}')
                continue
            return frame


async def hello(ws: WebSocketConnection, token: str, resume: int | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "hello", "token": token}
    if resume is not None:
        message["resume"] = resume
    await ws.send_message(json.dumps(message))
    ready = await next_frame(ws)
    assert ready["type"] == "ready", ready
    return ready
