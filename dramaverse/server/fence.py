"""The one place Hypercorn's internals are patched, and only the Hypercorn they were written for.

The modules of :mod:`dramaverse.server` replace private Hypercorn functions (a read loop, a
send path, a handshake class) or rely on private attributes of its connection object
(``direct_ws`` calls ``server.app`` with Hypercorn's five-argument app-wrapper call and reads
``server.stream``, ``server.state``, ``server.idle_task``, ``parse_socket_addr``). Such code is
right for one version: after a dependency bump a replaced function may have gained a fix we
drop, or an attribute we read may mean something else, and the first sign would be sockets
closing in production. So :func:`install` first checks

- the installed Hypercorn version against :data:`SUPPORTED_VERSION` (``0.18.*``), and
- the identity of every function and class it replaces or relies on: a SHA-256 of its source
  (:data:`FINGERPRINTS`, recorded on Hypercorn 0.18.0 and wsproto 1.3.2). The source and not
  the bytecode, because bytecode changes with the Python version while the code we depend on
  does not.

When everything matches, every patch is installed. When anything differs, nothing that depends
on Hypercorn's internals is installed, one warning names what differed, and the server runs on
plain Hypercorn: its own read loop (no direct WebSockets: claimed paths are served by
Hypercorn's WebSocket layer), its own writes, deflate with context takeover, its keep-alive
handling. The one exception is the connection boundary's outer wrapper (``boundary.run``): it
needs nothing of Hypercorn but "``TCPServer.run(self)`` is one connection" (checked), and without
it one malformed request ends the whole process (issue 12), which is worse than anything a
missing performance patch costs. Its inner parts (the 500 answer, the handshake checks) read
Hypercorn's internals and stay off.

A Hypercorn that no longer has a name the patch modules import fails at import, which is loud
too. ``tests/test_server_patches.py`` asserts that :func:`install` installs everything, so a
bump fails the suite rather than quietly falling back.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import Callable
from importlib import metadata
from typing import Any

import hypercorn.utils
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.protocol import ws_stream
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import TrioSingleTask

from dramaverse.server import (
    boundary,
    compression,
    keepalive_timer,
    read_loop,
    send_coalescing,
)

log = logging.getLogger(__name__)

SUPPORTED_VERSION = "0.18."  # a prefix of importlib.metadata.version("hypercorn")

_GUARDED_READ_DATA = boundary.guard_reads(read_loop.read_data)

# (owner, attribute, what install() puts there); the boundary's run first, it is the fallback.
_PATCHES: tuple[tuple[Any, str, Any], ...] = (
    (TCPServer, "run", boundary.run),
    (TCPServer, "_read_data", _GUARDED_READ_DATA),
    (TCPServer, "protocol_send", keepalive_timer.protocol_send),
    (H11Protocol, "_send_h11_event", send_coalescing.send_h11_event),
    (H11Protocol, "stream_send", send_coalescing.stream_send),
    (ws_stream, "PerMessageDeflate", compression.StatelessPerMessageDeflate),
    (ws_stream, "Handshake", boundary.CheckedHandshake),
)
_ORIGINALS: dict[tuple[Any, str], Any] = {
    (owner, name): getattr(owner, name) for owner, name, _ in _PATCHES
}


def _unpatched(owner: Any, name: str) -> Any:
    """What Hypercorn has at ``owner.name``, seeing through our own replacement."""
    current = getattr(owner, name)
    for patched_owner, patched_name, replacement in _PATCHES:
        if patched_owner is owner and patched_name == name and current is replacement:
            return _ORIGINALS[owner, name]
    return current


# What each fingerprinted name is, as Hypercorn has it before our patches.
_TARGETS: dict[str, Callable[[], Any]] = {
    # direct_ws and read_loop read app, config, state, stream and idle_task off the connection
    "hypercorn.trio.tcp_server.TCPServer.__init__": lambda: TCPServer.__init__,
    "hypercorn.trio.tcp_server.TCPServer.run": lambda: _unpatched(TCPServer, "run"),
    "hypercorn.trio.tcp_server.TCPServer._read_data": lambda: _unpatched(TCPServer, "_read_data"),
    "hypercorn.trio.tcp_server.TCPServer.protocol_send": lambda: (
        _unpatched(TCPServer, "protocol_send")
    ),
    "hypercorn.trio.worker_context.TrioSingleTask": lambda: TrioSingleTask,  # the idle timer
    "hypercorn.protocol.h11.H11Protocol._send_h11_event": lambda: (
        _unpatched(H11Protocol, "_send_h11_event")
    ),
    "hypercorn.protocol.h11.H11Protocol.stream_send": lambda: (
        _unpatched(H11Protocol, "stream_send")
    ),
    # CheckedHandshake subclasses it; its accept() is where PerMessageDeflate() is built
    "hypercorn.protocol.ws_stream.Handshake": lambda: _unpatched(ws_stream, "Handshake"),
    "hypercorn.protocol.ws_stream.PerMessageDeflate.__init__": lambda: (
        _unpatched(ws_stream, "PerMessageDeflate").__init__
    ),
    "hypercorn.utils.parse_socket_addr": lambda: hypercorn.utils.parse_socket_addr,
    # direct_ws calls server.app(scope, receive, send, sync_spawn, call_soon)
    "hypercorn.app_wrappers.ASGIWrapper.__call__": lambda: ASGIWrapper.__call__,
}

FINGERPRINTS: dict[str, str] = {
    "hypercorn.trio.tcp_server.TCPServer.__init__": "4c1d42457bc197b2",
    "hypercorn.trio.tcp_server.TCPServer.run": "fd34b021d1a86c98",
    "hypercorn.trio.tcp_server.TCPServer._read_data": "7ca747d922c65cf1",
    "hypercorn.trio.tcp_server.TCPServer.protocol_send": "225856426bff7be0",
    "hypercorn.trio.worker_context.TrioSingleTask": "aa59316c028b876a",
    "hypercorn.protocol.h11.H11Protocol._send_h11_event": "5e40283daa303ec7",
    "hypercorn.protocol.h11.H11Protocol.stream_send": "56a36254a368d71a",
    "hypercorn.protocol.ws_stream.Handshake": "701a154c29b5ab4c",
    "hypercorn.protocol.ws_stream.PerMessageDeflate.__init__": "e892804c68998e20",
    "hypercorn.utils.parse_socket_addr": "d06f08a6dc9ef687",
    "hypercorn.app_wrappers.ASGIWrapper.__call__": "5d03a825739dd4e8",
}


def fingerprint(obj: Any) -> str | None:
    """The first 16 hex digits of the SHA-256 of ``obj``'s source; None without a source."""
    try:
        source = inspect.getsource(obj)
    except (OSError, TypeError):
        return None
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def differences() -> list[str]:
    """What differs from the Hypercorn the patches were written for; empty when nothing does."""
    found: list[str] = []
    try:
        version = metadata.version("hypercorn")
    except metadata.PackageNotFoundError:
        version = "unknown"
    if not version.startswith(SUPPORTED_VERSION):
        found.append(f"hypercorn {version} (written for {SUPPORTED_VERSION}*)")
    for name, target in _TARGETS.items():
        if fingerprint(target()) != FINGERPRINTS[name]:
            found.append(name)
    return found


def _one_call_per_connection(run: Any) -> bool:
    """``TCPServer.run`` is still ``async def run(self)``: what ``boundary.run`` relies on."""
    return inspect.iscoroutinefunction(run) and list(inspect.signature(run).parameters) == ["self"]


def install() -> tuple[str, ...]:
    """Install the server patches on Hypercorn, or only the boundary when Hypercorn differs.

    Idempotent, and it decides afresh each time: patches an earlier call installed are taken
    back before the check. Returns what differed (empty: every patch is installed); when
    something did, one warning was logged naming it.
    """
    for owner, name, replacement in _PATCHES:
        if getattr(owner, name) is replacement:
            setattr(owner, name, _ORIGINALS[owner, name])
    found = differences()
    if not found:
        for owner, name, replacement in _PATCHES:
            setattr(owner, name, replacement)
        return ()
    kept = "only the connection boundary"
    if _one_call_per_connection(TCPServer.run):
        TCPServer.run = boundary.run  # type: ignore[method-assign]
    else:
        kept = "without even the connection boundary"
    log.warning(
        "Hypercorn differs from what dramaverse.server was written for (%s): serving on plain "
        "Hypercorn, %s; no direct WebSockets, send coalescing, stateless deflate or keep-alive "
        "timer fix",
        ", ".join(found),
        kept,
    )
    return tuple(found)
