"""Engine.IO v4 sessions: HTTP long-polling, WebSocket, and the upgrade from one to the other.

An :class:`EngineSession` is one client connection as Engine.IO sees it: a sid, a transport, a
bounded outbox of encoded packets, a heartbeat, and a :class:`SessionHandler` (the Socket.IO
layer, ``socketio.py``) that receives the client's message packets. The transport changes under
the session without touching the outbox, so nothing queued is lost or reordered by an upgrade:

* polling: a GET takes everything queued (joined with the record separator ``\\x1e``) or waits
  for the first packet; a POST carries the client's packets. One GET and one POST at a time;
  a second concurrent GET closes the session (the protocol's rule: ordering would be lost).
* websocket: one text frame per packet; a writer task drains the outbox into the socket.
* upgrade: the client probes a WebSocket with ``2probe`` while polling goes on; we answer
  ``3probe`` and end the pending GET with a noop (``6``) so the client can pause polling; its
  ``5`` switches the session to the WebSocket, which drains the same outbox from then on. One
  WebSocket at a time may attempt it (:meth:`EngineSession.claim_upgrade`): another one for the
  same sid, during or after the upgrade, is accepted and closed at once (1002), as the reference
  server does.

A client's close packet (``1``) ends the session; a GET waiting at that moment gets a noop
(``6``), again as the reference server answers, and any later request gets ``Session ID unknown``.

The server pings (``2``) every ``ping_interval`` and closes a session whose pong (``3``) has
not come back within ``ping_timeout``. Any invalid packet closes the session (:class:`PacketError`,
close code 1002), as the reference server does on a parse error. Request errors have the
protocol's codes and JSON bodies (``{"code":1,"message":"Session ID unknown"}``, :data:`ERRORS`).
The endpoint (session table, requests, CORS) is ``engineio_server.py``.

Close codes (WebSocket close frames; for polling only logged): 1000 normal, 1001 server
shutting down or the client must reconnect, 1002 invalid packet or failed upgrade, 1009 message
larger than the announced ``maxPayload``, 1011 internal error, 4000 ping timeout, 4001 slow
consumer (outbox full). socket.io-client reconnects after any of them, except after an explicit
Socket.IO disconnect (``41``), which is a different thing.

Error handling: the session is the boundary for anything its client sends. A bug in the handler
(an exception other than PacketError, while a POST or a WebSocket frame is dispatched, or in
one of the session's tasks) is logged once with the sid and closes this session only: the POST
gets 500 ``{"code":3,"message":"Internal server error"}``, a WebSocket the close code 1011.

Resource handling: a session runs in the endpoint's nursery (heartbeat plus the handler's tasks)
until ``close``. It owns its outbox: ``close`` closes the send side, which ends the WebSocket
writer, and wakes a waiting GET. ``close`` never blocks and the first caller's reason wins.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio
from quart import Response

from dramaverse.config import Settings
from dramaverse.domain.close_codes import CloseCode
from dramaverse.http.cookies import SocketCookie

log = logging.getLogger(__name__)

PROTOCOL_VERSION = "4"
OPEN, CLOSE, PING, PONG, MESSAGE, UPGRADE, NOOP = "0", "1", "2", "3", "4", "5", "6"
SEPARATOR = "\x1e"
RECONNECT = "\x00reconnect"
"""Queue this (the object itself) to make the client reconnect: the transport is closed when the
packet reaches the front of the outbox, after everything queued before it was sent."""

UPGRADE_TIMEOUT = 10.0
MAX_SID_LENGTH = 64
CORS_METHODS = "GET,POST,OPTIONS"
CORS_HEADERS = "Content-Type,Authorization"
TEXT_TYPE = "text/plain; charset=UTF-8"


@dataclass(frozen=True, slots=True)
class EngineError:
    """One of the protocol's request errors: HTTP status and the ``{code, message}`` body."""

    code: int
    status: int
    message: str

    def response(self, origin: str | None = None) -> Response:
        body = json.dumps({"code": self.code, "message": self.message}, separators=(",", ":"))
        response = Response(body, self.status, content_type="application/json")
        if origin is not None:
            response.headers.extend(grant_headers(origin))
        return response


TRANSPORT_UNKNOWN = EngineError(0, 400, "Transport unknown")
UNKNOWN_SID = EngineError(1, 400, "Session ID unknown")
BAD_HANDSHAKE_METHOD = EngineError(2, 400, "Bad handshake method")
BAD_REQUEST = EngineError(3, 400, "Bad request")
FORBIDDEN = EngineError(4, 403, "Forbidden")
UNSUPPORTED_PROTOCOL_VERSION = EngineError(5, 400, "Unsupported protocol version")
PAYLOAD_TOO_LARGE = EngineError(3, 413, "Payload too large")
SHUTTING_DOWN = EngineError(3, 503, "Server is shutting down")
INTERNAL_ERROR = EngineError(3, 500, "Internal server error")
ERRORS = (
    TRANSPORT_UNKNOWN,
    UNKNOWN_SID,
    BAD_HANDSHAKE_METHOD,
    BAD_REQUEST,
    FORBIDDEN,
    UNSUPPORTED_PROTOCOL_VERSION,
)


class RequestRefused(Exception):
    """A request the protocol refuses; answered with ``error``'s status and body."""

    def __init__(self, error: EngineError) -> None:
        super().__init__(error.message)
        self.error = error


class PacketError(Exception):
    """A packet (Engine.IO or the handler's) the server does not accept: the session closes."""


class SessionHandler(Protocol):
    """What a session delivers the client's messages to (the Socket.IO layer)."""

    def on_message(self, data: str) -> None:
        """A text message from the client. Must not block; raise PacketError to close."""

    def on_binary(self, data: bytes) -> None:
        """A binary message from the client. Must not block; raise PacketError to close."""

    async def run(self) -> None:
        """Runs in the session's nursery for the session's life (cancelled at close)."""


@dataclass(frozen=True, slots=True)
class EngineConfig:
    path: str
    ping_interval: float
    ping_timeout: float
    max_payload: int
    outbox_size: int
    trust_proxy: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineConfig:
        # One limit for every way a client can send: the POST body limit of the whole app and
        # Hypercorn's WebSocket frame limit apply before ours, so announce the smallest.
        max_payload = min(
            settings.socket_io_max_payload, settings.max_body_bytes, settings.ws_max_message_bytes
        )
        return cls(
            path=settings.socket_io_path,
            ping_interval=settings.socket_io_ping_interval,
            ping_timeout=settings.socket_io_ping_timeout,
            max_payload=max_payload,
            outbox_size=settings.ws_outbox_size,
            trust_proxy=settings.trust_proxy,
        )


class Transport(enum.Enum):
    """Session states; :meth:`EngineSession._move` refuses any transition not listed here."""

    POLLING = "polling"
    UPGRADING = "upgrading"
    WEBSOCKET = "websocket"
    CLOSED = "closed"


_TRANSITIONS = {
    Transport.POLLING: {Transport.UPGRADING, Transport.CLOSED},
    Transport.UPGRADING: {Transport.POLLING, Transport.WEBSOCKET, Transport.CLOSED},
    Transport.WEBSOCKET: {Transport.CLOSED},
    Transport.CLOSED: set(),
}


def grant_headers(origin: str) -> list[tuple[str, str]]:
    return [
        ("Access-Control-Allow-Origin", origin),
        ("Access-Control-Allow-Credentials", "true"),
        ("Vary", "Origin"),
    ]


class EngineSession:
    """One Engine.IO session. Created by :meth:`EngineServer.open_session`."""

    def __init__(
        self,
        config: EngineConfig,
        sid: str,
        transport: Transport,
        address: str,
        on_close: Callable[[EngineSession], None],
    ) -> None:
        self.sid = sid
        self.address = address
        self.transport = transport
        self.close_reason: str | None = None
        self.close_code: int = CloseCode.NORMAL
        self.closed = trio.Event()
        self.handler: SessionHandler | None = None
        self.nursery: trio.Nursery | None = None
        # The handshake's auth cookie, for a Socket.IO CONNECT without a token (socketio.py).
        self.cookie: SocketCookie | None = None
        self._config = config
        self._on_close = on_close
        self.outbox, self._receive = trio.open_memory_channel[str](config.outbox_size)
        self._scope = trio.CancelScope()
        self._poll_scope: trio.CancelScope | None = None
        self._posting = False
        self._upgrade_claimed = False  # a WebSocket is bound to this session's upgrade
        self._closed_by_client = False
        self._last_pong = trio.current_time()

    # -- life cycle ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Heartbeat and handler until :meth:`close`; runs in the server's nursery.

        Error handling: a crash of the handler's tasks ends this session (1011), never the
        server's nursery and so never the other sessions.
        """
        assert self.handler is not None
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    self.nursery = nursery
                    task_status.started()
                    nursery.start_soon(self._heartbeat)
                    await self.handler.run()
                    self.close("handler finished")
        except Exception:
            log.exception("engine.io session %s crashed", self.sid)
            self.close("internal error", CloseCode.INTERNAL_ERROR)
        finally:
            self.close("session ended")

    def close(self, reason: str, code: int = CloseCode.NORMAL) -> None:
        """End the session; the first caller's reason and code win. Never blocks."""
        if self.transport is Transport.CLOSED:
            return
        self.transport = Transport.CLOSED
        self.close_reason = reason
        self.close_code = code
        log.debug("engine.io session %s closed: %s", self.sid, reason)
        self._on_close(self)
        self.outbox.close()
        self._scope.cancel()
        if self._poll_scope is not None:
            self._poll_scope.cancel()
        self.closed.set()

    @property
    def poll_waiting(self) -> bool:
        """A GET is waiting for something to send."""
        return self._poll_scope is not None

    def _move(self, target: Transport) -> None:
        if target not in _TRANSITIONS[self.transport]:
            raise RuntimeError(f"engine.io session: {self.transport.name} -> {target.name}")
        self.transport = target

    def push(self, packet: str) -> None:
        """Queue an encoded packet; a full outbox closes the session as a slow consumer."""
        try:
            self.outbox.send_nowait(packet)
        except trio.WouldBlock:
            self.close("slow consumer: outbox full", CloseCode.SLOW_CONSUMER)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # closed: nothing more goes out

    async def _heartbeat(self) -> None:
        """Ping on an absolute schedule; close when the pong is later than ``ping_timeout``."""
        interval = self._config.ping_interval
        timeout = self._config.ping_timeout
        next_ping = trio.current_time() + interval
        while True:
            await trio.sleep_until(next_ping)
            sent_at = trio.current_time()
            self.push(PING)
            next_ping = sent_at + max(interval, timeout)
            await trio.sleep(timeout)
            if self._last_pong < sent_at:
                self.close("ping timeout", CloseCode.HEARTBEAT_TIMEOUT)
                return

    # -- packets from the client -----------------------------------------------------------

    def receive_packet(self, packet: str) -> None:
        """Dispatch one Engine.IO packet from the client; raise PacketError when invalid."""
        kind = packet[:1]
        if kind == MESSAGE:
            assert self.handler is not None
            self.handler.on_message(packet[1:])
        elif kind == PONG:
            self._last_pong = trio.current_time()
        elif kind == "b":  # base64 binary message, the polling transport's way
            try:
                data = base64.b64decode(packet[1:], validate=True)
            except (binascii.Error, ValueError):
                raise PacketError("invalid base64 binary packet") from None
            assert self.handler is not None
            self.handler.on_binary(data)
        elif kind == NOOP:
            pass
        elif kind == CLOSE:
            self._closed_by_client = True
            self.close("closed by the client")
        elif kind == PING:
            raise PacketError("invalid heartbeat direction (the server pings)")
        else:
            raise PacketError(f"unexpected engine.io packet type {kind!r}")

    def receive_binary(self, data: bytes) -> None:
        assert self.handler is not None
        self.handler.on_binary(data)

    def receive_payload(self, body: bytes) -> None:
        """A POST body: packets separated by ``\\x1e``; raise PacketError when invalid."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise PacketError("payload is not UTF-8") from None
        for packet in text.split(SEPARATOR):
            if self.transport is Transport.CLOSED:
                return
            self.receive_packet(packet)

    # -- polling ---------------------------------------------------------------------------

    async def poll(self) -> str:
        """Answer a GET: everything queued, waiting for the first packet if there is none."""
        if self.transport is Transport.WEBSOCKET:
            raise RequestRefused(BAD_REQUEST)  # upgraded: polling requests are over
        if self._poll_scope is not None:
            self.close("overlapping GET requests")
            raise RequestRefused(BAD_REQUEST)
        packets: list[str] = []
        if self.transport is Transport.POLLING:
            with trio.CancelScope() as scope:
                self._poll_scope = scope
                try:
                    packets.append(await self._receive.receive())
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    pass
                finally:
                    self._poll_scope = None
        while True:
            try:
                packets.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        if RECONNECT in packets:
            packets = packets[: packets.index(RECONNECT)]
            self.close("reconnect requested", CloseCode.GOING_AWAY)
        if self.transport is Transport.CLOSED and not self._closed_by_client:
            packets.append(CLOSE)  # the client closed: it needs no close packet, only an answer
        return SEPARATOR.join(packets) if packets else NOOP

    async def post(self, read_body: Callable[[], Awaitable[bytes]]) -> None:
        """Answer a POST: read the body and dispatch its packets."""
        if self.transport is Transport.WEBSOCKET:
            raise RequestRefused(BAD_REQUEST)
        if self._posting:
            self.close("overlapping POST requests")
            raise RequestRefused(BAD_REQUEST)
        self._posting = True
        try:
            body = await read_body()
        except RequestRefused:
            self.close("payload too large")
            raise
        finally:
            self._posting = False
        if len(body) > self._config.max_payload:
            self.close("payload too large")
            raise RequestRefused(PAYLOAD_TOO_LARGE)
        try:
            self.receive_payload(body)
        except PacketError as exc:
            log.info("engine.io session %s from %s: %s", self.sid, self.address, exc)
            self.close(f"parse error: {exc}", CloseCode.PROTOCOL_ERROR)
            raise RequestRefused(BAD_REQUEST) from None
        except Exception:
            self._crashed()
            raise RequestRefused(INTERNAL_ERROR) from None

    # -- upgrade and websocket -------------------------------------------------------------

    def claim_upgrade(self) -> bool:
        """Bind the upgrade to one WebSocket; False if another one has it or it is over."""
        if self.transport is not Transport.POLLING or self._upgrade_claimed:
            return False
        self._upgrade_claimed = True
        return True

    def begin_upgrade(self) -> None:
        """The probe succeeded: end the pending GET so the client can pause polling."""
        self._move(Transport.UPGRADING)
        if self._poll_scope is not None:
            self._poll_scope.cancel()

    def abort_upgrade(self) -> None:
        """The claimed upgrade failed: polling goes on, and another WebSocket may try."""
        self._upgrade_claimed = False
        if self.transport is Transport.UPGRADING:
            self._move(Transport.POLLING)

    def complete_upgrade(self) -> bool:
        """Switch to the WebSocket; False if the session closed while the client paused."""
        if self.transport is not Transport.UPGRADING:
            return False
        self._move(Transport.WEBSOCKET)
        if self._poll_scope is not None:
            self._poll_scope.cancel()
        return True

    async def serve_websocket(self, ws: Any) -> None:
        """Pump packets both ways on ``ws`` until the session closes."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._ws_writer, ws)
            nursery.start_soon(self._ws_reader, ws)
            await self.closed.wait()
            nursery.cancel_scope.cancel()

    async def _ws_writer(self, ws: Any) -> None:
        async for packet in self._receive:
            if packet is RECONNECT:
                self.close("reconnect requested", CloseCode.GOING_AWAY)
                return
            await ws.send(packet)

    async def _ws_reader(self, ws: Any) -> None:
        max_payload = self._config.max_payload
        while True:
            data = await ws.receive()
            try:
                if isinstance(data, str):
                    if len(data) > max_payload:
                        self.close("message too large", CloseCode.TOO_BIG)
                        return
                    self.receive_packet(data)
                else:
                    if len(data) > max_payload:
                        self.close("message too large", CloseCode.TOO_BIG)
                        return
                    self.receive_binary(data)
            except PacketError as exc:
                log.info("engine.io session %s from %s: %s", self.sid, self.address, exc)
                self.close(f"parse error: {exc}", CloseCode.PROTOCOL_ERROR)
                return
            except Exception:
                self._crashed()
                return

    def _crashed(self) -> None:
        """A bug in the handler of a client's packet: log it once and end this session only."""
        log.exception("engine.io session %s from %s: handler crashed", self.sid, self.address)
        self.close("internal error", CloseCode.INTERNAL_ERROR)
