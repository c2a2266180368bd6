"""The connection boundary: nothing one client sends can end the server's nursery.

Hypercorn runs every TCP connection as ``TCPServer.run`` in one nursery shared by all
connections, and lets anything but ``OSError`` out of it. An exception in its protocol layers
(wsproto decoding a header as ASCII, say) therefore ended every connection and the process: one
anonymous request was an outage (issue 12). :func:`run` wraps ``TCPServer.run`` so that an
exception from one connection is

- logged once, with the client's address and a traceback (tracebacks are rate-limited: an
  attacker repeating one request must not fill the disk; the rest are counted),
- answered when nothing has been answered yet on an HTTP/1.1 connection (a 500 with the API's
  JSON body and ``Connection: close``; :func:`guard_reads` around the read loop), and
- ends that connection only.

``trio.Cancelled`` is never caught: a server shutting down still stops.

It also makes Hypercorn's WebSocket handshake treat what a client controls as bytes until it is
validated (:class:`CheckedHandshake`): a ``Sec-WebSocket-Protocol`` or ``-Extensions`` value that
is not ASCII, or a ``Sec-WebSocket-Key`` that is not the base64 of 16 bytes (RFC 6455 §4.2.1),
makes the handshake invalid, which Hypercorn answers with 400.

:func:`dramaverse.server.fence.install` installs all three; on a Hypercorn it does not know, only
:func:`run`, the one that needs nothing of Hypercorn but "one call per connection".
"""

from __future__ import annotations

import binascii
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeGuard

import h11
import trio
from hypercorn.protocol import ws_stream
from hypercorn.trio.tcp_server import TCPServer

log = logging.getLogger(__name__)

TRACEBACKS_PER_MINUTE = 10
_SERVER_ERROR = (
    b"HTTP/1.1 500 Internal Server Error\r\n"
    b"content-type: application/json; charset=utf-8\r\n"
    b"content-length: 35\r\n"
    b"connection: close\r\n\r\n"
    b'{"message":"Internal Server Error"}'
)
_ORIGINAL_RUN = TCPServer.run


def valid_websocket_key(key: bytes | None) -> TypeGuard[bytes]:
    """RFC 6455: the key is the base64 encoding of 16 bytes (24 characters with padding)."""
    if key is None or len(key) != 24:
        return False
    try:
        return len(binascii.a2b_base64(key, strict_mode=True)) == 16
    except binascii.Error:
        return False


class CheckedHandshake(ws_stream.Handshake):
    """Hypercorn's handshake, invalid (hence 400) instead of raising on undecodable values."""

    def __init__(self, headers: list[tuple[bytes, bytes]], http_version: str) -> None:
        self.malformed = False
        try:
            super().__init__(headers, http_version)
        except UnicodeDecodeError:  # wsproto decodes comma-separated values as ASCII
            self.malformed = True
            self.subprotocols = self.extensions = None

    def is_valid(self) -> bool:
        if self.malformed or not valid_websocket_key(self.key):
            return False
        valid: bool = super().is_valid()
        return valid


class _TracebackBudget:
    """At most ``per_minute`` tracebacks a minute; the others are counted and summarised."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.window_start = -float("inf")
        self.spent = 0
        self.suppressed = 0

    def take(self) -> bool:
        now = trio.current_time()
        if now - self.window_start >= 60:
            if self.suppressed:
                log.error("%d more connection failures in the last minute", self.suppressed)
            self.window_start, self.spent, self.suppressed = now, 0, 0
        if self.spent < self.per_minute:
            self.spent += 1
            return True
        self.suppressed += 1
        return False


_budget = _TracebackBudget(TRACEBACKS_PER_MINUTE)


def _peer(server: TCPServer) -> str:
    try:
        stream: Any = server.stream
        socket = getattr(stream, "socket", None) or stream.transport_stream.socket
        return str(socket.getpeername())
    except (AttributeError, OSError):
        return "unknown peer"


def _nothing_answered(server: TCPServer) -> bool:
    """An HTTP/1.1 connection whose current request has had no response byte yet."""
    wrapper: Any = getattr(server, "protocol", None)
    connection = getattr(getattr(wrapper, "protocol", None), "connection", None)
    if not isinstance(connection, h11.Connection):
        return False
    return connection.our_state in (h11.IDLE, h11.SEND_RESPONSE) and (
        connection.their_state is not h11.IDLE
    )


async def _answer(server: TCPServer) -> None:
    """A 500 for the request in progress, when none of its response has been sent."""
    if not _nothing_answered(server):
        return
    gone = (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError)
    with trio.CancelScope(shield=True), trio.move_on_after(1), contextlib.suppress(*gone):
        await server.stream.send_all(_SERVER_ERROR)


def _report(peer: str, error: BaseException) -> None:
    if _budget.take():
        log.error(
            "connection from %s failed; closed it",
            peer,
            exc_info=(type(error), error, error.__traceback__),
        )


def guard_reads(read_data: Callable[[TCPServer], Awaitable[None]]) -> Any:
    """The read loop, answering 500 before a failure in the protocol layers leaves it."""

    async def guarded(self: TCPServer) -> None:
        try:
            await read_data(self)
        except Exception:
            await _answer(self)
            raise  # on to run: the connection's task group cancels its tasks on the way

    return guarded


async def run(self: TCPServer) -> None:
    """``TCPServer.run`` for one connection, whose failure ends that connection only."""
    peer = _peer(self)  # before the connection is closed on the way out
    try:
        await _ORIGINAL_RUN(self)
    except Exception as error:  # also an ExceptionGroup of errors only
        _report(peer, error)
    except BaseExceptionGroup as group:  # errors mixed with Cancelled: report, let Cancelled on
        errors, rest = group.split(Exception)
        if errors is not None:
            _report(peer, errors)
        if rest is not None:
            raise rest from None
