"""WebSocket connections served straight on the socket, for the paths the application claims.

A frame through Hypercorn crosses its HTTP/1.1 protocol object, its WebSocket stream, wsproto's
parser and serializer, an ASGI queue between two tasks and a send lock: about 120 µs of server
CPU per frame in and frame out, most of it in those layers rather than in the system calls
(``bench.ws_roundtrip_bench``). For the native socket, where every watch-party member sends and
receives a frame or more a second, this module is a small ASGI WebSocket server of its own:

- :func:`sniff` looks at the first bytes of a new connection. When they are a complete HTTP/1.1
  ``GET`` upgrade to a claimed path (:func:`claim_paths`) with a valid WebSocket handshake, the
  connection is served here; anything else, and anything unusual (a split path, a percent-encoded
  one, HTTP/1.0, a request after others on a keep-alive connection, TLS with HTTP/2, configured
  ``server_names``) goes to Hypercorn exactly as before, bytes unchanged. Both paths run the same
  ASGI application with the same scope, so the protocol above them is one implementation.
- :class:`DirectWebSocket` is the connection: the ASGI ``receive`` reads the socket and parses
  RFC 6455 frames in the caller's task (no queue, no second task), ``send`` writes a frame with
  one system call.

The RFC 6455 rules are not written here: they are the ``websockets`` package's sans-I/O
:class:`~websockets.protocol.Protocol` (framing, masking, permessage-deflate, the closing
handshake), fed the bytes this module reads and asked for the bytes it writes; this module keeps
the I/O, the tasks, the handshake answer and the ASGI side, whose phases are :class:`Phase` with
a transition table (a move it does not list raises :class:`IllegalTransition`).

What it enforces: client frames masked; no reserved bits except RSV1 on the
first frame of a compressed message when permessage-deflate was negotiated; known opcodes;
control frames unfragmented and at most 125 bytes; continuation frames only inside a message;
text valid UTF-8 (1007); close codes valid (1002); messages at most
``config.websocket_max_message_size`` bytes, compressed or inflated (1009, checked before the
bytes are buffered or inflated; corrupt compressed data is 1007 too, where websockets alone would
say 1002). A ping is answered with a pong carrying its payload, a close is
answered with the same code.

permessage-deflate is negotiated without context takeover (as ``compression.py`` makes Hypercorn
do); inbound compressed messages are inflated, outbound messages are compressed from
:data:`COMPRESS_MIN_BYTES` on (smaller ones compress to about their own size, so they go out
plain, which RFC 7692 allows per message).

Writes never leave half a frame on the wire: a frame the kernel does not take at once is
finished shielded from cancellation, within :data:`SEND_TIMEOUT_SECONDS`, after which a peer
that stopped reading is cut off (Hypercorn's shielded send has no such bound).
"""

from __future__ import annotations

import base64
import contextlib
import enum
import hashlib
import logging
import os
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import h11
import trio
from hypercorn.utils import parse_socket_addr
from websockets.exceptions import InvalidState, ProtocolError
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side
from websockets.typing import BytesLike
from wsproto.extensions import PerMessageDeflate as WsprotoDeflate
from wsproto.handshake import server_extensions_handshake
from wsproto.utilities import split_comma_header

from dramaverse.domain.close_codes import CloseCode
from dramaverse.server import boundary

if TYPE_CHECKING:
    from hypercorn.config import Config
    from hypercorn.trio.tcp_server import TCPServer

MAX_HEAD_BYTES = 16 * 1024  # as Hypercorn's h11_max_incomplete_size: longer heads go to it
COMPRESS_MIN_BYTES = 256
_READ_BYTES = 65536
SEND_TIMEOUT_SECONDS = 10.0  # a peer that takes no bytes of a frame for this long is cut off
_CLAIM_ATTRIBUTE = "dramaverse_direct_websocket_paths"
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# websockets' protocol logs each connection's end at INFO; its errors are worth keeping.
_LOGGER = logging.getLogger(__name__ + ".rfc6455")
_LOGGER.setLevel(logging.WARNING)


def claim_paths(config: Config, paths: Iterable[str]) -> None:
    """Serve WebSocket upgrades to ``paths`` on this module under Hypercorn ``config``."""
    setattr(config, _CLAIM_ATTRIBUTE, frozenset(paths))


def claimed_paths(config: Config) -> frozenset[str]:
    claimed: frozenset[str] = getattr(config, _CLAIM_ATTRIBUTE, frozenset())
    return claimed


@dataclass
class Upgrade:
    """A WebSocket handshake request this module takes over."""

    path: str
    raw_path: bytes
    query_string: bytes
    headers: list[tuple[bytes, bytes]]
    key: bytes
    subprotocols: list[str]
    extensions: list[str]
    rest: bytes = field(default=b"")  # bytes the client sent after the request head


def _prefixes(paths: frozenset[str]) -> list[bytes]:
    return [b"GET " + path.encode() for path in paths]


def _candidate(buffer: bytes, prefixes: list[bytes]) -> bool | None:
    """True: may be an upgrade to a claimed path; False: it is not; None: too short to tell."""
    undecided = False
    for prefix in prefixes:
        if len(buffer) <= len(prefix):
            if prefix.startswith(buffer):
                undecided = True
            continue
        if buffer.startswith(prefix) and buffer[len(prefix)] in b" ?":
            return True
    return None if undecided else False


async def sniff(
    stream: trio.abc.ReceiveStream, paths: frozenset[str], max_receive: int
) -> tuple[bytes, Upgrade | None]:
    """Read the start of a new connection; the bytes read and the upgrade, if it is one to take.

    Reads only while the bytes may still be a claimed upgrade whose head is incomplete, at most
    :data:`MAX_HEAD_BYTES`. An empty result means the client closed before sending anything.
    Connection errors propagate.
    """
    prefixes = _prefixes(paths)
    buffer = bytes(await stream.receive_some(max_receive))
    while buffer:
        candidate = _candidate(buffer, prefixes)
        if candidate is False:
            return buffer, None
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            if candidate is None:
                return buffer, None
            return buffer, parse_upgrade(buffer[: end + 4], buffer[end + 4 :], paths)
        if len(buffer) >= MAX_HEAD_BYTES:
            return buffer, None
        more = await stream.receive_some(max_receive)
        if not more:
            return buffer, None
        buffer += more
    return buffer, None


def parse_upgrade(head: bytes, rest: bytes, paths: frozenset[str]) -> Upgrade | None:
    """The handshake in ``head`` (a complete request head), or None to leave it to Hypercorn."""
    parser = h11.Connection(h11.SERVER)
    try:
        parser.receive_data(head)
        request = parser.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(request, h11.Request) or request.http_version != b"1.1":
        return None
    if request.method != b"GET":
        return None
    raw_path, _, query_string = request.target.partition(b"?")
    try:
        path = unquote(raw_path.decode("ascii"))
    except UnicodeDecodeError:
        return None
    if path not in paths:
        return None
    headers = [(bytes(name), bytes(value)) for name, value in request.headers]
    connection: list[str] = []
    subprotocols: list[str] = []
    extensions: list[str] = []
    upgrade = version = key = None
    try:
        for name, value in headers:
            if name == b"connection":
                connection += split_comma_header(value)
            elif name == b"upgrade":
                upgrade = value
            elif name == b"sec-websocket-version":
                version = value
            elif name == b"sec-websocket-key":
                key = value
            elif name == b"sec-websocket-protocol":
                subprotocols += [p for p in split_comma_header(value) if p]
            elif name == b"sec-websocket-extensions":
                extensions += [e for e in split_comma_header(value) if e]
    except UnicodeDecodeError:
        return None
    if (
        not boundary.valid_websocket_key(key)
        or version != b"13"
        or upgrade is None
        or upgrade.lower() != b"websocket"
        or not any(token.lower() == "upgrade" for token in connection)
    ):
        return None  # Hypercorn answers an invalid handshake (400) the way it always has
    return Upgrade(path, raw_path, query_string, headers, key, subprotocols, extensions, rest)


def accept_token(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def close_payload(code: int, reason: str = "") -> bytes:
    """A close frame's body; the reason is cut to fit the 125-byte limit on a UTF-8 boundary."""
    return code.to_bytes(2, "big") + _fit_reason(reason).encode("utf-8")


def _fit_reason(reason: str) -> str:
    return reason.encode("utf-8")[:123].decode("utf-8", "ignore")


class _Deflate(PerMessageDeflate):
    """websockets' permessage-deflate, closing corrupt compressed data with 1007 as before.

    websockets closes a message that does not inflate with 1002; this layer has always answered
    1007 (data inconsistent with the message type, RFC 6455 7.4.1). Its parser closes with 1007
    on a :class:`UnicodeDecodeError`, so that is what a zlib failure becomes here.
    """

    def decode(self, frame: Frame, *, max_size: int | None = None) -> Frame:
        try:
            return super().decode(frame, max_size=max_size)
        except ProtocolError as exc:
            if not isinstance(exc.__cause__, zlib.error):
                raise
            raise UnicodeDecodeError("deflate", b"", 0, 1, "invalid compressed data") from None


def _negotiate_deflate(offers: list[str]) -> tuple[_Deflate | None, bytes | None]:
    if not offers:
        return None, None
    extension = WsprotoDeflate(client_no_context_takeover=True, server_no_context_takeover=True)
    answer = server_extensions_handshake(offers, [extension])
    if answer is None or not extension.enabled():
        return None, None
    # wsproto declines window sizes zlib cannot make (below 9 bits) before this point; the
    # client compresses with at most 15 bits, which a 15-bit inflater reads whatever it chose.
    deflate = _Deflate(
        remote_no_context_takeover=True,
        local_no_context_takeover=True,
        remote_max_window_bits=15,
        local_max_window_bits=int(extension.server_max_window_bits or 15),
    )
    return deflate, answer


class Phase(enum.Enum):
    """Where a connection is; :data:`_TRANSITIONS` says where it may go from each."""

    NEW = enum.auto()  # the application has not received websocket.connect yet
    HANDSHAKE = enum.auto()  # it has, and has not answered the upgrade
    REFUSING = enum.auto()  # it answered with an HTTP response whose body is still coming
    OPEN = enum.auto()  # 101 sent: frames both ways
    CLOSING = enum.auto()  # our close frame is sent; the peer's answer is awaited
    CLOSED = (
        enum.auto()
    )  # over (the disconnect is known, or the refusal sent): nothing more goes out


_TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.NEW: frozenset((Phase.HANDSHAKE, Phase.OPEN, Phase.REFUSING, Phase.CLOSED)),
    Phase.HANDSHAKE: frozenset((Phase.OPEN, Phase.REFUSING, Phase.CLOSED)),
    Phase.REFUSING: frozenset((Phase.CLOSED,)),
    Phase.OPEN: frozenset((Phase.CLOSING, Phase.CLOSED)),
    Phase.CLOSING: frozenset((Phase.CLOSED,)),
    Phase.CLOSED: frozenset(),
}
_ANSWERABLE = frozenset((Phase.NEW, Phase.HANDSHAKE))  # the upgrade is not answered yet


class IllegalTransition(RuntimeError):
    """A connection was asked to move where its transition table does not allow."""


# The per-frame path compares against these module globals: on CPython 3.11 an enum member read
# through its class costs 80-90 ns against 10 for a global (timeit), and a frame in and out
# compared about ten of them.
_NEW = Phase.NEW
_OPEN = Phase.OPEN
_OP_TEXT = Opcode.TEXT
_OP_BINARY = Opcode.BINARY
_OP_CONT = Opcode.CONT
_OP_CLOSE = Opcode.CLOSE

# Open on the server side, the protocol's events are all frames (a client's also has the
# handshake response): typed so, with no ``cast`` call per read.
_frames_received: Callable[[Protocol], list[Frame]] = Protocol.events_received  # type: ignore[assignment]


class DirectWebSocket:
    """One WebSocket connection as ASGI ``receive``/``send`` callables over a trio stream.

    RFC 6455 is websockets' sans-I/O :class:`~websockets.protocol.Protocol`: bytes read go in
    with ``receive_data``, frames come out of ``events_received``, and what it has to say (pongs,
    close frames, the application's messages) is taken with ``data_to_send`` right after each
    call and written by :meth:`_write`, in the task that made the call. Only this module does
    I/O; the protocol object is touched synchronously between awaits, so the reader's task and
    the application's writers never see it half-updated.

    Once the protocol is closing (it answered the peer's close, or failed the connection), a
    message the application sends is dropped, as after the disconnect: the peer's close can
    arrive in the same read as a message the application is still answering.

    The per-frame path is kept short (the cost of each step: docs/protocol.md, "The WebSocket
    layer"): a frame in is one read (:meth:`_read`) and one ``receive_data``; a frame out is
    one ``send_text`` and, when no other write is under way, one ``os.write`` with no lock
    taken and no scheduling. Everything else (control frames, fragments, closing) is off it.
    """

    def __init__(self, stream: trio.abc.Stream, upgrade: Upgrade, max_message: int) -> None:
        self._stream = stream
        self._upgrade = upgrade
        self._protocol = Protocol(Side.SERVER, max_size=max_message, logger=_LOGGER)
        self._pending = upgrade.rest  # bytes after the request head, parsed on the first read
        self._frames: deque[Frame] = deque()  # parsed, not yet handed to the application
        self._parts: list[BytesLike] = []  # the fragments of a message still coming
        self._opcode = _OP_TEXT  # that message's opcode
        self._lock = trio.Lock()  # held by a write the kernel did not take at once
        self._phase = Phase.NEW
        self._disconnect: dict[str, Any] | None = None  # set on entering CLOSED after OPEN
        self._broken = False  # the disconnect is 1006: nothing more goes out
        self._deflate: _Deflate | None = None
        self._response: dict[str, Any] | None = None  # websocket.http.response.start
        # A plain TCP stream: writes go straight to its socket (not through TLS).
        self._socket: Any = getattr(stream, "socket", None)
        self.status: int | None = None  # the HTTP status answered to the handshake

    @property
    def phase(self) -> Phase:
        return self._phase

    def _enter(self, phase: Phase) -> None:
        if phase not in _TRANSITIONS[self._phase]:
            raise IllegalTransition(f"{self._phase.name} -> {phase.name}")
        self._phase = phase

    # -- ASGI receive ---------------------------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        if self._phase is _NEW:
            self._enter(Phase.HANDSHAKE)
            return {"type": "websocket.connect"}
        if self._disconnect is not None:
            return self._disconnect
        protocol = self._protocol
        frames = self._frames
        while True:
            if frames:
                message = self._assemble()
                if message is not None:
                    if message is self._disconnect:
                        await self._flush()  # the close frame of a connection failed here
                    return message
            if protocol.parser_exc is not None:  # it failed the connection: nothing more
                return self._gone(_sent_code(protocol))
            data: bytes | bytearray = self._pending
            if data:
                self._pending = b""
            else:
                data = await self._read()
            if not data:
                protocol.receive_eof()
                frames.clear()
                await self._flush()
                return self._gone(CloseCode.ABNORMAL)
            protocol.receive_data(data)
            frames.extend(_frames_received(protocol))
            writes = protocol.data_to_send()
            if writes:  # a pong, the answer to a close, the close of a failed connection
                await self._write(b"".join(writes))

    async def _read(self) -> bytes | bytearray:
        """The next bytes from the peer; empty when the connection has ended.

        On a plain TCP stream this is Trio's own ``recv`` sequence (a cancellation point before
        the read, a schedule point after a read that did not wait, the I/O wait otherwise) on
        the socket's descriptor, without the stream and socket wrappers around it: they cost
        as much per frame as the protocol's parser (``bench.ws_roundtrip_bench``). The
        descriptor is asked for each time, as in :meth:`_write`; a closed socket says -1 and
        goes through the stream, which reports it closed.
        """
        fd = self._socket.fileno() if self._socket is not None else -1
        try:
            if fd < 0:
                return await self._stream.receive_some(_READ_BYTES)
            await trio.lowlevel.checkpoint_if_cancelled()  # nothing read yet
            try:
                data = os.read(fd, _READ_BYTES)
            except BlockingIOError:
                pass
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()  # what was read is kept
                return data
            while True:
                await trio.lowlevel.wait_readable(fd)  # closing the socket wakes it, raising
                try:
                    return os.read(fd, _READ_BYTES)
                except BlockingIOError:
                    pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return b""

    def _assemble(self) -> dict[str, Any] | None:
        """The next message from the frames parsed so far, or None when it needs more bytes.

        A message in fragments keeps its parts on the connection between reads (and across a
        cancelled ``receive``). The protocol has checked the order of the frames already.
        """
        frames = self._frames
        while frames:
            frame = frames.popleft()
            opcode = frame.opcode
            if opcode is _OP_TEXT or opcode is _OP_BINARY:
                if frame.fin:
                    return self._message(opcode, frame.data)
                self._opcode = opcode
                self._parts = [frame.data]
            elif opcode is _OP_CONT:
                parts = self._parts
                parts.append(frame.data)
                if frame.fin:
                    self._parts = []
                    return self._message(self._opcode, b"".join(parts))
            elif opcode is _OP_CLOSE:
                close = self._protocol.close_rcvd
                assert close is not None
                return self._gone(close.code, close.reason)
            # else a ping, whose pong was written when it was parsed, or a pong
        return None

    def _message(self, opcode: Opcode, data: BytesLike) -> dict[str, Any]:
        if opcode is _OP_BINARY:
            return {"type": "websocket.receive", "bytes": bytes(data), "text": None}
        try:
            text = str(data, "utf-8")
        except UnicodeDecodeError:
            self._frames.clear()
            self._protocol.fail(CloseCode.INVALID_DATA, "text message is not valid UTF-8")
            return self._gone(_sent_code(self._protocol))
        return {"type": "websocket.receive", "bytes": None, "text": text}

    def _gone(self, code: int, reason: str = "") -> dict[str, Any]:
        if self._disconnect is None:
            self._disconnect = {"type": "websocket.disconnect", "code": code, "reason": reason}
            self._broken = code == CloseCode.ABNORMAL
            if self._phase is not Phase.CLOSED:
                self._enter(Phase.CLOSED)
        return self._disconnect

    # -- ASGI send ------------------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "websocket.send" and self._phase is _OPEN:
            data = self._data_frame(message)
            if data:
                await self._write(data)
            return
        phase = self._phase
        if kind == "websocket.send":
            if phase in _ANSWERABLE:
                raise RuntimeError("websocket.send before websocket.accept")
            # CLOSING or CLOSED: as Hypercorn, let the application finish its work
        elif kind == "websocket.accept" and phase in _ANSWERABLE:
            await self._accept(message)
        elif kind == "websocket.close":
            if phase in _ANSWERABLE:
                self._enter(Phase.CLOSED)
                await self._respond(403, [(b"content-length", b"0"), (b"connection", b"close")])
            elif phase is Phase.OPEN:
                await self._send_close(int(message.get("code") or 1000), message.get("reason"))
        elif kind == "websocket.http.response.start" and phase in _ANSWERABLE:
            self._response = dict(message)
            self._enter(Phase.REFUSING)
        elif kind == "websocket.http.response.body" and phase is Phase.REFUSING:
            await self._send_response_body(message)
        elif phase is not Phase.CLOSED:  # once the connection has ended, the rest is ignored
            raise RuntimeError(f"unexpected ASGI message {kind!r} in phase {phase.name}")

    def _data_frame(self, message: dict[str, Any]) -> bytes:
        """The bytes of ``message`` framed by the protocol; none once it is closing."""
        protocol = self._protocol
        data = message.get("bytes")
        if data is not None:
            payload, send = bytes(data), protocol.send_binary
        else:
            text = message.get("text")
            if not isinstance(text, str):
                raise TypeError("websocket.send needs text or bytes")
            payload, send = text.encode("utf-8"), protocol.send_text
        try:
            if self._deflate is not None and len(payload) < COMPRESS_MIN_BYTES:
                protocol.extensions = []  # this message goes out plain (RFC 7692 allows it)
                try:
                    send(payload)
                finally:
                    protocol.extensions = [self._deflate]
            else:
                send(payload)
        except InvalidState:
            return b""  # the close handshake has begun: nothing may follow our close frame
        return b"".join(protocol.data_to_send())

    async def _accept(self, message: dict[str, Any]) -> None:
        upgrade = self._upgrade
        headers = [
            (b"upgrade", b"websocket"),
            (b"connection", b"Upgrade"),
            (b"sec-websocket-accept", accept_token(upgrade.key)),
        ]
        subprotocol = message.get("subprotocol")
        if subprotocol is not None:
            if subprotocol not in upgrade.subprotocols:
                raise RuntimeError(f"subprotocol {subprotocol!r} was not offered")
            headers.append((b"sec-websocket-protocol", subprotocol.encode()))
        deflate, answer = _negotiate_deflate(upgrade.extensions)
        if answer is not None:
            headers.append((b"sec-websocket-extensions", answer))
        for name, value in message.get("headers") or ():
            name = bytes(name).lower()
            if name in (b"sec-websocket-protocol", b"sec-websocket-extensions"):
                raise RuntimeError(f"header {name.decode()} is the server's to set")
            headers.append((name, bytes(value)))
        self._deflate = deflate
        if deflate is not None:
            self._protocol.extensions = [deflate]
        self._enter(Phase.OPEN)
        await self._respond(101, headers)

    async def _send_response_body(self, message: dict[str, Any]) -> None:
        if self.status is None:
            assert self._response is not None
            status = int(self._response["status"])
            headers = [(bytes(n).lower(), bytes(v)) for n, v in self._response.get("headers", ())]
            headers.append((b"connection", b"close"))
            await self._respond(status, headers)
        body = bytes(message.get("body") or b"")
        if body:
            await self._write(body)
        if not message.get("more_body", False) and self._phase is Phase.REFUSING:
            self._enter(Phase.CLOSED)

    async def _respond(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        lines = [b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b""))]
        lines += [name + b": " + value for name, value in headers]
        await self._write(b"\r\n".join(lines) + b"\r\n\r\n")

    async def _send_close(self, code: int, reason: str | None) -> None:
        # The protocol may have closed already: the peer's close, or a frame that failed.
        with contextlib.suppress(InvalidState):
            self._protocol.send_close(code, _fit_reason(reason or ""))
        self._enter(Phase.CLOSING)
        await self._flush()

    async def _flush(self) -> None:
        """Write what the protocol has to send (its end-of-stream mark, ``b""``, adds nothing:
        the stream is closed when the application returns, as before)."""
        data = b"".join(self._protocol.data_to_send())
        if data:
            await self._write(data)

    async def _write(self, data: bytes) -> None:
        """Write ``data`` (whole frames) in order with the other writers of this connection.

        The common case costs one system call and no scheduling: when nobody else is writing,
        the bytes go straight to the socket without blocking (and without taking the lock: no
        other writer can run before the call returns). What the kernel does not take at once is
        sent under the lock, shielded from cancellation so that no half frame is left behind,
        for at most :data:`SEND_TIMEOUT_SECONDS`; a peer that takes no bytes for that long has
        its connection aborted. A write that fails ends the connection (1006 to the
        application) and every later write is dropped.
        """
        if self._broken:
            return
        lock = self._lock
        if lock.locked():
            await lock.acquire()  # cancelled here, nothing was written
        else:
            # The descriptor is asked for each time: a closed socket says -1, and a number
            # kept from before could by now belong to another connection.
            fd = self._socket.fileno() if self._socket is not None else -1
            if fd >= 0:
                try:
                    sent = os.write(fd, data)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    self._gone(CloseCode.ABNORMAL)
                    return
                if sent == len(data):
                    return
                data = data[sent:]
            lock.acquire_nowait()  # free: nothing was awaited since it was seen free
        try:
            if self._broken:
                return
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + SEND_TIMEOUT_SECONDS
                await self._stream.send_all(data)
            if scope.cancelled_caught:
                self._gone(CloseCode.ABNORMAL)
                await trio.aclose_forcefully(self._stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self._gone(CloseCode.ABNORMAL)
        finally:
            lock.release()

    async def finish(self) -> None:
        """The application returned: answer a handshake it never answered (500), close an open
        socket it never closed (1011)."""
        if self._phase in _ANSWERABLE:
            self._enter(Phase.CLOSED)
            await self._respond(500, [(b"content-length", b"0"), (b"connection", b"close")])
        elif self._phase is Phase.OPEN:
            await self._send_close(CloseCode.INTERNAL_ERROR, "")


def _sent_code(protocol: Protocol) -> int:
    """The code of the close frame the protocol sent on failing the connection (1006: none)."""
    close = protocol.close_sent
    return close.code if close is not None else CloseCode.ABNORMAL


_REASONS = {
    101: b"Switching Protocols",
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    429: b"Too Many Requests",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}


def _addresses(stream: Any) -> tuple[Any, Any, bool]:
    transport = getattr(stream, "transport_stream", None)
    tls = transport is not None
    sock = transport.socket if transport is not None else stream.socket
    return (
        parse_socket_addr(sock.family, sock.getpeername()),
        parse_socket_addr(sock.family, sock.getsockname()),
        tls,
    )


async def serve(server: TCPServer, upgrade: Upgrade) -> None:
    """Run the application on ``upgrade`` over ``server``'s stream (Hypercorn closes it after)."""
    config = server.config
    started = time.time()
    client, host, tls = _addresses(server.stream)
    scope: dict[str, Any] = {
        "type": "websocket",
        "asgi": {"spec_version": "2.3", "version": "3.0"},
        "scheme": "wss" if tls else "ws",
        "http_version": "1.1",
        "path": upgrade.path,
        "raw_path": upgrade.raw_path,
        "query_string": upgrade.query_string,
        "root_path": config.root_path,
        "headers": upgrade.headers,
        "client": client,
        "server": host,
        "state": dict(server.state),
        "subprotocols": upgrade.subprotocols,
        "extensions": {"websocket.http.response": {}},
    }
    socket = DirectWebSocket(server.stream, upgrade, config.websocket_max_message_size)
    try:
        await server.app(
            scope,  # type: ignore[arg-type]
            socket.receive,  # type: ignore[arg-type]
            socket.send,  # type: ignore[arg-type]
            trio.to_thread.run_sync,
            trio.from_thread.run,
        )
    except trio.Cancelled:
        raise
    except BaseExceptionGroup as group:
        if group.split(trio.Cancelled)[1] is None:
            raise
        await config.log.exception("Error in ASGI Framework")
    except Exception:
        await config.log.exception("Error in ASGI Framework")
    finally:
        with trio.move_on_after(1) as cleanup:
            cleanup.shield = True
            await socket.finish()
            if socket.status is not None:
                summary = {"status": socket.status, "headers": []}
                await config.log.access(scope, summary, time.time() - started)  # type: ignore[arg-type]
