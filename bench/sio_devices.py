"""Socket.IO devices for the fan-out benchmark: the real npm socket.io-client, one Node process.

``socketio_transport`` is a transport of ``bench.fanout_bench`` (``--transport socketio``). It
starts ``node tests/node/sio_driver.mjs`` (the driver the tests use; ``npm ci --prefix
tests/node`` installs the client, ``make test`` does it) and asks it to connect every device
with the Dramaverse frontend's options: polling first, then the upgrade to WebSocket, which the
transport waits for before calling a device ready, so the writes measure the WebSocket path.
``reconnection`` is off: a device the server drops shows up as a close instead of quietly
recovering its events. permessage-deflate is offered only with ``--deflate``, as for the native
transport (socket.io-client in Node offers it by default).

Arrival times: the driver stamps each event with ``performance.timeOrigin + performance.now()``
(milliseconds since the epoch) when socket.io-client hands it over; they are put on Python's
``time.perf_counter()`` clock with the offset ``time.time() - time.perf_counter()`` taken at
start, so delays compare with the native transport's. The client-side cost (Node decoding and
one JSON line per event on a pipe) is part of the measured delay, as the Python client's is for
the native transport.

The users are fresh (registered by the run), so each device's stream starts at seq 0.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from functools import partial
from pathlib import Path
from typing import Any

import trio

from bench.catalog_bench import BenchError
from bench.wsclient import percentiles

NODE_DIR = Path(__file__).resolve().parent.parent / "tests" / "node"
DRIVER = NODE_DIR / "sio_driver.mjs"
CLIENT = NODE_DIR / "node_modules" / "socket.io-client" / "package.json"


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        raise BenchError("--transport socketio needs Node.js (node) on PATH")
    if not CLIENT.is_file():
        raise BenchError(f"socket.io-client is not installed: run `npm ci --prefix {NODE_DIR}`")
    return node


class _Devices:
    """Turns the driver's reports into ``sink`` calls; counts connects."""

    def __init__(self, cfg: Any, sink: Any, total: int, offset: float) -> None:
        self.cfg = cfg
        self.sink = sink
        self.total = total
        self.offset = offset  # time.time() - time.perf_counter()
        self.started: dict[str, float] = {}
        self.connect_times: list[float] = []
        self.connected: set[str] = set()
        self.on_websocket: set[str] = set()
        self.pending = total
        self.all_tried = trio.Event()
        self.slots = trio.Semaphore(cfg.connect_concurrency)
        self.closing = False
        self.driver_errors: list[str] = []

    def _tried(self, name: str) -> None:
        if self.started.pop(name, None) is None:
            return
        self.slots.release()
        self.pending -= 1
        if self.pending == 0:
            self.all_tried.set()

    def on_report(self, report: dict[str, Any]) -> None:
        kind = report.get("type")
        name = str(report.get("name", ""))
        if kind == "event":
            user, dev = _ids(name)
            args = report["args"]
            seq = int(args[-1]) if args and isinstance(args[-1], str) else None
            frame = {
                "type": "event",
                "seq": seq,
                "event": report["event"],
                "data": args[0] if args else None,
            }
            self.sink.on_frame(user, dev, report["t"] / 1000.0 - self.offset, frame)
        elif kind in ("connect", "upgrade"):
            # Ready once connected (the server attached the device) and on the WebSocket; the
            # upgrade may finish before or after the CONNECT answer.
            if kind == "connect":
                self.connected.add(name)
            if report.get("transport") == "websocket":
                self.on_websocket.add(name)
            if name in self.connected and name in self.on_websocket and name in self.started:
                self.connect_times.append(time.perf_counter() - self.started[name])
                user, dev = _ids(name)
                self.sink.on_ready(user, dev, 0)
                self._tried(name)
        elif kind == "connect_error":
            user, dev = _ids(name)
            self.sink.on_connect_error(user, dev, str(report.get("message"))[:200])
            self._tried(name)
        elif kind == "disconnect":
            if not self.closing:
                user, dev = _ids(name)
                self.sink.on_close(user, dev, 0, str(report.get("reason")))
            self._tried(name)
        elif kind == "error" and len(self.driver_errors) < 10:
            self.driver_errors.append(str(report.get("message")))


def _ids(name: str) -> tuple[int, int]:
    user, dev = name.split(".")
    return int(user), int(dev)


async def _read(process: trio.Process, devices: _Devices) -> None:
    assert process.stdout is not None
    buffer = b""
    async for chunk in process.stdout:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line:
                devices.on_report(json.loads(line))


async def socketio_transport(
    cfg: Any,
    sink: Any,
    *,
    task_status: trio.TaskStatus[dict[str, Any]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Connect ``len(cfg.tokens) * cfg.devices`` Socket.IO devices; report their events."""
    node = _node()
    total = len(cfg.tokens) * cfg.devices
    devices = _Devices(cfg, sink, total, time.time() - time.perf_counter())
    url = f"http://{cfg.host}:{cfg.port}"
    run = partial(
        trio.run_process,
        [node, str(DRIVER)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        check=False,
    )
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(run)
        assert process.stdin is not None
        nursery.start_soon(_read, process, devices)
        t_start = time.perf_counter()
        try:
            for user, token in enumerate(cfg.tokens):
                for dev in range(cfg.devices):
                    await devices.slots.acquire()
                    name = f"{user}.{dev}"
                    devices.started[name] = time.perf_counter()
                    options = {
                        "auth": {"token": token},
                        "path": "/socket.io/",
                        "reconnection": False,
                        "timeout": int(cfg.connect_timeout * 1000),
                        # Like the native transport: permessage-deflate only with --deflate.
                        "perMessageDeflate": {"threshold": 1024} if cfg.deflate else False,
                    }
                    command = {"cmd": "connect", "name": name, "url": url, "options": options}
                    await process.stdin.send_all(json.dumps(command).encode() + b"\n")
            with trio.move_on_after(cfg.connect_timeout):
                await devices.all_tried.wait()
            for name in list(devices.started):
                user, dev = _ids(name)
                sink.on_connect_error(user, dev, "no upgrade to websocket in time")
                devices._tried(name)
            elapsed = time.perf_counter() - t_start
            task_status.started(
                {
                    "connect_s": round(elapsed, 3),
                    "connects_per_s": round(len(devices.connect_times) / elapsed, 1)
                    if elapsed
                    else None,
                    "connect_ms": percentiles(devices.connect_times),
                    "upgraded_to_websocket": len(devices.on_websocket),
                    "driver_errors": devices.driver_errors,
                }
            )
            await trio.sleep_forever()
        finally:
            devices.closing = True
            with trio.move_on_after(5) as cleanup:
                cleanup.shield = True
                await process.stdin.aclose()  # the driver disconnects everything and exits
                await process.wait()
            if process.returncode is None:
                process.kill()
            nursery.cancel_scope.cancel()
