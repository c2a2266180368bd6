"""permessage-deflate is negotiated without context takeover, and compressed frames work."""

from __future__ import annotations

import json

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate

from tests.conftest import Server


async def _events(stream: trio.SocketStream, ws: WSConnection, count: int) -> list[Event]:
    found: list[Event] = []
    with trio.fail_after(5):
        while len(found) < count:
            data = await stream.receive_some(65536)
            assert data, "server closed the connection"
            ws.receive_data(data)
            found.extend(ws.events())
    return found


async def test_deflate_is_negotiated_stateless_and_frames_round_trip(server: Server) -> None:
    token = await server.register("alice")
    host, port = server.url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    deflate = PerMessageDeflate()
    ws = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(
        ws.send(
            Request(
                host=host,
                target="/api/ws",
                subprotocols=["dramaverse.v1"],
                extensions=[deflate],
            )
        )
    )
    (accepted,) = await _events(stream, ws, 1)
    assert isinstance(accepted, AcceptConnection)
    assert accepted.subprotocol == "dramaverse.v1"
    negotiated = accepted.extensions
    assert len(negotiated) == 1
    assert deflate.server_no_context_takeover
    assert deflate.client_no_context_takeover

    await stream.send_all(ws.send(TextMessage(json.dumps({"type": "hello", "token": token}))))
    (ready,) = await _events(stream, ws, 1)
    assert isinstance(ready, TextMessage)
    assert json.loads(ready.data)["type"] == "ready"
    for _ in range(2):  # twice: the second message needs no state left from the first
        await stream.send_all(ws.send(TextMessage(json.dumps({"type": "ping"}))))
        (pong,) = await _events(stream, ws, 1)
        assert isinstance(pong, TextMessage)
        assert json.loads(pong.data) == {"type": "pong"}
    await stream.send_all(ws.send(CloseConnection(code=1000)))
    (closed,) = await _events(stream, ws, 1)
    assert isinstance(closed, CloseConnection)
    await stream.aclose()
