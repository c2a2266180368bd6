"""server/direct_ws.py: WebSocket upgrades to claimed paths served straight on the socket.

Real Hypercorn on loopback with a small ASGI application, and raw RFC 6455 frames written and read
by hand, so that every rule of the framing layer is exercised byte for byte; then the real
Dramaverse server: which connections take the direct path and which stay with Hypercorn.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import socket
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from dramaverse.server import direct_ws, fence
from dramaverse.server.direct_ws import (
    COMPRESS_MIN_BYTES,
    DirectWebSocket,
    IllegalTransition,
    Phase,
    Upgrade,
    accept_token,
    close_payload,
    parse_upgrade,
)
from tests.asgi import answer_lifespan
from tests.cluster import free_port
from tests.conftest import Server, make_settings, running_server

PATH = "/echo"
MAX_MESSAGE = 1024


# -- a small ASGI application ---------------------------------------------------------------------


class Echo:
    """Echoes messages; ``?refuse``, ``?deny``, ``?crash``, ``?silent`` change the handshake;
    the text ``close`` closes with 4321, ``quit`` returns, ``boom`` raises."""

    def __init__(self) -> None:
        self.disconnects: list[dict[str, Any]] = []
        self.scopes: list[dict[str, Any]] = []
        self.finished = trio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] == "http":
            body = b"plain http"
            headers = [(b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        self.scopes.append(scope)
        try:
            await self._websocket(scope, receive, send)
        finally:
            self.finished.set()

    async def _websocket(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        query = scope["query_string"]
        if query == b"refuse":
            body = b'{"message":"no"}'
            headers = [(b"content-type", b"application/json"), (b"content-length", b"16")]
            await send({"type": "websocket.http.response.start", "status": 401, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
            return
        if query == b"deny":
            await send({"type": "websocket.close", "code": 1000})
            return
        if query == b"crash":
            raise RuntimeError("crashed in the handshake")
        if query == b"silent":
            return
        if query == b"early":
            await send({"type": "websocket.send", "text": "before accepting"})
        if query == b"unoffered":
            await send({"type": "websocket.accept", "subprotocol": "never-offered"})
        offered = scope["subprotocols"]
        headers = [(b"X-Test", b"1")] if query == b"headers" else []
        await send(
            {
                "type": "websocket.accept",
                "subprotocol": "chat" if "chat" in offered else None,
                "headers": headers,
            }
        )
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.disconnects.append(message)
                # Sending after the end is not an error: the application may finish its work.
                await send({"type": "websocket.send", "text": "too late"})
                return
            text = message.get("text")
            if text == "close":
                await send({"type": "websocket.close", "code": 4321, "reason": "bye"})
                self.disconnects.append(await receive())
                return
            if text == "quit":
                return
            if text == "boom":
                raise RuntimeError("crashed while connected")
            if text == "group":
                raise ExceptionGroup("in a nursery", [RuntimeError("crashed in a task")])
            if text == "nothing":
                await send({"type": "websocket.send"})
            if text == "twice":  # receive after the disconnect gives the disconnect again
                await send({"type": "websocket.close", "code": 1000})
                first = await receive()
                self.disconnects += [first, await receive()]
                return
            if text == "huge":  # fills a loopback socket's buffers in a few sends
                await send({"type": "websocket.send", "bytes": b"h" * 256 * 1024})
                continue
            if text == "big":
                await send({"type": "websocket.send", "text": "y" * (COMPRESS_MIN_BYTES * 4)})
                continue
            await send({"type": "websocket.send", "text": text, "bytes": message.get("bytes")})


@asynccontextmanager
async def serving(app: Echo, *, claim: bool = True) -> AsyncIterator[int]:
    fence.install()
    port = free_port()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.graceful_timeout = 1
    config.websocket_max_message_size = MAX_MESSAGE
    if claim:
        direct_ws.claim_paths(config, [PATH])
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(hypercorn_serve, app, config, shutdown_trigger=stop.wait))
        async with client_streams():
            yield port
        stop.set()


# -- a raw client ---------------------------------------------------------------------------------

_OPENED: list[trio.SocketStream] = []


async def open_stream(port: int) -> trio.SocketStream:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    _OPENED.append(stream)
    return stream


@asynccontextmanager
async def client_streams() -> AsyncIterator[None]:
    """Close every client stream opened inside."""
    try:
        yield
    finally:
        while _OPENED:
            await trio.aclose_forcefully(_OPENED.pop())


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR ``payload`` with the repeated 4-byte ``mask``: masking and unmasking are one."""
    return bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))


def client_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    declared: int | None = None,
) -> bytes:
    length = len(payload) if declared is None else declared
    first = (0x80 if fin else 0) | rsv | opcode
    if length < 126:
        head = bytes((first, length | (0x80 if masked else 0)))
    elif length < 65536:
        head = bytes((first, 126 | (0x80 if masked else 0))) + length.to_bytes(2, "big")
    else:
        head = bytes((first, 127 | (0x80 if masked else 0))) + length.to_bytes(8, "big")
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + unmask(payload, mask)


class RawClient:
    def __init__(self, stream: trio.SocketStream, buffer: bytes, head: bytes) -> None:
        self.stream = stream
        self.buffer = bytearray(buffer)
        self.head = head

    @property
    def status(self) -> int:
        return int(self.head.split(b" ", 2)[1])

    def header(self, name: bytes) -> bytes | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name:
                return value.strip()
        return None

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def text(self, text: str) -> None:
        await self.send(client_frame(0x1, text.encode()))

    async def _fill(self) -> bool:
        data = await self.stream.receive_some(65536)
        self.buffer += data
        return bool(data)

    async def frame(self) -> tuple[int, int, bytes]:
        """The next server frame: (first byte, opcode, payload); server frames are unmasked."""
        with trio.fail_after(5):
            while True:
                buffer = self.buffer
                if len(buffer) >= 2:
                    assert not buffer[1] & 0x80, "server frames must not be masked"
                    length, offset = buffer[1] & 0x7F, 2
                    if length == 126:
                        length, offset = int.from_bytes(buffer[2:4], "big"), 4
                    elif length == 127:
                        length, offset = int.from_bytes(buffer[2:10], "big"), 10
                    if len(buffer) >= offset + length:  # a partial length reads short
                        first = buffer[0]
                        payload = bytes(buffer[offset : offset + length])
                        del buffer[: offset + length]
                        return first, first & 0x0F, payload
                if not await self._fill():
                    raise EOFError("connection closed")

    async def close_code(self) -> tuple[int, str]:
        while True:
            _, opcode, payload = await self.frame()
            if opcode == 0x8:
                return int.from_bytes(payload[:2], "big"), payload[2:].decode()

    async def until_eof(self) -> bytes:
        with trio.fail_after(5):
            while await self._fill():
                pass
        return bytes(self.buffer)


def upgrade_request(
    path: str = PATH, *, extra: bytes = b"", key: bytes = b"dGhlIHNhbXBsZSBub25jZQ=="
) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: t\r\n".encode()
        + b"Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
        + b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
        + key
        + b"\r\n"
        + extra
        + b"\r\n"
    )


async def connect(port: int, request: bytes | None = None, *, after: bytes = b"") -> RawClient:
    stream = await open_stream(port)
    await stream.send_all((request or upgrade_request()) + after)
    buffer = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in buffer:
            data = await stream.receive_some(65536)
            if not data:
                break
            buffer += data
    head, _, rest = buffer.partition(b"\r\n\r\n")
    return RawClient(stream, rest, head)


# -- pure functions -------------------------------------------------------------------------------


def test_close_reason_is_cut_on_a_character_boundary() -> None:
    body = close_payload(1000, "é" * 100)  # 200 bytes of UTF-8
    assert len(body) <= 125
    assert body[:2] == b"\x03\xe8"
    assert body[2:].decode("utf-8") == "é" * 61


async def test_phases_move_only_along_the_transition_table() -> None:
    """An ASGI message that would move a connection where the table does not go raises, and
    leaves the phase as it was; a message in CLOSED is ignored."""
    client, server = trio.testing.memory_stream_pair()
    upgrade = Upgrade(PATH, PATH.encode(), b"", [], b"dGhlIHNhbXBsZSBub25jZQ==", [], [])
    socket = DirectWebSocket(server, upgrade, MAX_MESSAGE)
    assert socket.phase is Phase.NEW
    assert await socket.receive() == {"type": "websocket.connect"}
    assert socket.phase is Phase.HANDSHAKE
    await socket.send({"type": "websocket.http.response.start", "status": 401, "headers": []})
    assert socket.phase is Phase.REFUSING
    with pytest.raises(IllegalTransition, match="REFUSING -> OPEN"):
        socket._enter(Phase.OPEN)
    with pytest.raises(RuntimeError, match="unexpected ASGI message 'websocket.accept'"):
        await socket.send({"type": "websocket.accept"})
    assert socket.phase is Phase.REFUSING
    await socket.send({"type": "websocket.http.response.body", "body": b"no"})
    assert socket.phase is Phase.CLOSED
    await socket.send({"type": "websocket.accept"})  # ignored once over
    await socket.finish()  # nothing more to answer
    assert socket.phase is Phase.CLOSED
    with pytest.raises(IllegalTransition, match="CLOSED -> CLOSED"):
        socket._enter(Phase.CLOSED)
    await server.aclose()  # Hypercorn's part, once the application has returned
    answer = b""
    while data := await client.receive_some(65536):
        answer += data
    assert answer.startswith(b"HTTP/1.1 401 \r\n")
    assert answer.endswith(b"connection: close\r\n\r\nno")


def test_accept_token_matches_rfc_6455_example() -> None:
    assert accept_token(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize(
    ("request_bytes", "taken"),
    [
        (upgrade_request(), True),
        (upgrade_request(PATH + "?x=1"), True),
        (upgrade_request("/other"), False),
        (upgrade_request(PATH).replace(b"GET", b"POST"), False),
        (upgrade_request(PATH).replace(b"HTTP/1.1", b"HTTP/1.0"), False),
        (upgrade_request(PATH).replace(b"Sec-WebSocket-Version: 13", b"X: 1"), False),
        (upgrade_request(PATH).replace(b"Sec-WebSocket-Key", b"X-Key"), False),
        (upgrade_request(PATH).replace(b"Upgrade: websocket", b"Upgrade: h2c"), False),
        (upgrade_request(PATH).replace(b"keep-alive, Upgrade", b"keep-alive"), False),
        (upgrade_request(PATH).replace(b"Host: t\r\n", b""), False),  # h11 refuses it
        (b"GET /echo HTTP/1.1\r\nBad Header\r\n\r\n", False),
    ],
)
def test_only_valid_upgrades_to_claimed_paths_are_taken(request_bytes: bytes, taken: bool) -> None:
    upgrade = parse_upgrade(request_bytes, b"", frozenset({PATH}))
    assert (upgrade is not None) is taken
    if upgrade is not None:
        assert upgrade.path == PATH
        assert upgrade.key == b"dGhlIHNhbXBsZSBub25jZQ=="


# -- the framing layer over real sockets ----------------------------------------------------------


async def test_handshake_echo_and_subprotocol() -> None:
    app = Echo()
    async with serving(app) as port:
        extra = b"Sec-WebSocket-Protocol: x, chat\r\n"
        client = await connect(port, upgrade_request(PATH + "?q=1", extra=extra))
        assert client.status == 101
        assert client.header(b"sec-websocket-accept") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        assert client.header(b"sec-websocket-protocol") == b"chat"
        assert client.header(b"sec-websocket-extensions") is None  # none offered
        await client.text("héllo")
        assert await client.frame() == (0x81, 0x1, "héllo".encode())
        await client.send(client_frame(0x2, b"\x00\xff"))
        assert await client.frame() == (0x82, 0x2, b"\x00\xff")
        await client.send(client_frame(0x8, close_payload(1000, "done")))
        assert await client.close_code() == (1000, "done")
        with trio.fail_after(5):
            await app.finished.wait()
    scope = app.scopes[0]
    assert (scope["path"], scope["query_string"]) == (PATH, b"q=1")
    assert scope["subprotocols"] == ["x", "chat"]
    assert (scope["scheme"], scope["client"][0]) == ("ws", "127.0.0.1")
    assert app.disconnects == [{"type": "websocket.disconnect", "code": 1000, "reason": "done"}]


async def test_frames_sent_with_the_handshake_and_a_split_head_are_read() -> None:
    async with serving(Echo()) as port:
        client = await connect(port, after=client_frame(0x1, b"early"))
        assert await client.frame() == (0x81, 0x1, b"early")
        stream = await open_stream(port)
        request = upgrade_request()
        await stream.send_all(request[:7])  # "GET /ec": cannot tell yet
        await trio.sleep(0.05)
        await stream.send_all(request[7:])
        with trio.fail_after(5):
            head = await stream.receive_some(65536)
        assert head.startswith(b"HTTP/1.1 101 ")


async def test_fragments_are_joined_and_pings_between_them_answered() -> None:
    async with serving(Echo()) as port:
        client = await connect(port)
        await client.send(client_frame(0x1, b"one ", fin=False))
        await client.send(client_frame(0x9, b"are you there"))
        await client.send(client_frame(0x0, b"two ", fin=False))
        await client.send(client_frame(0xA, b"unsolicited pong"))
        await client.send(client_frame(0x0, "thrée".encode()))
        assert await client.frame() == (0x8A, 0xA, b"are you there")
        assert await client.frame() == (0x81, 0x1, "one two thrée".encode())


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (client_frame(0x1, b"hi", masked=False), 1002),
        (client_frame(0x1, b"hi", rsv=0x20), 1002),
        (client_frame(0x1, b"hi", rsv=0x10), 1002),
        (client_frame(0x1, b"hi", rsv=0x40), 1002),  # RSV1 without permessage-deflate
        (client_frame(0x3, b"hi"), 1002),
        (client_frame(0xB, b"hi"), 1002),
        (client_frame(0x9, b"p" * 126), 1002),
        (client_frame(0x9, b"p", fin=False), 1002),
        (client_frame(0x0, b"orphan"), 1002),
        (client_frame(0x1, b"a", fin=False) + client_frame(0x1, b"b"), 1002),
        (client_frame(0x1, b"a", fin=False) + client_frame(0x0, b"b", rsv=0x40), 1002),
        (client_frame(0x1, b"\xff\xfe"), 1007),
        (client_frame(0x1, b"\xed\xa0\x80"), 1007),  # an encoded surrogate is not UTF-8
        (client_frame(0x8, b"\x03"), 1002),
        (client_frame(0x8, (1005).to_bytes(2, "big")), 1002),
        (client_frame(0x8, (999).to_bytes(2, "big")), 1002),
        (client_frame(0x8, (2000).to_bytes(2, "big")), 1002),
        (client_frame(0x8, (1000).to_bytes(2, "big") + b"\xff"), 1007),
        (client_frame(0x1, b"", declared=MAX_MESSAGE + 1), 1009),  # refused from the header
        (client_frame(0x1, b"", declared=2**40), 1009),
        (client_frame(0x1, b"x" * 600, fin=False) + client_frame(0x0, b"x" * 600), 1009),
    ],
)
async def test_protocol_violations_close_with_the_rfc_code(frame: bytes, code: int) -> None:
    app = Echo()
    async with serving(app) as port:
        client = await connect(port)
        await client.send(frame)
        assert (await client.close_code())[0] == code
        await client.until_eof()  # and the server hangs up
        with trio.fail_after(5):
            await app.finished.wait()
    assert app.disconnects[0]["code"] == code


async def test_closing_codes_from_the_client_are_echoed() -> None:
    async with serving(Echo()) as port:
        for payload, answer in [(b"", b""), ((3000).to_bytes(2, "big"), b"\x0b\xb8")]:
            client = await connect(port)
            await client.send(client_frame(0x8, payload))
            first, opcode, body = await client.frame()
            assert (opcode, body) == (0x8, answer)


async def test_server_close_waits_for_the_clients_answer() -> None:
    app = Echo()
    async with serving(app) as port:
        client = await connect(port)
        await client.text("close")
        assert await client.close_code() == (4321, "bye")
        await client.send(client_frame(0x8, close_payload(4321)))
        await client.until_eof()
        with trio.fail_after(5):
            await app.finished.wait()
    assert app.disconnects[-1]["code"] == 4321


@pytest.mark.parametrize(
    ("text", "code"), [("quit", 1011), ("boom", 1011), ("group", 1011), ("nothing", 1011)]
)
async def test_an_application_that_ends_without_closing_gets_1011(text: str, code: int) -> None:
    async with serving(Echo()) as port:
        client = await connect(port)
        await client.text(text)
        assert (await client.close_code())[0] == code


@pytest.mark.parametrize(
    ("query", "status", "body"),
    [
        ("refuse", 401, b'{"message":"no"}'),
        ("deny", 403, b""),
        ("crash", 500, b""),
        ("silent", 500, b""),
        ("early", 500, b""),  # websocket.send before websocket.accept: an application error
        ("unoffered", 500, b""),  # a subprotocol the client did not offer
    ],
)
async def test_handshake_answered_over_http(query: str, status: int, body: bytes) -> None:
    async with serving(Echo()) as port:
        client = await connect(port, upgrade_request(f"{PATH}?{query}"))
        assert client.status == status
        assert client.header(b"connection") == b"close"
        assert await client.until_eof() == body


async def test_abrupt_disconnect_reaches_the_application_as_1006() -> None:
    app = Echo()
    async with serving(app) as port:
        client = await connect(port)
        await client.text("x")
        await client.frame()
        await client.stream.aclose()
        with trio.fail_after(5):
            await app.finished.wait()
    assert app.disconnects[0]["code"] == 1006


async def test_permessage_deflate_without_context_takeover() -> None:
    async with serving(Echo()) as port:
        extra = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        client = await connect(port, upgrade_request(extra=extra))
        answer = client.header(b"sec-websocket-extensions") or b""
        assert answer.startswith(b"permessage-deflate")
        assert b"server_no_context_takeover" in answer
        assert b"client_no_context_takeover" in answer
        deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
        packed = deflater.compress(b"compressed hello") + deflater.flush(zlib.Z_SYNC_FLUSH)
        await client.send(client_frame(0x1, packed[:-4], rsv=0x40))
        assert await client.frame() == (0x81, 0x1, b"compressed hello")  # small: sent plain
        await client.text("big")
        first, opcode, payload = await client.frame()
        assert (first & 0x40, opcode) == (0x40, 0x1)
        inflated = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
        assert inflated == b"y" * (COMPRESS_MIN_BYTES * 4)
        assert len(payload) < 100
        # A message that inflates past the limit is refused without inflating all of it.
        bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
        packed = bomb.compress(b"a" * 10 * MAX_MESSAGE) + bomb.flush(zlib.Z_SYNC_FLUSH)
        assert len(packed) < MAX_MESSAGE
        await client.send(client_frame(0x1, packed[:-4], rsv=0x40))
        assert (await client.close_code())[0] == 1009
    async with serving(Echo()) as port:
        client = await connect(port, upgrade_request(extra=extra))
        await client.send(client_frame(0x1, b"not deflate data", rsv=0x40))
        assert (await client.close_code())[0] == 1007


async def test_without_a_claim_hypercorn_serves_it() -> None:
    app = Echo()
    async with serving(app, claim=False) as port:
        client = await connect(port)
        assert client.status == 101
        assert client.header(b"upgrade") == b"WebSocket"  # Hypercorn's spelling; ours is lower
        await client.text("still works")
        assert await client.frame() == (0x81, 0x1, b"still works")


async def test_writes_that_stall_past_the_send_timeout_abort_the_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(direct_ws, "SEND_TIMEOUT_SECONDS", 0.3)
    app = Echo()
    async with serving(app) as port:
        stream = await open_stream(port)
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await stream.send_all(upgrade_request())
        # Ask for large answers and never read them: the server's writes stall, the echo task
        # is stuck in a send, and only the timeout ends it.
        with trio.move_on_after(10), contextlib.suppress(trio.BrokenResourceError):
            while not app.finished.is_set():  # until the server cuts the connection (a reset)
                await stream.send_all(client_frame(0x1, b"huge"))
                await trio.sleep(0.01)
        with trio.fail_after(5):
            await app.finished.wait()
        await stream.aclose()


# -- the Dramaverse server ------------------------------------------------------------------------


@asynccontextmanager
async def counting(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[list[str]]:
    served: list[str] = []
    original = direct_ws.serve

    async def serve(server: Any, upgrade: direct_ws.Upgrade) -> None:
        served.append(upgrade.path)
        await original(server, upgrade)

    monkeypatch.setattr(direct_ws, "serve", serve)
    yield served


async def hello_ready(client: RawClient, token: str) -> dict[str, Any]:
    await client.text(json.dumps({"type": "hello", "token": token}))
    _, _, payload = await client.frame()
    ready: dict[str, Any] = json.loads(payload)
    return ready


def native_request(extra: bytes = b"") -> bytes:
    key = base64.b64encode(os.urandom(16))
    return upgrade_request(
        "/api/ws", key=key, extra=b"Sec-WebSocket-Protocol: dramaverse.v1\r\n" + extra
    )


async def test_native_socket_takes_the_direct_path(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = await server.register("alice")
    port = int(server.url.rsplit(":", 1)[1])
    async with client_streams(), counting(monkeypatch) as served:
        client = await connect(port, native_request())
        assert client.status == 101
        assert client.header(b"sec-websocket-protocol") == b"dramaverse.v1"
        assert (await hello_ready(client, token))["type"] == "ready"
        assert served == ["/api/ws"]
        # Binary frames are the application's to refuse, with its own error frame.
        await client.send(client_frame(0x2, b"\x01"))
        _, _, payload = await client.frame()
        assert b"Binary frames are not supported" in payload
        # Refusals keep their shape: a foreign Origin gets the JSON 403.
        refused = await connect(port, native_request(b"Origin: https://evil.example\r\n"))
        assert refused.status == 403
        assert b"not allowed by CORS policy" in await refused.until_eof()
        assert served == ["/api/ws", "/api/ws"]
        # An HTTP request first, then an upgrade on the same connection: Hypercorn's.
        stream = await open_stream(port)
        await stream.send_all(b"GET /api/health HTTP/1.1\r\nHost: t\r\n\r\n")
        with trio.fail_after(5):
            assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 ")
        await stream.send_all(native_request())
        rest = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in rest:
                rest += await stream.receive_some(65536)
        assert rest.startswith(b"HTTP/1.1 101 ")
        via_hypercorn = RawClient(stream, rest.partition(b"\r\n\r\n")[2], rest)
        assert (await hello_ready(via_hypercorn, token))["type"] == "ready"
        # A percent-encoded path is Hypercorn's too, and served the same.
        encoded = await connect(port, native_request().replace(b"/api/ws", b"/api/w%73"))
        assert (await hello_ready(encoded, token))["type"] == "ready"
        assert served == ["/api/ws", "/api/ws"]


async def test_ws_direct_off_leaves_every_socket_to_hypercorn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_server(make_settings(tmp_path, ws_direct=False)) as server:
        token = await server.register("alice")
        port = int(server.url.rsplit(":", 1)[1])
        async with client_streams(), counting(monkeypatch) as served:
            client = await connect(port, native_request())
            assert client.header(b"upgrade") == b"WebSocket"
            assert (await hello_ready(client, token))["type"] == "ready"
            assert served == []


async def test_socketio_websocket_takes_the_direct_path(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    async with client_streams(), counting(monkeypatch) as served:
        polling = await server.client.get(
            "/socket.io/", params={"EIO": "4", "transport": "polling"}
        )
        assert polling.text.startswith("0{")  # long-polling stays with Hypercorn
        assert served == []
        request = upgrade_request("/socket.io/?EIO=4&transport=websocket")
        client = await connect(port, request)
        assert client.status == 101
        _, opcode, payload = await client.frame()
        assert opcode == 0x1
        assert json.loads(payload[1:])["sid"]  # the engine.io open packet
        assert payload.startswith(b"0")
        assert served == ["/socket.io/"]


async def test_random_bytes_never_break_the_server(caplog: pytest.LogCaptureFixture) -> None:
    """Garbage after a valid handshake ends in a close with an RFC code or an open connection
    waiting for the rest of a frame, never in an error inside the server; and the server keeps
    serving."""
    rng = random.Random(6455)
    app = Echo()
    valid_codes = {1002, 1007, 1009}
    async with serving(app) as port:
        for _ in range(60):
            client = await connect(port)
            garbage = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
            await client.send(garbage)
            with trio.move_on_after(0.3):
                while True:
                    _, opcode, payload = await client.frame()
                    if opcode == 0x8:
                        assert int.from_bytes(payload[:2], "big") in valid_codes
                        break
            await trio.aclose_forcefully(client.stream)
        client = await connect(port)
        await client.text("still here")
        assert await client.frame() == (0x81, 0x1, b"still here")
    assert "Error in ASGI Framework" not in caplog.text


async def test_accept_headers_and_a_second_receive_after_the_disconnect() -> None:
    app = Echo()
    async with serving(app) as port:
        client = await connect(port, upgrade_request(PATH + "?headers"))
        assert client.header(b"x-test") == b"1"
        await client.text("twice")
        assert await client.close_code() == (1000, "")
        await client.send(client_frame(0x8, close_payload(1000)))
        with trio.fail_after(5):
            await app.finished.wait()
    assert app.disconnects[0] == app.disconnects[1]
    assert app.disconnects[0]["code"] == 1000


async def test_frames_arriving_a_byte_at_a_time_are_assembled() -> None:
    async with serving(Echo()) as port:
        client = await connect(port)
        text = "z" * 300  # a 16-bit length: the header itself arrives in pieces
        for byte in client_frame(0x1, text.encode()):
            await client.send(bytes((byte,)))
        assert await client.frame() == (0x81, 0x1, text.encode())
        frame = client_frame(0x1, b"", declared=2**20)  # 64-bit length, refused when complete
        for byte in frame[:9]:
            await client.send(bytes((byte,)))
        await trio.sleep(0.05)
        await client.send(frame[9:])
        assert (await client.close_code())[0] == 1009


@pytest.mark.parametrize(
    ("offer", "answer", "compressed"),
    [
        (b"permessage-deflate; server_max_window_bits=8", None, False),  # zlib cannot: declined
        (b"x-webkit-deflate-frame", None, False),
        (b"permessage-deflate; server_max_window_bits=10", b"permessage-deflate", True),
    ],
)
async def test_deflate_offers_the_server_cannot_or_can_honour(
    offer: bytes, answer: bytes | None, compressed: bool
) -> None:
    async with serving(Echo()) as port:
        client = await connect(
            port, upgrade_request(extra=b"Sec-WebSocket-Extensions: " + offer + b"\r\n")
        )
        header = client.header(b"sec-websocket-extensions")
        assert (header is None) is (answer is None)
        if answer is not None:
            assert header is not None
            assert header.startswith(answer)
        await client.text("big")
        first, _, payload = await client.frame()
        assert bool(first & 0x40) is compressed
        if compressed:
            inflated = zlib.decompressobj(-10).decompress(payload + b"\x00\x00\xff\xff")
            assert inflated == b"y" * (COMPRESS_MIN_BYTES * 4)


@pytest.mark.parametrize(
    ("chunks", "taken"),
    [
        ([upgrade_request()[:5], upgrade_request()[5:]], True),
        ([b"GET /other HTTP/1.1\r\n"], False),
        ([b"GET /echo HTTP/1.1\r\nHost: t\r\n"], False),  # the client closed mid-head
        ([], False),  # closed before a byte
        ([b"GET /echo HTTP/1.1\r\nX: " + b"a" * direct_ws.MAX_HEAD_BYTES], False),
        ([b"GET /ec", b"ho?x HTTP/1.1\r\nHost: t\r\n\r\n"], False),  # no upgrade: Hypercorn's
        ([b"GE", b"T /echo/more HTTP/1.1\r\n"], False),
    ],
)
async def test_sniff_reads_only_while_it_may_be_a_claimed_upgrade(
    chunks: list[bytes], taken: bool
) -> None:
    client, server = trio.testing.memory_stream_pair()
    for chunk in chunks:
        await client.send_all(chunk)
    await client.send_eof() if hasattr(client, "send_eof") else await client.aclose()
    with trio.fail_after(5):
        data, upgrade = await direct_ws.sniff(server, frozenset({PATH}), 65536)
    assert (upgrade is not None) is taken
    assert data.startswith(b"".join(chunks)[: len(data)])
    if not taken and chunks:
        assert data  # whatever was read goes to Hypercorn


async def test_a_stalled_writer_holds_back_other_writers_until_the_connection_is_cut(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two tasks write (a flood of frames, and the pongs of the reader): while one write is
    stuck on a peer that does not read, the other waits its turn; once the send timeout cuts
    the connection, both stop and the reader sees the end."""
    monkeypatch.setattr(direct_ws, "SEND_TIMEOUT_SECONDS", 0.3)
    ended: list[dict[str, Any]] = []
    finished = trio.Event()

    async def flood(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        await receive()
        await send({"type": "websocket.accept"})

        async def writer() -> None:
            while True:
                await send({"type": "websocket.send", "bytes": b"f" * 60_000})
                await trio.lowlevel.checkpoint()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                while True:
                    message = await receive()
                    if message["type"] == "websocket.disconnect":
                        ended.append(message)
                        nursery.cancel_scope.cancel()
                        return
        finally:
            finished.set()

    fence.install()
    port = free_port()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.graceful_timeout = 1
    direct_ws.claim_paths(config, [PATH])
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(hypercorn_serve, flood, config, shutdown_trigger=stop.wait))
        async with client_streams():
            stream = await open_stream(port)
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            await stream.send_all(upgrade_request())
            with trio.move_on_after(10), contextlib.suppress(trio.BrokenResourceError):
                while not finished.is_set():  # until the server cuts the connection (a reset)
                    await stream.send_all(client_frame(0x9, b"are you there"))
                    await trio.sleep(0.05)
            with trio.fail_after(5):
                await finished.wait()
        stop.set()
    assert finished.is_set()
    assert ended == [{"type": "websocket.disconnect", "code": 1006, "reason": ""}]
