"""The native socket's answers to a burst of bad frames: every error frame, then the close."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from trio_websocket import ConnectionClosed
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from dramaverse.http import library_ops
from tests.conftest import make_settings, running_server
from tests.test_ws_native import device, receive

PROTOCOL = "dramaverse.v1"


async def test_every_error_frame_queued_before_the_abuse_close_is_delivered(
    tmp_path: Path,
) -> None:
    limit = 20
    async with running_server(make_settings(tmp_path, ws_max_errors=limit)) as server:
        token = await server.register("alice")
        port = int(server.url.rsplit(":", 1)[1])
        ws = WSConnection(ConnectionType.CLIENT)
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            request = Request(host="127.0.0.1", target="/api/ws", subprotocols=[PROTOCOL])
            await stream.send_all(ws.send(request))
            events: list[object] = []
            with trio.fail_after(10):
                while not any(isinstance(e, AcceptConnection) for e in events):
                    ws.receive_data(await stream.receive_some(65536))
                    events += ws.events()
                hello = ws.send(TextMessage(json.dumps({"type": "hello", "token": token})))
                burst = limit + 1  # the last one crosses the limit
                # One write: the server reads every frame before its writer runs.
                await stream.send_all(
                    hello + b"".join(ws.send(TextMessage("x")) for _ in range(burst))
                )
                frames: list[dict[str, object]] = []
                close: CloseConnection | None = None
                while close is None:
                    data = await stream.receive_some(65536)
                    if not data:
                        break
                    ws.receive_data(data)
                    for event in ws.events():
                        if isinstance(event, TextMessage):
                            frames.append(json.loads(event.data))
                        elif isinstance(event, CloseConnection):
                            close = event
        errors = [f for f in frames if f["type"] == "error"]
        assert frames[0]["type"] == "ready"
        assert len(errors) == burst
        assert close is not None
        assert close.code == 4103


async def test_a_failure_behind_one_frame_closes_that_socket_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A fault injected into one operation: its socket gets an error frame and 1011, the
    failure is logged once, and the user's other device goes on being served."""

    async def broken(*_: object) -> object:
        raise RuntimeError("injected failure")

    monkeypatch.setitem(library_ops.OPERATIONS, "review.save", broken)
    async with running_server(make_settings(tmp_path)) as server:
        token = await server.register("alice")
        async with device(server, token) as victim, device(server, token) as bystander:
            assert (await receive(victim))["type"] == "ready"
            assert (await receive(bystander))["type"] == "ready"
            await victim.send_message(json.dumps({"type": "review.save", "id": 1, "data": {}}))
            frame = await receive(victim)
            assert frame["type"] == "error"
            assert frame["status"] == 500
            with trio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
                await victim.get_message()
            assert closed.value.reason.code == 1011
            await bystander.send_message(json.dumps({"type": "library.get", "id": 2}))
            assert (await receive(bystander))["type"] == "ack"
        failures = [r for r in caplog.records if "failed on a frame" in r.getMessage()]
        assert len(failures) == 1


async def test_a_nul_character_is_refused_with_the_request_id(tmp_path: Path) -> None:
    """Found by the room fuzzer: the refusal left out the id, so a client could not tell which
    of its requests it was."""
    async with running_server(make_settings(tmp_path)) as server:
        token = await server.register("alice")
        async with device(server, token) as ws:
            assert (await receive(ws))["type"] == "ready"
            data = {"dramaUrl": "x\u0000", "status": "Watching"}
            await ws.send_message(json.dumps({"type": "status.set", "id": "n1", "data": data}))
            frame = await receive(ws)
            assert frame["type"] == "error"
            assert frame["status"] == 400
            assert frame["id"] == "n1"
