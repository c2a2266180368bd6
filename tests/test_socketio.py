"""Socket.IO end to end with the real npm socket.io-client, driven through Node.

The frontend's exact options (polling first, then the upgrade to WebSocket) and WebSocket-only
clients; authentication refusals with the original server's messages; live events to every
device of a user and to no one else; connection-state recovery; the heartbeat; token expiry.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from dramaverse.http.auth import TokenService
from tests.conftest import TEST_SECRET, Server, make_settings, running_server, sample_records
from tests.node.driver import NodeDriver, eventually, open_driver, require_node

URLS = [r["url"] for r in sample_records()]
PROXY_PATH = "/dramaverse/socket.io/"


@pytest.fixture
async def node() -> AsyncIterator[NodeDriver]:
    require_node()
    async with open_driver() as driver:
        yield driver


def frontend_options(token: str | None, path: str = PROXY_PATH, **extra: Any) -> dict[str, Any]:
    """What the Dramaverse frontend passes to ``io('', ...)`` (plus test-only overrides)."""
    auth: dict[str, Any] = {} if token is None else {"token": token}
    return {
        "auth": auth,
        "path": path,
        "reconnection": True,
        "reconnectionAttempts": 5,
        "reconnectionDelay": 1000,
        **extra,
    }


async def connect(
    node: NodeDriver, server: Server, name: str, options: dict[str, Any]
) -> dict[str, Any]:
    await node.send("connect", name=name, url=server.url, options=options)
    return await node.expect("connect", name)


async def favorite(server: Server, token: str, url: str, on: bool = True) -> None:
    response = await server.post_as(
        token, "/api/user/favorites", {"dramaUrl": url, "isFavorite": on}
    )
    assert response.status_code == 200, response.text


def device_count(server: Server, user_id: int) -> int:
    session = server.handle.state.hub.sessions.get(user_id)
    return 0 if session is None else len([d for d in session.devices if not d.gone])


@pytest.fixture(params=[True, False], ids=["direct-ws", "hypercorn-ws"])
async def proxied(tmp_path: Any, request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    """A server deployed behind a proxy that keeps the /dramaverse prefix; its WebSockets on
    the server's own layer or on Hypercorn's (WS_DIRECT, server/direct_ws.py)."""
    settings = make_settings(tmp_path, socket_io_path=PROXY_PATH, ws_direct=request.param)
    async with running_server(settings) as running:
        yield running


async def test_frontend_options_connect_upgrade_and_get_the_seed_events(
    node: NodeDriver, proxied: Server
) -> None:
    server = proxied
    alice = await server.register("alice")
    await connect(node, server, "a", frontend_options(alice))
    # No `transports` option: it opens with polling, then upgrades (may finish before CONNECT).
    assert (await node.expect("upgrade", "a"))["transport"] == "websocket"
    assert (await node.state("a"))["transport"] == "websocket"

    await favorite(server, alice, URLS[0])
    await server.post_as(alice, "/api/user/statuses", {"dramaUrl": URLS[1], "status": "Watching"})
    await server.post_as(alice, "/api/user/statuses", {"dramaUrl": URLS[1], "status": ""})
    saved = await server.post_as(
        alice,
        "/api/user/reviews/episodes",
        {"dramaUrl": URLS[1], "episodeNumber": 2, "text": "wow", "clientUpdatedAt": 0},
    )
    updated_at = saved.json()["newUpdatedAt"]
    events = [await node.expect("event", "a") for _ in range(4)]
    assert [(e["event"], e["args"]) for e in events] == [
        ("favorite_updated", [{"dramaUrl": URLS[0], "isFavorite": True}, "1"]),
        (
            "status_updated",
            [{"dramaUrl": URLS[1], "statusInfo": {"status": "Watching", "currentEpisode": 0}}, "2"],
        ),
        ("status_updated", [{"dramaUrl": URLS[1], "statusInfo": None}, "3"]),
        (
            "episode_review_updated",
            [
                {
                    "dramaUrl": URLS[1],
                    "episodeNumber": 2,
                    "review": {"text": "wow", "updatedAt": updated_at},
                },
                "4",
            ],
        ),
    ]


async def test_the_default_path_is_not_served_when_socket_io_path_is_set(proxied: Server) -> None:
    response = await proxied.client.get("/socket.io/", params={"EIO": "4", "transport": "polling"})
    assert response.status_code == 404
    response = await proxied.client.get(PROXY_PATH, params={"EIO": "4", "transport": "polling"})
    assert response.status_code == 200
    assert response.text.startswith('0{"sid":')


async def test_websocket_only_client(node: NodeDriver, server: Server) -> None:
    alice = await server.register("alice")
    options = {"auth": {"token": alice}, "transports": ["websocket"]}
    connected = await connect(node, server, "a", options)
    assert connected["transport"] == "websocket"
    await favorite(server, alice, URLS[0])
    event = await node.expect("event", "a")
    assert event["args"] == [{"dramaUrl": URLS[0], "isFavorite": True}, "1"]
    assert node.of("upgrade", "a") == []


@pytest.mark.parametrize("transports", [["polling", "websocket"], ["websocket"]])
async def test_authentication_errors_have_the_original_messages(
    node: NodeDriver, server: Server, transports: list[str]
) -> None:
    await server.register("alice")
    other_secret = TokenService("another-secret-" + "y" * 40, 60).issue(1, "alice")
    expired = TokenService(TEST_SECRET, 60).issue(1, "alice", now=time.time() - 3600)
    deleted_user = TokenService(TEST_SECRET, 60).issue(999, "ghost")
    cases = {
        "none": ({}, "Authentication error: Token not provided."),
        "empty": ({"token": ""}, "Authentication error: Token not provided."),
        "garbage": ({"token": "not-a-token"}, "Authentication error: Invalid token."),
        "number": ({"token": 12345}, "Authentication error: Invalid token."),
        "secret": ({"token": other_secret}, "Authentication error: Invalid token."),
        "expired": ({"token": expired}, "Authentication error: Invalid token."),
        "deleted": ({"token": deleted_user}, "Authentication error: Invalid token."),
    }
    for name, (auth, _) in cases.items():
        options = {"auth": auth, "transports": transports, "path": "/socket.io/"}
        await node.send("connect", name=name, url=server.url, options=options)
    for name, (_, message) in cases.items():
        refused = await node.expect("connect_error", name)
        assert refused["message"] == message
    assert not any(r["type"] == "connect" for r in node.reports)


async def test_every_device_of_the_user_gets_events_and_other_users_none(
    node: NodeDriver, server: Server
) -> None:
    alice = await server.register("alice")
    bob = await server.register("bob")
    path = "/socket.io/"
    await connect(node, server, "a1", frontend_options(alice, path))
    await connect(node, server, "a2", frontend_options(alice, path))
    await connect(node, server, "a3", {"auth": {"token": alice}, "transports": ["websocket"]})
    await connect(node, server, "b", frontend_options(bob, path))
    await node.expect("upgrade", "a1")
    await favorite(server, alice, URLS[0])
    await favorite(server, alice, URLS[1])
    await favorite(server, bob, URLS[2])
    for name in ("a1", "a2", "a3"):
        first, second = [await node.expect("event", name) for _ in range(2)]
        assert [first["args"][1], second["args"][1]] == ["1", "2"]
        assert first["args"][0] == {"dramaUrl": URLS[0], "isFavorite": True}
    only = await node.expect("event", "b")
    assert only["args"] == [{"dramaUrl": URLS[2], "isFavorite": True}, "1"]
    # Bob's write was the last; had any of Alice's events reached him they would be here.
    await favorite(server, alice, URLS[3])
    for name in ("a1", "a2", "a3"):
        assert (await node.expect("event", name))["args"][1] == "3"
    assert len(node.of("event", "b")) == 1


async def test_events_from_clients_are_ignored_and_acks_answered(
    node: NodeDriver, server: Server
) -> None:
    alice = await server.register("alice")
    await connect(node, server, "a", {"auth": {"token": alice}, "transports": ["websocket"]})
    await node.send("emit", name="a", event="favorite_updated", args=[{"dramaUrl": URLS[0]}])
    await node.send("emit", name="a", event="hello", args=[1, 2], ack=2000, ref=1)
    ack = await node.expect("ack", "a")
    assert ack["error"] is None
    assert ack["args"] == [{"message": "Event 'hello' is not handled by this server."}]
    await favorite(server, alice, URLS[1])
    event = await node.expect("event", "a")  # still connected, and the emit changed nothing
    assert event["args"] == [{"dramaUrl": URLS[1], "isFavorite": True}, "1"]
    data = (await server.get_as(alice, "/api/user/data")).json()["data"]
    assert data["favorites"] == [URLS[1]]


async def test_a_dropped_client_recovers_the_events_it_missed(
    node: NodeDriver, server: Server
) -> None:
    alice = await server.register("alice")
    fast = frontend_options(alice, "/socket.io/", reconnectionDelay=50, reconnectionDelayMax=100)
    assert (await connect(node, server, "a", fast))["recovered"] is False
    await connect(node, server, "witness", frontend_options(alice, "/socket.io/"))
    await favorite(server, alice, URLS[0])
    assert (await node.expect("event", "a"))["args"][1] == "1"
    await node.expect("event", "witness")

    await node.send("drop", name="a")
    assert (await node.expect("disconnect", "a"))["reason"] == "forced close"
    await eventually(lambda: device_count(server, 1) == 1)  # gone before the writes
    await favorite(server, alice, URLS[1])
    await favorite(server, alice, URLS[2])
    assert [(await node.expect("event", "witness"))["args"][1] for _ in range(2)] == ["2", "3"]

    reconnected = await node.expect("connect", "a")
    assert reconnected["recovered"] is True
    missed = [await node.expect("event", "a") for _ in range(2)]
    assert [e["args"] for e in missed] == [
        [{"dramaUrl": URLS[1], "isFavorite": True}, "2"],
        [{"dramaUrl": URLS[2], "isFavorite": True}, "3"],
    ]
    await favorite(server, alice, URLS[3])
    assert (await node.expect("event", "a"))["args"][1] == "4"

    # A drop with nothing missed recovers too, and nothing is replayed twice.
    await node.send("drop", name="a")
    assert (await node.expect("connect", "a"))["recovered"] is True
    await favorite(server, alice, URLS[4])
    assert (await node.expect("event", "a"))["args"][1] == "5"
    assert [e["args"][1] for e in node.of("event", "a")] == ["1", "2", "3", "4", "5"]


async def test_recovery_replays_more_missed_events_than_an_outbox_holds(
    node: NodeDriver, tmp_path: Any
) -> None:
    # An outbox of 4 packets and 20 missed events: recovered all the same (the replay is
    # streamed from the log at the socket's pace; it used to need the gap to fit the outbox).
    settings = make_settings(tmp_path, ws_outbox_size=4)
    async with running_server(settings) as server:
        alice = await server.register("alice")
        slow = frontend_options(alice, "/socket.io/", reconnectionDelay=300)
        await connect(node, server, "a", {**slow, "transports": ["websocket"]})
        await favorite(server, alice, URLS[0])
        assert (await node.expect("event", "a"))["args"][1] == "1"
        await node.send("drop", name="a")
        await node.expect("disconnect", "a")
        await eventually(lambda: device_count(server, 1) == 0)
        for n in range(20):  # seq 2..21, URLS[1] and URLS[2] on and off in turn
            await favorite(server, alice, URLS[1 + n % 2], n % 4 < 2)
        reconnected = await node.expect("connect", "a")
        assert reconnected["recovered"] is True
        missed = [await node.expect("event", "a") for _ in range(20)]
        assert [e["args"][1] for e in missed] == [str(seq) for seq in range(2, 22)]
        await favorite(server, alice, URLS[3])
        assert (await node.expect("event", "a"))["args"][1] == "22"


async def test_no_recovery_when_the_missed_events_were_pruned(
    node: NodeDriver, tmp_path: Any
) -> None:
    settings = make_settings(tmp_path, event_retention_count=1, event_prune_seconds=0.05)
    async with running_server(settings) as server:
        alice = await server.register("alice")
        fast = frontend_options(alice, "/socket.io/", reconnectionDelay=300)
        await connect(node, server, "a", fast)
        await favorite(server, alice, URLS[0])
        await node.expect("event", "a")
        await node.send("drop", name="a")
        await node.expect("disconnect", "a")
        await favorite(server, alice, URLS[1])
        await favorite(server, alice, URLS[2])
        storage = server.handle.state.storage

        async def pruned() -> bool:  # the pruner keeps only the last event: seq 2 is gone
            return not (await storage.read_events(1, 1, 10)).complete

        await eventually(pruned)
        reconnected = await node.expect("connect", "a")
        assert reconnected["recovered"] is False  # the frontend refetches /api/user/data
        await favorite(server, alice, URLS[3])
        assert (await node.expect("event", "a"))["args"][1] == "4"
        assert [e["args"][1] for e in node.of("event", "a")] == ["1", "4"]


async def test_a_silent_client_is_closed_by_the_heartbeat(node: NodeDriver, tmp_path: Any) -> None:
    settings = make_settings(tmp_path, socket_io_ping_interval=0.2, socket_io_ping_timeout=0.3)
    async with running_server(settings) as server:
        alice = await server.register("alice")
        options = {"auth": {"token": alice}, "transports": ["websocket"], "reconnection": False}
        await connect(node, server, "quiet", options)
        await connect(node, server, "alive", options)
        await trio.sleep(0.6)  # several ping periods: a client that answers stays
        assert (await node.state("alive"))["connected"] is True
        await node.send("silence", name="quiet")
        closed = await node.expect("disconnect", "quiet", within=5)
        assert closed["reason"] == "transport close"
        await eventually(lambda: device_count(server, 1) == 1)
        assert (await node.state("alive"))["connected"] is True


async def test_an_expired_token_ends_the_socket(node: NodeDriver, server: Server) -> None:
    await server.register("alice")
    short = TokenService(TEST_SECRET, 2).issue(1, "alice")  # expires in 1 to 2 seconds
    await connect(node, server, "a", {"auth": {"token": short}, "transports": ["websocket"]})
    closed = await node.expect("disconnect", "a", within=10)
    assert closed["reason"] == "io server disconnect"  # the client must log in again


async def test_server_shutdown_makes_clients_reconnect(node: NodeDriver, tmp_path: Any) -> None:
    async with running_server(make_settings(tmp_path)) as server:
        alice = await server.register("alice")
        await connect(node, server, "p", {"auth": {"token": alice}, "transports": ["polling"]})
        await connect(node, server, "w", {"auth": {"token": alice}, "transports": ["websocket"]})
        server.handle.stop()
        reasons = {(await node.expect("disconnect", name))["reason"] for name in ("p", "w")}
        assert reasons == {"transport close"}
