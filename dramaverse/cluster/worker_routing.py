"""Socket.IO across worker processes: a sid names its worker, and its requests go there.

With ``serve --workers N`` (docs/scaling.md) an Engine.IO session lives in the worker that
created it, while the kernel hands every new connection on the shared port to whichever worker
accepts first. A long-polling client sends a stream of short requests (a GET waiting for
packets, a POST per batch of packets), often on new connections, and its WebSocket upgrade is a
new connection too: without help, most of them would land on a worker that does not know the
session. So:

**Sids name their worker.** A worker's sids are ``w<I>.`` followed by the 20 random characters
(:func:`sid_prefix`, installed as ``EngineServer.sid_prefix``). :func:`sid_owner` reads the
tag back strictly: ``w``, a worker index without leading zeros below ``MAX_WORKERS``, a dot.
Anything else (no tag, ``w64.``, ``w01.``, ``w../``) names no worker and is served where it
arrived, where it is just an unknown sid. The index only ever selects
``<WORKER_SOCKET_DIR>/<I>.sock``: a sid cannot be made into a path.

**The router relays.** :class:`WorkerRouter` is raw ASGI in front of each worker's app. A
request on ``SOCKET_IO_PATH`` that arrived on the shared port and whose sid names another
worker is passed to that worker's private Unix socket:

* HTTP (polling GET and POST, a preflight that carries a sid, anything else with a sid) is
  forwarded with httpx over a pool of keep-alive connections per target worker (a request with
  a body gets a connection of its own: the owner may answer before reading the body, and
  Hypercorn cannot then reuse that connection), and the answer (status, headers including CORS
  and Content-Type, body) is relayed unchanged. The owner's ``X-Dramaverse-Worker`` comes
  first, the relay's own follows: ``1, 0`` reads "served by 1, relayed by 0". The body is read
  up to ``maxPayload`` + 1 bytes, so a POST that is too large reaches the owner still too large
  and the owner answers it as always (413, the session ends).
  A long-poll GET may wait a whole ping period: the forward's timeout is
  ``SOCKET_IO_PING_INTERVAL`` + ``SOCKET_IO_PING_TIMEOUT`` + 5 s.
* A WebSocket (the upgrade from polling) is accepted here and relayed frame by frame to a
  WebSocket opened to the owner with the same target and headers (``ws_relay.py``), until
  either side closes; the owner's close code and reason reach the client, and so does its
  refusal of the upgrade (status, headers, body). One that vanishes closes the client's with
  1001, one that breaks the WebSocket protocol with 1011 (both: reconnect).

When the owner cannot be reached (its socket is missing or refuses, it hangs up, it times out),
the client gets Engine.IO's ``400 {"code":1,"message":"Session ID unknown"}``, never a 500, for
a polling request and for an upgrade alike: the session is gone with its worker, and
socket.io-client reconnects on that answer.

**No loops, no forged addresses.** Only requests that arrived on the shared port are routed; a
request on a private socket is always served there, so a relayed request is never relayed
again. The relay tells the owner the client's address in ``X-Dramaverse-Client``
(``ip:port``); a worker believes that header only on its private socket (the directory is mode
0700: only the server's own user can connect), where it replaces the ASGI ``client`` for
everything downstream, including the access log and rate limits. From the network it is
ignored, and the relay drops any copy the client sent before adding its own.

Resource handling: :meth:`WorkerRouter.run` (started in the root nursery by the runtime) owns
the connection pools and closes them when cancelled. On shutdown it ends every relayed poll
with a noop (``6``: the client simply polls again, on a worker that is not stopping) and closes
every relayed WebSocket with 1001 (the client reconnects), so a stopping worker does not wait
for the owners' long polls. Each relayed request is otherwise owned by its ASGI task.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import re
from urllib.parse import parse_qsl

import httpx
import trio
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGISendCallable,
    HTTPScope,
    Scope,
    WebsocketScope,
)

from dramaverse.cluster.ws_relay import OwnerLost, Rejected, Unrelayable, Upstream, pump
from dramaverse.config import MAX_WORKERS, Settings
from dramaverse.domain.close_codes import CloseCode
from dramaverse.http.security import SECURITY_HEADERS, CorsPolicy
from dramaverse.realtime.engineio import (
    MAX_SID_LENGTH,
    NOOP,
    SHUTTING_DOWN,
    TEXT_TYPE,
    UNKNOWN_SID,
    EngineConfig,
    EngineError,
    grant_headers,
)

log = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]
Receive = ASGIReceiveCallable
Send = ASGISendCallable

CLIENT_HEADER = b"x-dramaverse-client"
CONNECT_TIMEOUT = 5.0
TIMEOUT_MARGIN = 5.0
CLOSE_TIMEOUT = 1.0
POOL_KEEPALIVE = 8  # idle connections kept per target worker; busy ones are not limited
# Below Hypercorn's 5 s keep-alive timeout: we drop an idle connection before the owner does,
# so a request is never written into a connection the owner is closing at that moment.
KEEPALIVE_EXPIRY = 2.0

_TAG = re.compile(r"w(0|[1-9][0-9]?)\.")
_REQUEST_DROP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"expect",
        CLIENT_HEADER,
    }
)
_UPGRADE_DROP = _REQUEST_DROP | {
    b"host",
    b"sec-websocket-key",
    b"sec-websocket-version",
    b"sec-websocket-extensions",
    b"sec-websocket-protocol",
}
# The relay's server adds its own Date; framing is ours.
_RESPONSE_DROP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"date", b"server"}
)
_SECURITY = [(name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS]


# -- sids --------------------------------------------------------------------------------------


def sid_prefix(worker_id: int | None) -> str:
    """The tag that starts every sid of worker ``worker_id`` (empty in a single process)."""
    if worker_id is None:
        return ""
    if not 0 <= worker_id < MAX_WORKERS:
        raise ValueError(f"worker id {worker_id} is not from 0 to {MAX_WORKERS - 1}")
    return f"w{worker_id}."


def sid_owner(sid: str) -> int | None:
    """The worker a sid names, or None when it has no valid tag."""
    if len(sid) > MAX_SID_LENGTH:
        return None
    match = _TAG.match(sid)
    if match is None:
        return None
    worker = int(match.group(1))
    return worker if worker < MAX_WORKERS else None


def query_sid(query_string: bytes) -> str | None:
    """The first ``sid`` of a query string, decoded as Quart decodes ``request.args``."""
    if b"sid=" not in query_string:
        return None
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name == "sid":
            return value
    return None


# -- the client's address ----------------------------------------------------------------------


def format_client(client: tuple[str, int]) -> bytes:
    host, port = client
    return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode("ascii")


def parse_client(value: bytes) -> tuple[str, int] | None:
    """``ip:port`` or ``[ipv6]:port`` from :data:`CLIENT_HEADER`; None when malformed."""
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    host, colon, port = text.rpartition(":")
    if not colon or not (port.isdigit() and len(port) <= 5) or int(port) > 65535:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return host, int(port)


def _header(scope: HTTPScope | WebsocketScope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _relayed_headers(scope: HTTPScope | WebsocketScope, drop: frozenset[bytes]) -> Headers:
    headers = [(name, value) for name, value in scope["headers"] if name not in drop]
    client = scope["client"]
    if client is not None:
        headers.append((CLIENT_HEADER, format_client(client)))
    return headers


def _kept_headers(headers: Headers) -> Headers:
    """The owner's response headers that a relayed answer carries."""
    return [(name.lower(), value) for name, value in headers if name.lower() not in _RESPONSE_DROP]


def _response_headers(headers: Headers, body: bytes) -> Headers:
    return [*_kept_headers(headers), (b"content-length", str(len(body)).encode())]


# -- the router --------------------------------------------------------------------------------


class WorkerRouter:
    """Raw ASGI in front of a worker's app: relays Engine.IO requests to their session's worker.

    See the module docstring. Everything that is not routed goes to ``app`` untouched; the only
    per-request work on other paths is one comparison of the path.
    """

    def __init__(self, app: ASGIFramework, settings: Settings, shutdown: trio.Event) -> None:
        if settings.worker_id is None:
            raise ValueError("the worker router needs settings.worker_id")
        self._app = app
        self._settings = settings
        self._worker_id = settings.worker_id
        self._path = settings.socket_io_path
        self._shutdown = shutdown
        self._cors = CorsPolicy(settings.cors_allowed_origins)
        self._body_limit = EngineConfig.from_settings(settings).max_payload + 1
        self._drain_limit = settings.max_body_bytes
        poll_wait = settings.socket_io_ping_interval + settings.socket_io_ping_timeout
        self._timeout = {
            "connect": CONNECT_TIMEOUT,
            "read": poll_wait + TIMEOUT_MARGIN,
            "write": CONNECT_TIMEOUT,
            "pool": CONNECT_TIMEOUT,
        }
        self._pools: dict[int, httpx.AsyncHTTPTransport] = {}
        self._relays: set[trio.CancelScope] = set()  # pending relayed GETs and WebSockets
        self.closing = False

    async def run(
        self, *, task_status: trio.TaskStatus[WorkerRouter] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the connection pools; on shutdown end the relays (see the module docstring)."""
        try:
            task_status.started(self)
            await self._shutdown.wait()
            self.closing = True
            for relay in list(self._relays):
                relay.cancel()
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                for pool in self._pools.values():
                    await pool.aclose()

    def socket_path(self, worker: int) -> str:
        return str(dataclasses.replace(self._settings, worker_id=worker).worker_socket_path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._app(scope, receive, send)
            return
        if scope["server"] is None:  # a Unix socket: our private one
            _restore_client(scope)
        elif scope["path"] == self._path:
            sid = query_sid(scope["query_string"])
            owner = None if sid is None else sid_owner(sid)
            if owner is not None and owner != self._worker_id:
                if scope["type"] == "http":
                    await self._forward(owner, scope, receive, send)
                else:
                    await self._relay_websocket(owner, scope, receive, send)
                return
        await self._app(scope, receive, send)

    # -- HTTP --------------------------------------------------------------------------------

    def _pool(self, worker: int) -> httpx.AsyncHTTPTransport:
        pool = self._pools.get(worker)
        if pool is None:
            limits = httpx.Limits(
                max_connections=None,
                max_keepalive_connections=POOL_KEEPALIVE,
                keepalive_expiry=KEEPALIVE_EXPIRY,
            )
            # Plain HTTP on a Unix socket: verify=False only spares loading a CA bundle.
            pool = httpx.AsyncHTTPTransport(
                uds=self.socket_path(worker), limits=limits, verify=False
            )
            self._pools[worker] = pool
        return pool

    async def _forward(self, owner: int, scope: HTTPScope, receive: Receive, send: Send) -> None:
        origin = _header(scope, b"origin")
        client = _ClientSide(receive)
        body = await client.read_body(self._body_limit)
        if client.gone:
            return
        query = scope["query_string"].decode("latin-1")
        headers = _relayed_headers(scope, _REQUEST_DROP)
        if body:
            # The owner may answer before reading the body (unknown sid, payload too large),
            # and then its end of the connection cannot be trusted with another request.
            headers.append((b"connection", b"close"))
        request = httpx.Request(
            scope["method"],
            f"http://worker{self._path}?{query}",
            headers=headers,
            content=body,
            extensions={"timeout": self._timeout},
        )
        answer: tuple[int, Headers, bytes] | None = None
        failed = False
        with trio.CancelScope() as relay:
            if scope["method"] == "GET":  # a long poll: shutdown ends it (run)
                self._relays.add(relay)
                if self.closing:
                    relay.cancel()
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(client.watch, nursery.cancel_scope)
                    try:
                        answer = await self._exchange(owner, request)
                    except httpx.TransportError as exc:
                        log.info("relaying a Socket.IO request to worker %d failed: %r", owner, exc)
                        failed = True
                    nursery.cancel_scope.cancel()
            finally:
                self._relays.discard(relay)
        if answer is not None:
            status, headers, content = answer
            await _respond(send, status, _response_headers(headers, content), content)
        elif relay.cancelled_caught:  # shutting down: the client polls again elsewhere
            noop = NOOP.encode()
            await _respond(send, 200, self._local_headers(TEXT_TYPE, noop, origin), noop)
        elif failed:
            await self._refuse(send, UNKNOWN_SID, origin)
        else:
            return  # the client disconnected: nothing to answer
        with trio.move_on_after(CONNECT_TIMEOUT):
            await client.drain(self._drain_limit)

    async def _exchange(self, owner: int, request: httpx.Request) -> tuple[int, Headers, bytes]:
        response = await self._pool(owner).handle_async_request(request)
        try:
            chunks = [chunk async for chunk in response.aiter_raw()]
        finally:
            await response.aclose()
        return response.status_code, list(response.headers.raw), b"".join(chunks)

    def _local_headers(self, content_type: str, body: bytes, origin: str | None) -> Headers:
        """The headers the app would give an answer of ours (security, CORS, framing)."""
        headers = [(b"content-type", content_type.encode()), *_SECURITY]
        if origin is not None and self._cors.allows(origin):
            headers += [(k.lower().encode(), v.encode("latin-1")) for k, v in grant_headers(origin)]
        headers.append((b"content-length", str(len(body)).encode()))
        return headers

    async def _refuse(self, send: Send, error: EngineError, origin: str | None) -> None:
        body = _error_body(error)
        headers = self._local_headers("application/json", body, origin)
        await _respond(send, error.status, headers, body)

    # -- WebSocket ---------------------------------------------------------------------------

    async def _relay_websocket(
        self, owner: int, scope: WebsocketScope, receive: Receive, send: Send
    ) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        origin = _header(scope, b"origin")
        if self.closing:
            await self._refuse_upgrade(send, SHUTTING_DOWN, origin)
            return
        target = scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                upstream = await Upstream.connect(
                    self.socket_path(owner),
                    _header(scope, b"host") or "worker",
                    target,
                    _relayed_headers(scope, _UPGRADE_DROP),
                    list(scope["subprotocols"]),
                )
        except Rejected as rejected:
            headers = _response_headers(rejected.headers, rejected.body)
            await _deny(send, rejected.status, headers, rejected.body)
            return
        except (OSError, OwnerLost, Unrelayable, trio.TooSlowError) as exc:
            log.info("relaying a Socket.IO WebSocket to worker %d failed: %r", owner, exc)
            await self._refuse_upgrade(send, UNKNOWN_SID, origin)
            return
        try:
            await send(
                {
                    "type": "websocket.accept",
                    "subprotocol": upstream.subprotocol,
                    "headers": _kept_headers(upstream.headers),
                }
            )
            with trio.CancelScope() as relay:
                self._relays.add(relay)
                if self.closing:
                    relay.cancel()
                try:
                    await pump(upstream, receive, send)
                finally:
                    self._relays.discard(relay)
            if relay.cancelled_caught:  # shutting down: both sides are told to reconnect
                with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                    await upstream.close(CloseCode.GOING_AWAY, "server shutting down")
                    await send(
                        {
                            "type": "websocket.close",
                            "code": CloseCode.GOING_AWAY,
                            "reason": "server shutting down",
                        }
                    )
        finally:
            await upstream.aclose()

    async def _refuse_upgrade(self, send: Send, error: EngineError, origin: str | None) -> None:
        body = _error_body(error)
        headers = self._local_headers("application/json", body, origin)
        await _deny(send, error.status, headers, body)


def _restore_client(scope: HTTPScope | WebsocketScope) -> None:
    """On our private socket, the relay's word for the client's address (in place, so that
    Hypercorn's access log sees it too)."""
    for name, value in scope["headers"]:
        if name == CLIENT_HEADER:
            client = parse_client(value)
            if client is not None:
                scope["client"] = client
            return


class _ClientSide:
    """The client's messages during a relayed HTTP request: the body, then a disconnect.

    Whatever of the body was not forwarded is read and dropped after the answer (up to
    ``MAX_BODY_BYTES``, as the app itself would): Hypercorn only reuses a keep-alive connection
    whose request body was read to the end.
    """

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.complete = False  # the whole body has been received
        self.gone = False  # the client disconnected

    async def _next(self) -> bytes:
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self.gone = True
            return b""
        if message["type"] != "http.request":
            return b""
        if not message.get("more_body", False):
            self.complete = True
        return message.get("body", b"")

    async def read_body(self, limit: int) -> bytes:
        """The body, cut at ``limit`` bytes."""
        chunks: list[bytes] = []
        size = 0
        while not (self.complete or self.gone) and size < limit:
            chunk = await self._next()
            chunks.append(chunk)
            size += len(chunk)
        body = b"".join(chunks)
        return body[:limit] if size > limit else body

    async def watch(self, scope: trio.CancelScope) -> None:
        """Cancel ``scope`` when the client disconnects."""
        while not self.gone:
            await self._next()
        scope.cancel()

    async def drain(self, limit: int) -> None:
        size = 0
        while not (self.complete or self.gone) and size <= limit:
            size += len(await self._next())


async def _respond(send: Send, status: int, headers: Headers, body: bytes) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": headers, "trailers": False}
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _deny(send: Send, status: int, headers: Headers, body: bytes) -> None:
    """Answer a WebSocket upgrade request with an HTTP response (ASGI's denial extension)."""
    await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body, "more_body": False})


def _error_body(error: EngineError) -> bytes:
    body = {"code": error.code, "message": error.message}
    return json.dumps(body, separators=(",", ":")).encode()
