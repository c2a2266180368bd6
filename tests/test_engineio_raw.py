"""Engine.IO v4 and Socket.IO v5 on the wire: raw HTTP (httpx) and WebSocket (trio-websocket).

Every protocol error code and body, the handshake, payload framing, the upgrade with its noop,
limits, CORS and Origin checks, and what malformed packets of each kind do to a session.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from dramaverse.config import load_settings
from dramaverse.domain.events import UserEvent
from dramaverse.errors import ConfigError
from dramaverse.realtime.engineio import (
    SEPARATOR,
    EngineConfig,
    EngineSession,
    PacketError,
    Transport,
)
from dramaverse.realtime.socketio import RecoveryIds, SocketIOConnection
from dramaverse.realtime.socketio_codec import (
    ACK,
    BINARY_EVENT,
    CONNECT,
    DISCONNECT,
    EVENT,
    Packet,
    decode,
    encode_ack,
    encode_connect,
    encode_connect_error,
    encode_event,
)
from tests.conftest import TEST_SECRET, Server, make_settings, running_server, sample_records
from tests.node.driver import eventually
from tests.wsclient import open_client

URLS = [r["url"] for r in sample_records()]
PATH = "/socket.io/"
PROXY_PATH = "/dramaverse/socket.io/"
ALLOWED = "http://localhost:5173"
EVIL = "https://evil.example"
UPGRADE_HEADERS = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


def query(sid: str | None = None, **extra: str) -> dict[str, str]:
    params = {"EIO": "4", "transport": "polling", **extra}
    if sid is not None:
        params["sid"] = sid
    return params


class Polling:
    """A polling Engine.IO client made of plain HTTP requests."""

    def __init__(self, server: Server, headers: dict[str, str] | None = None) -> None:
        self.client = server.client
        self.headers = headers or {}
        self.sid = ""
        self.handshake: dict[str, Any] = {}

    async def open(self) -> Polling:
        response = await self.client.get(PATH, params=query(), headers=self.headers)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "text/plain; charset=UTF-8"
        assert response.text.startswith("0")
        self.handshake = json.loads(response.text[1:])
        self.sid = self.handshake["sid"]
        return self

    async def get(self) -> httpx.Response:
        return await self.client.get(PATH, params=query(self.sid), headers=self.headers)

    async def packets(self) -> list[str]:
        with trio.fail_after(5):
            response = await self.get()
        assert response.status_code == 200, response.text
        return response.text.split(SEPARATOR)

    async def post(self, *packets: str | bytes) -> httpx.Response:
        body = packets[0] if isinstance(packets[0], bytes) else SEPARATOR.join(map(str, packets))
        return await self.client.post(
            PATH, params=query(self.sid), content=body, headers=self.headers
        )

    async def connect(self, token: str | None) -> dict[str, Any]:
        auth = {} if token is None else {"token": token}
        assert (await self.post("40" + json.dumps(auth))).text == "ok"
        (packet,) = await self.packets()
        assert packet.startswith("40"), packet
        answer: dict[str, Any] = json.loads(packet[2:])
        return answer

    async def closed(self) -> bool:
        """True once the session is gone (a GET is refused with "Session ID unknown")."""
        response = await self.get()
        if response.status_code == 200 and response.text.endswith("1"):
            response = await self.get()
        return response.status_code == 400 and response.json() == {
            "code": 1,
            "message": "Session ID unknown",
        }


def device_count(server: Server, user_id: int) -> int:
    session = server.handle.state.hub.sessions.get(user_id)
    return 0 if session is None else len([d for d in session.devices if not d.gone])


def find_session(server: Server, sid: str) -> EngineSession | None:
    """The Engine.IO session ``sid`` of ``server``, while it lives."""
    assert server.handle.state.engine is not None
    return server.handle.state.engine.sessions.get(sid)


def polling_waits(server: Server, sid: str) -> bool:
    """True while a GET of session ``sid`` waits in the server for something to send."""
    session = find_session(server, sid)
    return session is not None and session.poll_waiting


def assert_error(response: httpx.Response, status: int, code: int, message: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert (
        response.content
        == json.dumps({"code": code, "message": message}, separators=(",", ":")).encode()
    )


async def favorite(server: Server, token: str, url: str, on: bool = True) -> None:
    response = await server.post_as(
        token, "/api/user/favorites", {"dramaUrl": url, "isFavorite": on}
    )
    assert response.status_code == 200, response.text


async def upgrade_request(
    server: Server, params: dict[str, str], headers: dict[str, str] | None = None
) -> httpx.Response:
    """A WebSocket upgrade request the server refuses (read as a plain HTTP answer).

    A fresh client each time: the server closes the connection after refusing an upgrade.
    """
    async with httpx.AsyncClient(base_url=server.url) as client:
        return await client.get(PATH, params=params, headers={**UPGRADE_HEADERS, **(headers or {})})


def ws_url(server: Server, **params: str) -> str:
    base = server.url.replace("http://", "ws://") + PATH
    return base + "?" + "&".join(f"{k}={v}" for k, v in {"EIO": "4", **params}.items())


@asynccontextmanager
async def websocket(server: Server, **params: str) -> AsyncIterator[WebSocketConnection]:
    async with open_client(ws_url(server, **params)) as ws:
        yield ws


async def receive(ws: WebSocketConnection) -> str:
    with trio.fail_after(5):
        message = await ws.get_message()
    assert isinstance(message, str)
    return message


async def close_code(ws: WebSocketConnection) -> int:
    with trio.fail_after(10):
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed as closed:
            code: int = closed.reason.code
            return code


# -- handshake and errors ------------------------------------------------------------------


async def test_polling_handshake(server: Server) -> None:
    first = await Polling(server).open()
    second = await Polling(server).open()
    assert first.handshake == {
        "sid": first.sid,
        "upgrades": ["websocket"],
        "pingInterval": 25000,
        "pingTimeout": 20000,
        "maxPayload": 65536,
    }
    for sid in (first.sid, second.sid):
        assert re.fullmatch(r"[A-Za-z0-9_-]{20}", sid)  # 120 random bits
    assert first.sid != second.sid


@pytest.mark.parametrize(
    ("method", "params", "status", "code", "message"),
    [
        ("GET", {"EIO": "4"}, 400, 0, "Transport unknown"),
        ("GET", {"EIO": "4", "transport": "carrier-pigeon"}, 400, 0, "Transport unknown"),
        ("GET", {"EIO": "4", "transport": "websocket"}, 400, 3, "Bad request"),
        ("GET", {"transport": "polling"}, 400, 5, "Unsupported protocol version"),
        ("GET", {"EIO": "3", "transport": "polling"}, 400, 5, "Unsupported protocol version"),
        ("GET", {"EIO": "abc", "transport": "polling"}, 400, 5, "Unsupported protocol version"),
        ("GET", query("no-such-session"), 400, 1, "Session ID unknown"),
        ("GET", query("x" * 500), 400, 1, "Session ID unknown"),
        ("POST", query("no-such-session"), 400, 1, "Session ID unknown"),
        ("POST", query(), 400, 2, "Bad handshake method"),
        ("PUT", query(), 400, 2, "Bad handshake method"),
    ],
)
async def test_request_errors_have_the_protocol_codes(
    server: Server, method: str, params: dict[str, str], status: int, code: int, message: str
) -> None:
    response = await server.client.request(method, PATH, params=params, content=b"40")
    assert_error(response, status, code, message)


async def test_websocket_errors_have_the_protocol_codes(server: Server) -> None:
    cases = [
        ({"EIO": "4"}, 0, "Transport unknown"),
        ({"EIO": "4", "transport": "polling"}, 3, "Bad request"),
        ({"EIO": "3", "transport": "websocket"}, 5, "Unsupported protocol version"),
        ({"EIO": "4", "transport": "websocket", "sid": "nope"}, 1, "Session ID unknown"),
    ]
    for params, code, message in cases:
        refused = await upgrade_request(server, params)
        assert_error(refused, 400, code, message)


async def test_unknown_method_on_a_session_is_a_bad_request(server: Server) -> None:
    polling = await Polling(server).open()
    response = await server.client.put(PATH, params=query(polling.sid), content=b"x")
    assert_error(response, 400, 3, "Bad request")


# -- CORS and Origin -----------------------------------------------------------------------


async def test_cors_headers_for_allowed_origins_and_preflight(server: Server) -> None:
    polling = await Polling(server, {"Origin": ALLOWED}).open()
    response = await polling.post("40")
    assert response.headers["access-control-allow-origin"] == ALLOWED
    assert response.headers["access-control-allow-credentials"] == "true"
    assert response.headers.get_list("access-control-allow-origin") == [ALLOWED]
    assert "Origin" in response.headers["vary"]
    refused = await server.client.get(PATH, params=query("nope"), headers={"Origin": ALLOWED})
    assert refused.headers["access-control-allow-origin"] == ALLOWED  # errors are readable too
    preflight = await server.client.options(
        PATH,
        params=query(polling.sid),
        headers={
            "Origin": ALLOWED,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-custom",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == ALLOWED
    assert preflight.headers["access-control-allow-credentials"] == "true"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-allow-headers"] == "content-type,x-custom"
    plain = await Polling(server).open()  # no Origin: not a browser, no CORS headers
    assert "access-control-allow-origin" not in (await plain.post("40")).headers


async def test_disallowed_origin_is_forbidden(server: Server) -> None:
    refused = await server.client.get(PATH, params=query(), headers={"Origin": EVIL})
    assert_error(refused, 403, 4, "Forbidden")
    assert "access-control-allow-origin" not in refused.headers
    preflight = await server.client.options(PATH, params=query(), headers={"Origin": EVIL})
    assert_error(preflight, 403, 4, "Forbidden")
    upgrade = await upgrade_request(
        server, {"EIO": "4", "transport": "websocket"}, {"Origin": EVIL}
    )
    assert_error(upgrade, 403, 4, "Forbidden")
    polling = await Polling(server).open()  # a session opened elsewhere cannot be read either
    stolen = await server.client.get(PATH, params=query(polling.sid), headers={"Origin": EVIL})
    assert_error(stolen, 403, 4, "Forbidden")


# -- polling ----------------------------------------------------------------------------------


async def test_polling_session_delivers_events_in_one_payload(server: Server) -> None:
    alice = await server.register("alice")
    polling = await Polling(server).open()
    answer = await polling.connect(alice)
    assert set(answer) == {"sid", "pid"}
    await favorite(server, alice, URLS[0])
    await favorite(server, alice, URLS[0], on=False)
    packets: list[str] = []
    with trio.fail_after(5):
        while len(packets) < 2:
            packets += await polling.packets()
    assert packets == [
        f'42["favorite_updated",{{"dramaUrl":"{URLS[0]}","isFavorite":true}},"1"]',
        f'42["favorite_updated",{{"dramaUrl":"{URLS[0]}","isFavorite":false}},"2"]',
    ]


async def test_concurrent_polls_close_the_session(server: Server) -> None:
    polling = await Polling(server).open()
    async with trio.open_nursery() as nursery:
        first: list[httpx.Response] = []

        async def pending() -> None:
            first.append(await polling.get())

        nursery.start_soon(pending)
        await eventually(lambda: polling_waits(server, polling.sid))
        second = await polling.get()
    assert_error(second, 400, 3, "Bad request")
    assert first[0].status_code == 200
    assert first[0].text == "1"  # the pending poll learns the session closed
    assert await polling.closed()


async def test_post_too_large_is_refused_and_closes_the_session(server: Server) -> None:
    polling = await Polling(server).open()
    response = await polling.post("4" + "x" * 70_000)
    assert_error(response, 413, 3, "Payload too large")
    assert await polling.closed()


async def test_client_close_packet_ends_the_session(server: Server) -> None:
    polling = await Polling(server).open()
    assert (await polling.post("1")).text == "ok"
    assert await polling.closed()


async def test_client_close_ends_the_pending_poll_with_a_noop(server: Server) -> None:
    # The reference server's answer (socketio/engine.io-protocol test suite, "forcefully closes
    # the session"): the waiting GET gets a noop, not the close packet, and the sid is gone.
    polling = await Polling(server).open()
    async with trio.open_nursery() as nursery:
        pending: list[httpx.Response] = []

        async def poll() -> None:
            pending.append(await polling.get())

        nursery.start_soon(poll)
        await eventually(lambda: polling_waits(server, polling.sid))
        assert (await polling.post("1")).text == "ok"
    assert pending[0].status_code == 200
    assert pending[0].text == "6"
    assert_error(await polling.get(), 400, 1, "Session ID unknown")


async def test_heartbeat_pings_and_closes_without_pong(tmp_path: Any) -> None:
    settings = make_settings(tmp_path, socket_io_ping_interval=0.1, socket_io_ping_timeout=0.2)
    async with running_server(settings) as server:
        answering = await Polling(server).open()
        silent = await Polling(server).open()
        assert await silent.packets() == ["2"]
        for _ in range(3):
            assert await answering.packets() == ["2"]
            assert (await answering.post("3")).text == "ok"
        assert await silent.closed()
        assert (await answering.post("3")).text == "ok"


async def test_no_connect_in_time_closes_the_session(tmp_path: Any) -> None:
    settings = make_settings(tmp_path, socket_io_connect_timeout=0.2)
    async with running_server(settings) as server:
        polling = await Polling(server).open()
        await eventually(polling.closed)


async def test_slow_polling_client_is_evicted(tmp_path: Any) -> None:
    async with running_server(make_settings(tmp_path, ws_outbox_size=4)) as server:
        alice = await server.register("alice")
        polling = await Polling(server).open()
        await polling.connect(alice)
        for k in range(6):  # never polled: the fifth queued packet does not fit
            await favorite(server, alice, URLS[0], on=k % 2 == 0)
        await eventually(lambda: device_count(server, 1) == 0)
        assert await polling.closed()  # it reconnects and recovers what it missed


# -- malformed packets -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        "",  # empty engine packet
        "9",  # unknown engine packet type
        "0",  # open: only the server sends it
        "2",  # ping: the server pings in v4
        "5",  # upgrade outside an upgrade
        "4",  # empty socket.io packet
        "49",  # unknown socket.io packet type
        "44{}",  # CONNECT_ERROR: only the server sends it
        "40{bad json",
        "40[1]",  # CONNECT auth must be an object
        '40"token"',
        "40NaN",
        '42["x"]',  # event before connect
        "41",  # disconnect of a namespace that is not connected
        "bnot base64!",
        "bAQID",  # binary data outside a binary packet
        '451-["x",{"_placeholder":true,"num":0}]',  # binary event before connect
        "45x-[]",  # illegal attachment count
    ],
)
async def test_malformed_packets_close_the_session(server: Server, payload: str) -> None:
    polling = await Polling(server).open()
    response = await polling.post(payload)
    assert_error(response, 400, 3, "Bad request")
    assert await polling.closed()


async def test_non_utf8_payload_closes_the_session(server: Server) -> None:
    polling = await Polling(server).open()
    assert_error(await polling.post(b"4\xff\xfe"), 400, 3, "Bad request")
    assert await polling.closed()


@pytest.mark.parametrize(
    "payload",
    [
        '42[{"not":"a name"}]',
        "42[]",
        '42["connect"]',  # reserved event name
        "42{}",
        "43{}",  # ack payload must be an array
        "41{}",  # disconnect carries no payload
        "40{}",  # a second CONNECT
        '42["x"]\x1e40{}',
    ],
)
async def test_malformed_packets_after_connect_close_the_session(
    server: Server, payload: str
) -> None:
    alice = await server.register("alice")
    polling = await Polling(server).open()
    await polling.connect(alice)
    assert_error(await polling.post(payload), 400, 3, "Bad request")
    assert await polling.closed()


async def test_unknown_namespace_is_refused_and_the_session_stays(server: Server) -> None:
    alice = await server.register("alice")
    polling = await Polling(server).open()
    assert (await polling.post('40/admin,{"token":"x"}')).text == "ok"
    assert await polling.packets() == ['44/admin,{"message":"Invalid namespace"}']
    answer = await polling.connect(alice)
    assert "sid" in answer


async def test_binary_event_disconnects_the_socket_and_skips_its_attachment(
    server: Server,
) -> None:
    alice = await server.register("alice")
    polling = await Polling(server).open()
    await polling.connect(alice)
    body = '451-["upload",{"_placeholder":true,"num":0}]' + SEPARATOR + "bAQIDBA=="
    assert (await polling.post(body)).text == "ok"
    assert await polling.packets() == ["41"]
    await eventually(lambda: device_count(server, 1) == 0)  # it left the user's session
    assert (await polling.post("3")).text == "ok"  # the session itself is still open
    answer = await polling.connect(alice)  # and may connect again
    assert "sid" in answer


async def test_client_events_are_ignored_acks_answered_and_floods_closed(tmp_path: Any) -> None:
    async with running_server(make_settings(tmp_path, ws_max_errors=3)) as server:
        alice = await server.register("alice")
        polling = await Polling(server).open()
        await polling.connect(alice)
        assert (await polling.post('42["hello",1]', '427["hello"]')).text == "ok"
        assert await polling.packets() == [
            '437[{"message":"Event \'hello\' is not handled by this server."}]'
        ]
        assert (await polling.post("43[1]", "4312[]")).text == "ok"  # unrequested acks: ignored
        assert (await polling.post('42["a"]', '42["b"]')).text == "ok"  # the fourth in 10 s
        assert await polling.closed()


# -- WebSocket and the upgrade ----------------------------------------------------------------


async def test_direct_websocket_session(server: Server) -> None:
    alice = await server.register("alice")
    async with websocket(server, transport="websocket") as ws:
        opened = json.loads((await receive(ws))[1:])
        assert opened["upgrades"] == []
        assert set(opened) == {"sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"}
        await ws.send_message("40" + json.dumps({"token": alice}))
        connected = await receive(ws)
        assert connected.startswith('40{"sid":')
        await favorite(server, alice, URLS[0])
        event = decode((await receive(ws))[1:])
        assert event.data == ["favorite_updated", {"dramaUrl": URLS[0], "isFavorite": True}, "1"]
        await ws.send_message("abc")  # malformed: the session ends
        assert await close_code(ws) == 1002


async def test_upgrade_ends_the_pending_poll_with_a_noop(server: Server) -> None:
    alice = await server.register("alice")
    polling = await Polling(server).open()
    await polling.connect(alice)
    async with trio.open_nursery() as nursery:
        pending: list[httpx.Response] = []
        answered = trio.Event()

        async def poll() -> None:
            pending.append(await polling.get())
            answered.set()

        nursery.start_soon(poll)
        await eventually(lambda: polling_waits(server, polling.sid))
        async with websocket(server, transport="websocket", sid=polling.sid) as ws:
            await ws.send_message("2probe")
            assert await receive(ws) == "3probe"
            with trio.fail_after(5):
                await answered.wait()
            assert pending[0].text == "6"
            await favorite(server, alice, URLS[0])  # queued during the upgrade: not lost
            await ws.send_message("5")
            event = decode((await receive(ws))[1:])
            assert event.data[2] == "1"
            assert_error(await polling.get(), 400, 3, "Bad request")  # polling is over
            await ws.send_message("3")
            await favorite(server, alice, URLS[1])
            assert decode((await receive(ws))[1:]).data[2] == "2"


async def test_second_websocket_of_an_upgraded_session_is_accepted_then_closed(
    server: Server,
) -> None:
    # As the reference server does (socketio/engine.io-protocol test suite, "ignores WebSocket
    # connection with same sid after upgrade"): the handshake succeeds, the socket is closed at
    # once, and the session goes on on its own WebSocket.
    alice = await server.register("alice")
    polling = await Polling(server).open()
    await polling.connect(alice)
    async with websocket(server, transport="websocket", sid=polling.sid) as ws:
        await ws.send_message("2probe")
        assert await receive(ws) == "3probe"
        await ws.send_message("5")
        await eventually(
            lambda: getattr(find_session(server, polling.sid), "transport", None)
            is Transport.WEBSOCKET
        )
        async with websocket(server, transport="websocket", sid=polling.sid) as second:
            assert await close_code(second) == 1002
        await ws.send_message("3")
        await favorite(server, alice, URLS[0])
        assert decode((await receive(ws))[1:]).data[2] == "1"


async def test_second_websocket_during_an_upgrade_is_closed_at_once(server: Server) -> None:
    # The first socket has not sent its probe yet: the second one must not wait for a probe of
    # its own (the reference closes it as soon as another transport is upgrading).
    alice = await server.register("alice")
    polling = await Polling(server).open()
    await polling.connect(alice)
    async with websocket(server, transport="websocket", sid=polling.sid) as ws:
        async with websocket(server, transport="websocket", sid=polling.sid) as second:
            with trio.fail_after(5):  # the upgrade timeout is 10 s
                assert await close_code(second) == 1002
        await ws.send_message("2probe")
        assert await receive(ws) == "3probe"
        await ws.send_message("5")
        await favorite(server, alice, URLS[0])
        assert decode((await receive(ws))[1:]).data[2] == "1"


async def test_failed_probe_keeps_the_polling_session(server: Server) -> None:
    alice = await server.register("alice")
    polling = await Polling(server).open()
    await polling.connect(alice)
    async with websocket(server, transport="websocket", sid=polling.sid) as ws:
        await ws.send_message("2nope")
        assert await close_code(ws) == 1002
    await favorite(server, alice, URLS[0])
    (packet,) = await polling.packets()
    assert packet.endswith(',"1"]')


async def test_websocket_message_too_large_closes(server: Server) -> None:
    async with websocket(server, transport="websocket") as ws:
        await receive(ws)
        await ws.send_message("4" + "x" * 70_000)
        assert await close_code(ws) in (1009, 1002)


# -- a crash in a handler ends its session only ---------------------------------------------


def crash_on_events(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-in for a bug in the Socket.IO layer: every client event raises."""

    def broken(*_: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(SocketIOConnection, "_on_event", broken)


def errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_crash_while_posting_ends_that_session_with_a_500(
    server: Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    alice = await server.register("alice")
    bystander = await Polling(server).open()
    await bystander.connect(alice)
    polling = await Polling(server).open()
    await polling.connect(alice)
    crash_on_events(monkeypatch)
    response = await polling.post('42["x"]')
    assert_error(response, 500, 3, "Internal server error")
    assert await polling.closed()
    [logged] = errors(caplog)  # logged once, with the session it ended
    assert polling.sid in logged.getMessage()
    assert logged.exc_info is not None
    await favorite(server, alice, URLS[0])  # the other session goes on
    (packet,) = await bystander.packets()
    assert packet.endswith(',"1"]')


async def test_a_crash_on_a_websocket_closes_it_with_1011(
    server: Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    alice = await server.register("alice")
    crash_on_events(monkeypatch)
    async with websocket(server, transport="websocket") as ws:
        sid = json.loads((await receive(ws))[1:])["sid"]
        await ws.send_message("40" + json.dumps({"token": alice}))
        assert (await receive(ws)).startswith("40{")
        await ws.send_message('42["x"]')
        assert await close_code(ws) == 1011
    [logged] = errors(caplog)
    assert sid in logged.getMessage()
    monkeypatch.undo()
    polling = await Polling(server).open()  # the server goes on
    assert "sid" in await polling.connect(alice)


async def test_a_crash_in_a_session_task_closes_it_with_1011(
    server: Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    alice = await server.register("alice")

    async def broken(*_: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(SocketIOConnection, "_authenticate", broken)
    async with websocket(server, transport="websocket") as ws:
        sid = json.loads((await receive(ws))[1:])["sid"]
        await ws.send_message("40" + json.dumps({"token": alice}))
        assert await close_code(ws) == 1011
    [logged] = errors(caplog)
    assert sid in logged.getMessage()
    monkeypatch.undo()
    async with websocket(server, transport="websocket") as ws:
        await receive(ws)
        await ws.send_message("40" + json.dumps({"token": alice}))
        assert (await receive(ws)).startswith("40{")


async def test_recovery_ids_are_bound_to_the_user_and_expire() -> None:
    now = [1000.0]
    ids = RecoveryIds(TEST_SECRET, ttl=60, clock=lambda: now[0])
    pid = ids.issue(7, 42)
    assert ids.verify(pid, 7) == 42
    assert ids.verify(pid, 8) is None
    assert RecoveryIds("another-secret-" + "y" * 40, 60).verify(pid, 7) is None
    body, mac = pid.split(".")
    assert ids.verify(body + "." + mac[::-1], 7) is None
    assert ids.verify(pid + "x", 7) is None
    assert ids.verify(None, 7) is None
    assert ids.verify("a.b.c", 7) is None
    now[0] += 61
    assert ids.verify(pid, 7) is None


# -- sans-I/O: the packet codec and the settings ------------------------------------------------


def test_codec_decodes_every_part_of_a_packet() -> None:
    assert decode("0") == Packet(CONNECT)
    assert decode('0{"token":"t"}') == Packet(CONNECT, data={"token": "t"})
    assert decode("0/admin,") == Packet(CONNECT, namespace="/admin")
    assert decode('2/admin,12["x",1]') == Packet(EVENT, "/admin", ["x", 1], 12)
    assert decode('27["x"]') == Packet(EVENT, data=["x"], ack_id=7)
    assert decode("3123[]") == Packet(ACK, data=[], ack_id=123)
    assert decode("1") == Packet(DISCONNECT)
    binary = decode('52-["x",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]')
    assert (binary.type, binary.attachments) == (BINARY_EVENT, 2)
    assert decode("2[5]").data == [5]  # numeric event names are valid, as in the reference


@pytest.mark.parametrize(
    "text",
    [
        "",
        "7",
        "x",
        "2",
        '2"x"',
        "2[]",
        "2[true]",
        '2["disconnect"]',
        "1null",
        "3{}",
        "4{}",
        "0null",
        "0[]",
        '0{"a":Infinity}',
        "0" + "[" * 5000,
        "5-[]",
        "599-[]",
        "2" + "1" * 16 + "[]",
        "0/\x1eevil,{}",
        "0/" + "a" * 300 + ",{}",
    ],
)
def test_codec_refuses_malformed_packets(text: str) -> None:
    with pytest.raises(PacketError):
        decode(text)


def test_codec_encodes_what_the_client_expects() -> None:
    event = UserEvent(1, 12, "favorite_updated", {"dramaUrl": "https://x/é", "isFavorite": True})
    assert (
        encode_event(event)
        == '42["favorite_updated",{"dramaUrl":"https://x/é","isFavorite":true},"12"]'
    )
    assert encode_connect("s", None) == '40{"sid":"s"}'
    assert encode_connect("s", "p") == '40{"sid":"s","pid":"p"}'
    assert encode_connect_error("Invalid namespace", "/a") == '44/a,{"message":"Invalid namespace"}'
    assert encode_ack(3, [{"message": "m"}]) == '433[{"message":"m"}]'


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SOCKET_IO_PING_INTERVAL", "soon"),
        ("SOCKET_IO_PING_TIMEOUT", "0"),
        ("SOCKET_IO_MAX_PAYLOAD", "10"),
        ("SOCKET_IO_CONNECT_TIMEOUT", "-1"),
        ("SOCKET_IO_RECOVERY_SECONDS", "1.5"),
    ],
)
def test_invalid_socket_io_settings_are_refused_in_one_line(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings({name: value}, dotenv_path=None)
    assert refused.value.message.startswith(name)
    assert "\n" not in refused.value.message


def test_socket_io_settings_are_read() -> None:
    settings = load_settings(
        {
            "SOCKET_IO_PATH": PROXY_PATH,
            "SOCKET_IO_PING_INTERVAL": "5",
            "SOCKET_IO_PING_TIMEOUT": "2.5",
            "SOCKET_IO_MAX_PAYLOAD": "2048",
            "SOCKET_IO_CONNECT_TIMEOUT": "3",
            "SOCKET_IO_RECOVERY_SECONDS": "0",
        },
        dotenv_path=None,
    )
    config = EngineConfig.from_settings(settings)
    assert (config.path, config.ping_interval, config.ping_timeout) == (PROXY_PATH, 5.0, 2.5)
    assert config.max_payload == 2048
    assert (settings.socket_io_connect_timeout, settings.socket_io_recovery_seconds) == (3.0, 0)
