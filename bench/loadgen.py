"""A lean HTTP/1.1 keep-alive load generator on Trio raw sockets.

The client shares the machine (two cores in CI) with the server under test, so it avoids any
HTTP library: the request bytes are built once, responses are parsed with ``bytes.find`` on a
per-connection buffer, and each connection keeps exactly one request in flight (closed-loop
load: throughput = connections / latency).

    result = trio.run(run_load, "127.0.0.1", 8000, "/api/health")

Latency is measured with ``time.perf_counter`` from just before the request is written to the
moment its body is complete. Requests started during the warm-up are not recorded. After
``warmup + duration`` no new request starts; requests still in flight get a short grace period
to finish (they are counted) and are cancelled after it (counted as errors).
"""

from __future__ import annotations

import math
import time
from typing import Any

import trio

__all__ = ["HTTPResponse", "ProtocolError", "build_request", "http_get", "run_load"]

_CRLF = b"\r\n"
_HEADER_END = b"\r\n\r\n"
_RECV_SIZE = 65536
_MAX_HEADER_BYTES = 64 * 1024


class ProtocolError(Exception):
    """The server sent something that is not a well-formed HTTP/1.1 response."""


class HTTPResponse:
    __slots__ = ("body", "headers", "keep_alive", "status")

    def __init__(
        self, status: int, headers: dict[bytes, bytes], body: bytes, keep_alive: bool
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive


def build_request(host: str, port: int, path_and_query: str, *, close: bool = False) -> bytes:
    """The raw bytes of a ``GET`` request (path must already be percent-encoded)."""
    if not path_and_query.startswith("/"):
        raise ValueError("path_and_query must start with '/'")
    host_header = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [
        f"GET {path_and_query} HTTP/1.1",
        f"Host: {host_header}",
        "User-Agent: dramaverse-bench/1",
        "Accept: application/json",
        "Connection: close" if close else "Connection: keep-alive",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


class _Conn:
    """One persistent connection with its receive buffer."""

    __slots__ = ("buf", "stream")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def _fill(self) -> None:
        data = await self.stream.receive_some(_RECV_SIZE)
        if not data:
            raise ProtocolError("connection closed by peer")
        self.buf += data

    async def _read_exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            await self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def _discard(self, n: int) -> None:
        """Consume ``n`` bytes without materialising them."""
        have = len(self.buf)
        if have >= n:
            del self.buf[:n]
            return
        n -= have
        self.buf.clear()
        receive = self.stream.receive_some
        while True:
            data = await receive(_RECV_SIZE)
            if not data:
                raise ProtocolError("connection closed by peer")
            if len(data) >= n:
                if len(data) > n:
                    self.buf += data[n:]
                return
            n -= len(data)

    async def _read_line(self) -> bytes:
        while True:
            idx = self.buf.find(_CRLF)
            if idx >= 0:
                line = bytes(self.buf[:idx])
                del self.buf[: idx + 2]
                return line
            if len(self.buf) > _MAX_HEADER_BYTES:
                raise ProtocolError("line too long")
            await self._fill()

    async def request(self, raw: bytes, *, want_body: bool = True) -> HTTPResponse:
        await self.stream.send_all(raw)
        # --- head ----------------------------------------------------------------------
        while True:
            end = self.buf.find(_HEADER_END)
            if end >= 0:
                break
            if len(self.buf) > _MAX_HEADER_BYTES:
                raise ProtocolError("response head too large")
            await self._fill()
        head = bytes(self.buf[:end])
        del self.buf[: end + 4]
        lines = head.split(_CRLF)
        status_line = lines[0]
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ProtocolError(f"bad status line: {status_line[:80]!r}")
        try:
            status = int(parts[1])
        except ValueError:
            raise ProtocolError(f"bad status code: {status_line[:80]!r}") from None
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise ProtocolError(f"bad header line: {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
        keep_alive = parts[0] != b"HTTP/1.0"
        conn_hdr = headers.get(b"connection", b"").lower()
        if b"close" in conn_hdr:
            keep_alive = False
        elif b"keep-alive" in conn_hdr:
            keep_alive = True
        # --- body ----------------------------------------------------------------------
        te = headers.get(b"transfer-encoding", b"").lower()
        if status in (204, 304) or 100 <= status < 200:
            body = b""
        elif b"chunked" in te:
            body = await self._read_chunked(want_body)
        elif b"content-length" in headers:
            try:
                length = int(headers[b"content-length"])
            except ValueError:
                raise ProtocolError("bad content-length") from None
            if want_body:
                body = await self._read_exactly(length)
            else:
                await self._discard(length)
                body = b""
        else:
            # Body delimited by connection close.
            chunks = [bytes(self.buf)]
            self.buf.clear()
            while True:
                data = await self.stream.receive_some(_RECV_SIZE)
                if not data:
                    break
                chunks.append(data)
            body = b"".join(chunks)
            keep_alive = False
        return HTTPResponse(status, headers, body, keep_alive)

    async def _read_chunked(self, want_body: bool) -> bytes:
        chunks: list[bytes] = []
        while True:
            size_line = await self._read_line()
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size: {size_line[:40]!r}") from None
            if size == 0:
                # Trailers, up to the empty line.
                while await self._read_line():
                    pass
                return b"".join(chunks)
            if want_body:
                data = await self._read_exactly(size + 2)
                if data[-2:] != _CRLF:
                    raise ProtocolError("chunk not terminated by CRLF")
                chunks.append(data[:-2])
            else:
                await self._discard(size)
                if await self._read_exactly(2) != _CRLF:
                    raise ProtocolError("chunk not terminated by CRLF")

    async def aclose(self) -> None:
        await self.stream.aclose()


async def http_get(
    host: str, port: int, path_and_query: str, *, time_limit: float = 30.0
) -> HTTPResponse:
    """One ``GET`` on a fresh connection (for health checks and sanity checks)."""
    with trio.fail_after(time_limit):
        stream = await trio.open_tcp_stream(host, port)
        conn = _Conn(stream)
        try:
            return await conn.request(build_request(host, port, path_and_query, close=True))
        finally:
            await conn.aclose()


def _percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list (``pct`` in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


async def run_load(
    host: str,
    port: int,
    path_and_query: str,
    *,
    connections: int = 8,
    duration: float = 10.0,
    warmup: float = 2.0,
    max_requests: int | None = None,
    grace: float = 5.0,
) -> dict[str, Any]:
    """Closed-loop load on ``connections`` keep-alive connections, one request in flight each.

    Returns ``{"requests", "errors", "non_2xx", "rps", "p50_ms", "p99_ms", "max_ms",
    "duration_s"}`` (plus ``"mean_ms"`` and ``"statuses"``) for the requests *started* after
    the warm-up. ``requests`` counts completed responses of any status; ``non_2xx`` is the
    subset with a status outside 200-299; ``errors`` counts connection failures, protocol
    errors and requests cancelled at the end of the grace period. ``max_requests`` caps the
    number of measured requests (the run stops early when it is reached). ``duration_s`` is
    the measurement window: from the end of the warm-up to the last measured completion (at
    least ``duration`` unless stopped by ``max_requests``).
    """
    if connections < 1:
        raise ValueError("connections must be >= 1")
    if duration <= 0 or warmup < 0:
        raise ValueError("duration must be > 0 and warmup >= 0")
    raw = build_request(host, port, path_and_query)
    clock = time.perf_counter

    latencies: list[float] = []
    record = latencies.append
    statuses: dict[int, int] = {}
    counters = {"errors": 0, "non_2xx": 0, "started": 0, "inflight": 0}
    cap = max_requests if max_requests is not None else math.inf

    t_start = clock()
    t_measure = t_start + warmup
    t_end = t_measure + duration
    last_done = t_measure
    stop = trio.Event()

    async def worker() -> None:
        nonlocal last_done
        conn: _Conn | None = None
        try:
            while not stop.is_set():
                now = clock()
                if now >= t_end:
                    return
                measured = now >= t_measure
                if measured:
                    if counters["started"] >= cap:
                        stop.set()
                        return
                    counters["started"] += 1
                counters["inflight"] += 1
                try:
                    if conn is None:
                        conn = _Conn(await trio.open_tcp_stream(host, port))
                    t0 = clock()
                    resp = await conn.request(raw, want_body=False)
                    t1 = clock()
                except (OSError, trio.BrokenResourceError, ProtocolError):
                    counters["inflight"] -= 1
                    if measured:
                        counters["errors"] += 1
                    if conn is not None:
                        with trio.move_on_after(1):
                            await conn.aclose()
                        conn = None
                    await trio.sleep(0.01)  # do not spin on a dead server
                    continue
                counters["inflight"] -= 1
                if measured:
                    record(t1 - t0)
                    if t1 > last_done:
                        last_done = t1
                    st = resp.status
                    statuses[st] = statuses.get(st, 0) + 1
                    if not 200 <= st < 300:
                        counters["non_2xx"] += 1
                if not resp.keep_alive:
                    await conn.aclose()
                    conn = None
        finally:
            if conn is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await conn.aclose()

    # trio's clock is not perf_counter: express the hard deadline relative to now.
    with trio.move_on_after(warmup + duration + grace) as scope:
        async with trio.open_nursery() as nursery:
            for _ in range(connections):
                nursery.start_soon(worker)
    if scope.cancelled_caught:
        # Requests still in flight after the grace period (a stuck server): count them as
        # errors, including those started during the warm-up.
        counters["errors"] += counters["inflight"]

    n = len(latencies)
    window = max(last_done - t_measure, 1e-9) if n else duration
    if not stop.is_set():
        window = max(window, min(duration, clock() - t_measure))
    latencies.sort()
    return {
        "requests": n,
        "errors": counters["errors"],
        "non_2xx": counters["non_2xx"],
        "rps": round(n / window, 2) if n else 0.0,
        "p50_ms": round(_percentile(latencies, 50) * 1000, 3) if n else None,
        "p99_ms": round(_percentile(latencies, 99) * 1000, 3) if n else None,
        "max_ms": round(latencies[-1] * 1000, 3) if n else None,
        "mean_ms": round(sum(latencies) / n * 1000, 3) if n else None,
        "duration_s": round(window, 3),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }
