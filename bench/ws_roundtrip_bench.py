"""Server CPU per native WebSocket round trip: the socket layer's cost of one frame in, one out.

    python -m bench.ws_roundtrip_bench [--sockets 400] [--rounds 50] [--mode ping|position]

Starts a real ``dramaverse serve`` (temporary SQLite, ``bench.wsclient.BenchServer``), connects
``--sockets`` authenticated native WebSockets (``/api/ws``), then every socket does ``--rounds``
round trips one after another, all sockets at once:

- ``ping``: the protocol's application ping (``{"type":"ping"}`` -> ``{"type":"pong"}``),
  answered by the connection itself: the cost of the socket layer (Hypercorn, wsproto, the
  connection's reader and writer tasks);
- ``position``: a ``room.position`` report with an ``id`` in a room of 4 (one room per 4
  sockets), answered by the room actor with an ``ack``: the socket layer plus the room.

Reports the server's CPU time (user + system, from /proc) per round trip and the round trips per
second, as one JSON document on stdout (and ``--json-out``). The client runs in this process on
the same machine: round trips per second are bounded by both; the CPU per round trip is the
server's alone.

``--callgrind DIR`` runs the server under ``valgrind --tool=callgrind`` (about 50 times slower:
use ``--sockets 100 --rounds 100``), counting only during the round trips, and adds
``server_instructions_per_round_trip``: a figure that other load on a shared machine does not
move, unlike CPU time. It counts user-space instructions only (no kernel time), and time-driven
work (heartbeats, the paced garbage collector) weighs more per round trip in a slower run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

from bench.wsclient import (
    HOST,
    BenchServer,
    WSConn,
    open_session,
    raise_nofile_limit,
    register_users,
    source_revision,
)

MEMBERS_PER_ROOM = 4


def log(message: str) -> None:
    print(f"[ws_roundtrip_bench] {message}", file=sys.stderr, flush=True)


async def _until(conn: WSConn, want: str, request_id: object = None) -> dict[str, Any]:
    """Read frames until one of type ``want`` (with ``request_id``, if given); errors raise."""
    while True:
        frame = json.loads(await conn.receive())
        kind = frame.get("type")
        if kind == "error":
            raise RuntimeError(f"server answered an error: {frame}")
        if kind == want and (request_id is None or frame.get("id") == request_id):
            return dict(frame)


async def _rooms(conns: list[WSConn]) -> dict[int, str]:
    """One room per 4 sockets; the room code of each socket (by index)."""
    codes: dict[int, str] = {}
    for first in range(0, len(conns), MEMBERS_PER_ROOM):
        host = conns[first]
        await host.send_json({"type": "room.create", "id": "c", "data": {"name": "Host"}})
        code = (await _until(host, "ack", "c"))["result"]["room"]
        codes[first] = code
        for k in range(first + 1, min(first + MEMBERS_PER_ROOM, len(conns))):
            await conns[k].send_json({"type": "room.join", "id": "j", "data": {"code": code}})
            await _until(conns[k], "ack", "j")
            codes[k] = code
    return codes


async def run(server: BenchServer, args: argparse.Namespace) -> dict[str, Any]:
    tokens = await register_users(HOST, server.port, [f"rt{i}" for i in range(args.sockets)])
    conns: list[WSConn] = []
    limit = trio.CapacityLimiter(32)

    async def connect(token: str) -> None:
        async with limit:
            conns.append((await open_session(HOST, server.port, token))[0])

    async with trio.open_nursery() as nursery:
        for token in tokens:
            nursery.start_soon(connect, token)
    codes = await _rooms(conns) if args.mode == "position" else {}
    await trio.sleep(1.0)  # let the joins' clock pings settle
    done = 0

    async def ping(conn: WSConn) -> None:
        nonlocal done
        for _ in range(args.rounds):
            await conn.send_text('{"type":"ping"}')
            await _until(conn, "pong")
            done += 1

    async def position(index: int, conn: WSConn) -> None:
        nonlocal done
        for k in range(args.rounds):
            report = {"position": 0.0}
            await conn.send_json(
                {"type": "room.position", "id": k, "room": codes[index], "data": report}
            )
            await _until(conn, "ack", k)
            done += 1

    if args.callgrind:
        _callgrind_control(server, "--zero")
    cpu0, t0 = server.cpu_s() or 0.0, time.perf_counter()
    async with trio.open_nursery() as nursery:
        for index, conn in enumerate(conns):
            if args.mode == "ping":
                nursery.start_soon(ping, conn)
            else:
                nursery.start_soon(position, index, conn)
    cpu1, t1 = server.cpu_s() or 0.0, time.perf_counter()
    instructions = None
    if args.callgrind:
        _callgrind_control(server, "--dump")
        instructions = _callgrind_total(args.callgrind / f"callgrind.out.{server.pid}.1")
    for conn in conns:
        with trio.move_on_after(1):
            await conn.aclose()
    return {
        "benchmark": "ws_roundtrip",
        "mode": args.mode,
        "sockets": len(conns),
        "rounds": args.rounds,
        "round_trips": done,
        "wall_s": round(t1 - t0, 3),
        "round_trips_per_s": round(done / (t1 - t0)),
        "server_cpu_s": round(cpu1 - cpu0, 3),
        "server_cpu_us_per_round_trip": round((cpu1 - cpu0) * 1e6 / max(1, done), 1),
        **(
            {"server_instructions_per_round_trip": round(instructions / max(1, done))}
            if instructions is not None
            else {}
        ),
        "source": source_revision(),
    }


def _callgrind_control(server: BenchServer, action: str) -> None:
    subprocess.run(["callgrind_control", action, str(server.pid)], check=True, capture_output=True)


def _callgrind_total(dump: Path) -> int:
    """The instructions counted in one callgrind dump (its ``summary:`` line)."""
    for line in dump.read_text("utf-8").splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise RuntimeError(f"no summary line in {dump}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ws_roundtrip_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--sockets", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=50, help="round trips per socket")
    parser.add_argument("--mode", choices=["ping", "position"], default="ping")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument(
        "--callgrind", type=Path, metavar="DIR", help="count the server's instructions (docstring)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.sockets <= 5000 or not 1 <= args.rounds <= 10_000:
        parser.error("--sockets must be 1..5000 and --rounds 1..10000")
    raise_nofile_limit()
    server_cmd = None
    if args.callgrind:
        args.callgrind.mkdir(parents=True, exist_ok=True)
        out = args.callgrind.resolve() / "callgrind.out.%p"
        server_cmd = (
            f"valgrind --tool=callgrind --callgrind-out-file={out} "
            "{python} -m dramaverse serve --host {host} --port {port}"
        )
    with BenchServer("roundtrip", log=log, server_cmd=server_cmd) as server:
        doc = trio.run(run, server, args)
    text = json.dumps(doc, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n", "utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
