"""A real ``dramaverse serve`` process: SIGTERM/SIGINT close sockets with 1001 and exit in time."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed

from tests.conftest import TEST_SECRET
from tests.wsclient import open_client

GRACE = 3.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_closes_sockets_with_1001_and_exits_within_grace(
    tmp_path: Path, signum: signal.Signals
) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "DRAMAVERSE_DATA_DIR": str(tmp_path),
        "JWT_SECRET": TEST_SECRET,
        "BCRYPT_ROUNDS": "4",
        "SHUTDOWN_GRACE_SECONDS": str(GRACE),
    }
    command = [
        sys.executable,
        "-m",
        "dramaverse",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    process = await trio.lowlevel.open_process(
        command, env=env, cwd=tmp_path, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base) as client:
            with trio.fail_after(30):
                while True:
                    try:
                        if (await client.get("/api/health")).status_code == 200:
                            break
                    except httpx.TransportError:
                        await trio.sleep(0.1)
            registered = await client.post(
                "/api/auth/register", json={"username": "alice", "password": "secret-pw"}
            )
            token = registered.json()["token"]
        async with open_client(
            f"ws://127.0.0.1:{port}/api/ws", subprotocols=["dramaverse.v1"]
        ) as ws:
            await ws.send_message(json.dumps({"type": "hello", "token": token}))
            assert json.loads(await ws.get_message())["type"] == "ready"
            started = trio.current_time()
            process.send_signal(signum)
            with pytest.raises(ConnectionClosed) as closed:
                with trio.fail_after(GRACE):
                    await ws.get_message()
            assert closed.value.reason.code == 1001
        with trio.fail_after(GRACE + 5):
            returncode = await process.wait()
        assert returncode == 0
        assert trio.current_time() - started < GRACE + 2
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
