"""Property tests (Hypothesis) for ``hello.resume`` on the native socket, over a real server.

Whatever ``resume`` a client sends (negative, 400-digit, fractional, infinite, boolean, a string,
a list, null), the answer is one of the documented ones: ``ready`` and then exactly the missed
events or a ``resync`` (and the socket keeps serving), or a close with 4100 (not a valid hello);
never another close code, and the server answers the next connection.

One server runs for the whole module in a thread of its own (its own ``trio.run``); every
example is a fresh ``trio.run`` of clients against it, so examples cost a connection, not a
server start. ``FUZZ_EXAMPLES`` sets the number of examples (default 40).
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed, WebSocketConnection

from tests.conftest import make_settings, running_server, sample_records
from tests.wsclient import open_client

URLS = [r["url"] for r in sample_records()]
HEAD = 5  # events in the user's log
MAX_SEQ = 2**63 - 1
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))


@dataclass(frozen=True)
class LiveServer:
    url: str
    token: str


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server with one user whose log holds ``HEAD`` events, in a thread until the module ends."""
    settings = make_settings(Path(tmp_path_factory.mktemp("fuzz-resume")))
    started: queue.Queue[tuple[LiveServer, trio.lowlevel.TrioToken, trio.Event] | None]
    started = queue.Queue()
    failure: list[BaseException] = []

    async def main() -> None:
        async with running_server(settings) as server:
            token = await server.register("alice")
            for url in URLS[:HEAD]:
                answer = await server.post_as(
                    token, "/api/user/favorites", {"dramaUrl": url, "isFavorite": True}
                )
                assert answer.status_code == 200
            stop = trio.Event()
            url = server.url.replace("http://", "ws://") + "/api/ws"
            started.put((LiveServer(url, token), trio.lowlevel.current_trio_token(), stop))
            await stop.wait()

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # reported by the fixture's teardown
            failure.append(exc)
            started.put_nowait(None)

    thread = threading.Thread(target=run, name="fuzz-server", daemon=True)
    thread.start()
    item = started.get(timeout=60)
    if item is None:
        raise failure[0]
    server, trio_token, stop = item
    try:
        yield server
    finally:
        trio.from_thread.run_sync(stop.set, trio_token=trio_token)
        thread.join(timeout=60)
        assert not thread.is_alive()
        if failure:
            raise failure[0]


def _json_text(value: Any) -> str:
    return json.dumps(value)


# JSON texts for ``resume``: every kind of number and everything that is not one.
RESUME_TEXTS = st.one_of(
    st.integers(min_value=-5, max_value=HEAD + 5).map(str),
    st.integers().map(str),
    st.integers(min_value=MAX_SEQ - 2, max_value=MAX_SEQ + 2).map(str),
    st.integers(min_value=10**399, max_value=10**400 - 1).map(str),  # 400 digits
    st.integers(min_value=10**399, max_value=10**400 - 1).map(lambda n: f"-{n}"),
    st.floats(allow_nan=True, allow_infinity=True).map(_json_text),  # NaN, Infinity too
    st.sampled_from(["1e400", "-1e400", "1.0", "0.0", "-0.0", "2.5", "1E2", "5e0"]),
    st.booleans().map(_json_text),
    st.text(max_size=20).map(_json_text),
    st.just("null"),
    st.lists(st.integers(), max_size=3).map(_json_text),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2).map(_json_text),
)


def _expected(resume_text: str) -> list[dict[str, Any]] | None:
    """The frames after ``ready`` for a valid resume (None: the hello is refused with 4100)."""
    try:
        resume = json.loads(resume_text, parse_constant=lambda name: float("nan"))
    except ValueError:
        return None
    if resume is None:
        return []
    if not isinstance(resume, int) or isinstance(resume, bool) or not 0 <= resume <= MAX_SEQ:
        return None
    if resume > HEAD:
        return [{"type": "resync", "seq": HEAD}]
    return [{"type": "event", "seq": seq} for seq in range(resume + 1, HEAD + 1)]


async def _next(ws: WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(10):
        frame: dict[str, Any] = json.loads(await ws.get_message())
    return frame


async def _answers(server: LiveServer, resume_text: str) -> tuple[list[dict[str, Any]], int | None]:
    """The frames the server sends to a hello with ``resume_text`` up to the pong of a ping sent
    after ``ready``, or until it closes; and the close code (None when it stayed open)."""
    hello = f'{{"type": "hello", "token": {json.dumps(server.token)}, "resume": {resume_text}}}'
    frames: list[dict[str, Any]] = []
    async with open_client(server.url, subprotocols=["dramaverse.v1"]) as ws:
        await ws.send_message(hello)
        try:
            while True:
                frame = await _next(ws)
                if frame == {"type": "pong"}:
                    return frames, None
                frames.append(frame)
                if frame["type"] == "ready":
                    await ws.send_message('{"type": "ping"}')
        except ConnectionClosed as closed:
            return frames, None if closed.reason is None else closed.reason.code


async def _still_serves(server: LiveServer) -> None:
    async with open_client(server.url, subprotocols=["dramaverse.v1"]) as ws:
        await ws.send_message(json.dumps({"type": "hello", "token": server.token}))
        assert (await _next(ws))["type"] == "ready"


@hypothesis_settings(max_examples=EXAMPLES, deadline=None, database=None)
@given(resume_text=RESUME_TEXTS)
def test_any_resume_gets_a_documented_answer(live_server: LiveServer, resume_text: str) -> None:
    async def example() -> None:
        frames, code = await _answers(live_server, resume_text)
        expected = _expected(resume_text)
        if expected is None:
            assert (frames, code) == ([], 4100)
        else:
            assert code is None
            assert frames[0]["type"] == "ready"
            assert frames[0]["seq"] == HEAD
            assert [{k: f[k] for k in ("type", "seq")} for f in frames[1:]] == expected
        await _still_serves(live_server)

    trio.run(example)
