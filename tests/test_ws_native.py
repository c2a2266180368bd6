"""The native WebSocket protocol end to end: real server, real sockets, trio-websocket client."""

from __future__ import annotations

import itertools
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from dramaverse.config import RateLimit
from dramaverse.http.auth import TokenService
from tests.conftest import TEST_SECRET, Server, make_settings, running_server, sample_records
from tests.wsclient import open_client

URLS = [r["url"] for r in sample_records()]
PROTOCOL = "dramaverse.v1"


def ws_url(server: Server) -> str:
    return server.url.replace("http://", "ws://") + "/api/ws"


async def receive(ws: WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(5):
        message: dict[str, Any] = json.loads(await ws.get_message())
    return message


async def receive_until(ws: WebSocketConnection, kind: str) -> dict[str, Any]:
    while True:
        message = await receive(ws)
        if message["type"] == kind:
            return message


async def close_code(ws: WebSocketConnection) -> int:
    """Read until the server closes; return its close code."""
    with trio.fail_after(10):
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed as closed:
            code: int = closed.reason.code
            return code


@asynccontextmanager
async def device(
    server: Server,
    token: str | None,
    *,
    resume: int | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
    subprotocols: list[str] | None = None,
    hello: bool = True,
    queue: int = 64,
) -> AsyncIterator[WebSocketConnection]:
    async with open_client(
        ws_url(server),
        subprotocols=[PROTOCOL] if subprotocols is None else subprotocols,
        extra_headers=headers or [],
        message_queue_size=queue,
    ) as ws:
        if hello:
            message: dict[str, Any] = {"type": "hello"}
            if token is not None:
                message["token"] = token
            if resume is not None:
                message["resume"] = resume
            await ws.send_message(json.dumps(message))
        yield ws


async def favorite(server: Server, token: str, url: str, on: bool) -> None:
    response = await server.post_as(
        token, "/api/user/favorites", {"dramaUrl": url, "isFavorite": on}
    )
    assert response.status_code == 200


async def test_devices_get_every_event_in_order_and_others_get_none(server: Server) -> None:
    alice = await server.register("alice")
    bob = await server.register("bob")
    async with device(server, alice) as a1, device(server, alice) as a2, device(server, bob) as b:
        for ws in (a1, a2, b):
            ready = await receive(ws)
            assert ready["type"] == "ready"
            assert ready["seq"] == 0
        await favorite(server, alice, URLS[0], True)
        await server.post_as(
            alice, "/api/user/statuses", {"dramaUrl": URLS[1], "status": "Watching"}
        )
        await server.post_as(
            alice,
            "/api/user/reviews/episodes",
            {"dramaUrl": URLS[1], "episodeNumber": 2, "text": "wow", "clientUpdatedAt": 0},
        )
        for ws in (a1, a2):
            first, second, third = [await receive(ws) for _ in range(3)]
            assert [first["seq"], second["seq"], third["seq"]] == [1, 2, 3]
            assert first == {
                "type": "event",
                "seq": 1,
                "event": "favorite_updated",
                "data": {"dramaUrl": URLS[0], "isFavorite": True},
            }
            assert second["event"] == "status_updated"
            assert second["data"] == {
                "dramaUrl": URLS[1],
                "statusInfo": {"status": "Watching", "currentEpisode": 0},
            }
            assert third["event"] == "episode_review_updated"
            assert third["data"]["review"]["text"] == "wow"
        # Bob saw nothing: the next frame he gets is the answer to his own ping.
        await b.send_message(json.dumps({"type": "ping"}))
        assert await receive(b) == {"type": "pong"}


async def test_socket_requests_ack_and_reach_other_devices(server: Server) -> None:
    alice = await server.register("alice")
    async with device(server, alice) as a1, device(server, alice) as a2:
        await receive(a1)
        await receive(a2)
        await a1.send_message(
            json.dumps(
                {"type": "favorite.set", "id": 7, "data": {"dramaUrl": URLS[2], "isFavorite": True}}
            )
        )
        frames = [await receive(a1), await receive(a1)]
        assert {"type": "ack", "id": 7, "result": {"success": True}} in frames
        assert any(f["type"] == "event" and f["seq"] == 1 for f in frames)
        event = await receive(a2)
        assert event["data"] == {"dramaUrl": URLS[2], "isFavorite": True}
        await a2.send_message(json.dumps({"type": "library.get", "id": "lib"}))
        answer = await receive_until(a2, "ack")
        assert answer["result"]["data"]["favorites"] == [URLS[2]]


async def test_resume_replays_exactly_the_missed_events(server: Server) -> None:
    alice = await server.register("alice")
    async with device(server, alice) as ws:
        await receive(ws)
        await favorite(server, alice, URLS[0], True)
        assert (await receive(ws))["seq"] == 1
    # Offline while three more changes happen on another device.
    for url in URLS[1:4]:
        await favorite(server, alice, url, True)
    async with device(server, alice, resume=1) as ws:
        ready = await receive(ws)
        assert ready["type"] == "ready"
        replayed = [await receive(ws) for _ in range(3)]
        assert [e["seq"] for e in replayed] == [2, 3, 4]
        assert [e["data"]["dramaUrl"] for e in replayed] == URLS[1:4]
        await favorite(server, alice, URLS[5], True)
        live = await receive(ws)
        assert live["seq"] == 5  # no duplicate, no gap


async def _miss(server: Server, token: str, count: int) -> None:
    """``count`` favorite changes written while no device of the user is connected."""
    from dramaverse.domain.library import SetFavorite

    storage = server.handle.state.storage
    user_id = server.handle.state.tokens.verify(token).id
    for n in range(count):
        result = await storage.set_favorite(user_id, SetFavorite(URLS[n % 2], n % 4 < 2))
        assert result.event is not None


async def test_resume_replays_more_than_an_outbox_of_missed_events(server: Server) -> None:
    # 300 missed events, WS_OUTBOX_SIZE 256, retention 1000: nothing is pruned, so all of them
    # are replayed (the replay used to stop at one outbox and send resync instead).
    alice = await server.register("alice")
    await _miss(server, alice, 300)
    async with device(server, alice, resume=0) as ws:
        assert (await receive(ws))["seq"] == 300
        await ws.send_message(json.dumps({"type": "ping"}))  # answered after the replay
        frames = []
        while (frame := await receive(ws)) != {"type": "pong"}:
            frames.append(frame)
        assert [(f["type"], f.get("seq")) for f in frames] == [
            ("event", seq) for seq in range(1, 301)
        ]


async def test_events_during_a_long_replay_follow_it_once_and_in_order(tmp_path: Path) -> None:
    # An outbox of 4 and a client that reads slowly: the replay waits for the device, and
    # writes made meanwhile (delivered live to the other device) come after it, exactly once.
    settings = make_settings(tmp_path, ws_outbox_size=4)
    async with running_server(settings) as server:
        alice = await server.register("alice")
        await _miss(server, alice, 300)
        async with device(server, alice) as live, device(server, alice, resume=0, queue=1) as ws:
            assert (await receive(live))["seq"] == 300
            assert (await receive(ws))["seq"] == 300
            for n in range(5):
                await favorite(server, alice, URLS[2 + n], True)
                assert (await receive(live))["seq"] == 301 + n  # not held up by the replay
            seqs = [(await receive(ws))["seq"] for _ in range(305)]
            assert seqs == list(range(1, 306))
            await favorite(server, alice, URLS[9], True)
            assert (await receive(ws))["seq"] == 306


async def test_resume_at_head_replays_nothing(server: Server) -> None:
    alice = await server.register("alice")
    await favorite(server, alice, URLS[0], True)
    async with device(server, alice, resume=1) as ws:
        assert (await receive(ws))["seq"] == 1
        await ws.send_message(json.dumps({"type": "ping"}))
        assert await receive(ws) == {"type": "pong"}


async def test_resume_past_retention_gets_resync(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, event_retention_count=2)
    async with running_server(settings) as server:
        alice = await server.register("alice")
        for url in URLS[:5]:
            await favorite(server, alice, url, True)
        pruned = await server.handle.state.storage.prune_events(2, 0)
        assert pruned == 3
        async with device(server, alice, resume=1) as ws:
            assert (await receive(ws))["type"] == "ready"
            assert await receive(ws) == {"type": "resync", "seq": 5}
        async with device(server, alice, resume=3) as ws:  # 4 and 5 are still kept
            await receive(ws)
            assert [(await receive(ws))["seq"] for _ in range(2)] == [4, 5]
        async with device(server, alice, resume=99) as ws:  # ahead of the server
            await receive(ws)
            assert await receive(ws) == {"type": "resync", "seq": 5}


async def test_slow_consumer_is_evicted(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, ws_outbox_size=4)
    async with running_server(settings) as server:
        alice = await server.register("alice")
        async with device(server, alice, queue=1) as slow, device(server, alice) as fast:
            await receive(fast)
            text = "x" * 9_000
            code = None
            for episode in range(1, 2000):
                body = {
                    "dramaUrl": URLS[0],
                    "episodeNumber": episode,
                    "text": text,
                    "clientUpdatedAt": 0,
                }
                await server.post_as(alice, "/api/user/reviews/episodes", body)
                await receive(fast)  # the healthy device keeps up and keeps its connection
                if len(server.handle.state.hub.sessions[1].devices) == 1:  # one was evicted
                    code = await close_code(slow)
                    break
            assert code == 4001


async def test_pings_keep_their_period_while_waiting_for_answers(tmp_path: Path) -> None:
    # interval 0.5 s, timeout 0.45 s: pings must be ~0.5 s apart, not interval + timeout (0.95 s).
    settings = make_settings(tmp_path, ws_heartbeat_interval=0.5, ws_heartbeat_timeout=0.45)
    async with running_server(settings) as server:
        alice = await server.register("alice")
        async with device(server, alice) as ws:
            await receive(ws)
            stamps = []
            for _ in range(4):
                ping = await receive(ws)
                assert ping["type"] == "ping"
                stamps.append(ping["t"])
                await ws.send_message(json.dumps({"type": "pong"}))
            gaps = [later - earlier for earlier, later in itertools.pairwise(stamps)]
            assert all(400 <= gap < 900 for gap in gaps), gaps


async def test_heartbeat_ping_and_timeout(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, ws_heartbeat_interval=0.2, ws_heartbeat_timeout=0.3)
    async with running_server(settings) as server:
        alice = await server.register("alice")
        async with device(server, alice) as ws:
            await receive(ws)
            for _ in range(3):  # answering keeps the connection alive across several pings
                ping = await receive(ws)
                assert ping["type"] == "ping"
                assert isinstance(ping["t"], int)
                await ws.send_message(json.dumps({"type": "pong"}))
            assert await close_code(ws) == 4000  # then silence: closed


async def test_socket_closes_when_the_token_expires(server: Server) -> None:
    await server.register("alice")
    tokens = TokenService(TEST_SECRET, 3600)
    short = tokens.issue(1, "alice", now=time.time() - 3600 + 1)  # expires in about a second
    async with device(server, short) as ws:
        assert (await receive(ws))["type"] == "ready"
        assert await close_code(ws) == 4101


@pytest.mark.parametrize(
    "token",
    [None, "not-a-token", TokenService("another-secret-" + "y" * 40, 60).issue(1, "alice")],
)
async def test_bad_or_missing_token_is_4100(server: Server, token: str | None) -> None:
    await server.register("alice")
    async with device(server, token) as ws:
        assert await close_code(ws) == 4100


async def test_deleted_users_token_is_refused(server: Server) -> None:
    alice = await server.register("alice")
    with sqlite3.connect(server.settings.sqlite_path) as conn:
        conn.execute("DELETE FROM users WHERE username = 'alice'")
    async with device(server, alice) as ws:
        assert await close_code(ws) == 4100


async def test_header_and_subprotocol_authentication(server: Server) -> None:
    alice = await server.register("alice")
    header = [(b"Authorization", f"Bearer {alice}".encode())]
    async with device(server, None, headers=header) as ws:
        assert (await receive(ws))["user"] == {"username": "alice"}
    protocols = [PROTOCOL, f"dramaverse.token.{alice}"]
    async with device(server, None, subprotocols=protocols) as ws:
        assert ws.subprotocol == PROTOCOL
        assert (await receive(ws))["type"] == "ready"


async def test_token_in_query_string_is_not_accepted(server: Server) -> None:
    alice = await server.register("alice")
    async with open_client(ws_url(server) + f"?token={alice}", subprotocols=[PROTOCOL]) as ws:
        await ws.send_message(json.dumps({"type": "hello"}))
        assert await close_code(ws) == 4100


async def test_hello_timeout(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, ws_auth_timeout=0.2)
    async with running_server(settings) as server, device(server, None, hello=False) as ws:
        assert await close_code(ws) == 4102


@pytest.mark.parametrize(
    "first",
    [
        '{"type": "favorite.set"}',
        "not json",
        '{"type": "hello", "resume": -1}',
        '{"type": "hello", "token": 5}',
    ],
)
async def test_first_message_must_be_a_valid_hello(server: Server, first: str) -> None:
    async with device(server, None, hello=False) as ws:
        await ws.send_message(first)
        assert await close_code(ws) == 4100


async def test_wrong_subprotocol_is_refused(server: Server) -> None:
    async with device(server, None, subprotocols=["graphql-ws"], hello=False) as ws:
        assert await close_code(ws) == 1002


async def test_disallowed_origin_is_refused_at_the_handshake(server: Server) -> None:
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Protocol": PROTOCOL,
    }
    refused = await server.client.get(
        "/api/ws", headers={**upgrade, "Origin": "https://evil.example"}
    )
    assert refused.status_code == 403
    assert "https://evil.example" in refused.json()["message"]
    allowed = [(b"Origin", b"http://localhost:5173")]
    async with device(server, None, headers=allowed, hello=False) as ws:
        assert ws.subprotocol == PROTOCOL


def request(kind: str, data: Any, request_id: Any = "r1") -> str:
    return json.dumps({"type": kind, "id": request_id, "data": data})


@pytest.mark.parametrize(
    ("frame", "status", "fragment"),
    [
        ("{not json", 400, "Malformed JSON"),
        ('{"type": "x", "n": NaN}', 400, "Malformed JSON"),
        ("[1, 2]", 400, "JSON object"),
        ('{"id": 1}', 400, "'type'"),
        ('{"type": 5}', 400, "'type'"),
        ('{"type": "favourite.set", "id": 1}', 400, "Unknown message type"),
        ('{"type": "hello", "token": "x"}', 400, "Already authenticated"),
        ('{"type": "favorite.set", "data": {}}', 400, "needs an 'id'"),
        ('{"type": "favorite.set", "id": true, "data": {}}', 400, "needs an 'id'"),
        (json.dumps({"type": "favorite.set", "id": "x" * 65}), 400, "needs an 'id'"),
        (request("favorite.set", {"dramaUrl": URLS[0], "isFavorite": 1}), 400, "Invalid payload."),
        (request("favorite.set", None), 400, "Invalid payload."),
        (request("status.set", {"dramaUrl": URLS[0], "status": None}), 400, "Invalid payload."),
        (
            request("review.save", {"dramaUrl": URLS[0], "episodeNumber": "1"}),
            400,
            "Invalid payload.",
        ),
        (
            request("favorite.set", {"dramaUrl": "https://nope", "isFavorite": True}),
            404,
            "not found",
        ),
        (
            '{"type": "review.save", "id": 1, "data": {"dramaUrl": "x\\ud800"}}',
            400,
            "lone surrogates",
        ),
        ('{"type": "status.set", "id": 1, "data": {"status": "a\\u0000"}}', 400, "NUL"),
    ],
)
async def test_malformed_frames_get_an_error_and_the_socket_stays_usable(
    server: Server, frame: str, status: int, fragment: str
) -> None:
    alice = await server.register("alice")
    async with device(server, alice) as ws:
        await receive(ws)
        await ws.send_message(frame)
        error = await receive(ws)
        assert error["type"] == "error"
        assert error["status"] == status
        assert fragment in error["message"]
        await ws.send_message(
            request("favorite.set", {"dramaUrl": URLS[0], "isFavorite": True}, "ok")
        )
        assert (await receive_until(ws, "ack"))["id"] == "ok"


async def test_binary_frames_are_refused_with_an_error(server: Server) -> None:
    alice = await server.register("alice")
    async with device(server, alice) as ws:
        await receive(ws)
        await ws.send_message(b"\x00\x01")
        error = await receive(ws)
        assert error["status"] == 400
        assert "Binary" in error["message"]


async def test_conflict_over_the_socket(server: Server) -> None:
    alice = await server.register("alice")
    async with device(server, alice) as ws:
        await receive(ws)
        review = {"dramaUrl": URLS[0], "episodeNumber": 1, "text": "first", "clientUpdatedAt": 0}
        await ws.send_message(request("review.save", review, "a"))
        ack = await receive_until(ws, "ack")
        stamp = ack["result"]["newUpdatedAt"]
        stale = {**review, "text": "stale", "clientUpdatedAt": stamp - 1}
        await ws.send_message(request("review.save", stale, "b"))
        error = await receive_until(ws, "error")
        assert error == {
            "type": "error",
            "id": "b",
            "status": 409,
            "message": "Conflict detected.",
            "serverVersion": {"text": "first", "updatedAt": stamp},
        }


async def test_requests_share_the_user_rate_limit(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path, rate_limit_user=RateLimit(2, 900))) as server:
        alice = await server.register("alice")
        async with device(server, alice) as ws:
            await receive(ws)
            answers = []
            for index in range(3):
                await ws.send_message(request("library.get", None, index))
                answers.append(await receive(ws))
            assert [a["type"] for a in answers] == ["ack", "ack", "error"]
            assert answers[2]["status"] == 429


async def test_sustained_abuse_closes_the_socket(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path, ws_max_errors=5)) as server:
        alice = await server.register("alice")
        async with device(server, alice) as ws:
            await receive(ws)
            for _ in range(10):
                try:
                    await ws.send_message("garbage")
                except ConnectionClosed:
                    break
            assert await close_code(ws) == 4103


async def test_oversized_frame_closes_with_1009(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path, ws_max_message_bytes=1024)) as server:
        alice = await server.register("alice")
        async with device(server, alice) as ws:
            await receive(ws)
            await ws.send_message(json.dumps({"type": "ping", "pad": "x" * 5000}))
            assert await close_code(ws) == 1009


async def test_shutdown_closes_every_socket_with_1001(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path)) as server:
        alice = await server.register("alice")
        async with device(server, alice) as first, device(server, alice) as second:
            await receive(first)
            await receive(second)
            server.handle.stop()
            assert await close_code(first) == 1001
            assert await close_code(second) == 1001


async def _raw_device(server: Server, token: str | None) -> trio.SocketStream:
    """A device on a bare TCP stream (wsproto): connected, hello sent, ``ready`` read if
    ``token`` is given. Closing the stream drops the connection without a close frame."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request, TextMessage

    port = int(server.url.rsplit(":", 1)[1])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    ws = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(
        ws.send(Request(host="127.0.0.1", target="/api/ws", subprotocols=[PROTOCOL]))
    )
    accepted = False
    with trio.fail_after(5):
        while not accepted:
            ws.receive_data(await stream.receive_some(65536))
            accepted = any(isinstance(event, AcceptConnection) for event in ws.events())
        if token is not None:
            await stream.send_all(
                ws.send(TextMessage(json.dumps({"type": "hello", "token": token})))
            )
            text = ""
            while '"ready"' not in text:
                ws.receive_data(await stream.receive_some(65536))
                text += "".join(e.data for e in ws.events() if isinstance(e, TextMessage))
    return stream


@pytest.mark.parametrize("authenticated", [True, False])
async def test_a_vanished_client_is_cleaned_up_quietly(
    server: Server, authenticated: bool, caplog: pytest.LogCaptureFixture
) -> None:
    token = await server.register("alice")
    hub = server.handle.state.hub
    stream = await _raw_device(server, token if authenticated else None)
    if authenticated:
        assert len(hub.sessions[1].devices) == 1
    await stream.aclose()  # no close frame: the peer is just gone
    with trio.fail_after(5):
        while any(session.devices for session in hub.sessions.values()):  # noqa: ASYNC110
            await trio.sleep(0.01)  # (the detach has no event to wait on)
    # The server still serves a new device of the same user.
    async with device(server, token) as ws:
        assert (await receive(ws))["type"] == "ready"
    assert not [r for r in caplog.records if r.levelno >= 40], caplog.text
