"""Property-based fuzzing of the Engine.IO / Socket.IO endpoint over real sockets (Hypothesis).

Generated bad input goes to the polling path (query strings, POST bodies, declared lengths) and
the WebSocket path (text and binary frames, malformed Socket.IO packets), before and after a
Socket.IO CONNECT. Properties: no 5xx, every refusal is one of the protocol's error bodies, a
WebSocket is only ever closed with a documented code, nothing is logged at ERROR, and afterwards
the server still answers a handshake, a CONNECT and a live event.

One server per test function, not per example: Hypothesis runs the examples in a worker thread
(``trio.to_thread``) and each example drives its requests in the test's event loop through
``trio.from_thread.run``. ``FUZZ_EXAMPLES`` sets the number of examples per test (default 25,
a few seconds each); e.g. ``FUZZ_EXAMPLES=2000`` for a long run.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, quote_from_bytes

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed, WebSocketConnection

from dramaverse.realtime.engineio import SEPARATOR
from dramaverse.realtime.socketio_codec import decode
from tests.conftest import Server
from tests.test_engineio_raw import (
    PATH,
    UPGRADE_HEADERS,
    URLS,
    Polling,
    favorite,
    receive,
    ws_url,
)
from tests.wsclient import open_client


def _examples() -> int:
    raw = os.environ.get("FUZZ_EXAMPLES", "25")
    if not raw.isdigit() or int(raw) < 1:
        raise pytest.UsageError(f"FUZZ_EXAMPLES must be a positive integer (got {raw!r})")
    return int(raw)


FUZZ = settings(
    max_examples=_examples(),
    deadline=None,
    database=None,  # no example database: a failure prints the example that reproduces it
    suppress_health_check=[HealthCheck.too_slow],
)
ERROR_CODES = {0, 1, 2, 3, 4, 5}
CLOSE_CODES = {1000, 1002, 1009}  # normal (the client's close), invalid packet, too large
TOKEN = "@TOKEN@"
"""Stands for the test user's valid token in generated CONNECT payloads."""

# -- strategies --------------------------------------------------------------------------------

HUGE = st.sampled_from(["9" * 400, "-" + "9" * 310, "1e400", "-1e400", "1" + "0" * 4400])
HUGE_NUMBERS = st.sampled_from([10**400, -(10**310), 2**70, 1.7e308, -5e-324])
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=8,
)
auth = st.fixed_dictionaries(
    {},
    optional={
        "token": st.sampled_from([TOKEN, "", "x.y.z"]) | json_values,
        "pid": st.text(max_size=40) | json_values | HUGE,
        "offset": st.text(max_size=20) | HUGE | json_values,
    },
)
namespaces = st.one_of(
    st.just(""),
    st.just(""),
    st.sampled_from(["/,", "/admin,", "/\x1e,", "/" + "a" * 300 + ",", "/", "/x"]),
    st.text(max_size=12).map(lambda name: "/" + name + ","),
)
ack_ids = st.one_of(
    st.just(""),
    st.integers(1, 15).flatmap(lambda n: st.integers(10 ** (n - 1), 10**n - 1)).map(str),
    st.sampled_from(["9" * 16, "9" * 400, "007"]) | st.integers(0).map(str),
)
event_names = st.one_of(
    st.just("x"),
    st.text(max_size=8),
    json_values,
    st.sampled_from(["connect", "disconnect", "favorite_updated"]),
)
event_arrays = st.builds(
    lambda name, args: json.dumps([name, *args]),
    event_names,
    st.lists(json_values | HUGE_NUMBERS, max_size=3),
)
payloads = st.one_of(
    st.just(""),
    auth.map(json.dumps),
    event_arrays,
    json_values.map(json.dumps),
    HUGE.map(lambda number: f"[{number}]"),
    st.sampled_from(["[" * 3000, "{bad", "NaN", "[Infinity]", '["x",]']),
    st.text(max_size=20),
)
# Mostly well-formed packets of each type with odd parts, so that generated input gets past the
# parser into the handlers; and a share of anything at all.
events = st.builds(lambda ns, ack, array: f"2{ns}{ack}{array}", namespaces, ack_ids, event_arrays)
socketio_packets = st.one_of(
    events,
    events,
    events,
    st.builds(lambda ns, body: f"0{ns}{json.dumps(body)}", namespaces, auth),
    st.builds(lambda ack, args: f"3{ack}{json.dumps(args)}", ack_ids, st.lists(json_values)),
    namespaces.map(lambda ns: "1" + ns),
    st.builds(
        lambda count, ack, array: f"5{count}-{ack}{array}",
        st.integers(0, 70),
        ack_ids,
        event_arrays,
    ),
    st.builds(
        lambda kind, attachments, namespace, ack, payload: (
            f"{kind}{attachments}{namespace}{ack}{payload}"
        ),
        st.sampled_from("0123456789") | st.text(max_size=2),
        st.sampled_from(["", "1-", "0-", "65-", "x-", "9" * 400 + "-"]),
        namespaces,
        ack_ids,
        payloads,
    ),
)
engine_packets = st.one_of(
    socketio_packets.map(lambda packet: "4" + packet),
    socketio_packets.map(lambda packet: "4" + packet),
    st.sampled_from(["", "0", "1", "2", "3", "5", "6", "2probe", "3probe", "7", "4"]),
    st.binary(max_size=20).map(lambda data: "b" + base64.b64encode(data).decode()),
    st.text(max_size=10).map(lambda text: "b" + text),
    st.text(max_size=20),
)
packet_lists = st.one_of(
    socketio_packets.map(lambda packet: ["4" + packet]),  # one, so that it is not cut short
    st.lists(engine_packets, min_size=1, max_size=4),
)
query_values = st.one_of(
    st.sampled_from(["4", "3", "", "polling", "websocket", "9" * 400, "-1", "4.0", "\x00"]),
    st.text(max_size=30),
    st.binary(max_size=10),  # percent-encoded as they are: not UTF-8
)


def _encode(value: str | bytes) -> str:
    return quote_from_bytes(value, safe="") if isinstance(value, bytes) else quote(value, safe="")


# -- checks ------------------------------------------------------------------------------------


def assert_protocol_answer(response: httpx.Response) -> None:
    """A 2xx, or a 4xx with one of the protocol's ``{code, message}`` bodies: never a 5xx."""
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400 and response.headers.get("content-type") == "application/json":
        assert response.json()["code"] in ERROR_CODES


async def assert_healthy(server: Server, token: str) -> None:
    """The server still opens a session, accepts a CONNECT and delivers a live event."""
    polling = await Polling(server).open()
    assert "sid" in await polling.connect(token)
    async with open_client(ws_url(server, transport="websocket")) as ws:
        assert (await receive(ws)).startswith("0{")
        await ws.send_message("40" + json.dumps({"token": token}))
        assert (await receive(ws)).startswith("40{")
        await favorite(server, token, URLS[0], on=True)
        await favorite(server, token, URLS[0], on=False)
        with trio.fail_after(5):
            while not (message := await receive(ws)).startswith("42"):
                pass
        assert decode(message[1:]).data[0] == "favorite_updated"
        packets = await polling.packets()
        assert decode(packets[0][1:]).data[0] == "favorite_updated"


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def run_examples(test: Callable[[], None]) -> None:
    """Run a Hypothesis test (examples call back into this loop) in a worker thread."""
    await trio.to_thread.run_sync(test)


def in_loop(example: Callable[..., Awaitable[None]], *args: Any) -> None:
    trio.from_thread.run(example, *args)


# -- the polling path ---------------------------------------------------------------------------


async def test_fuzzed_polling_queries_get_protocol_answers(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    token = await server.register("fuzzer")
    live = (await Polling(server).open()).sid

    async def example(method: str, query: list[tuple[str, str | bytes]], body: bytes) -> None:
        pairs = [(key, live if value == "<live>" else value) for key, value in query]
        target = PATH + "?" + "&".join(f"{key}={_encode(value)}" for key, value in pairs)
        response = await server.client.request(method, target, content=body)
        assert_protocol_answer(response)
        # The same query as a WebSocket handshake (a fresh connection: refusals close it).
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            upgrade = await client.get(target, headers=UPGRADE_HEADERS)
        assert upgrade.status_code == 101 or upgrade.status_code < 500, upgrade.text

    @FUZZ
    @given(
        st.sampled_from(["GET", "POST", "PUT", "OPTIONS", "DELETE"]),
        st.lists(
            st.tuples(
                st.sampled_from(["EIO", "transport", "sid", "t"]),
                query_values | st.just("<live>"),
            ),
            max_size=5,
        ),
        st.binary(max_size=30),
    )
    def fuzz(method: str, query: list[tuple[str, str | bytes]], body: bytes) -> None:
        in_loop(example, method, query, body)

    await run_examples(fuzz)
    await assert_healthy(server, token)
    assert errors_logged(caplog) == []


async def test_fuzzed_polling_payloads_never_break_a_session_badly(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    token = await server.register("fuzzer")

    async def example(connect_first: bool, packets: list[str], raw: bytes | None) -> None:
        polling = await Polling(server).open()
        if connect_first:
            await polling.connect(token)
        body = raw if raw is not None else SEPARATOR.join(packets).replace(TOKEN, token).encode()
        response = await polling.post(body)
        assert_protocol_answer(response)
        assert response.status_code in (200, 400, 413), response.text
        if response.status_code == 200:
            assert response.text == "ok"
        # Whatever the session became, a GET gets a protocol answer without waiting for ever.
        with trio.move_on_after(0.2):
            assert_protocol_answer(await polling.get())

    @FUZZ
    @given(
        st.booleans(),
        packet_lists,
        st.none() | st.binary(max_size=64),
    )
    def fuzz(connect_first: bool, packets: list[str], raw: bytes | None) -> None:
        in_loop(example, connect_first, packets, raw)

    await run_examples(fuzz)
    await assert_healthy(server, token)
    assert errors_logged(caplog) == []


async def test_fuzzed_declared_lengths_get_protocol_answers(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    token = await server.register("fuzzer")
    host, port = server.url.removeprefix("http://").rsplit(":", 1)

    async def example(body: bytes, declared: str) -> None:
        polling = await Polling(server).open()
        head = (
            f"POST {PATH}?EIO=4&transport=polling&sid={polling.sid} HTTP/1.1\r\n"
            f"Host: {host}\r\nContent-Type: text/plain\r\nContent-Length: {declared}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(head + body)
            await stream.send_eof()
            answer = b""
            with trio.fail_after(10):
                while chunk := await stream.receive_some():
                    answer += chunk
        if answer:  # an unanswered request (the body never came complete) is also fine
            status = int(answer.split(b" ", 2)[1])
            assert status < 500, answer

    @FUZZ
    @given(
        st.binary(max_size=40) | st.just(b"4" + b"x" * 70_000),
        st.one_of(
            st.integers(-3, 80).map(str),
            st.sampled_from(["9" * 400, "-1", "abc", "", "0x10", "1e3", "\u0661"]),
        ),
    )
    def fuzz(body: bytes, declared: str) -> None:
        in_loop(example, body, declared)

    await run_examples(fuzz)
    await assert_healthy(server, token)
    assert errors_logged(caplog) == []


# -- the WebSocket path --------------------------------------------------------------------------


async def closed_with(ws: WebSocketConnection, until: str) -> int | None:
    """Read until a message starting with ``until`` (the socket is open: None) or the close."""
    try:
        with trio.fail_after(10):
            while True:
                message = await ws.get_message()
                if isinstance(message, str) and message.startswith(until):
                    return None
    except ConnectionClosed as closed:
        code: int = closed.reason.code
        return code


async def test_fuzzed_websocket_frames_close_with_documented_codes(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    token = await server.register("fuzzer")
    # A refused namespace is answered and leaves the session as it was: a liveness probe.
    probe, answer = "40/probe,", '44/probe,{"message":"Invalid namespace"}'

    async def example(connect_first: bool, frames: list[str | bytes]) -> None:
        try:
            async with open_client(ws_url(server, transport="websocket")) as ws:
                assert (await receive(ws)).startswith("0{")
                if connect_first:
                    await ws.send_message("40" + json.dumps({"token": token}))
                    assert (await receive(ws)).startswith("40{")
                for frame in frames:
                    await ws.send_message(
                        frame.replace(TOKEN, token) if isinstance(frame, str) else frame
                    )
                await ws.send_message(probe)
                code = await closed_with(ws, answer)
        except ConnectionClosed as closed:  # closed while we were still sending
            code = closed.reason.code
        assert code is None or code in CLOSE_CODES, code

    @FUZZ
    @given(
        st.booleans(),
        packet_lists | st.lists(st.binary(min_size=1, max_size=20), min_size=1, max_size=3),
    )
    def fuzz(connect_first: bool, frames: list[str | bytes]) -> None:
        in_loop(example, connect_first, frames)

    await run_examples(fuzz)
    await assert_healthy(server, token)
    assert errors_logged(caplog) == []


async def test_fuzzed_upgrades_keep_the_polling_session(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage instead of the probe or the ``5`` fails the upgrade (1002); polling goes on."""
    token = await server.register("fuzzer")

    async def example(frames: list[str | bytes]) -> None:
        polling = await Polling(server).open()
        await polling.connect(token)
        try:
            async with open_client(ws_url(server, transport="websocket", sid=polling.sid)) as ws:
                for frame in [*frames, "x"]:  # "x" ends the upgrade at any step, without waiting
                    await ws.send_message(frame)
                code = await closed_with(ws, "\x00never")
        except ConnectionClosed as closed:
            code = closed.reason.code
        assert code == 1002
        assert (await polling.post("3")).text == "ok"
        await favorite(server, token, URLS[1], on=True)
        await favorite(server, token, URLS[1], on=False)
        packets = await polling.packets()
        assert decode(packets[0][1:]).data[0] == "favorite_updated"

    @FUZZ
    @given(
        st.lists(
            st.sampled_from(["2probe", "5", "3", "2", "2probe "]) | engine_packets | st.binary(),
            min_size=1,
            max_size=3,
        ).filter(lambda frames: frames[:2] != ["2probe", "5"])
    )
    def fuzz(frames: list[str | bytes]) -> None:
        in_loop(example, frames)

    await run_examples(fuzz)
    await assert_healthy(server, token)
    assert errors_logged(caplog) == []
