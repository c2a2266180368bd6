"""Fan-out benchmark: HTTP library writes -> live events on every device of the user.

    python -m bench.fanout_bench [--users 500] [--devices 2] [--rounds 10] [--in-flight 50]

Starts a real ``dramaverse serve`` (temporary SQLite, bundled sample catalog, rate limits off,
``BCRYPT_ROUNDS=4``), registers ``--users`` users over HTTP, connects ``--devices`` devices per
user (``--transport native``: the ``dramaverse.v1`` WebSocket protocol, token in ``hello``, wait
for ``ready``), then runs ``--rounds`` rounds: in each, every user toggles the favorite flag of
one drama over HTTP (``POST /api/user/favorites``; true, false, true... so every write changes
state and emits one ``favorite_updated`` event), with at most ``--in-flight`` requests
outstanding on a pool of raw keep-alive connections. A round starts when every request of the
previous one has been answered, so a user's k-th write is its k-th event (``seq`` = ready seq +
k). Every device checks each event (name, ``dramaUrl``, ``isFavorite``) and its delay from the
moment the request was sent; after the last round it waits up to 10 s for missing events.

One JSON document goes to stdout (and ``--json-out``), progress to stderr. Exit status: 0 all
events delivered and every request answered 2xx, 2 the run completed with lost, duplicated,
out-of-order or wrong events or failed requests, 1 the run could not complete (server failure
or the ``--deadline``, default 300 s; the document then holds what was measured so far).

Transports: a transport is an async function ``transport(config, sink, task_status=...)`` that
connects every device, calls ``task_status.started(stats)`` once all are ready or failed, then
reports frames with ``sink.on_frame(user, device, arrival, frame)`` (arrival: seconds on
CLOCK_MONOTONIC, i.e. ``time.perf_counter()``; a transport driven from another process can stamp
with the same clock) until it is cancelled. Add it to ``TRANSPORTS``.

``--transport socketio`` drives the npm socket.io-client from one Node process
(``bench/sio_devices.py``: the frontend's options, measured once upgraded to WebSocket).
``--transport native,socketio`` runs each on a fresh server in one invocation and prints
``{"runs": {...}, "comparison": {...}}`` with the Socket.IO/native p99 delay ratio (target 1.5).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import trio

from bench import services
from bench.catalog_bench import BenchError, _children
from bench.cpulimit import CpuLimit, CpuLimitError
from bench.loadgen import ProtocolError
from bench.sio_devices import socketio_transport
from bench.wsclient import (
    HOST,
    BenchServer,
    HTTPClient,
    LoopLag,
    WSError,
    build_http_request,
    get_json,
    json_body,
    open_session,
    percentiles,
    raise_nofile_limit,
    register_users,
    run_frames,
    single_error,
    source_revision,
)

DRAIN_S = 10.0
EVENT_NAME = "favorite_updated"


def log(msg: str) -> None:
    print(f"[fanout_bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# What the devices receive
# --------------------------------------------------------------------------------------------


class Delivery:
    """Matches device arrivals to writes and keeps the counters.

    Write ``k`` (0-based) of user ``u`` sets ``isFavorite = (k % 2 == 0)`` on ``urls[u]`` and
    must reach every device of ``u`` as the event with ``seq = ready_seq + k + 1``.
    """

    def __init__(self, users: int, devices: int, rounds: int, urls: list[str]) -> None:
        self.users = users
        self.devices = devices
        self.rounds = rounds
        self.urls = urls
        n = users * devices
        self.send_t: list[list[float]] = [[0.0] * rounds for _ in range(users)]
        self.base_seq: list[int | None] = [None] * n
        self.seen = [bytearray(rounds) for _ in range(n)]
        self.max_seq = [0] * n
        self.connected = 0
        self.connect_errors: dict[str, int] = {}
        self.received = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.mismatched = 0
        self.out_of_range = 0
        self.other_frames: dict[str, int] = {}
        self.pings = 0
        self.closes: dict[str, int] = {}
        self.delays: list[float] = []
        self.sent_of_delay: list[float] = []  # the send time of each entry of ``delays``
        self.device_max = [0.0] * n
        self.first_arrival: float | None = None
        self.last_arrival: float | None = None
        self.target = 0  # unique receptions that mean "everything arrived"
        self.all_arrived = trio.Event()
        self.examples: list[str] = []

    def note(self, text: str) -> None:
        if len(self.examples) < 10:
            self.examples.append(text)

    def on_ready(self, user: int, device: int, seq: int) -> None:
        self.base_seq[user * self.devices + device] = seq
        self.connected += 1

    def on_connect_error(self, user: int, device: int, error: str) -> None:
        self.connect_errors[error] = self.connect_errors.get(error, 0) + 1
        self.note(f"user {user} device {device}: connect failed: {error}")

    def on_ping(self, user: int, device: int) -> None:
        self.pings += 1

    def on_close(self, user: int, device: int, code: int, reason: str) -> None:
        key = str(code)
        self.closes[key] = self.closes.get(key, 0) + 1
        self.note(f"user {user} device {device}: closed by server {code} {reason!r}")

    def on_frame(self, user: int, device: int, arrival: float, frame: dict[str, Any]) -> None:
        dev = user * self.devices + device
        kind = frame.get("type")
        if kind != "event":
            key = str(kind)
            self.other_frames[key] = self.other_frames.get(key, 0) + 1
            self.note(f"user {user} device {device}: frame {json.dumps(frame)[:200]}")
            return
        base = self.base_seq[dev]
        seq = frame.get("seq")
        if base is None or not isinstance(seq, int) or not 0 <= seq - base - 1 < self.rounds:
            self.out_of_range += 1
            self.note(f"user {user} device {device}: seq {seq!r} (ready seq {base})")
            return
        k = seq - base - 1
        seen = self.seen[dev]
        if seen[k]:
            self.duplicates += 1
            return
        seen[k] = 1
        self.received += 1
        if seq < self.max_seq[dev]:
            self.out_of_order += 1
        else:
            self.max_seq[dev] = seq
        data = frame.get("data")
        if (
            frame.get("event") != EVENT_NAME
            or not isinstance(data, dict)
            or data.get("isFavorite") is not (k % 2 == 0)
            or data.get("dramaUrl") != self.urls[user]
        ):
            self.mismatched += 1
            self.note(f"user {user} write {k}: unexpected {json.dumps(frame)[:200]}")
        sent = self.send_t[user][k]
        if sent:
            delay = arrival - sent
            self.delays.append(delay)
            self.sent_of_delay.append(sent)
            if delay > self.device_max[dev]:
                self.device_max[dev] = delay
        if self.first_arrival is None:
            self.first_arrival = arrival
        if self.last_arrival is None or arrival > self.last_arrival:
            self.last_arrival = arrival
        if self.target and self.received >= self.target:
            self.all_arrived.set()

    def summary(self) -> dict[str, Any]:
        expected = self.users * self.devices * self.rounds
        per_device_max = [
            m for m, b in zip(self.device_max, self.base_seq, strict=True) if b is not None
        ]
        return {
            "devices_connected": self.connected,
            "events_expected": expected,
            "events_received": self.received,
            "events_lost": expected - self.received,
            "duplicates": self.duplicates,
            "out_of_order": self.out_of_order,
            "mismatched": self.mismatched,
            "out_of_range_seq": self.out_of_range,
            "other_frames": self.other_frames,
            "server_pings_answered": self.pings,
            "closed_by_server": self.closes,
            "delay_ms": percentiles(self.delays),
            "per_device_max_delay_ms": {
                k.replace("_ms", ""): v
                for k, v in percentiles(per_device_max).items()
                if k != "mean_ms"
            },
            "delay_timeline": self.timeline(),
        }

    def timeline(self, bucket_s: float = 1.0) -> list[dict[str, Any]]:
        """Delay percentiles per ``bucket_s`` of send time: shows stalls and warm-up."""
        if not self.delays:
            return []
        start = min(self.sent_of_delay)
        buckets: dict[int, list[float]] = {}
        for sent, delay in zip(self.sent_of_delay, self.delays, strict=True):
            buckets.setdefault(int((sent - start) / bucket_s), []).append(delay)
        return [
            {"t_s": index * bucket_s, "n": len(found), **percentiles(found)}
            for index, found in sorted(buckets.items())
        ]


# --------------------------------------------------------------------------------------------
# Transports
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransportConfig:
    host: str
    port: int
    tokens: list[str]
    devices: int
    connect_concurrency: int = 64
    connect_timeout: float = 30.0
    deflate: bool = False


class Sink(Protocol):
    def on_ready(self, user: int, device: int, seq: int) -> None: ...
    def on_connect_error(self, user: int, device: int, error: str) -> None: ...
    def on_frame(self, user: int, device: int, arrival: float, frame: dict[str, Any]) -> None: ...
    def on_ping(self, user: int, device: int) -> None: ...
    def on_close(self, user: int, device: int, code: int, reason: str) -> None: ...


Transport = Callable[..., Awaitable[None]]


async def native_transport(
    cfg: TransportConfig,
    sink: Sink,
    *,
    task_status: trio.TaskStatus[dict[str, Any]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Native ``dramaverse.v1`` devices: one Trio task per device, token in ``hello``."""
    total = len(cfg.tokens) * cfg.devices
    limiter = trio.Semaphore(cfg.connect_concurrency)
    pending = total
    all_tried = trio.Event()
    connect_times: list[float] = []
    closing = False

    def tried() -> None:
        nonlocal pending
        pending -= 1
        if pending == 0:
            all_tried.set()

    async def device(user: int, dev: int) -> None:
        async with limiter:
            t0 = time.perf_counter()
            try:
                with trio.fail_after(cfg.connect_timeout):
                    conn, ready = await open_session(
                        cfg.host, cfg.port, cfg.tokens[user], deflate=cfg.deflate, recv_size=65536
                    )
            except (WSError, OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                sink.on_connect_error(user, dev, f"{type(exc).__name__}: {exc}"[:200])
                tried()
                return
            connect_times.append(time.perf_counter() - t0)
        seq = ready.get("seq")
        sink.on_ready(user, dev, seq if isinstance(seq, int) else 0)
        tried()
        try:
            code, reason = await run_frames(
                conn,
                lambda frame, t: sink.on_frame(user, dev, t, frame),
                lambda frame, t: sink.on_ping(user, dev),
            )
        finally:
            with trio.CancelScope(shield=True):
                await conn.aclose()
        if not closing:
            sink.on_close(user, dev, code, reason)

    t_start = time.perf_counter()
    try:
        async with trio.open_nursery() as nursery:
            for user in range(len(cfg.tokens)):
                for dev in range(cfg.devices):
                    nursery.start_soon(device, user, dev)
            await all_tried.wait()
            elapsed = time.perf_counter() - t_start
            task_status.started(
                {
                    "connect_s": round(elapsed, 3),
                    "connects_per_s": round(len(connect_times) / elapsed, 1) if elapsed else None,
                    "connect_ms": percentiles(connect_times),
                }
            )
    finally:
        closing = True


TRANSPORTS: dict[str, Transport] = {"native": native_transport, "socketio": socketio_transport}
P99_TARGET_RATIO = 1.5  # the Socket.IO path's p99 delay within 1.5x of the native path's


def transport_list(text: str) -> list[str]:
    """``--transport native,socketio``: one run per transport, each on a fresh server."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in TRANSPORTS]
    if not names or unknown or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of distinct transports from {sorted(TRANSPORTS)}"
        )
    return names


def compare(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The figures of several runs side by side, and the Socket.IO/native p99 ratio."""
    figures = {
        name: {
            "delay_ms": doc.get("delay_ms"),
            "per_device_max_delay_ms": doc.get("per_device_max_delay_ms"),
            "events_per_s": doc.get("events_per_s"),
            "events_lost": doc.get("events_lost"),
            "server_cpu_ms_per_write": doc.get("server_cpu_ms_per_write"),
            "exit_status": doc.get("exit_status"),
        }
        for name, doc in docs.items()
    }
    result: dict[str, Any] = {"figures": figures}
    native = (docs.get("native", {}).get("delay_ms") or {}).get("p99_ms")
    socketio = (docs.get("socketio", {}).get("delay_ms") or {}).get("p99_ms")
    if native and socketio:
        ratio = socketio / native
        result["socketio_over_native_p99"] = round(ratio, 3)
        result["p99_target_ratio"] = P99_TARGET_RATIO
        result["p99_within_target"] = ratio <= P99_TARGET_RATIO
    return result


# --------------------------------------------------------------------------------------------
# Writes
# --------------------------------------------------------------------------------------------


class Writes:
    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.statuses: dict[str, int] = {}
        self.error_types: dict[str, int] = {}
        self.latencies: list[float] = []
        self.first_send: float | None = None
        self.last_done: float | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "http_errors": self.errors,
            "statuses": dict(sorted(self.statuses.items())),
            "error_types": self.error_types,
            "request_ms": percentiles(self.latencies),
        }


async def run_writes(
    host: str,
    port: int,
    tokens: list[str],
    urls: list[str],
    rounds: int,
    in_flight: int,
    sink: Delivery,
    writes: Writes,
) -> None:
    """``rounds`` rounds of one favorite toggle per user, ``in_flight`` connections."""
    raws = []
    for token, url in zip(tokens, urls, strict=True):
        headers = [("Authorization", f"Bearer {token}")]
        raws.append(
            [
                build_http_request(
                    "POST",
                    host,
                    port,
                    "/api/user/favorites",
                    body=json_body({"dramaUrl": url, "isFavorite": value}),
                    headers=headers,
                )
                for value in (True, False)
            ]
        )
    clients = [HTTPClient(host, port) for _ in range(min(in_flight, len(tokens)))]
    clock = time.perf_counter

    async def worker(client: HTTPClient, todo: Any, k: int) -> None:
        for user in todo:
            raw = raws[user][k % 2]
            t0 = clock()
            sink.send_t[user][k] = t0
            if writes.first_send is None:
                writes.first_send = t0
            writes.requests += 1
            try:
                resp = await client.request(raw)
            except (OSError, trio.BrokenResourceError, ProtocolError) as exc:
                writes.errors += 1
                key = type(exc).__name__
                writes.error_types[key] = writes.error_types.get(key, 0) + 1
                continue
            t1 = clock()
            writes.latencies.append(t1 - t0)
            writes.last_done = t1
            key = str(resp.status)
            writes.statuses[key] = writes.statuses.get(key, 0) + 1
            if not 200 <= resp.status < 300:
                writes.errors += 1
                sink.note(f"user {user} write {k}: HTTP {resp.status} {resp.body[:150]!r}")

    try:
        for k in range(rounds):
            t0 = clock()
            todo = iter(range(len(tokens)))
            async with trio.open_nursery() as nursery:
                for client in clients:
                    nursery.start_soon(worker, client, todo, k)
            log(
                f"round {k + 1}/{rounds}: {len(tokens)} writes in {clock() - t0:.2f}s, "
                f"events so far {sink.received}"
            )
    finally:
        for client in clients:
            await client.aclose()


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


async def run_bench(server: BenchServer, args: argparse.Namespace, doc: dict[str, Any]) -> int:
    """Everything after the server is up; fills ``doc``; returns the exit status."""
    host, port = HOST, server.port
    doc["phase"] = "register"
    t0 = time.perf_counter()
    usernames = [f"fan{i:05d}" for i in range(args.users)]
    tokens = await register_users(host, port, usernames, concurrency=16, progress=log)
    doc["register_s"] = round(time.perf_counter() - t0, 2)
    log(f"registered {len(tokens)} users in {doc['register_s']}s")

    listing = await get_json(host, port, "/api/dramas?limit=14&sort=%5B%5D")
    catalog = [d["url"] for d in listing.get("dramas", []) if isinstance(d, dict)]
    if not catalog:
        raise BenchError("GET /api/dramas returned no dramas")
    urls = [catalog[i % len(catalog)] for i in range(len(tokens))]

    sink = Delivery(len(tokens), args.devices, args.rounds, urls)
    writes = Writes()
    doc["_sink"], doc["_writes"] = sink, writes
    doc["server_rss_mb_before_connect"] = server.rss_mb()

    doc["phase"] = "connect"
    transport = TRANSPORTS[args.transport]
    cfg = TransportConfig(
        host,
        port,
        tokens,
        args.devices,
        connect_concurrency=args.connect_concurrency,
        deflate=args.deflate,
    )
    async with trio.open_nursery() as nursery:
        connect_stats = await nursery.start(transport, cfg, sink)
        doc["connect"] = {
            "devices_connected": sink.connected,
            "connect_errors": sink.connect_errors,
            **connect_stats,
        }
        log(
            f"{sink.connected}/{len(tokens) * args.devices} devices ready in "
            f"{connect_stats.get('connect_s')}s"
        )
        if sink.connected == 0:
            raise BenchError("no device could connect")
        doc["server_rss_mb_connected"] = server.rss_mb()
        sink.target = sum(
            args.rounds for b in sink.base_seq if b is not None
        )  # what the connected devices should receive

        doc["phase"] = "writes"
        cpu0, client_cpu0, w0 = server.cpu_s(), time.process_time(), time.perf_counter()
        lag = LoopLag()
        nursery.start_soon(lag.run)
        await run_writes(host, port, tokens, urls, args.rounds, args.in_flight, sink, writes)
        doc["writes_s"] = round(time.perf_counter() - w0, 3)

        doc["phase"] = "drain"
        t_drain = time.perf_counter()
        with trio.move_on_after(DRAIN_S):
            await sink.all_arrived.wait()
        doc["drain_wait_s"] = round(time.perf_counter() - t_drain, 3)
        cpu1, client_cpu1 = server.cpu_s(), time.process_time()
        doc["wall_s"] = round(time.perf_counter() - w0, 3)
        if cpu0 is not None and cpu1 is not None:
            doc["server_cpu_s"] = round(cpu1 - cpu0, 2)
            doc["server_cpu_ms_per_write"] = round(
                (cpu1 - cpu0) * 1000 / max(1, writes.requests), 3
            )
        doc["client_cpu_s"] = round(client_cpu1 - client_cpu0, 2)
        doc["client_cpu_ms_per_write"] = round(
            (client_cpu1 - client_cpu0) * 1000 / max(1, writes.requests), 3
        )
        doc["client_loop_lag_ms"] = lag.take()
        doc["server_rss_mb_end"] = server.rss_mb()
        doc["phase"] = "done"
        nursery.cancel_scope.cancel()
    return 0


def finish(doc: dict[str, Any]) -> dict[str, Any]:
    """Fold the live counters into the document (also after a deadline or a failure)."""
    sink: Delivery | None = doc.pop("_sink", None)
    writes: Writes | None = doc.pop("_writes", None)
    if writes is not None:
        doc.update(writes.summary())
    if sink is not None:
        doc.update(sink.summary())
        if writes is not None and writes.first_send is not None and sink.last_arrival:
            span = sink.last_arrival - writes.first_send
            doc["events_per_s"] = round(sink.received / span, 1) if span > 0 else None
        doc["examples"] = sink.examples
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fanout_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--devices", type=int, default=2, help="devices per user")
    parser.add_argument("--rounds", type=int, default=10, help="writes per user")
    parser.add_argument("--in-flight", type=int, default=50, help="HTTP requests outstanding")
    parser.add_argument(
        "--transport",
        type=transport_list,
        default=["native"],
        help=f"one of {sorted(TRANSPORTS)}, or several comma-separated (each on a fresh server)",
    )
    parser.add_argument("--deflate", action="store_true", help="negotiate permessage-deflate")
    parser.add_argument("--connect-concurrency", type=int, default=64, help="handshakes at once")
    parser.add_argument("--deadline", type=float, default=300.0, help="global limit, seconds")
    parser.add_argument("--port", type=int, default=0, help="server port (0: pick a free one)")
    parser.add_argument("--json-out", type=Path, help="also write the JSON document here")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp dir and log")
    parser.add_argument("--server-cmd", help=argparse.SUPPRESS)  # testing: another server
    services.add_arguments(parser)  # --workers, --database-url, --redis-url
    parser.add_argument(
        "--worker-cpus",
        type=float,
        help="CPU quota per worker process, in cores (own cgroup each; bench/cpulimit.py)",
    )
    args = parser.parse_args(argv)
    if args.worker_cpus is not None and not 0.01 <= args.worker_cpus <= 64:
        parser.error("--worker-cpus must be between 0.01 and 64")
    if min(args.users, args.devices, args.rounds, args.in_flight) < 1:
        parser.error("--users, --devices, --rounds and --in-flight must be >= 1")
    services.check_arguments(parser, args)

    transports: list[str] = args.transport
    docs = {}
    for name in transports:
        args.transport = name
        docs[name] = run_once(args)
        if docs[name]["exit_status"] == 130:
            break  # interrupted: do not start the next run
    if len(docs) == 1:
        doc = docs[transports[0]]
    else:
        doc = {"benchmark": "fanout", "runs": docs, "comparison": compare(docs)}
        log(f"comparison: {json.dumps(doc['comparison'])}")
    statuses = [run["exit_status"] for run in docs.values()]
    status = 1 if 1 in statuses else max(statuses)
    text = json.dumps(doc, indent=2)
    print(text)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n", "utf-8")
    return int(status)


def limit_workers(server: BenchServer, workers: int, cores: float, doc: dict[str, Any]) -> CpuLimit:
    """Every worker process of ``server`` in its own cgroup with a quota of ``cores``."""
    pids = [server.pid] if workers == 1 else _children(server.pid)
    if len(pids) != workers:
        raise BenchError(f"expected {workers} worker processes, found {len(pids)}")
    limit = CpuLimit(cores)
    doc["worker_cpu_limit"] = {"cores_per_worker": cores, "mechanism": limit.mechanism}
    try:
        for pid in pids:
            limit.attach(pid)
    except CpuLimitError:
        limit.close()
        raise
    log(f"{workers} worker(s) limited to {cores:g} core each ({limit.mechanism})")
    return limit


def run_once(args: argparse.Namespace) -> dict[str, Any]:
    """One run of ``args.transport`` against its own server; the document, with exit_status."""
    t_start = time.monotonic()
    nofile = raise_nofile_limit()
    doc: dict[str, Any] = {
        "benchmark": "fanout",
        "transport": args.transport,
        "deflate": args.deflate,
        "users": args.users,
        "devices_per_user": args.devices,
        "rounds": args.rounds,
        "in_flight": args.in_flight,
        "backends": services.describe(args.workers, args.database_url, args.redis_url),
        "source": source_revision(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "nofile_limit": nofile[0],
        },
    }
    server = BenchServer(
        "fanout",
        port=args.port,
        keep_tmp=args.keep_tmp,
        log=log,
        workers=args.workers,
        database_url=args.database_url,
        redis_url=args.redis_url,
    )
    server.server_cmd = args.server_cmd
    status = 1
    limit: CpuLimit | None = None
    try:
        server.start()
        doc["server_startup_s"] = round(server.startup_s or 0.0, 2)
        if args.worker_cpus is not None:
            limit = limit_workers(server, args.workers, args.worker_cpus, doc)
        budget = args.deadline - (time.monotonic() - t_start)

        async def bounded() -> int:
            with trio.move_on_after(budget):
                return await run_bench(server, args, doc)
            doc["deadline_exceeded"] = True
            log(f"deadline of {args.deadline:g}s reached during phase {doc.get('phase')}")
            return 1

        status = trio.run(bounded)
    except (
        BenchError,
        CpuLimitError,
        WSError,
        OSError,
        ProtocolError,
        services.BackendError,
        BaseExceptionGroup,
    ) as exc:
        err = single_error(exc)
        log(f"FAILED: {err}")
        doc["error"] = err.splitlines()[0]
    except KeyboardInterrupt:
        log("interrupted")
        doc["error"] = "interrupted"
        status = 130
    finally:
        if server.proc is not None and not server.alive():
            doc["server_died"] = True
            doc["server_log_tail"] = server.tail(20).splitlines()
        if limit is not None:
            doc["worker_cpu_limit"]["groups"] = limit.stats()
            limit.close()
        server.stop()
        doc["server_stop"] = server.stop_info
    finish(doc)
    if status == 0 and (
        doc.get("events_lost")
        or doc.get("duplicates")
        or doc.get("out_of_order")
        or doc.get("mismatched")
        or doc.get("out_of_range_seq")
        or doc.get("http_errors")
    ):
        status = 2
    doc["exit_status"] = status
    return doc


if __name__ == "__main__":
    raise SystemExit(main())
