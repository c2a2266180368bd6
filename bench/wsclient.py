"""Shared helpers for the WebSocket benchmarks: the native-protocol client and server control.

The WebSocket connection itself is :mod:`bench.wsconn` (websockets' sans-I/O client on a raw
trio stream, no background task per connection); this module adds the native protocol on top:

    conn, ready = await open_session("127.0.0.1", port, token, deflate=True)
    code, reason = await run_frames(conn, on_frame)      # answers pings until the socket closes

The server helpers start a real ``python -m dramaverse serve`` the way ``bench.catalog_bench``
does (temporary data directory, bundled sample catalog, development mode, rate limits off,
``BCRYPT_ROUNDS=4``) and read its RSS and CPU time from ``/proc``.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from bench.catalog_bench import (
    HOST,
    _children,
    _run_logged,
    _tail,
    _wait_healthy,
    base_env,
    free_port,
    rss_mb,
)
from bench.loadgen import HTTPResponse, ProtocolError, _Conn
from bench.services import serve_arguments, server_backends, wait_all_workers
from bench.wsconn import (
    BrowserDeflate,
    WSClosed,
    WSConn,
    WSError,
    WSHandshakeRejected,
    open_websocket,
)

__all__ = [
    "HOST",
    "PONG",
    "SUBPROTOCOL",
    "WS_PATH",
    "BenchServer",
    "BrowserDeflate",
    "HTTPClient",
    "LoopLag",
    "SessionRefused",
    "WSClosed",
    "WSConn",
    "WSError",
    "WSHandshakeRejected",
    "build_http_request",
    "counters_delta",
    "cpu_seconds",
    "get_json",
    "json_body",
    "listen_queue_counters",
    "open_session",
    "percentiles",
    "raise_nofile_limit",
    "register_users",
    "run_frames",
    "self_rss_mb",
    "single_error",
    "source_revision",
    "ws_connect",
]

SUBPROTOCOL = "dramaverse.v1"
WS_PATH = "/api/ws"
PONG = '{"type":"pong"}'
PASSWORD = "bench-password"

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
REPO_ROOT = Path(__file__).resolve().parents[1]
STOP_SIGNALS = ((signal.SIGINT, 15.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0))


# --------------------------------------------------------------------------------------------
# WebSocket client
# --------------------------------------------------------------------------------------------


async def ws_connect(
    host: str,
    port: int,
    path: str = WS_PATH,
    *,
    subprotocols: Sequence[str] = (SUBPROTOCOL,),
    headers: Iterable[tuple[bytes, bytes]] = (),
    deflate: bool = False,
    recv_size: int = 4096,
) -> WSConn:
    """Open a TCP connection and perform the WebSocket upgrade (no timeout: use a cancel scope)."""
    return await open_websocket(
        host,
        port,
        path,
        subprotocols=subprotocols,
        headers=headers,
        deflate=deflate,
        recv_size=recv_size,
    )


class SessionRefused(WSError):
    """The server answered ``hello`` with something other than ``ready``."""

    def __init__(self, frame: dict[str, Any]) -> None:
        super().__init__(f"hello answered with {json.dumps(frame)[:300]}")
        self.frame = frame


async def open_session(
    host: str,
    port: int,
    token: str,
    *,
    deflate: bool = False,
    auth: str = "hello",
    resume: int | None = None,
    recv_size: int = 4096,
) -> tuple[WSConn, dict[str, Any]]:
    """Connect to ``/api/ws``, send ``hello`` and wait for ``ready``; returns both.

    ``auth`` is where the token goes: ``hello`` (the first message), ``header``
    (``Authorization: Bearer``) or ``subprotocol`` (``dramaverse.token.<jwt>``). Server pings
    that arrive before ``ready`` are answered. No timeout: wrap it in a cancel scope.
    """
    headers: list[tuple[bytes, bytes]] = []
    subprotocols = [SUBPROTOCOL]
    hello: dict[str, Any] = {"type": "hello"}
    if auth == "header":
        headers.append((b"authorization", f"Bearer {token}".encode("ascii")))
    elif auth == "subprotocol":
        subprotocols.append(f"dramaverse.token.{token}")
    elif auth == "hello":
        hello["token"] = token
    else:
        raise ValueError(f"unknown auth mode {auth!r}")
    if resume is not None:
        hello["resume"] = resume
    conn = await ws_connect(
        host, port, subprotocols=subprotocols, headers=headers, deflate=deflate, recv_size=recv_size
    )
    try:
        if conn.subprotocol != SUBPROTOCOL:
            raise WSError(f"server selected subprotocol {conn.subprotocol!r}")
        await conn.send_json(hello)
        while True:
            frame = await conn.receive_json()
            kind = frame.get("type")
            if kind == "ready":
                return conn, frame
            if kind == "ping":
                await conn.send_text(PONG)
                continue
            raise SessionRefused(frame)
    except BaseException:
        await conn._abort()
        raise


async def run_frames(
    conn: WSConn,
    on_frame: Callable[[dict[str, Any], float], None],
    on_ping: Callable[[dict[str, Any], float], None] | None = None,
) -> tuple[int, str]:
    """Receive until the connection closes: answer ``ping`` with ``pong``, pass the rest on.

    ``on_frame(frame, arrival)`` gets every other frame with its arrival time
    (``time.perf_counter()``). Returns the close code and reason (1006: no close frame).
    """
    try:
        while True:
            msg = await conn.receive()
            arrival = conn.last_recv
            frame = json.loads(msg)
            if isinstance(frame, dict) and frame.get("type") == "ping":
                await conn.send_text(PONG)
                if on_ping is not None:
                    on_ping(frame, arrival)
                continue
            on_frame(frame, arrival)
    except WSClosed as exc:
        return exc.code, exc.reason


# --------------------------------------------------------------------------------------------
# HTTP (raw keep-alive connections from bench.loadgen)
# --------------------------------------------------------------------------------------------


def build_http_request(
    method: str,
    host: str,
    port: int,
    path: str,
    *,
    body: bytes | None = None,
    headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    """Raw bytes of one keep-alive HTTP/1.1 request (JSON body when ``body`` is given)."""
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "User-Agent: dramaverse-bench/1",
        "Accept: application/json",
        "Connection: keep-alive",
    ]
    lines += [f"{k}: {v}" for k, v in headers]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + (body or b"")


def json_body(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


class HTTPClient:
    """One keep-alive connection that reconnects after a failure or ``Connection: close``."""

    __slots__ = ("_conn", "host", "port")

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._conn: _Conn | None = None

    async def request(self, raw: bytes, *, want_body: bool = True) -> HTTPResponse:
        """Send ``raw``; on a connection error the connection is dropped and the error raised."""
        if self._conn is None:
            self._conn = _Conn(await trio.open_tcp_stream(self.host, self.port))
        try:
            resp = await self._conn.request(raw, want_body=want_body)
        except (OSError, trio.BrokenResourceError, ProtocolError):
            await self.aclose()
            raise
        if not resp.keep_alive:
            await self.aclose()
        return resp

    async def aclose(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await conn.aclose()


async def register_users(
    host: str,
    port: int,
    usernames: Sequence[str],
    *,
    concurrency: int = 16,
    progress: Callable[[str], None] | None = None,
) -> list[str]:
    """Register every username (password ``PASSWORD``) and return their tokens, in order."""
    tokens: list[str | None] = [None] * len(usernames)
    todo = iter(range(len(usernames)))
    done = 0

    async def worker() -> None:
        nonlocal done
        client = HTTPClient(host, port)
        try:
            for i in todo:
                raw = build_http_request(
                    "POST",
                    host,
                    port,
                    "/api/auth/register",
                    body=json_body({"username": usernames[i], "password": PASSWORD}),
                )
                resp = await client.request(raw)
                if resp.status != 201:
                    raise WSError(
                        f"register {usernames[i]!r}: HTTP {resp.status} {resp.body[:200]!r}"
                    )
                tokens[i] = json.loads(resp.body)["token"]
                done += 1
                if progress is not None and done % 500 == 0:
                    progress(f"registered {done}/{len(usernames)} users")
        finally:
            await client.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(max(1, min(concurrency, len(usernames)))):
            nursery.start_soon(worker)
    return [t for t in tokens if t is not None]


async def get_json(host: str, port: int, path: str) -> Any:
    client = HTTPClient(host, port)
    try:
        resp = await client.request(build_http_request("GET", host, port, path))
    finally:
        await client.aclose()
    if resp.status != 200:
        raise WSError(f"GET {path}: HTTP {resp.status} {resp.body[:200]!r}")
    return json.loads(resp.body)


# --------------------------------------------------------------------------------------------
# Processes and measurements
# --------------------------------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    out: list[int] = []
    stack = [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(_children(p))
    return out


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` and its descendants (None if unavailable)."""
    total = 0
    seen = False
    for p in _tree(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        seen = True
    return total / _CLOCK_TICKS if seen else None


def single_error(exc: BaseException) -> str:
    """``Type: message`` of an exception, or of the first leaf of an exception group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


def listen_queue_counters() -> dict[str, int]:
    """The kernel's ListenOverflows / ListenDrops counters (SYNs dropped: accept queue full)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return {}
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return {k: int(table[k]) for k in ("ListenOverflows", "ListenDrops") if k in table}
    return {}


def counters_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after if k in before}


class LoopLag:
    """Measures how late this process's Trio loop wakes up (client saturation check)."""

    def __init__(self, period: float = 0.05) -> None:
        self.period = period
        self.samples: list[float] = []

    async def run(self) -> None:
        clock = time.perf_counter
        while True:
            t0 = clock()
            await trio.sleep(self.period)
            self.samples.append(clock() - t0 - self.period)

    def take(self) -> dict[str, float | None]:
        """Percentiles (ms) of the wake-up delays since the last call, then reset."""
        out = percentiles(self.samples)
        self.samples = []
        return out


def source_revision() -> dict[str, Any]:
    """The git commit of the checkout and how many files under ``dramaverse/`` differ from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "dramaverse"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": head or None, "dramaverse_files_changed": len(dirty)}


def self_rss_mb() -> float | None:
    """This process's own RSS in MB (not its children: the server is one of them)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (children inherit it); return both."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def percentiles(values: list[float], scale: float = 1000.0) -> dict[str, float | None]:
    """p50 / p99 / max (nearest rank) of ``values`` times ``scale`` (seconds -> ms)."""
    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
    s = sorted(values)

    def rank(pct: float) -> float:
        idx = max(1, -(-len(s) * pct // 100))
        return s[min(int(idx), len(s)) - 1]

    return {
        "p50_ms": round(rank(50) * scale, 3),
        "p99_ms": round(rank(99) * scale, 3),
        "max_ms": round(s[-1] * scale, 3),
        "mean_ms": round(sum(s) / len(s) * scale, 3),
    }


@dataclass
class BenchServer:
    """A ``dramaverse serve`` subprocess in a temporary data directory (bundled sample seeded).

    ``server_cmd`` replaces ``python -m dramaverse serve --host H --port P`` (for testing the
    benchmarks themselves against another server; ``{python}``, ``{host}`` and ``{port}`` are
    substituted).
    """

    name: str
    env_extra: dict[str, str] = field(default_factory=dict)
    port: int = 0
    keep_tmp: bool = False
    server_cmd: str | None = None
    log: Callable[[str], None] = print
    workers: int = 1  # bench/services.py: > 1 needs both URLs below
    database_url: str | None = None
    redis_url: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    tmp: Path | None = None
    startup_s: float | None = None
    stop_info: dict[str, Any] = field(default_factory=dict)
    _backends: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def log_path(self) -> Path:
        assert self.tmp is not None
        return self.tmp / "server.log"

    def start(self) -> BenchServer:
        self.tmp = Path(tempfile.mkdtemp(prefix=f"dramaverse-{self.name}-"))
        env = base_env(self.tmp)
        env.update(RATE_LIMIT_USER="off", RATE_LIMIT_AUTH="off", BCRYPT_ROUNDS="4")
        env.update(self.env_extra)
        env.update(self._backends.enter_context(server_backends(self.database_url, self.redis_url)))
        seed_cmd = [sys.executable, "-m", "dramaverse", "seed", "--sample"]
        _run_logged(seed_cmd, env=env, cwd=self.tmp, log_path=self.tmp / "seed.log")
        self.port = self.port or free_port()
        if self.server_cmd:
            cmd = [
                part.format(python=sys.executable, host=HOST, port=self.port)
                for part in shlex.split(self.server_cmd)
            ]
        else:
            cmd = [sys.executable, "-m", "dramaverse", "serve", "--host", HOST]
            cmd += ["--port", str(self.port), *serve_arguments(self.workers)]
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd, env=env, cwd=self.tmp, stdout=out, stderr=subprocess.STDOUT
            )
        self.log(f"server pid {self.proc.pid} on {HOST}:{self.port} (temp dir {self.tmp})")
        self.startup_s = trio.run(_wait_healthy, self.proc, self.port, self.log_path)
        if self.workers > 1:
            self.startup_s += trio.run(wait_all_workers, HOST, self.port, self.workers)
        self.log(f"healthy after {self.startup_s:.1f}s, RSS {self.rss_mb()} MB")
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_mb(self) -> float | None:
        return rss_mb(self.pid)

    def cpu_s(self) -> float | None:
        return cpu_seconds(self.pid)

    def tail(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines)

    def stop(self) -> int | None:
        """Stop the server (SIGINT, then SIGTERM, then SIGKILL) and remove the temp dir.

        Returns the exit code; ``stop_info`` tells which signal ended it and how long it took.
        """
        code = None
        if self.proc is not None:
            proc = self.proc
            t0 = time.perf_counter()
            for sig, wait in STOP_SIGNALS:
                if proc.poll() is not None:
                    break
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
                try:
                    proc.wait(timeout=wait)
                    self.stop_info["stopped_by"] = sig.name
                    break
                except subprocess.TimeoutExpired:
                    self.log(f"server pid {proc.pid} still running {wait:g}s after {sig.name}")
            code = proc.returncode
            self.stop_info.update(exit_code=code, stop_s=round(time.perf_counter() - t0, 2))
            if code not in (0, -signal.SIGINT, None):
                self.log(f"server exit code {code}")
        self._backends.close()  # drops the fresh PostgreSQL schema, if any
        if self.tmp is not None:
            if self.keep_tmp:
                self.log(f"kept {self.tmp}")
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)
        return code

    def __enter__(self) -> BenchServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
