"""Drive the real npm socket.io-client (``sio_driver.mjs``) from Trio tests.

``make test`` installs the client with ``npm ci --prefix tests/node`` (pinned by the committed
package-lock.json). Without Node or without the installed client the tests that need it skip
with a reason; CI (``DRAMAVERSE_REQUIRE_SERVICES=1``) makes that a failure instead.

    async with open_driver() as node:
        await node.send("connect", name="a1", url=server.url, options={"auth": {"token": t}})
        connected = await node.expect("connect", "a1")
"""

from __future__ import annotations

import inspect
import itertools
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

NODE_DIR = Path(__file__).resolve().parent
DRIVER = NODE_DIR / "sio_driver.mjs"
CLIENT = NODE_DIR / "node_modules" / "socket.io-client" / "package.json"


def require_node() -> str:
    """The ``node`` executable, or skip (fail in CI) when Node or the npm client is missing."""
    node = shutil.which("node")
    if node is None:
        reason = "Node.js is not installed (the Socket.IO tests drive the npm socket.io-client)"
    elif not CLIENT.is_file():
        reason = f"socket.io-client is not installed: run `npm ci --prefix {NODE_DIR}`"
    else:
        return node
    if os.environ.get("DRAMAVERSE_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason}; DRAMAVERSE_REQUIRE_SERVICES=1 says it must be there")
    pytest.skip(reason)


class NodeDriver:
    """The driver process: send commands, wait for reports (all kept, each matched once)."""

    def __init__(self, process: trio.Process) -> None:
        self._process = process
        self.reports: list[dict[str, Any]] = []
        self._taken: set[int] = set()
        self._arrived = trio.Event()

    async def send(self, cmd: str, **fields: Any) -> None:
        assert self._process.stdin is not None
        line = json.dumps({"cmd": cmd, **fields}) + "\n"
        await self._process.stdin.send_all(line.encode())

    async def read_reports(self) -> None:
        assert self._process.stdout is not None
        buffer = b""
        async for chunk in self._process.stdout:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    self.reports.append(json.loads(line))
            self._arrived.set()
            self._arrived = trio.Event()

    async def wait_for(
        self, match: Callable[[dict[str, Any]], bool], within: float = 10.0
    ) -> dict[str, Any]:
        """The first report not taken yet that ``match`` accepts, waiting up to ``within`` s."""
        with trio.fail_after(within):
            checked = 0
            while True:
                for index in range(checked, len(self.reports)):
                    if index not in self._taken and match(self.reports[index]):
                        self._taken.add(index)
                        return self.reports[index]
                checked = len(self.reports)
                await self._arrived.wait()

    async def expect(self, kind: str, name: str, within: float = 10.0) -> dict[str, Any]:
        """The next report of ``kind`` for socket ``name``; fail on a driver error."""
        report = await self.wait_for(
            lambda r: r["type"] == "error" or (r["type"] == kind and r.get("name") == name),
            within,
        )
        assert report["type"] != "error", report
        return report

    def of(self, kind: str, name: str) -> list[dict[str, Any]]:
        """Every report of ``kind`` for ``name`` so far (taken or not)."""
        return [r for r in self.reports if r["type"] == kind and r.get("name") == name]

    async def state(self, name: str) -> dict[str, Any]:
        ref = len(self.reports) + 1_000_000
        await self.send("state", name=name, ref=ref)
        return await self.wait_for(lambda r: r["type"] == "state" and r.get("ref") == ref)


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], within: float = 5.0, every: float = 0.01
) -> None:
    """Wait until ``condition`` holds: state changed by another process or by the server
    under test in reaction to one, which no event here can announce."""
    with trio.fail_after(within):
        for _ in itertools.count():
            result = condition()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await trio.sleep(every)


@asynccontextmanager
async def open_driver() -> AsyncIterator[NodeDriver]:
    node = require_node()
    async with trio.open_nursery() as nursery:
        run = partial(
            trio.run_process,
            [node, str(DRIVER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            check=False,
        )
        process: trio.Process = await nursery.start(run)
        driver = NodeDriver(process)
        nursery.start_soon(driver.read_reports)
        try:
            yield driver
        finally:
            with trio.move_on_after(5) as cleanup:
                cleanup.shield = True
                assert process.stdin is not None
                await process.stdin.aclose()  # the driver disconnects everything and exits
                await process.wait()
            nursery.cancel_scope.cancel()
