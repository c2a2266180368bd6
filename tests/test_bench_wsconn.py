"""bench/wsconn.py and bench/wsclient.py: the benchmarks' WebSocket client.

Against the real server (the native protocol end to end, with and without permessage-deflate),
and against scripted servers (``tests/ws_peer.py``) for what a real server does not do on
demand: messages in many fragments, a ping, a refusal, text that is not UTF-8, malformed frames,
a message over the limit, an abrupt end. The benchmarks' numbers are only as good as this
client's reading of the wire.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
import trio
from websockets.frames import Frame, Opcode

from bench.wsclient import (
    PONG,
    SUBPROTOCOL,
    WSClosed,
    WSConn,
    WSHandshakeRejected,
    open_session,
    run_frames,
    ws_connect,
)
from bench.wsconn import MAX_MESSAGE_BYTES, open_websocket
from dramaverse.server.direct_ws import COMPRESS_MIN_BYTES
from tests.conftest import Server, sample_records
from tests.ws_peer import Peer, close_frame, tcp_peer

HOST = "127.0.0.1"
URLS = [record["url"] for record in sample_records()[:8]]


def port_of(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


async def ping(conn: WSConn, padding: str = "") -> dict[str, Any]:
    """One application round trip: ``ping`` out, the ``pong`` back (other frames skipped)."""
    message: dict[str, Any] = {"type": "ping"}
    if padding:
        message["padding"] = padding
    await conn.send_json(message)
    while True:
        frame = await conn.receive_json()
        if frame["type"] == "pong":
            return frame


# -- against the real server --------------------------------------------------------------------


@pytest.mark.parametrize("auth", ["hello", "header", "subprotocol"])
async def test_a_session_opens_and_round_trips_with_the_token_anywhere(
    server: Server, auth: str
) -> None:
    token = await server.register("bench-client")
    with trio.fail_after(10):
        conn, ready = await open_session(HOST, port_of(server), token, auth=auth)
        try:
            assert ready["type"] == "ready"
            assert conn.subprotocol == SUBPROTOCOL
            assert not conn.deflate
            assert conn.deflate_params is None
            for _ in range(20):
                assert await ping(conn) == json.loads(PONG)
        finally:
            await conn.aclose()


async def test_with_deflate_both_directions_are_compressed_and_read_back(server: Server) -> None:
    token = await server.register("bench-deflate")
    padding = "abc" * 1000  # far over COMPRESS_MIN_BYTES: goes out compressed, both ways
    with trio.fail_after(10):
        conn, ready = await open_session(HOST, port_of(server), token, deflate=True)
        try:
            assert conn.deflate
            params = conn.deflate_params
            assert params is not None
            assert "client_no_context_takeover" in params
            assert "server_no_context_takeover" in params
            assert await ping(conn, padding) == json.loads(PONG)
            for index, url in enumerate(URLS):  # a library big enough to go out compressed
                data = {"dramaUrl": url, "isFavorite": True}
                await conn.send_json({"type": "favorite.set", "id": index, "data": data})
            await conn.send_json({"type": "library.get", "id": "lib"})
            while (answer := await conn.receive_json()).get("id") != "lib":
                pass
        finally:
            await conn.aclose()
    assert sorted(answer["result"]["data"]["favorites"]) == sorted(URLS)
    assert len(json.dumps(answer)) >= COMPRESS_MIN_BYTES


async def test_a_bad_token_ends_the_session_with_the_servers_close_code(server: Server) -> None:
    with trio.fail_after(10), pytest.raises(WSClosed) as closed:
        await open_session(HOST, port_of(server), "not-a-token")
    assert closed.value.code == 4100
    with trio.fail_after(10):
        conn = await ws_connect(HOST, port_of(server))
        await conn.send_json({"type": "hello", "token": "not-a-token"})
        code, reason = await run_frames(conn, lambda frame, arrival: None)
    assert code == 4100
    assert reason


async def test_an_upgrade_to_a_missing_path_is_a_rejection(server: Server) -> None:
    with trio.fail_after(10), pytest.raises(WSHandshakeRejected) as refused:
        await ws_connect(HOST, port_of(server), "/api/nothing-here")
    assert refused.value.status == 404


# -- against scripted servers -------------------------------------------------------------------


async def test_fragmented_messages_and_frames_with_the_101_arrive_whole() -> None:
    big = "\u00e9" * 2_000_000  # 4 MB of UTF-8, in 64 kB fragments split mid-character
    data = big.encode()
    pieces = [data[i : i + 65_535] for i in range(0, len(data), 65_535)]
    frames = [Frame(Opcode.TEXT, pieces[0], fin=False)]
    frames += [Frame(Opcode.CONT, p, fin=False) for p in pieces[1:-1]]
    frames.append(Frame(Opcode.CONT, pieces[-1], fin=True))
    pong: list[Frame | None] = []

    async def script(peer: Peer) -> None:
        ping_frame = Frame(Opcode.PING, b"p").serialize(mask=False)
        first = Frame(Opcode.BINARY, b"\x00with the 101").serialize(mask=False)
        await peer.accept(extra=ping_frame + first)
        pong.append(await peer.next_frame())
        await peer.send(b"".join(f.serialize(mask=False) for f in frames))
        await peer.send_frame(close_frame(4000, "bye"))
        await peer.close_frame()

    async with tcp_peer(script) as port:
        with trio.fail_after(20):
            conn = await open_websocket(HOST, port, "/")
            assert await conn.receive() == b"\x00with the 101"
            assert await conn.receive() == big
            with pytest.raises(WSClosed) as closed:
                await conn.receive()
    assert (closed.value.code, closed.value.reason) == (4000, "bye")
    assert pong[0] is not None
    assert (pong[0].opcode, pong[0].data) == (Opcode.PONG, b"p")


async def expect_close(data: bytes) -> tuple[WSClosed, list[Any]]:
    """Accept, send ``data``; what the client raises and the close frame it sent back."""
    answers: list[Any] = []
    done = trio.Event()

    async def script(peer: Peer) -> None:
        try:
            await peer.accept()
            await peer.send(data)
            answers.append(await peer.close_frame())
        finally:
            done.set()

    async with tcp_peer(script) as port:
        with trio.fail_after(10):
            conn = await open_websocket(HOST, port, "/")
            with pytest.raises(WSClosed) as closed:
                await receive_all(conn)
            await done.wait()
    return closed.value, answers


async def receive_all(conn: WSConn) -> None:
    while True:
        await conn.receive()


def text(data: bytes, *, fin: bool = True) -> bytes:
    return Frame(Opcode.TEXT, data, fin).serialize(mask=False)


@pytest.mark.parametrize(
    "data",
    [text(b"\xff"), text(b"\xe2\x82", fin=False) + Frame(Opcode.CONT, b"x").serialize(mask=False)],
    ids=["one-frame", "fragments"],
)
async def test_text_that_is_not_utf8_closes_with_1007(data: bytes) -> None:
    closed, answers = await expect_close(text(b"fine") + data)
    assert closed.code == 1007
    assert answers[0] is not None
    assert answers[0].code == 1007


@pytest.mark.parametrize(
    "data",
    [Frame(Opcode.TEXT, b"x").serialize(mask=True), bytes([0x80 | 0x3, 0])],
    ids=["masked", "unknown-opcode"],
)
async def test_a_malformed_frame_closes_with_1002(data: bytes) -> None:
    closed, answers = await expect_close(data)
    assert closed.code == 1002
    assert answers[0] is not None
    assert answers[0].code == 1002


async def test_a_message_over_the_limit_closes_with_1009() -> None:
    header = bytes([0x82, 127]) + struct.pack("!Q", MAX_MESSAGE_BYTES + 1)
    closed, answers = await expect_close(header)
    assert closed.code == 1009
    assert answers[0] is not None
    assert answers[0].code == 1009


async def test_an_abrupt_end_is_1006_and_the_clients_close_is_1000_by_default() -> None:
    closes: list[Any] = []
    closed_politely = trio.Event()

    async def script(peer: Peer) -> None:
        request = await peer.accept()
        if request.path == "/abrupt":
            await peer.send(text(b"half")[:3])
            return
        closes.append(await peer.close_frame())
        closed_politely.set()

    async with tcp_peer(script) as port:
        with trio.fail_after(10):
            conn = await open_websocket(HOST, port, "/abrupt")
            with pytest.raises(WSClosed) as closed:
                await conn.receive()
            polite = await open_websocket(HOST, port, "/polite")
            await polite.aclose()
            with pytest.raises(WSClosed):  # closed locally: nothing more to read
                await polite.receive()
            await closed_politely.wait()
    assert closed.value.code == 1006
    assert [c.code for c in closes] == [1000]


async def test_a_refusal_carries_its_status_and_body() -> None:
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 429 Too Many\r\nContent-Length: 4\r\n\r\nslow")

    async with tcp_peer(script) as port:
        with trio.fail_after(10), pytest.raises(WSHandshakeRejected) as refused:
            await open_websocket(HOST, port, "/")
    assert (refused.value.status, refused.value.body) == (429, b"slow")
