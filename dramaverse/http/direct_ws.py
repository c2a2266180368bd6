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
- :class:`DirectWebSocket` is the connection: the ASGI ``receive`` parses RFC 6455 frames in the
  caller's task (no queue, no second task), ``send`` writes a frame with one ``send_all``.

What it enforces, as wsproto does: client frames masked; no reserved bits except RSV1 on the
first frame of a compressed message when permessage-deflate was negotiated; known opcodes;
control frames unfragmented and at most 125 bytes; continuation frames only inside a message;
text valid UTF-8 (1007); close codes valid (1002); messages at most
``config.websocket_max_message_size`` bytes, compressed or inflated (1009, checked before the
bytes are buffered or inflated). A ping is answered with a pong carrying its payload, a close is
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
import hashlib
import os
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import h11
import trio
from hypercorn.utils import parse_socket_addr
from wsproto.extensions import PerMessageDeflate
from wsproto.handshake import server_extensions_handshake
from wsproto.utilities import split_comma_header

from dramaverse.server import boundary

if TYPE_CHECKING:
    from hypercorn.config import Config
    from hypercorn.trio.tcp_server import TCPServer

MAX_HEAD_BYTES = 16 * 1024  # as Hypercorn's h11_max_incomplete_size: longer heads go to it
COMPRESS_MIN_BYTES = 256
SEND_TIMEOUT_SECONDS = 10.0  # a peer that takes no bytes of a frame for this long is cut off
_CLAIM_ATTRIBUTE = "dramaverse_direct_websocket_paths"
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_DEFLATE_TAIL = b"\x00\x00\xff\xff"

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
_DATA_OPCODES = frozenset((OP_CONTINUATION, OP_TEXT, OP_BINARY))
_CONTROL_OPCODES = frozenset((OP_CLOSE, OP_PING, OP_PONG))

CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_ABNORMAL = 1006  # never sent: what the application sees when the TCP connection dropped
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
_UNSENDABLE_CODES = frozenset((1004, 1005, 1006, 1015))


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


def frame_header(opcode: int, length: int, rsv1: bool = False) -> bytes:
    """The header of a final, unmasked (server) frame."""
    first = 0x80 | (0x40 if rsv1 else 0) | opcode
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return bytes((first, 126)) + length.to_bytes(2, "big")
    return bytes((first, 127)) + length.to_bytes(8, "big")


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR ``payload`` with the repeated 4-byte ``mask`` (in C, through big integers)."""
    size = len(payload)
    if not size:
        return payload
    key = (mask * (size // 4 + 1))[:size]
    value = int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")
    return value.to_bytes(size, "little")


def close_payload(code: int, reason: str = "") -> bytes:
    """A close frame's body; the reason is cut to fit the 125-byte limit on a UTF-8 boundary."""
    encoded = reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")
    return code.to_bytes(2, "big") + encoded


class Violation(Exception):
    """The client broke the protocol; the connection ends with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class _Deflate:
    """Negotiated permessage-deflate without context takeover: one zlib object per message."""

    window_bits: int  # the server's: outbound messages use at most this window

    def inflate(self, data: bytes, limit: int) -> bytes:
        inflater = zlib.decompressobj(-15)
        try:
            out = inflater.decompress(data + _DEFLATE_TAIL, limit + 1)
        except zlib.error as exc:
            raise Violation(CLOSE_INVALID_DATA, f"invalid compressed data: {exc}") from None
        if len(out) > limit or inflater.unconsumed_tail:
            raise Violation(CLOSE_TOO_BIG, "message too big")
        return out

    def deflate(self, data: bytes) -> bytes:
        deflater = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -self.window_bits)
        out = deflater.compress(data) + deflater.flush(zlib.Z_SYNC_FLUSH)
        return out[:-4] if out.endswith(_DEFLATE_TAIL) else out


def _negotiate_deflate(offers: list[str]) -> tuple[_Deflate | None, bytes | None]:
    if not offers:
        return None, None
    extension = PerMessageDeflate(client_no_context_takeover=True, server_no_context_takeover=True)
    answer = server_extensions_handshake(offers, [extension])
    if answer is None or not extension.enabled():
        return None, None
    # wsproto declines window sizes zlib cannot make (below 9 bits) before this point.
    return _Deflate(int(extension.server_max_window_bits or 15)), answer


_HANDSHAKE, _CONNECTED, _CLOSED = "handshake", "connected", "closed"


class DirectWebSocket:
    """One WebSocket connection as ASGI ``receive``/``send`` callables over a trio stream."""

    def __init__(self, stream: trio.abc.Stream, upgrade: Upgrade, max_message: int) -> None:
        self._stream = stream
        self._upgrade = upgrade
        self._max_message = max_message
        self._buffer = bytearray(upgrade.rest)
        self._lock = trio.Lock()
        self._state = _HANDSHAKE
        self._connect_delivered = False
        self._disconnect: dict[str, Any] | None = None  # once set, receive returns it again
        self._close_sent = False
        self._broken = False
        self._deflate: _Deflate | None = None
        self._response: dict[str, Any] | None = None  # websocket.http.response.start
        # A plain TCP stream: writes go straight to its socket (not through TLS).
        self._socket: Any = getattr(stream, "socket", None)
        self.status: int | None = None  # the HTTP status answered to the handshake

    # -- ASGI receive ---------------------------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        if not self._connect_delivered:
            self._connect_delivered = True
            return {"type": "websocket.connect"}
        if self._disconnect is not None:
            return self._disconnect
        try:
            return await self._next_message()
        except Violation as exc:
            await self._send_close(exc.code, exc.reason)
            return self._gone(exc.code)

    async def _next_message(self) -> dict[str, Any]:
        parts: list[bytes] = []
        size = 0
        message_opcode: int | None = None
        compressed = False
        while True:
            frame = self._frame(size)
            if frame is None:
                if not await self._fill():
                    return self._gone(CLOSE_ABNORMAL)
                continue
            fin, rsv1, opcode, payload = frame
            if opcode in _CONTROL_OPCODES:
                answer = await self._control(opcode, payload)
                if answer is not None:
                    return answer
                continue
            if opcode == OP_CONTINUATION:
                if message_opcode is None:
                    raise Violation(CLOSE_PROTOCOL_ERROR, "continuation frame outside a message")
                if rsv1:
                    raise Violation(CLOSE_PROTOCOL_ERROR, "RSV1 set on a continuation frame")
            else:
                if message_opcode is not None:
                    raise Violation(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
                if rsv1 and self._deflate is None:
                    raise Violation(CLOSE_PROTOCOL_ERROR, "RSV1 set without permessage-deflate")
                message_opcode, compressed = opcode, rsv1
            parts.append(payload)
            size += len(payload)
            if fin:
                return self._message(message_opcode, b"".join(parts), compressed)

    def _message(self, opcode: int, data: bytes, compressed: bool) -> dict[str, Any]:
        if compressed and self._deflate is not None:
            data = self._deflate.inflate(data, self._max_message)
        if opcode == OP_BINARY:
            return {"type": "websocket.receive", "bytes": data, "text": None}
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise Violation(CLOSE_INVALID_DATA, "text message is not valid UTF-8") from None
        return {"type": "websocket.receive", "bytes": None, "text": text}

    def _frame(self, assembled: int) -> tuple[bool, bool, int, bytes] | None:
        """The next complete frame in the buffer (unmasked), or None when more bytes are needed.

        ``assembled`` is the size of the message so far: a frame that would take it over the
        limit is refused from its header, before its payload is buffered.
        """
        buffer = self._buffer
        available = len(buffer)
        if available < 2:
            return None
        first, second = buffer[0], buffer[1]
        opcode = first & 0x0F
        if first & 0x30:
            raise Violation(CLOSE_PROTOCOL_ERROR, "reserved bits RSV2/RSV3 set")
        if opcode not in _DATA_OPCODES and opcode not in _CONTROL_OPCODES:
            raise Violation(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
        if not second & 0x80:
            raise Violation(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
        fin = bool(first & 0x80)
        rsv1 = bool(first & 0x40)
        length = second & 0x7F
        offset = 2
        if opcode in _CONTROL_OPCODES:
            if not fin or length > 125:
                raise Violation(CLOSE_PROTOCOL_ERROR, "control frames must be final and short")
            if rsv1:
                raise Violation(CLOSE_PROTOCOL_ERROR, "RSV1 set on a control frame")
        elif length == 126:
            if available < 4:
                return None
            length = int.from_bytes(buffer[2:4], "big")
            offset = 4
        elif length == 127:
            if available < 10:
                return None
            length = int.from_bytes(buffer[2:10], "big")
            offset = 10
        if opcode in _DATA_OPCODES and assembled + length > self._max_message:
            raise Violation(CLOSE_TOO_BIG, "message too big")
        end = offset + 4 + length
        if available < end:
            return None
        mask = bytes(buffer[offset : offset + 4])
        payload = unmask(bytes(buffer[offset + 4 : end]), mask)
        del buffer[:end]
        return fin, rsv1, opcode, payload

    async def _control(self, opcode: int, payload: bytes) -> dict[str, Any] | None:
        if opcode == OP_PING:
            await self._write(frame_header(OP_PONG, len(payload)) + payload)
            return None
        if opcode == OP_PONG:
            return None
        if not payload:
            code, reason = 1005, ""  # no status received: answered with an empty close
        elif len(payload) == 1:
            raise Violation(CLOSE_PROTOCOL_ERROR, "close frame with a one-byte body")
        else:
            code = int.from_bytes(payload[:2], "big")
            if code < 1000 or code in _UNSENDABLE_CODES or 1016 <= code < 3000 or code >= 5000:
                raise Violation(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                raise Violation(CLOSE_INVALID_DATA, "close reason is not valid UTF-8") from None
        if not self._close_sent:
            self._close_sent = True
            body = b"" if code == 1005 else close_payload(code, reason)
            await self._write(frame_header(OP_CLOSE, len(body)) + body)
        return self._gone(code, reason)

    async def _fill(self) -> bool:
        """Read more bytes into the buffer; False when the connection has ended."""
        try:
            data = await self._stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return False
        if not data:
            return False
        self._buffer += data
        return True

    def _gone(self, code: int, reason: str = "") -> dict[str, Any]:
        self._state = _CLOSED
        self._disconnect = {"type": "websocket.disconnect", "code": code, "reason": reason}
        return self._disconnect

    # -- ASGI send ------------------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "websocket.send":
            if self._state != _CONNECTED or self._close_sent:
                if self._state == _HANDSHAKE:
                    raise RuntimeError("websocket.send before websocket.accept")
                return  # the connection has ended: as Hypercorn, let the application finish
            await self._send_data(message)
        elif kind == "websocket.accept" and self._state == _HANDSHAKE:
            await self._accept(message)
        elif kind == "websocket.close":
            if self._state == _HANDSHAKE:
                await self._respond(403, [(b"content-length", b"0"), (b"connection", b"close")])
                self._state = _CLOSED
            elif self._state == _CONNECTED:
                await self._send_close(int(message.get("code") or 1000), message.get("reason"))
        elif kind == "websocket.http.response.start" and self._state == _HANDSHAKE:
            self._response = dict(message)
        elif kind == "websocket.http.response.body" and self._response is not None:
            await self._send_response_body(message)
        elif self._state != _CLOSED:  # once the connection has ended, the rest is ignored
            raise RuntimeError(f"unexpected ASGI message {kind!r} in state {self._state}")

    async def _send_data(self, message: dict[str, Any]) -> None:
        data = message.get("bytes")
        if data is not None:
            opcode, payload = OP_BINARY, bytes(data)
        else:
            text = message.get("text")
            if not isinstance(text, str):
                raise TypeError("websocket.send needs text or bytes")
            opcode, payload = OP_TEXT, text.encode("utf-8")
        deflate = self._deflate
        if deflate is not None and len(payload) >= COMPRESS_MIN_BYTES:
            payload = deflate.deflate(payload)
            await self._write(frame_header(opcode, len(payload), rsv1=True) + payload)
            return
        await self._write(frame_header(opcode, len(payload)) + payload)

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
        self._deflate, answer = _negotiate_deflate(upgrade.extensions)
        if answer is not None:
            headers.append((b"sec-websocket-extensions", answer))
        for name, value in message.get("headers") or ():
            name = bytes(name).lower()
            if name in (b"sec-websocket-protocol", b"sec-websocket-extensions"):
                raise RuntimeError(f"header {name.decode()} is the server's to set")
            headers.append((name, bytes(value)))
        self._state = _CONNECTED
        await self._respond(101, headers)

    async def _send_response_body(self, message: dict[str, Any]) -> None:
        if self._state == _HANDSHAKE:
            assert self._response is not None
            status = int(self._response["status"])
            headers = [(bytes(n).lower(), bytes(v)) for n, v in self._response.get("headers", ())]
            headers.append((b"connection", b"close"))
            await self._respond(status, headers)
            self._state = _CLOSED
        body = bytes(message.get("body") or b"")
        if body:
            await self._write(body)

    async def _respond(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        lines = [b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b""))]
        lines += [name + b": " + value for name, value in headers]
        await self._write(b"\r\n".join(lines) + b"\r\n\r\n")

    async def _send_close(self, code: int, reason: str | None) -> None:
        if self._close_sent or self._state == _HANDSHAKE:
            return
        self._close_sent = True
        body = close_payload(code, reason or "")
        await self._write(frame_header(OP_CLOSE, len(body)) + body)

    async def _write(self, data: bytes) -> None:
        """Write ``data`` (whole frames) in order with the other writers of this connection.

        The common case costs one system call and no scheduling: when nobody else is writing,
        the bytes go straight to the socket without blocking. What the kernel does not take at
        once is sent under the lock, shielded from cancellation so that no half frame is left
        behind, for at most :data:`SEND_TIMEOUT_SECONDS`; a peer that takes no bytes for that
        long has its connection aborted.
        """
        if self._broken:
            return
        lock = self._lock
        if lock.locked():
            await lock.acquire()  # cancelled here, nothing was written
        else:
            lock.acquire_nowait()
            # The descriptor is asked for each time: a closed socket says -1, and a number
            # kept from before could by now belong to another connection.
            fd = self._socket.fileno() if self._socket is not None else -1
            if fd >= 0:
                try:
                    sent = os.write(fd, data)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    self._broken = True
                    lock.release()
                    return
                if sent == len(data):
                    lock.release()
                    return
                data = data[sent:]
        try:
            if self._broken:
                return
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + SEND_TIMEOUT_SECONDS
                await self._stream.send_all(data)
            if scope.cancelled_caught:
                self._broken = True
                await trio.aclose_forcefully(self._stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self._broken = True
        finally:
            lock.release()

    async def finish(self) -> None:
        """The application returned: answer a handshake it never answered (500), close an open
        socket it never closed (1011)."""
        if self._state == _HANDSHAKE:
            await self._respond(500, [(b"content-length", b"0"), (b"connection", b"close")])
            self._state = _CLOSED
        elif self._state == _CONNECTED and not self._close_sent:
            await self._send_close(CLOSE_INTERNAL_ERROR, "")


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
