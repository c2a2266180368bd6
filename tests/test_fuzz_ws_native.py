"""Property-based fuzzing of the native WebSocket protocol's messages (``/api/ws``).

Every library message type (and unknown ones) with generated ids and data, plus raw text and
binary frames, over one real socket. Each must be answered with an ``ack`` or an ``error`` frame
(never a close: the abuse limit is set out of reach here), and the socket must still answer a
``ping`` afterwards. Room verbs have their own target (``test_fuzz_rooms.py``).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Request,
    TextMessage,
)

from tests.conftest import make_settings
from tests.test_fuzz_http import json_values
from tests.threaded_server import EXAMPLES, ThreadedServer, server_in_thread

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
TYPES = ["library.get", "favorite.set", "status.set", "review.save", "hello", "ping", "pong"]
request_ids = st.one_of(
    st.none(),
    st.text(max_size=80),
    st.integers(-(2**60), 2**60),
    st.sampled_from([10**400, 2**53, 1.5, True, [], {}]),
)


class Client:
    """A blocking WebSocket client on wsproto: enough to send a frame and read the answers."""

    def __init__(self, port: int, token: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending: list[Event] = []
        self.closed: CloseConnection | None = None
        request = Request(host="127.0.0.1", target="/api/ws", subprotocols=["dramaverse.v1"])
        self.sock.sendall(self.ws.send(request))
        assert isinstance(self._event(), AcceptConnection)
        self.send_text(json.dumps({"type": "hello", "token": token}))
        assert self.next_frame()["type"] == "ready"

    def _event(self) -> Event:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the server dropped the connection without a close frame")
            self.ws.receive_data(data)
            self.pending.extend(self.ws.events())
        return self.pending.pop(0)

    def send_text(self, text: str) -> None:
        self.sock.sendall(self.ws.send(TextMessage(text)))

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(self.ws.send(BytesMessage(data)))

    def next_frame(self) -> dict[str, Any]:
        """The next JSON frame; a close raises (with the server's code kept in ``closed``)."""
        while True:
            event = self._event()
            if isinstance(event, TextMessage):
                frame: dict[str, Any] = json.loads(event.data)
                if frame["type"] == "ping":
                    self.send_text('{"type":"pong"}')
                    continue
                return frame
            if isinstance(event, CloseConnection):
                self.closed = event
                raise ConnectionError(f"closed by the server: {event.code} {event.reason}")
            if isinstance(event, Ping):
                self.sock.sendall(self.ws.send(event.response()))

    def answer_to(self, request_id: object) -> dict[str, Any]:
        """The ack or error for ``request_id`` (or the first error without an id)."""
        while True:
            frame = self.next_frame()
            if frame["type"] in ("ack", "error") and frame.get("id") == request_id:
                return frame
            if frame["type"] == "error" and "id" not in frame:
                return frame

    def still_usable(self) -> None:
        self.send_text('{"type":"ping"}')
        while self.next_frame()["type"] != "pong":
            pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    path: Path = tmp_path_factory.mktemp("fuzz-ws")
    with server_in_thread(make_settings(path, ws_max_errors=100_000)) as server:
        yield server


@pytest.fixture(scope="module")
def client(live: ThreadedServer) -> Iterator[Client]:
    connection = Client(live.port, live.token)
    yield connection
    connection.close()


def as_json_text(value: Any) -> str:
    return json.dumps(value)  # NaN / Infinity literals included: a client may send them


@given(
    kind=st.sampled_from(TYPES) | st.text(max_size=20),
    request_id=request_ids,
    data=json_values,
    extra=st.dictionaries(st.sampled_from(["room", "resume", "token", "seq"]), json_values),
)
@FUZZ
def test_generated_messages_are_answered(
    client: Client, kind: str, request_id: object, data: Any, extra: dict[str, Any]
) -> None:
    message: dict[str, Any] = {**extra, "type": kind, "data": data}
    if request_id is not None:
        message["id"] = request_id
    client.send_text(as_json_text(message))
    if kind in ("ping", "pong"):
        client.still_usable()
        return
    answer = client.answer_to(request_id)
    assert answer["type"] in ("ack", "error")
    if answer["type"] == "error":
        assert 400 <= answer["status"] < 500, answer
        assert isinstance(answer["message"], str)
    client.still_usable()


@given(frame=st.one_of(st.text(max_size=200), json_values.map(as_json_text)))
@FUZZ
def test_arbitrary_text_frames_are_answered(client: Client, frame: str) -> None:
    client.send_text(frame)
    try:
        message = json.loads(frame)
    except ValueError:
        message = None
    if isinstance(message, dict) and message.get("type") in ("ping", "pong"):
        client.still_usable()
        return
    if isinstance(message, dict) and message.get("type") in TYPES and "id" in message:
        answer = client.answer_to(message["id"])
    else:
        answer = client.answer_to(None)
    assert answer["type"] in ("ack", "error")
    if answer["type"] == "error":
        assert 400 <= answer["status"] < 500, answer
    client.still_usable()


@given(data=st.binary(max_size=200))
@FUZZ
def test_binary_frames_are_refused_with_an_error(client: Client, data: bytes) -> None:
    client.send_bytes(data)
    answer = client.answer_to(None)
    assert answer["type"] == "error"
    assert answer["status"] == 400
    client.still_usable()
