"""WebSocket capacity benchmark: memory and heartbeats of many idle native connections.

    python -m bench.ws_capacity_bench [--connections 10000] [--hold 60] [--deflate both|on|off]

For each deflate variant (``both``: without, then with permessage-deflate, each against a fresh
server): start a real ``dramaverse serve`` with ``WS_HEARTBEAT_INTERVAL=5`` (``--heartbeat``) so
heartbeats really run during the hold, register ``--users`` users (connections are spread over
them round-robin), make a warm-up request and one warm-up WebSocket session, measure the
server's RSS (baseline), open ``--connections`` authenticated ``dramaverse.v1`` connections
(token in ``hello``, ``ready`` received; at most ``--connect-concurrency`` handshakes at once),
measure RSS, hold them ``--hold`` seconds answering every ping, and measure RSS again.

Reported per variant: RSS baseline / connected / end (MB, process tree), RSS per connection
``(end - baseline) / connections`` in KB, connect rate and handshake-to-``ready`` latency,
connections the server closed during the hold with their close codes, pings received per
connection during the hold (expected about ``hold / heartbeat``) and their lag behind the
server's timestamp, the server's CPU time during the hold, and the client's own RSS and CPU. If
not every connection can be opened, the run holds what it has and reports the number reached
and the errors (it stops trying after 200 consecutive failures).

The client is one Trio task per connection (``bench.wsconn``: websockets' sans-I/O client on
raw sockets, no reader tasks). The soft RLIMIT_NOFILE is raised to the hard limit before the
server starts, so the server inherits it too.

One JSON document goes to stdout (and ``--json-out``), progress to stderr. Exit status: 0 every
connection opened and none dropped, 2 some could not be opened or were dropped, 1 a run failed
(server failure or ``--deadline`` per variant; the document holds what was measured).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from bench.catalog_bench import BenchError
from bench.loadgen import ProtocolError, http_get
from bench.wsclient import (
    HOST,
    BenchServer,
    LoopLag,
    WSError,
    counters_delta,
    listen_queue_counters,
    open_session,
    percentiles,
    raise_nofile_limit,
    register_users,
    run_frames,
    self_rss_mb,
    single_error,
    source_revision,
)

MAX_CONSECUTIVE_FAILURES = 200
SAMPLE_EVERY_S = 5.0
SETTLE_MAX_S = 60.0
SESSION_GRACE_S = 5.0  # the server's default SESSION_GRACE_SECONDS


def log(msg: str) -> None:
    print(f"[ws_capacity_bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _port_range() -> str | None:
    try:
        return " ".join(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except OSError:
        return None


class Connections:
    """State of every client connection of one run (counters only, no per-connection objects)."""

    def __init__(self, n: int) -> None:
        self.phase = "connect"
        self.ready = 0
        self.open = 0
        self.peak_open = 0
        self.deflate_negotiated = 0
        self.failures: dict[str, int] = {}
        self.first_error: str | None = None
        self.consecutive_failures = 0
        self.closed: dict[str, dict[str, int]] = {}  # phase -> close code -> count
        self.close_examples: list[str] = []
        self.hold_pings = array("H", bytes(2 * n))
        self.pings_total = 0
        self.ping_lag_ms: list[float] = []
        self.connect_times: list[float] = []
        self.heartbeat_seen: dict[str, int] = {}

    def fail(self, exc: BaseException) -> None:
        text = f"{type(exc).__name__}: {exc}"[:200]
        key = text if isinstance(exc, WSError) else type(exc).__name__
        if isinstance(exc, OSError):
            key = f"OSError errno {exc.errno}: {os.strerror(exc.errno) if exc.errno else exc}"
        self.failures[key] = self.failures.get(key, 0) + 1
        if self.first_error is None:
            self.first_error = text
        self.consecutive_failures += 1

    def on_close(self, i: int, code: int, reason: str) -> None:
        by_code = self.closed.setdefault(self.phase, {})
        by_code[str(code)] = by_code.get(str(code), 0) + 1
        if len(self.close_examples) < 10:
            self.close_examples.append(f"conn {i} during {self.phase}: {code} {reason!r}")

    def on_ping(self, i: int, frame: dict[str, Any]) -> None:
        self.pings_total += 1
        if self.phase == "hold":
            if self.hold_pings[i] < 0xFFFF:
                self.hold_pings[i] += 1
            t = frame.get("t")
            if isinstance(t, int | float):
                self.ping_lag_ms.append(time.time() * 1000 - t)


async def measure(
    server: BenchServer, args: argparse.Namespace, deflate: bool, out: dict[str, Any]
) -> None:
    host, port, n = HOST, server.port, args.connections
    out["phase"] = "register"
    n_users = max(1, min(args.users, n))
    t0 = time.perf_counter()
    tokens = await register_users(
        host, port, [f"cap{i:05d}" for i in range(n_users)], concurrency=16, progress=log
    )
    out["register_s"] = round(time.perf_counter() - t0, 2)
    out["users"] = len(tokens)

    out["phase"] = "warm-up"
    resp = await http_get(host, port, "/api/health")
    if resp.status != 200:
        raise BenchError(f"/api/health answered {resp.status}")
    with trio.fail_after(30):
        conn, ready = await open_session(host, port, tokens[0], deflate=deflate)
        await conn.aclose()
    out["ready_frame"] = ready
    out["deflate_negotiated_warmup"] = conn.deflate
    out["deflate_params"] = conn.deflate_params
    await trio.sleep(1.0)
    rss_base = out["server_rss_mb_baseline"] = server.rss_mb()
    out["client_rss_mb_baseline"] = self_rss_mb()
    log(f"baseline RSS {rss_base} MB; opening {n} connections (deflate {deflate})")

    st = Connections(n)
    out["_state"] = st
    limiter = trio.Semaphore(args.connect_concurrency)
    clock = time.perf_counter

    async def connection(i: int) -> None:
        t_start = clock()
        try:
            with trio.fail_after(args.connect_timeout):
                conn, ready = await open_session(
                    host, port, tokens[i % len(tokens)], deflate=deflate
                )
        except (WSError, OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            st.fail(exc)
            limiter.release()
            return
        st.connect_times.append(clock() - t_start)
        limiter.release()
        st.consecutive_failures = 0
        st.ready += 1
        st.open += 1
        st.peak_open = max(st.peak_open, st.open)
        if conn.deflate:
            st.deflate_negotiated += 1
        hb = json.dumps(ready.get("heartbeat"), sort_keys=True)
        st.heartbeat_seen[hb] = st.heartbeat_seen.get(hb, 0) + 1
        del ready  # keep nothing per connection beyond the socket and its protocol state
        try:
            code, reason = await run_frames(
                conn, lambda frame, t: None, lambda frame, t: st.on_ping(i, frame)
            )
            st.on_close(i, code, reason)
        finally:
            st.open -= 1
            with trio.CancelScope(shield=True):
                await conn.aclose()

    cpu_client0 = time.process_time()
    lag = LoopLag()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lag.run)
        out["phase"] = "connect"
        listen0, cpu_connect0 = listen_queue_counters(), server.cpu_s()
        t_connect = clock()
        last_log = t_connect
        for i in range(n):
            await limiter.acquire()
            if st.consecutive_failures >= MAX_CONSECUTIVE_FAILURES or not server.alive():
                limiter.release()
                log(f"stopped opening after {i} attempts: {st.first_error}")
                out["stopped_opening_after"] = i
                break
            nursery.start_soon(connection, i)
            if clock() - last_log > 5:
                last_log = clock()
                log(f"{st.ready} ready, {sum(st.failures.values())} failed")
        for _ in range(args.connect_concurrency):  # every handshake has finished
            await limiter.acquire()
        connect_s = clock() - t_connect
        cpu_connect1 = server.cpu_s()
        cpu_connect = (
            cpu_connect1 - cpu_connect0
            if cpu_connect0 is not None and cpu_connect1 is not None
            else None
        )
        out["connect"] = {
            "attempted": out.get("stopped_opening_after", n),
            "ready": st.ready,
            "failed": sum(st.failures.values()),
            "failures": st.failures,
            "first_error": st.first_error,
            "connect_s": round(connect_s, 2),
            "connects_per_s": round(st.ready / connect_s, 1) if connect_s > 0 else None,
            "handshake_to_ready_ms": percentiles(st.connect_times),
            "deflate_negotiated": st.deflate_negotiated,
            "server_cpu_s": round(cpu_connect, 2) if cpu_connect is not None else None,
            "server_cpu_ms_per_connection": (
                round(cpu_connect * 1000 / st.ready, 2) if cpu_connect and st.ready else None
            ),
            "listen_queue": counters_delta(listen0, listen_queue_counters()),
            "client_loop_lag_ms": lag.take(),
        }
        st.connect_times = []
        await trio.sleep(1.0)
        out["open_after_connect"] = st.open
        rss_conn = out["server_rss_mb_connected"] = server.rss_mb()
        out["client_rss_mb_connected"] = self_rss_mb()
        log(
            f"{st.ready} ready in {connect_s:.1f}s ({out['connect']['connects_per_s']}/s), "
            f"{out['connect']['failed']} failed; server RSS {rss_conn} MB"
        )

        out["phase"] = "hold"
        st.phase = "hold"
        cpu0 = server.cpu_s()
        t_hold = clock()
        samples = out["hold_samples"] = []
        while (left := args.hold - (clock() - t_hold)) > 0:
            await trio.sleep(min(SAMPLE_EVERY_S, left))
            samples.append(
                {
                    "t_s": round(clock() - t_hold, 1),
                    "open": st.open,
                    "server_rss_mb": server.rss_mb(),
                    "pings": st.pings_total,
                }
            )
            if not server.alive():
                raise BenchError(f"server exited during the hold:\n{server.tail()}")
        hold_s = clock() - t_hold
        cpu1 = server.cpu_s()
        out["client_loop_lag_hold_ms"] = lag.take()
        st.phase = "after-hold"
        rss_end = out["server_rss_mb_end"] = server.rss_mb()
        out["open_at_end"] = st.open
        out["hold_s"] = round(hold_s, 2)
        if cpu0 is not None and cpu1 is not None:
            out["server_cpu_hold_s"] = round(cpu1 - cpu0, 2)
            out["server_cpu_hold_pct_of_core"] = round((cpu1 - cpu0) / hold_s * 100, 1)
        out["client_cpu_s"] = round(time.process_time() - cpu_client0, 2)
        out["client_rss_mb_end"] = self_rss_mb()
        if rss_base is not None and rss_end is not None and st.ready:
            out["rss_per_connection_kb"] = round((rss_end - rss_base) * 1024 / st.ready, 1)
        if rss_base is not None and rss_conn is not None and st.ready:
            out["rss_per_connection_kb_at_connect"] = round(
                (rss_conn - rss_base) * 1024 / st.ready, 1
            )
        log(
            f"hold {hold_s:.0f}s: {st.open} still open, server RSS {rss_end} MB, "
            f"{out.get('rss_per_connection_kb')} KB per connection"
        )
        out["phase"] = "close"
        st.phase = "closing"
        nursery.cancel_scope.cancel()

    # The client has closed every connection: how long the server stays busy with that, and
    # how much memory it gives back once the user sessions have expired.
    out["phase"] = "after-close"
    t_close = clock()
    prev = server.cpu_s()
    while clock() - t_close < SETTLE_MAX_S:
        await trio.sleep(0.5)
        cur = server.cpu_s()
        if cur is None or prev is None or cur - prev < 0.05:
            break
        prev = cur
    out["server_busy_after_close_s"] = round(clock() - t_close, 1)
    await trio.sleep(SESSION_GRACE_S + 1)
    out["server_rss_mb_after_close"] = server.rss_mb()
    out["phase"] = "done"


def finish(out: dict[str, Any], args: argparse.Namespace) -> None:
    st: Connections | None = out.pop("_state", None)
    if st is None:
        return
    ready = st.ready or 1
    pings = [st.hold_pings[i] for i in range(args.connections)]
    opened = [p for p in pings if p] or [0]
    hold = out.get("hold_s") or args.hold
    out["dropped_during_hold"] = sum(st.closed.get("hold", {}).values())
    out["close_codes"] = st.closed
    out["close_examples"] = st.close_examples
    out["pings"] = {
        "expected_per_connection": round(hold / args.heartbeat, 1),
        "received_during_hold": sum(pings),
        "per_connection_mean": round(sum(pings) / ready, 2),
        "per_connection_min": min(opened) if st.ready else 0,
        "per_connection_max": max(opened),
        "connections_without_ping": st.ready - sum(1 for p in pings if p),
        "lag_behind_server_ms": percentiles(st.ping_lag_ms, scale=1.0),
    }
    out["heartbeat_in_ready"] = st.heartbeat_seen
    out["peak_open"] = st.peak_open
    if "connect" not in out:  # stopped during the connect phase
        out["connect"] = {"ready": st.ready, "failures": st.failures, "first_error": st.first_error}


def run_variant(deflate: bool, args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    out: dict[str, Any] = {"deflate": deflate}
    server = BenchServer(
        "wscap-" + ("deflate" if deflate else "plain"),
        env_extra={"WS_HEARTBEAT_INTERVAL": f"{args.heartbeat:g}"},
        port=args.port,
        keep_tmp=args.keep_tmp,
        server_cmd=args.server_cmd,
        log=log,
    )
    status = 0
    try:
        server.start()
        out["server_startup_s"] = round(server.startup_s or 0.0, 2)

        async def bounded() -> int:
            with trio.move_on_after(args.deadline):
                await measure(server, args, deflate, out)
                return 0
            out["deadline_exceeded"] = True
            log(f"deadline of {args.deadline:g}s reached during phase {out.get('phase')}")
            return 1

        status = trio.run(bounded)
    except (BenchError, WSError, OSError, ProtocolError, BaseExceptionGroup) as exc:
        err = single_error(exc)
        log(f"FAILED: {err}")
        out["error"] = err.splitlines()[0]
        status = 1
    finally:
        if server.proc is not None and not server.alive():
            out["server_died"] = True
            out["server_log_tail"] = server.tail(20).splitlines()
        server.stop()
        out["server_stop"] = server.stop_info
    finish(out, args)
    if status == 0 and (
        out.get("connect", {}).get("ready") != args.connections or out.get("dropped_during_hold")
    ):
        status = 2
    return out, status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ws_capacity_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--hold", type=float, default=60.0, help="seconds to hold them open")
    parser.add_argument("--deflate", choices=("both", "on", "off"), default="both")
    parser.add_argument("--users", type=int, default=200, help="users the connections share")
    parser.add_argument("--heartbeat", type=float, default=5.0, help="WS_HEARTBEAT_INTERVAL")
    parser.add_argument("--connect-concurrency", type=int, default=64, help="handshakes at once")
    parser.add_argument("--connect-timeout", type=float, default=30.0, help="per connection")
    parser.add_argument("--deadline", type=float, default=900.0, help="limit per variant, s")
    parser.add_argument("--port", type=int, default=0, help="server port (0: pick a free one)")
    parser.add_argument("--json-out", type=Path, help="also write the JSON document here")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp dirs and logs")
    parser.add_argument("--server-cmd", help=argparse.SUPPRESS)  # testing: another server
    args = parser.parse_args(argv)
    if args.connections < 1 or args.hold < 0 or args.connect_concurrency < 1:
        parser.error("--connections and --connect-concurrency must be >= 1, --hold >= 0")

    nofile = raise_nofile_limit()  # before any server starts: it inherits the limit
    doc: dict[str, Any] = {
        "benchmark": "ws_capacity",
        "connections": args.connections,
        "hold_s": args.hold,
        "heartbeat_interval_s": args.heartbeat,
        "users": args.users,
        "connect_concurrency": args.connect_concurrency,
        "source": source_revision(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "nofile_limit": list(nofile),
            "ephemeral_ports": _port_range(),
        },
        "runs": [],
    }
    if nofile[0] < args.connections + 100:
        log(f"WARNING: RLIMIT_NOFILE {nofile[0]} is below {args.connections} connections")
    variants = {"both": [False, True], "on": [True], "off": [False]}[args.deflate]
    status = 0
    try:
        for deflate in variants:
            log(f"--- deflate {'on' if deflate else 'off'}")
            out, st = run_variant(deflate, args)
            doc["runs"].append(out)
            status = max(status, st) if status != 1 else 1
            if st == 1:
                status = 1
    except KeyboardInterrupt:
        log("interrupted")
        doc["error"] = "interrupted"
        status = 130
    by = {r["deflate"]: r.get("rss_per_connection_kb") for r in doc["runs"]}
    if by.get(True) and by.get(False):
        doc["deflate_rss_per_connection_ratio"] = round(by[True] / by[False], 2)
    doc["exit_status"] = status
    text = json.dumps(doc, indent=2)
    print(text)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n", "utf-8")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
