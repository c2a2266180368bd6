"""Socket.IO with ``serve --workers 2``: sids name their worker and requests follow them.

Three layers. Sid tags and the relay's header parsing as plain functions. The router in process,
driven with ASGI messages against a fake owner served by Hypercorn on a real Unix socket, which
makes the timing-dependent cases deterministic (a long poll pending at shutdown, a client that
leaves, close codes, refusals). And real clusters on the real PostgreSQL and Redis: the npm
socket.io-client with the frontend's options on the shared port, where the kernel spreads
connections over the workers; raw HTTP and WebSockets through a connection pinned to the worker
that does not own the session; owners that are missing, refuse, hang up or die.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from trio_websocket import ConnectionClosed, WebSocketConnection

from dramaverse.cluster.worker_routing import (
    WorkerRouter,
    format_client,
    parse_client,
    query_sid,
    sid_owner,
    sid_prefix,
)
from dramaverse.config import MAX_WORKERS
from dramaverse.realtime.engineio import SEPARATOR
from tests.cluster import Cluster, poll, running_cluster
from tests.conftest import make_settings, sample_records
from tests.node.driver import open_driver, require_node
from tests.postgres_tools import fresh_schema
from tests.services import require_redis
from tests.test_broker_contract import unique_prefix
from tests.wsclient import open_client

URLS = [r["url"] for r in sample_records()]
PATH = "/socket.io/"
ALLOWED = "http://localhost:5173"
UNKNOWN_SID = {"code": 1, "message": "Session ID unknown"}
SID = re.compile(r"w([0-9]+)\.[A-Za-z0-9_-]{20}")


# -- sids and headers ------------------------------------------------------------------------


def test_a_workers_sids_start_with_its_tag() -> None:
    assert sid_prefix(None) == ""
    assert sid_prefix(0) == "w0."
    assert sid_prefix(MAX_WORKERS - 1) == f"w{MAX_WORKERS - 1}."
    for bad in (-1, MAX_WORKERS):
        with pytest.raises(ValueError, match="worker id"):
            sid_prefix(bad)
    for worker in (0, 7, MAX_WORKERS - 1):
        assert sid_owner(sid_prefix(worker) + "AbCdEfGhIjKlMnOpQr_-") == worker


@pytest.mark.parametrize(
    "sid",
    [
        "",
        "AbCdEfGhIjKlMnOpQr_-",  # a single process's sid: no tag
        "w",
        "w.",
        "w1",
        "w1x",
        "W1.abc",
        "w01.abc",  # one spelling per worker
        "w-1.abc",
        "w+1.abc",
        f"w{MAX_WORKERS}.abc",
        "w100.abc",
        "w../../etc/passwd",
        "w1/../0.abc",
        "w\u0661.abc",  # a non-ASCII digit
        " w1.abc",
        "w1." + "x" * 80,  # longer than any sid
    ],
)
def test_anything_but_a_valid_tag_names_no_worker(sid: str) -> None:
    assert sid_owner(sid) is None


def test_the_sid_is_read_from_the_query_as_quart_reads_it() -> None:
    assert query_sid(b"EIO=4&transport=polling") is None
    assert query_sid(b"EIO=4&transport=polling&sid=w1.abc") == "w1.abc"
    assert query_sid(b"sid=w1.abc&sid=w0.def") == "w1.abc"  # the first one, like request.args
    assert query_sid(b"sid=w1%2Eabc") == "w1.abc"
    assert query_sid(b"xsid=w1.abc") is None
    assert query_sid(b"sid=") == ""


def test_the_client_address_header_round_trips_and_refuses_garbage() -> None:
    for client in (("127.0.0.1", 51234), ("2001:db8::1", 443), ("::1", 0)):
        assert parse_client(format_client(client)) == client
    assert format_client(("2001:db8::1", 443)) == b"[2001:db8::1]:443"
    for value in (
        b"",
        b"127.0.0.1",
        b"127.0.0.1:",
        b"127.0.0.1:99999",
        b"127.0.0.1:-1",
        b"example.com:80",
        b"2001:db8::1:443",  # IPv6 without brackets is ambiguous
        b"[127.0.0.1:80",
        b"1.2.3.4:80, 5.6.7.8:80",
        "127.0.0.1:8\u0660".encode(),
        b"\xff:80",
    ):
        assert parse_client(value) is None, value


# -- the router in process, against a fake owner on a real Unix socket ------------------------


class FakeOwner:
    """The owner's application (behind its own WorkerRouter): records what reaches it.

    HTTP: ``do=hold`` waits until the relay hangs up; anything else answers 201 with what it saw.
    WebSocket: ``do=reject`` refuses with 418; otherwise it accepts, echoes, sends a 200 kB
    message on ``big``, and closes with 4000 on ``close``.
    """

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []
        self.arrived = trio.Event()
        self.abandoned = trio.Event()
        self.disconnected: list[int] = []
        self.gone = trio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        self.scopes.append(scope)
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        else:
            await self._websocket(scope, receive, send)

    async def _http(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if b"do=hold" in scope["query_string"]:  # a long poll, until the relay hangs up
            self.arrived.set()
            while (await receive())["type"] != "http.disconnect":
                pass
            self.abandoned.set()
            return
        seen = {
            "client": list(scope["client"]) if scope["client"] else None,
            "method": scope["method"],
            "query": scope["query_string"].decode(),
            "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
            "body": len(body),
        }
        content = json.dumps(seen).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"x-owner", b"yes"),
            (b"date", b"Thu, 01 Jan 1970 00:00:00 GMT"),
            (b"content-length", str(len(content)).encode()),
        ]
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    async def _websocket(self, scope: Any, receive: Any, send: Any) -> None:
        await receive()  # websocket.connect
        if b"do=reject" in scope["query_string"]:
            headers = [(b"content-type", b"application/json"), (b"x-owner", b"yes")]
            await send({"type": "websocket.http.response.start", "status": 418, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": b'{"no":1}'})
            return
        await send({"type": "websocket.accept", "headers": [(b"x-owner", b"yes")]})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.disconnected.append(message["code"])
                self.gone.set()
                return
            text = message.get("text")
            if text == "close":
                await send({"type": "websocket.close", "code": 4000, "reason": "bye"})
            elif text == "big":
                await send({"type": "websocket.send", "text": "x" * 200_000})
            elif text is not None:
                await send({"type": "websocket.send", "text": "echo " + text})
            else:
                await send({"type": "websocket.send", "bytes": message["bytes"][::-1]})


class Call:
    """One ASGI call into the router: feed ``receive``, collect what is sent."""

    def __init__(self, scope: dict[str, Any]) -> None:
        self.scope = scope
        self.sent: list[dict[str, Any]] = []
        self._inbox, self._messages = trio.open_memory_channel[dict[str, Any]](16)
        self._changed = trio.Event()

    def put(self, message: dict[str, Any]) -> None:
        self._inbox.send_nowait(message)

    async def receive(self) -> dict[str, Any]:
        return await self._messages.receive()

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        self._changed.set()
        self._changed = trio.Event()

    async def next(self, kind: str, index: int = 0) -> dict[str, Any]:
        """The ``index``-th sent message of type ``kind``, waiting for it."""
        with trio.fail_after(10):
            while True:
                found = [m for m in self.sent if m["type"] == kind]
                if len(found) > index:
                    return found[index]
                await self._changed.wait()

    def response(self) -> tuple[int, dict[str, list[str]], bytes]:
        start, body = self.sent
        headers: dict[str, list[str]] = {}
        for name, value in start["headers"]:
            headers.setdefault(name.decode(), []).append(value.decode())
        return start["status"], headers, body["body"]


def scope_for(kind: str, query: str, *headers: tuple[str, str], method: str = "GET") -> Any:
    scope: dict[str, Any] = {
        "type": kind,
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "http" if kind == "http" else "ws",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"dv.example")] + [(k.encode(), v.encode()) for k, v in headers],
        "client": ("198.51.100.7", 5555),
        "server": ("127.0.0.1", 3001),  # the shared port (a Unix socket has no address)
        "state": {},
        "extensions": {},
    }
    if kind == "http":
        scope["method"] = method
    else:
        scope["subprotocols"] = []
    return scope


class LocalApp:
    """The relay's own application: records what it serves itself and answers 404."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"local"})
        else:
            await send({"type": "websocket.close", "code": 1000})


class Relay:
    """Worker 0's router (driven directly with ASGI calls) and a fake worker 1 on ``1.sock``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.local = LocalApp()
        self.owner = FakeOwner()
        self.shutdown = trio.Event()
        settings = make_settings(directory, worker_socket_dir=directory, socket_io_ping_interval=1)
        self.router = WorkerRouter(self.local, replace(settings, worker_id=0), self.shutdown)
        self.owner_settings = replace(settings, worker_id=1)

    async def call(self, scope: Any, *messages: dict[str, Any]) -> Call:
        """Run one request to the end; ``messages`` are what the client sends."""
        call = Call(scope)
        for message in messages:
            call.put(message)
        with trio.fail_after(20):
            await self.router(call.scope, call.receive, call.send)
        return call


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    directory = Path(tempfile.mkdtemp(prefix="dv", dir="/tmp"))  # Unix socket paths are short
    setup = Relay(directory)
    config = Config()
    config.bind = [f"unix:{setup.owner_settings.worker_socket_path}"]
    config.graceful_timeout = 0.5
    owner_stop = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            owner_front = WorkerRouter(setup.owner, setup.owner_settings, trio.Event())
            serve = partial(hypercorn_serve, owner_front, config, shutdown_trigger=owner_stop.wait)
            await nursery.start(serve)
            await nursery.start(setup.router.run)
            yield setup
            owner_stop.set()
            nursery.cancel_scope.cancel()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def polling(sid: str, extra: str = "") -> str:
    return f"EIO=4&transport=polling&sid={sid}{extra}"


REQUEST = {"type": "http.request", "body": b"", "more_body": False}


@asynccontextmanager
async def hang_up_server(path: Path) -> AsyncIterator[None]:
    """A 'worker' on ``path`` that accepts, reads the request and closes without a word."""

    async def handler(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.aclose()

    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    sock.listen()
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handler, [trio.SocketListener(sock)])
        yield
        nursery.cancel_scope.cancel()


def refused_socket(path: Path) -> None:
    """A socket file nobody listens on (a worker that died): connecting is refused."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))


def assert_unknown_sid(call: Call, origin: str | None = ALLOWED) -> None:
    status, headers, body = call.response()
    assert (status, json.loads(body)) == (400, UNKNOWN_SID)
    assert headers["content-type"] == ["application/json"]
    assert headers["x-content-type-options"] == ["nosniff"]
    if origin is not None:
        assert headers["access-control-allow-origin"] == [origin]
        assert headers["access-control-allow-credentials"] == ["true"]


async def test_a_request_for_another_workers_session_is_relayed_unchanged(relay: Relay) -> None:
    scope = scope_for(
        "http",
        polling("w1.abc"),
        ("origin", ALLOWED),
        ("x-dramaverse-client", "203.0.113.9:4444"),  # forged by the client: dropped
        ("content-type", "text/plain;charset=UTF-8"),
        ("connection", "keep-alive"),
        method="POST",
    )
    call = await relay.call(scope, {"type": "http.request", "body": b"40{}", "more_body": False})
    status, headers, body = call.response()
    assert status == 201
    assert headers["x-owner"] == ["yes"]
    assert headers["content-type"] == ["application/json"]
    assert headers["content-length"] == [str(len(body))]
    assert "date" not in headers  # the relay's server adds its own
    seen = json.loads(body)
    assert (seen["method"], seen["query"], seen["body"]) == ("POST", polling("w1.abc"), 4)
    # The owner's router took the client's address from the relay's header, not the forgery.
    assert seen["client"] == ["198.51.100.7", 5555]
    relayed = [name for name, _ in seen["headers"]]
    assert relayed.count("x-dramaverse-client") == 1
    assert ["x-dramaverse-client", "198.51.100.7:5555"] in seen["headers"]
    assert ["host", "dv.example"] in seen["headers"]
    assert ["origin", ALLOWED] in seen["headers"]
    # The client's hop-by-hop headers stay here; a POST gets a connection of its own.
    assert [value for name, value in seen["headers"] if name == "connection"] == ["close"]
    assert relay.local.scopes == []


async def test_a_relayed_body_is_cut_just_above_max_payload(relay: Relay) -> None:
    chunk = b"4" + b"x" * 40_000
    scope = scope_for("http", polling("w1.abc"), method="POST")
    call = await relay.call(
        scope,
        {"type": "http.request", "body": chunk, "more_body": True},
        {"type": "http.request", "body": chunk, "more_body": True},
        {"type": "http.request", "body": chunk, "more_body": False},
    )
    seen = json.loads(call.response()[2])
    assert seen["body"] == 65_536 + 1  # still too large for the owner, which refuses it


@pytest.mark.parametrize(
    "query",
    [
        "EIO=4&transport=polling",  # a handshake: served where it lands
        polling("w0.abc"),  # our own session
        polling("w99.abc"),  # no valid tag
        polling("abc"),
    ],
)
async def test_what_is_not_another_workers_session_is_served_locally(
    relay: Relay, query: str
) -> None:
    call = await relay.call(scope_for("http", query), REQUEST)
    assert call.response()[0] == 404
    assert len(relay.local.scopes) == 1
    assert relay.owner.scopes == []


async def test_on_the_private_socket_nothing_is_relayed_and_the_relays_address_is_believed(
    relay: Relay,
) -> None:
    scope = scope_for("http", polling("w1.abc"), ("x-dramaverse-client", "[2001:db8::7]:80"))
    scope["server"] = scope["client"] = None  # how Hypercorn describes a Unix socket
    call = await relay.call(scope, REQUEST)
    assert call.response()[0] == 404  # served here, never relayed again
    assert relay.local.scopes[0]["client"] == ("2001:db8::7", 80)
    assert relay.owner.scopes == []

    garbage = scope_for("http", "", ("x-dramaverse-client", "not an address"))
    garbage["server"] = garbage["client"] = None
    await relay.call(garbage, REQUEST)
    assert relay.local.scopes[1]["client"] is None

    # From the network the header means nothing.
    forged = scope_for("http", "", ("x-dramaverse-client", "203.0.113.9:4444"))
    await relay.call(forged, REQUEST)
    assert relay.local.scopes[2]["client"] == ("198.51.100.7", 5555)


async def test_an_unreachable_owner_means_session_id_unknown(relay: Relay) -> None:
    refused_socket(relay.directory / "7.sock")
    async with hang_up_server(relay.directory / "6.sock"):
        for sid in ("w5.abc", "w6.abc", "w7.abc"):  # missing, hangs up, refuses
            scope = scope_for("http", polling(sid), ("origin", ALLOWED))
            assert_unknown_sid(await relay.call(scope, REQUEST))
            upgrade = scope_for("websocket", polling(sid).replace("polling", "websocket"))
            call = await relay.call(upgrade, {"type": "websocket.connect"})
            start = await call.next("websocket.http.response.start")
            body = await call.next("websocket.http.response.body")
            assert (start["status"], json.loads(body["body"])) == (400, UNKNOWN_SID)
    no_origin = await relay.call(scope_for("http", polling("w5.abc")), REQUEST)
    assert_unknown_sid(no_origin, origin=None)
    assert "access-control-allow-origin" not in no_origin.response()[1]


async def test_an_upgrade_the_local_hop_cannot_carry_is_refused_as_session_id_unknown(
    relay: Relay,
) -> None:
    query = "EIO=4&transport=websocket&sid=w1.abc"
    upgrade = scope_for("websocket", query, ("origin", ALLOWED), ("cookie", "a=\x01"))
    call = await relay.call(upgrade, {"type": "websocket.connect"})
    assert_unknown_sid(call)
    assert relay.owner.scopes == []  # never reached the owner


async def test_a_client_that_leaves_ends_its_relayed_poll(relay: Relay) -> None:
    call = Call(scope_for("http", polling("w1.abc", "&do=hold")))
    call.put(REQUEST)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(relay.router, call.scope, call.receive, call.send)
        with trio.fail_after(10):
            await relay.owner.arrived.wait()
        call.put({"type": "http.disconnect"})
        with trio.fail_after(10):
            await relay.owner.abandoned.wait()  # the owner's GET ended with the relay's
    assert call.sent == []


async def test_shutdown_ends_relayed_polls_with_a_noop(relay: Relay) -> None:
    call = Call(scope_for("http", polling("w1.abc", "&do=hold"), ("origin", ALLOWED)))
    call.put(REQUEST)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(relay.router, call.scope, call.receive, call.send)
        with trio.fail_after(10):
            await relay.owner.arrived.wait()
        relay.shutdown.set()
    status, headers, body = call.response()
    assert (status, body) == (200, b"6")  # the client polls again, on another worker
    assert headers["content-type"] == ["text/plain; charset=UTF-8"]
    assert headers["access-control-allow-origin"] == [ALLOWED]
    with trio.fail_after(10):
        await relay.owner.abandoned.wait()
    # Polls that arrive while stopping get the same at once; upgrades are refused.
    late = await relay.call(scope_for("http", polling("w1.abc", "&do=hold")), REQUEST)
    assert late.response()[2] == b"6"
    upgrade = await relay.call(
        scope_for("websocket", "EIO=4&transport=websocket&sid=w1.abc"),
        {"type": "websocket.connect"},
    )
    start = await upgrade.next("websocket.http.response.start")
    assert start["status"] == 503


async def start_websocket(relay: Relay, nursery: trio.Nursery, query: str) -> Call:
    call = Call(scope_for("websocket", query, ("origin", ALLOWED)))
    call.put({"type": "websocket.connect"})
    nursery.start_soon(relay.router, call.scope, call.receive, call.send)
    return call


async def test_a_relayed_websocket_carries_messages_both_ways_and_the_owners_close(
    relay: Relay,
) -> None:
    async with trio.open_nursery() as nursery:
        call = await start_websocket(relay, nursery, "EIO=4&transport=websocket&sid=w1.abc")
        accept = await call.next("websocket.accept")
        assert (b"x-owner", b"yes") in accept["headers"]
        call.put({"type": "websocket.receive", "text": "2probe"})
        assert (await call.next("websocket.send", 0))["text"] == "echo 2probe"
        call.put({"type": "websocket.receive", "bytes": b"abc"})
        assert (await call.next("websocket.send", 1))["bytes"] == b"cba"
        call.put({"type": "websocket.receive", "text": "big"})  # read in several pieces
        assert (await call.next("websocket.send", 2))["text"] == "x" * 200_000
        call.put({"type": "websocket.receive", "text": "close"})
        closed = await call.next("websocket.close")
    assert (closed["code"], closed["reason"]) == (4000, "bye")
    owner_scope = relay.owner.scopes[0]
    assert owner_scope["query_string"] == b"EIO=4&transport=websocket&sid=w1.abc"
    assert owner_scope["client"] == ("198.51.100.7", 5555)
    assert (b"origin", ALLOWED.encode()) in owner_scope["headers"]


async def test_a_client_leaving_a_relayed_websocket_closes_the_owners(relay: Relay) -> None:
    async with trio.open_nursery() as nursery:
        call = await start_websocket(relay, nursery, "EIO=4&transport=websocket&sid=w1.abc")
        await call.next("websocket.accept")
        call.put({"type": "websocket.disconnect", "code": 1006})
        with trio.fail_after(10):
            await relay.owner.gone.wait()
    assert [m["type"] for m in call.sent] == ["websocket.accept"]


async def test_an_owners_refusal_of_the_upgrade_is_relayed(relay: Relay) -> None:
    call = await relay.call(
        scope_for("websocket", "EIO=4&transport=websocket&sid=w1.abc&do=reject"),
        {"type": "websocket.connect"},
    )
    start = await call.next("websocket.http.response.start")
    body = await call.next("websocket.http.response.body")
    assert start["status"] == 418
    assert (b"x-owner", b"yes") in start["headers"]
    assert body["body"] == b'{"no":1}'


async def test_shutdown_closes_relayed_websockets_with_1001(relay: Relay) -> None:
    async with trio.open_nursery() as nursery:
        call = await start_websocket(relay, nursery, "EIO=4&transport=websocket&sid=w1.abc")
        await call.next("websocket.accept")
        relay.shutdown.set()
        closed = await call.next("websocket.close")
        with trio.fail_after(10):
            await relay.owner.gone.wait()
    assert (closed["code"], closed["reason"]) == (1001, "server shutting down")


# -- real clusters -------------------------------------------------------------------------------


@asynccontextmanager
async def two_workers(tmp_path: Path, **env: str) -> AsyncIterator[Cluster]:
    redis_url = require_redis()
    async with (
        fresh_schema() as (url, _name),
        running_cluster(
            tmp_path, database_url=url, redis_url=redis_url, redis_prefix=unique_prefix(), **env
        ) as cluster,
    ):
        yield cluster


def frontend_options(token: str, **extra: Any) -> dict[str, Any]:
    """What the Dramaverse frontend passes to ``io()``: no ``transports``, so polling first."""
    return {
        "auth": {"token": token},
        "path": PATH,
        "reconnection": True,
        "reconnectionAttempts": 5,
        "reconnectionDelay": 1000,
        **extra,
    }


async def favorite_on(cluster: Cluster, worker: int, token: str, url: str) -> None:
    async with cluster.http(worker) as client:
        response = await client.post(
            "/api/user/favorites",
            json={"dramaUrl": url, "isFavorite": True},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert response.status_code == 200, response.text


@pytest.mark.slow
async def test_npm_clients_with_the_frontend_options_work_against_two_workers(
    tmp_path: Path,
) -> None:
    require_node()
    async with two_workers(tmp_path) as cluster, open_driver() as node:
        token = await cluster.register("alice")
        names = [f"s{i}" for i in range(20)]
        for name in names:
            await node.send("connect", name=name, url=cluster.url, options=frontend_options(token))
        for name in names:
            await node.expect("connect", name, within=30)
            assert (await node.expect("upgrade", name, within=30))["transport"] == "websocket"

        # Writes through each worker reach every socket, wherever its session lives.
        await favorite_on(cluster, 0, token, URLS[0])
        await favorite_on(cluster, 1, token, URLS[1])
        for name in names:
            first, second = [await node.expect("event", name, within=15) for _ in range(2)]
            assert first["args"] == [{"dramaUrl": URLS[0], "isFavorite": True}, "1"]
            assert second["args"] == [{"dramaUrl": URLS[1], "isFavorite": True}, "2"]
            assert (await node.state(name))["transport"] == "websocket"

        # A polling-only client: every GET and POST may land on either worker.
        await node.send(
            "connect",
            name="p",
            url=cluster.url,
            options=frontend_options(token, transports=["polling"]),
        )
        await node.expect("connect", "p", within=30)
        for round_trip in range(4):
            await node.send("emit", name="p", event="ping", args=[round_trip], ack=10_000, ref=1)
            ack = await node.expect("ack", "p", within=15)
            assert ack["error"] is None
            assert ack["args"] == [{"message": "Event 'ping' is not handled by this server."}]
            await favorite_on(cluster, round_trip % 2, token, URLS[2 + round_trip])
            event = await node.expect("event", "p", within=15)
            assert event["args"] == [
                {"dramaUrl": URLS[2 + round_trip], "isFavorite": True},
                str(3 + round_trip),
            ]
        assert (await node.state("p"))["transport"] == "polling"

        # Nothing was refused or dropped on the way: each socket connected exactly once.
        for name in [*names, "p"]:
            assert len(node.of("connect", name)) == 1, name
            assert node.of("disconnect", name) == [], name
            assert node.of("connect_error", name) == [], name
        assert not [r for r in node.reports if r["type"] == "error"]


def query(sid: str | None = None, transport: str = "polling") -> dict[str, str]:
    params = {"EIO": "4", "transport": transport}
    if sid is not None:
        params["sid"] = sid
    return params


async def open_session(cluster: Cluster, worker: int, token: str) -> str:
    """A polling session with a connected Socket.IO socket, made on ``worker``'s own socket."""
    async with cluster.http(worker) as client:
        response = await client.get(PATH, params=query())
        sid: str = json.loads(response.text[1:])["sid"]
        response = await client.post(
            PATH, params=query(sid), content="40" + json.dumps({"token": token})
        )
        assert response.text == "ok"
        response = await client.get(PATH, params=query(sid))
        assert response.text.startswith("40{"), response.text
    match = SID.fullmatch(sid)
    assert match is not None, sid
    assert match.group(1) == str(worker)
    return sid


@asynccontextmanager
async def pinned(cluster: Cluster, worker: int) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose one keep-alive connection to the shared port ``worker`` accepted."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    with trio.fail_after(60):
        while True:
            client = httpx.AsyncClient(base_url=cluster.url, timeout=30, limits=limits)
            response = await client.get("/api/health")
            if response.headers["x-dramaverse-worker"] == str(worker):
                break
            await client.aclose()
    try:
        yield client
    finally:
        await client.aclose()


def workers_of(response: httpx.Response) -> list[str]:
    """``X-Dramaverse-Worker`` values: the owner's, then the relay's if it was relayed."""
    return response.headers.get_list("x-dramaverse-worker")


def access_lines(cluster: Cluster, agent: str) -> list[tuple[str, str]]:
    """(worker, client) of every answered request sent with User-Agent ``agent``, from the
    access log (Hypercorn also logs some requests a second time without a status: skipped)."""
    pattern = re.compile(
        r"\[worker (\d+)\] dramaverse\.access: (\S+) - - \[[^]]*\] \"[^\"]*\" \d{3} .*\""
        + re.escape(agent)
        + '"$'
    )
    found = []
    for line in cluster.log_path.read_text("utf-8", errors="replace").splitlines():
        match = pattern.search(line)
        if match:
            found.append((match.group(1), match.group(2)))
    return found


async def logged_twice(cluster: Cluster, agent: str) -> list[tuple[str, str]]:
    """The access-log lines of a relayed request: the relay's and the owner's."""
    await poll(lambda: len(access_lines(cluster, agent)) == 2, 10)
    return access_lines(cluster, agent)


@pytest.mark.slow
async def test_polling_requests_are_relayed_to_the_worker_of_their_session(
    tmp_path: Path,
) -> None:
    async with two_workers(tmp_path, ACCESS_LOG="true") as cluster:
        token = await cluster.register("alice")
        on_one = await open_session(cluster, 1, token)
        on_zero = await open_session(cluster, 0, token)
        cors = {"Origin": ALLOWED}
        async with pinned(cluster, 0) as via_zero:
            # A POST (an event asking for an ack) and the GET that collects the ack.
            response = await via_zero.post(
                PATH,
                params=query(on_one),
                content='421["hello"]',
                headers={**cors, "User-Agent": "relayed-post"},
            )
            assert (response.status_code, response.text) == (200, "ok")
            assert workers_of(response) == ["1", "0"]  # served by 1, relayed by 0
            assert response.headers["access-control-allow-origin"] == ALLOWED
            assert response.headers["access-control-allow-credentials"] == "true"
            assert response.headers["x-content-type-options"] == "nosniff"
            assert len(response.headers.get_list("date")) == 1
            response = await via_zero.get(PATH, params=query(on_one), headers=cors)
            assert workers_of(response) == ["1", "0"]
            assert response.headers["content-type"] == "text/plain; charset=UTF-8"
            assert (
                response.text == '431[{"message":"Event \'hello\' is not handled by this server."}]'
            )

            # An event written on worker 0 reaches the session on 1 through a relayed GET.
            await favorite_on(cluster, 0, token, URLS[0])
            response = await via_zero.get(PATH, params=query(on_one))
            packets = response.text.split(SEPARATOR)
            assert (
                f'42["favorite_updated",{{"dramaUrl":"{URLS[0]}","isFavorite":true}},"1"]'
                in packets
            )

            # A preflight with a sid is relayed too; our own session is served here.
            response = await via_zero.options(
                PATH,
                params=query(on_one),
                headers={**cors, "Access-Control-Request-Method": "POST"},
            )
            assert response.status_code == 204
            assert workers_of(response) == ["1", "0"]
            assert response.headers["access-control-allow-methods"] == "GET,POST,OPTIONS"
            response = await via_zero.post(PATH, params=query(on_zero), content="6")
            assert (response.text, workers_of(response)) == ("ok", ["0"])

            # A forged client address from the network is not believed, here or by the owner.
            response = await via_zero.post(
                PATH,
                params=query(on_one),
                content="6",
                headers={"X-Dramaverse-Client": "203.0.113.9:4444", "User-Agent": "forged"},
            )
            assert (response.text, workers_of(response)) == ("ok", ["1", "0"])

            # Unknown sids: the owner's answer, or ours when no worker has that index.
            for sid, answered_by in [
                ("w1.unknown-session-id", ["1", "0"]),
                ("w9.no-such-worker-abcde", ["0"]),
                ("w64.not-a-tag", ["0"]),
                ("w01.not-a-tag", ["0"]),
                ("w../../../etc/passwd", ["0"]),
            ]:
                response = await via_zero.get(PATH, params=query(sid), headers=cors)
                assert (response.status_code, response.json()) == (400, UNKNOWN_SID), sid
                assert workers_of(response) == answered_by, sid
                assert response.headers["access-control-allow-origin"] == ALLOWED

            # A POST above maxPayload reaches the owner, which refuses it and ends the session.
            response = await via_zero.post(PATH, params=query(on_one), content="4" + "x" * 70_000)
            assert (response.status_code, response.json()) == (
                413,
                {"code": 3, "message": "Payload too large"},
            )
            assert workers_of(response) == ["1", "0"]
            response = await via_zero.get(PATH, params=query(on_one))
            assert (response.status_code, response.json()) == (400, UNKNOWN_SID)

            # Workers that are not there, refuse, or hang up: "Session ID unknown", never 500.
            refused_socket(cluster.socket(7))
            async with hang_up_server(cluster.socket(6)):
                for sid in ("w5.abc", "w6.abc", "w7.abc"):
                    response = await via_zero.get(PATH, params=query(sid), headers=cors)
                    assert (response.status_code, response.json()) == (400, UNKNOWN_SID), sid
                    assert response.headers["access-control-allow-origin"] == ALLOWED
            upgrade = {
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            }
            async with httpx.AsyncClient(base_url=cluster.url) as fresh:
                response = await fresh.get(
                    PATH, params=query("w7.abc", "websocket"), headers=upgrade
                )
            assert (response.status_code, response.json()) == (400, UNKNOWN_SID)

        # Both workers logged the relayed requests with the client's own address and port.
        for agent in ("relayed-post", "forged"):
            lines = await logged_twice(cluster, agent)
            assert sorted(worker for worker, _ in lines) == ["0", "1"], lines
            (client,) = {client for _, client in lines}
            assert client.startswith("127.0.0.1:"), lines


@asynccontextmanager
async def relayed_websocket(
    cluster: Cluster, token: str, owner: int
) -> AsyncIterator[tuple[WebSocketConnection, str]]:
    """An upgraded WebSocket, through the shared port, of a session on ``owner``, that the
    other worker accepted and relays. A fresh session per attempt: a connection that lands on
    the owner is dropped with its session, which is then left alone."""
    with trio.fail_after(60):
        while True:
            sid = await open_session(cluster, owner, token)
            url = cluster.url.replace("http://", "ws://") + PATH
            url += f"?EIO=4&transport=websocket&sid={sid}"
            async with open_client(url) as ws:
                workers = [
                    v.decode() for k, v in ws.handshake_headers if k == b"x-dramaverse-worker"
                ]
                if workers == [str(owner)]:
                    continue
                assert workers == [str(owner), str(1 - owner)], workers
                await ws.send_message("2probe")
                assert await ws.get_message() == "3probe"
                await ws.send_message("5")
                yield ws, sid
                return


async def close_code(ws: WebSocketConnection, within: float = 15) -> tuple[int, str | None]:
    with trio.fail_after(within):
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed as closed:
            return closed.reason.code, closed.reason.reason


@pytest.mark.slow
async def test_an_upgrade_on_another_worker_is_relayed_to_the_sessions_worker(
    tmp_path: Path,
) -> None:
    async with two_workers(tmp_path) as cluster:
        token = await cluster.register("alice")
        async with relayed_websocket(cluster, token, owner=1) as (ws, _sid):
            await favorite_on(cluster, 0, token, URLS[0])
            with trio.fail_after(15):
                event = await ws.get_message()
            assert (
                event == f'42["favorite_updated",{{"dramaUrl":"{URLS[0]}","isFavorite":true}},"1"]'
            )
            await ws.send_message("9")  # not an Engine.IO packet: the owner closes with 1002
            assert (await close_code(ws))[0] == 1002

        # The relaying worker stops: its relayed sockets are told to reconnect (1001).
        async with relayed_websocket(cluster, token, owner=1) as (ws, _sid):
            os.kill(cluster.worker_pids()[0], signal.SIGTERM)
            assert await close_code(ws) == (1001, "server shutting down")
        await poll(lambda: 0 in cluster.worker_pids(), 30)
        await cluster.wait_worker(0, within=30)

        # The owner dies: the relay tells the client at once, and its sids are unknown after.
        async with relayed_websocket(cluster, token, owner=1) as (ws, sid):
            os.kill(cluster.worker_pids()[1], signal.SIGKILL)
            assert await close_code(ws) == (1001, "the session's worker went away")
        async with httpx.AsyncClient(base_url=cluster.url) as client:
            response = await client.get(PATH, params=query(sid))
        assert (response.status_code, response.json()) == (400, UNKNOWN_SID)


@pytest.mark.slow
async def test_a_two_worker_shutdown_with_relay_connections_open_does_not_wait_the_grace(
    tmp_path: Path,
) -> None:
    async with two_workers(tmp_path, SHUTDOWN_GRACE_SECONDS="600") as cluster:
        token = await cluster.register("alice")
        on_one = await open_session(cluster, 1, token)
        on_zero = await open_session(cluster, 0, token)
        preflight = {"Origin": ALLOWED, "Access-Control-Request-Method": "POST"}
        async with pinned(cluster, 0) as via_zero, pinned(cluster, 1) as via_one:
            # Requests without a body: each relay keeps its connection to the other worker.
            for client, sid, workers in (
                (via_zero, on_one, ["1", "0"]),
                (via_one, on_zero, ["0", "1"]),
            ):
                response = await client.options(PATH, params=query(sid), headers=preflight)
                assert (response.status_code, workers_of(response)) == (204, workers)
        # Both workers stop at once, each with an idle connection from the other one open.
        assert await cluster.stop(within=60) == 0  # a hang guard, far below the 600 s grace
        assert "still running after the shutdown grace" not in cluster.log_tail(200)
