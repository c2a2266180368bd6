"""cluster/ws_relay.py: the worker relay's WebSocket client, against scripted owners.

Each owner is a real Unix socket served by a script (``tests/ws_peer.py``) that does a correct
handshake with websockets' server protocol and then writes exactly the bytes a test wants:
messages with and after the 101, every class of close code, malformed frames, abrupt ends,
messages at and over the size limit, floods that must be held back. The relay must turn all of
it into a close for its client (with a code that tells the client what to do) and never raise;
``test_socketio_workers.py`` runs the same relay behind the router against a real Hypercorn.
"""

from __future__ import annotations

import contextlib
import shutil
import struct
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from websockets.frames import Frame, Opcode
from websockets.utils import accept_key

from dramaverse.cluster.ws_relay import (
    BROKEN,
    GONE,
    MAX_MESSAGE_BYTES,
    MAX_REJECTION_BYTES,
    TOO_BIG,
    OwnerLost,
    Rejected,
    Unrelayable,
    Upstream,
    pump,
)
from dramaverse.domain.close_codes import TABLE, CloseCode, Reconnect, reconnect_for
from tests.ws_peer import Peer, Script, close_frame, unix_peer

TARGET = "/socket.io/?EIO=4&transport=websocket&sid=w1.abc"
HEADERS = [(b"origin", b"http://localhost:5173"), (b"x-dramaverse-client", b"198.51.100.7:5555")]


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="dv", dir="/tmp"))  # Unix socket paths are short
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


async def connect(
    path: Path,
    target: str = TARGET,
    headers: list[tuple[bytes, bytes]] | None = None,
    subprotocols: tuple[str, ...] = (),
) -> Upstream:
    with trio.fail_after(10):
        return await Upstream.connect(
            str(path), "dv.example", target, HEADERS if headers is None else headers, subprotocols
        )


async def relay_all(upstream: Upstream) -> tuple[list[str | bytes], tuple[int, str]]:
    """Everything the owner's side delivers, and the close the client gets."""
    delivered: list[str | bytes] = []

    async def deliver(message: str | bytes) -> None:
        delivered.append(message)

    try:
        with trio.fail_after(10):
            close = await upstream.forward_to(deliver)
    finally:
        await upstream.aclose()
    return delivered, close


async def owner_says(
    sock_dir: Path, data: bytes, *, hang_up: bool = False
) -> tuple[list[str | bytes], tuple[int, str], list[Any]]:
    """Accept, write ``data``, then read what the relay answers until it hangs up (or hang up
    first); the delivered messages, the client's close, and the relay's close frame (or None)."""
    answers: list[Any] = []
    done = trio.Event()

    async def script(peer: Peer) -> None:
        try:
            await peer.accept()
            with contextlib.suppress(trio.BrokenResourceError):  # the relay stopped reading
                await peer.send(data)
            if not hang_up:
                answers.append(await peer.close_frame())
        finally:
            done.set()

    path = sock_dir / "1.sock"
    async with unix_peer(path, script):
        delivered, close = await relay_all(await connect(path))
        with trio.fail_after(10):
            await done.wait()  # the script ends at the relay's hang-up
    return delivered, close, answers


def text(data: str, *, fin: bool = True) -> bytes:
    return Frame(Opcode.TEXT, data.encode(), fin).serialize(mask=False)


# -- the handshake --------------------------------------------------------------------------


async def test_messages_pass_both_ways_with_the_clients_target_headers_and_subprotocol(
    sock_dir: Path,
) -> None:
    seen: dict[str, Any] = {}

    async def script(peer: Peer) -> None:
        request = await peer.accept(headers={"X-Owner": "yes"})
        seen["request"] = request
        await peer.send(text("hello") + Frame(Opcode.BINARY, b"\x00\xff").serialize(mask=False))
        seen["echo"] = await peer.next_message()
        seen["binary"] = await peer.next_message()
        await peer.send_frame(close_frame(1000))
        seen["close"] = await peer.close_frame()  # the echo: the closing handshake completes

    path = sock_dir / "1.sock"
    async with unix_peer(path, script, subprotocols=["chat"]):
        upstream = await connect(path, subprotocols=("chat", "other"))
        assert upstream.subprotocol == "chat"
        names = [name.lower() for name, _ in upstream.headers]
        assert (b"X-Owner", b"yes") in upstream.headers
        assert not {b"upgrade", b"connection", b"sec-websocket-accept"} & set(names)
        await upstream.send("from the client")
        await upstream.send(b"\x01\x02")
        delivered, close = await relay_all(upstream)
    assert delivered == ["hello", b"\x00\xff"]
    assert close == (1000, "")
    assert (seen["echo"], seen["binary"]) == ("from the client", b"\x01\x02")
    request = seen["request"]
    assert request.path == TARGET
    assert request.headers["Host"] == "dv.example"
    assert request.headers["Origin"] == "http://localhost:5173"
    assert request.headers["X-Dramaverse-Client"] == "198.51.100.7:5555"
    assert request.headers["Sec-WebSocket-Protocol"] == "chat, other"
    assert (seen["close"].code, seen["close"].reason) == (1000, "")


async def test_frames_that_come_with_the_101_are_delivered_and_their_pings_answered(
    sock_dir: Path,
) -> None:
    pong: list[Frame | None] = []

    async def script(peer: Peer) -> None:
        ping = Frame(Opcode.PING, b"with the 101").serialize(mask=False)
        await peer.accept(extra=ping + text("first") + text("second"))
        pong.append(await peer.next_frame())
        await peer.send_frame(close_frame(4000, "bye"))
        await peer.close_frame()

    path = sock_dir / "1.sock"
    async with unix_peer(path, script):
        delivered, close = await relay_all(await connect(path))
    assert delivered == ["first", "second"]
    assert close == (4000, "bye")
    assert pong[0] is not None
    assert (pong[0].opcode, pong[0].data) == (Opcode.PONG, b"with the 101")


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n"
        b'{"no":1}',
        b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n\r\n"
        b'{"no":1}',  # delimited by the end of the connection
    ],
    ids=["content-length", "until-eof"],
)
async def test_a_refusal_comes_back_with_status_headers_and_body(
    sock_dir: Path, answer: bytes
) -> None:
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(answer)

    path = sock_dir / "1.sock"
    async with unix_peer(path, script):
        with pytest.raises(Rejected) as refused:
            await connect(path)
    assert refused.value.status == 403
    assert (b"Content-Type", b"application/json") in refused.value.headers
    assert refused.value.body == b'{"no":1}'


def _answer_with_key(make: Any) -> Script:
    async def script(peer: Peer) -> None:
        request = await peer.read_request()
        await peer.send(make(request.headers["Sec-WebSocket-Key"]))

    return script


def _switching(accept: str, *extra: str) -> bytes:
    lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade"]
    lines += [f"Sec-WebSocket-Accept: {accept}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize(
    "make",
    [
        lambda key: b"",  # hangs up without a word
        lambda key: b"HELLO\r\n\r\n",
        lambda key: b"HTTP/1.1 101 Switching",  # then hangs up mid-line
        lambda key: _switching("d3Jvbmcgd3Jvbmcgd3Jvbmc="),
        lambda key: _switching(accept_key(key), "Sec-WebSocket-Protocol: never-offered"),
        lambda key: _switching(accept_key(key), "Sec-WebSocket-Extensions: permessage-deflate"),
        lambda key: (
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: %d\r\n\r\n" % (MAX_REJECTION_BYTES + 1)
            + b"x" * (MAX_REJECTION_BYTES + 1)
        ),
    ],
    ids=["silent", "garbage", "cut", "bad-accept", "subprotocol", "extension", "long-refusal"],
)
async def test_an_owner_that_answers_nonsense_is_lost(sock_dir: Path, make: Any) -> None:
    path = sock_dir / "1.sock"
    async with unix_peer(path, _answer_with_key(make)):
        with pytest.raises(OwnerLost):
            await connect(path, subprotocols=("chat",))


async def test_a_missing_owner_socket_is_an_oserror(sock_dir: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await connect(sock_dir / "nobody.sock")


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/socket.io/?sid=w1.\u00e9", HEADERS),
        ("/socket.io/?sid=w1.abc\r\nX-Evil: 1", HEADERS),
        (TARGET, [(b"cookie", b"token=secret-value\r\nX-Evil: 1")]),
        (TARGET, [(b"cookie", b"token=secret-value\x00")]),
    ],
    ids=["non-ascii-target", "crlf-target", "crlf-header", "nul-header"],
)
async def test_a_request_the_local_hop_cannot_carry_is_refused_before_connecting(
    sock_dir: Path, target: str, headers: list[tuple[bytes, bytes]]
) -> None:
    reached: list[Peer] = []

    async def script(peer: Peer) -> None:
        reached.append(peer)

    path = sock_dir / "1.sock"
    async with unix_peer(path, script):
        with pytest.raises(Unrelayable) as refused:
            await connect(path, target=target, headers=headers)
    assert reached == []
    assert "secret" not in str(refused.value)  # a header's value may be a credential


# -- close codes ----------------------------------------------------------------------------

RECONNECT = [c for c, m in TABLE.items() if m.reconnect is Reconnect.YES]
TERMINAL = [c for c, m in TABLE.items() if m.reconnect is Reconnect.NO]
CLIENTS_CHOICE = [c for c, m in TABLE.items() if m.reconnect is Reconnect.CLIENT]


@pytest.mark.parametrize(
    "code",
    [*RECONNECT, 4050, *TERMINAL, 4150, *CLIENTS_CHOICE, 1003, 1012, 1013, 1014, 3000, 4999],
    ids=str,
)
async def test_the_owners_close_reaches_the_client_with_its_code_and_reason(
    sock_dir: Path, code: int
) -> None:
    delivered, close, answers = await owner_says(
        sock_dir, text("last words") + close_frame(code, "why").serialize(mask=False)
    )
    assert delivered == ["last words"]
    assert close == (code, "why")
    assert answers[0] is not None
    assert (answers[0].code, answers[0].reason) == (code, "why")  # the closing handshake


async def test_a_close_without_a_code_reaches_the_client_as_1000(sock_dir: Path) -> None:
    _, close, answers = await owner_says(sock_dir, Frame(Opcode.CLOSE, b"").serialize(mask=False))
    assert close == (1000, "")
    assert answers[0] is not None


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1015, 2999, 5000, 65535], ids=str)
async def test_a_close_code_no_endpoint_may_send_is_the_owner_breaking_the_protocol(
    sock_dir: Path, code: int
) -> None:
    _, close, answers = await owner_says(sock_dir, close_frame(code).serialize(mask=False))
    assert close == BROKEN
    assert reconnect_for(close[0]) is Reconnect.YES
    assert answers[0] is not None
    assert answers[0].code == CloseCode.PROTOCOL_ERROR


# -- what the owner must not send -------------------------------------------------------------

MALFORMED = {
    "masked": Frame(Opcode.TEXT, b"x").serialize(mask=True),
    "reserved-bit": bytes([0x80 | 0x40 | 0x1, 1]) + b"x",
    "unknown-opcode": bytes([0x80 | 0x3, 1]) + b"x",
    "long-ping": bytes([0x80 | 0x9, 126]) + struct.pack("!H", 126) + b"p" * 126,
    "fragmented-ping": bytes([0x9, 1]) + b"p",
    "continuation-first": bytes([0x80 | 0x0, 1]) + b"x",
    "text-inside-a-message": text("a", fin=False) + text("b"),
    "close-reason-not-utf8": Frame(Opcode.CLOSE, b"\x03\xe8\xff").serialize(mask=False),
    "close-too-short": Frame(Opcode.CLOSE, b"\x03").serialize(mask=False),
}


@pytest.mark.parametrize("frame", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_a_malformed_frame_ends_the_relay_with_a_reconnect_code(
    sock_dir: Path, frame: bytes
) -> None:
    delivered, close, answers = await owner_says(sock_dir, text("before") + frame + text("after"))
    assert delivered == ["before"]  # what came before the bad frame still arrives
    assert close == BROKEN
    assert reconnect_for(close[0]) is Reconnect.YES
    assert answers[0] is not None
    assert answers[0].code in (CloseCode.PROTOCOL_ERROR, CloseCode.INVALID_DATA)


@pytest.mark.parametrize(
    "frames",
    [
        [Frame(Opcode.TEXT, b"ok \xff\xfe")],
        [Frame(Opcode.TEXT, b"\xe2\x82", fin=False), Frame(Opcode.CONT, b"!")],
    ],
    ids=["one-frame", "split-character"],
)
async def test_text_that_is_not_utf8_ends_the_relay_and_tells_the_owner_1007(
    sock_dir: Path, frames: list[Frame]
) -> None:
    data = b"".join(f.serialize(mask=False) for f in frames)
    delivered, close, answers = await owner_says(sock_dir, text("before") + data)
    assert delivered == ["before"]
    assert close == BROKEN
    assert answers[0] is not None
    assert answers[0].code == CloseCode.INVALID_DATA


async def test_a_character_split_across_fragments_is_delivered_whole(sock_dir: Path) -> None:
    euro = "\u20ac".encode()
    data = (
        Frame(Opcode.TEXT, b"price " + euro[:1], fin=False).serialize(mask=False)
        + Frame(Opcode.CONT, euro[1:], fin=True).serialize(mask=False)
        + close_frame(1000).serialize(mask=False)
    )
    delivered, close, _ = await owner_says(sock_dir, data)
    assert delivered == ["price \u20ac"]
    assert close == (1000, "")


@pytest.mark.parametrize(
    "ending",
    [b"", text("half a frame")[:5], bytes([0x81])],
    ids=["clean", "mid-frame", "mid-header"],
)
async def test_an_owner_that_vanishes_closes_the_client_with_1001(
    sock_dir: Path, ending: bytes
) -> None:
    delivered, close, _ = await owner_says(sock_dir, text("x") + ending, hang_up=True)
    assert delivered == ["x"]
    assert close == GONE
    assert reconnect_for(close[0]) is Reconnect.YES


# -- sizes and back-pressure ------------------------------------------------------------------


async def test_large_messages_pass_whole_in_one_frame_or_many(sock_dir: Path) -> None:
    big_text = "\u00e9t\u00e9 " * 1_000_000  # 6 MB of UTF-8
    big_binary = bytes(range(256)) * 20_000  # 5 MB
    pieces = [big_binary[i : i + 65_536] for i in range(0, len(big_binary), 65_536)]
    fragments = [Frame(Opcode.BINARY, pieces[0], fin=False)]
    fragments += [Frame(Opcode.CONT, p, fin=False) for p in pieces[1:-1]]
    fragments.append(Frame(Opcode.CONT, pieces[-1], fin=True))
    received: list[str | bytes | None] = []

    async def script(peer: Peer) -> None:
        await peer.accept()
        await peer.send(text(big_text))
        await peer.send(b"".join(f.serialize(mask=False) for f in fragments))
        received.append(await peer.next_message())
        await peer.send_frame(close_frame(1000))
        await peer.close_frame()

    path = sock_dir / "1.sock"
    async with unix_peer(path, script), trio.open_nursery() as nursery:
        upstream = await connect(path)
        nursery.start_soon(upstream.send, big_text * 2)  # a big one the other way, meanwhile
        delivered, close = await relay_all(upstream)
    assert delivered == [big_text, big_binary]
    assert received == [big_text * 2]
    assert close == (1000, "")


async def test_a_message_over_the_limit_closes_both_sides_with_1009(sock_dir: Path) -> None:
    header = bytes([0x82, 127]) + struct.pack("!Q", MAX_MESSAGE_BYTES + 1)
    delivered, close, answers = await owner_says(sock_dir, text("small") + header)
    assert delivered == ["small"]
    assert close == TOO_BIG
    assert reconnect_for(close[0]) is Reconnect.YES
    assert answers[0] is not None
    assert answers[0].code == CloseCode.TOO_BIG


async def test_fragments_that_add_up_over_the_limit_close_with_1009(sock_dir: Path) -> None:
    piece = b"\x00" * (1 << 20)
    count = MAX_MESSAGE_BYTES // len(piece) + 1
    data = Frame(Opcode.BINARY, piece, fin=False).serialize(mask=False)
    data += Frame(Opcode.CONT, piece, fin=False).serialize(mask=False) * count
    delivered, close, _ = await owner_says(sock_dir, data, hang_up=True)
    assert delivered == []
    assert close == TOO_BIG


async def test_a_slow_client_holds_back_the_owners_writes(sock_dir: Path) -> None:
    message = "m" * 2000
    count = 4000  # 8 MB: far more than the socket buffers hold
    sent = trio.Event()

    async def script(peer: Peer) -> None:
        await peer.accept()
        await peer.send(text(message) * count + close_frame(1000).serialize(mask=False))
        sent.set()
        await peer.close_frame()

    release = trio.Event()
    first = trio.Event()
    delivered: list[str | bytes] = []

    async def deliver(data: str | bytes) -> None:
        delivered.append(data)
        first.set()
        await release.wait()  # the client's socket is full

    path = sock_dir / "1.sock"
    async with unix_peer(path, script):
        upstream = await connect(path)
        async with trio.open_nursery() as nursery:
            closes: list[tuple[int, str]] = []

            async def relay() -> None:
                closes.append(await upstream.forward_to(deliver))

            nursery.start_soon(relay)
            with trio.fail_after(10):
                await first.wait()
                await trio.testing.wait_all_tasks_blocked()
            assert not sent.is_set()  # the owner is blocked in its write
            assert len(delivered) == 1  # the relay reads no more than it has delivered
            release.set()
        await upstream.aclose()
    assert sent.is_set()
    assert len(delivered) == count
    assert closes == [(1000, "")]


# -- the ASGI side ----------------------------------------------------------------------------


class Client:
    """The client's ASGI WebSocket as the router has it (accepted): messages in, sent out."""

    def __init__(self) -> None:
        self.inbox, self._messages = trio.open_memory_channel[dict[str, Any]](16)
        self.sent: list[dict[str, Any]] = []
        self._changed = trio.Event()

    async def receive(self) -> dict[str, Any]:
        return await self._messages.receive()

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        self._changed.set()
        self._changed = trio.Event()

    async def sent_at_least(self, count: int) -> None:
        with trio.fail_after(10):
            while len(self.sent) < count:
                await self._changed.wait()


class EchoOwner:
    """Echoes every message until ``break`` (answered with a malformed frame) or the relay's
    close; records the close frames it received."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.closes: list[Any] = []
        self._changed = trio.Event()

    async def __call__(self, peer: Peer) -> None:
        await peer.accept()
        while True:
            message = await peer.next_message()
            if message is None:
                self._closed(peer.protocol.close_rcvd)
                return
            if message == "break":
                await peer.send(bytes([0x80 | 0x3, 0]))
                self._closed(await peer.close_frame())
                return
            await peer.send(text(f"echo {message!s}"))

    def _closed(self, close: Any) -> None:
        self.closes.append(close)
        self._changed.set()
        self._changed = trio.Event()

    async def closed_at_least(self, count: int) -> None:
        with trio.fail_after(10):
            while len(self.closes) < count:
                await self._changed.wait()


@pytest.fixture
async def echo_owner(sock_dir: Path) -> AsyncIterator[EchoOwner]:
    owner = EchoOwner(sock_dir / "1.sock")
    async with unix_peer(owner.path, owner):
        yield owner


async def test_an_owner_breaking_one_relay_leaves_its_neighbours_alone(
    echo_owner: EchoOwner,
) -> None:
    broken, neighbour = Client(), Client()
    async with trio.open_nursery() as nursery:
        for client in (broken, neighbour):
            upstream = await connect(echo_owner.path)
            nursery.start_soon(_pump_and_close, upstream, client)
        await neighbour.inbox.send({"type": "websocket.receive", "text": "one"})
        await broken.inbox.send({"type": "websocket.receive", "text": "break"})
        await broken.sent_at_least(1)
        await neighbour.inbox.send({"type": "websocket.receive", "text": "two"})
        await neighbour.sent_at_least(2)
        await neighbour.inbox.send({"type": "websocket.disconnect", "code": 4000})
    await echo_owner.closed_at_least(2)
    code, reason = BROKEN
    assert broken.sent == [{"type": "websocket.close", "code": code, "reason": reason}]
    assert [m.get("text") for m in neighbour.sent] == ["echo one", "echo two"]
    assert sorted(c.code for c in echo_owner.closes) == [CloseCode.PROTOCOL_ERROR, 4000]


async def _pump_and_close(upstream: Upstream, client: Client) -> None:
    try:
        await pump(upstream, client.receive, client.send)  # type: ignore[arg-type]
    finally:
        await upstream.aclose()


@pytest.mark.parametrize(
    ("code", "owner_gets"), [(4001, 4001), (1006, 1000), (None, 1000), (1005, 1000)], ids=str
)
async def test_a_client_that_leaves_closes_the_owners_side_with_a_sendable_code(
    echo_owner: EchoOwner, code: int | None, owner_gets: int
) -> None:
    client = Client()
    upstream = await connect(echo_owner.path)
    await client.inbox.send({"type": "websocket.disconnect", "code": code})
    with trio.fail_after(10):
        await _pump_and_close(upstream, client)
    await echo_owner.closed_at_least(1)
    assert client.sent == []
    assert echo_owner.closes[0].code == owner_gets


async def test_a_client_message_after_the_owners_close_is_dropped_quietly(
    sock_dir: Path,
) -> None:
    async def script(peer: Peer) -> None:
        await peer.accept()
        await peer.send_frame(close_frame(4100, "auth"))
        await peer.close_frame()

    path = sock_dir / "1.sock"
    async with unix_peer(path, script):
        upstream = await connect(path)
        delivered, close = await relay_all(upstream)
        with pytest.raises(trio.BrokenResourceError):
            await upstream.send("too late")
    assert (delivered, close) == ([], (4100, "auth"))
