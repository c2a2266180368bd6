"""A real Dramaverse server in a thread of its own, for synchronous property-based tests.

Hypothesis drives synchronous test functions most simply (one example after another, shrinking
included), while the server needs a Trio run. The server gets its own ``trio.run`` in a thread
for the whole test; examples talk to it over real sockets like any client.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import trio

from dramaverse.config import Settings
from tests.conftest import running_server

# A CI run stays short; `make fuzz` raises it for a longer hunt.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))


@dataclass
class ThreadedServer:
    url: str
    port: int
    token: str  # a registered user's ("fuzzer")
    other_token: str  # a second user's ("bystander")


@contextmanager
def server_in_thread(
    settings: Settings, records: list[dict[str, Any]] | None = None
) -> Iterator[ThreadedServer]:
    """Start a server (sample catalog, two users) in a thread; stop it on exit.

    Error handling: anything that ends the server's run before the block is done is raised here,
    on exit, so a crashed server fails the test even when no request noticed.
    """
    started = threading.Event()
    found: dict[str, Any] = {}

    async def main() -> None:
        stop = trio.Event()
        found["stop"], found["trio_token"] = stop, trio.lowlevel.current_trio_token()
        async with running_server(settings, records=records) as server:
            tokens = [await server.register(name) for name in ("fuzzer", "bystander")]
            url = server.url
            found["server"] = ThreadedServer(url, int(url.rsplit(":", 1)[1]), *tokens)
            started.set()
            await stop.wait()

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # reported to the test on exit
            found["error"] = exc
        finally:
            started.set()

    thread = threading.Thread(target=run, name="fuzz-server", daemon=True)
    thread.start()
    started.wait(60)
    if "server" not in found:
        thread.join(10)
        raise RuntimeError("the server did not start") from found.get("error")
    try:
        yield found["server"]
    finally:
        if thread.is_alive():
            trio.from_thread.run_sync(found["stop"].set, trio_token=found["trio_token"])
        thread.join(30)
        if "error" in found:
            raise AssertionError("the server's run ended with an error") from found["error"]
