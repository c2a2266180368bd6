"""The Engine.IO endpoint: the session table, HTTP long-polling requests, WebSocket requests.

One path (``SOCKET_IO_PATH``) serves both: Quart routes the polling requests (GET, POST, the CORS
preflight) to :meth:`EngineServer.handle_http` and WebSocket upgrades to
:meth:`EngineServer.handle_websocket`. Each request is checked in the protocol's order (Origin,
transport, protocol version, sid, method) and refused with the protocol's error code and body.
The session itself (outbox, heartbeat, transports, upgrade) is ``engineio.py``.

CORS is answered here rather than by the app's perimeter, because Engine.IO clients may send
credentials: an allowed Origin gets ``Access-Control-Allow-Origin`` with that origin,
``Access-Control-Allow-Credentials: true`` and ``Vary: Origin``; a disallowed one gets 403
``{"code":4,"message":"Forbidden"}`` (WebSocket upgrades too: no cross-site hijacking).
The handshake that opens a session (a polling GET or a WebSocket without ``sid``) also reads
the browser's auth cookie, usable only with an ``Origin`` header (http/cookies.py); the session
keeps it for a Socket.IO CONNECT that brings no token.

Sids are 20 random URL-safe characters (120 bits) after :attr:`EngineServer.sid_prefix` (empty
in a single process). A worker of ``serve --workers N`` sets it to its tag ``w<I>.``, and its
``worker_routing.WorkerRouter`` relays every request (polling or the WebSocket upgrade) that
carries another worker's sid to that worker, so this endpoint only ever sees its own sessions.

What others may read (the app's endpoint is ``AppState.engine``): :attr:`EngineServer.sessions`,
the live sessions by sid (their count is the number of Engine.IO clients of this process), each
with its ``transport``. The endpoint keeps no counters.

Resource handling: :meth:`EngineServer.run` (started by the runtime in the root nursery) owns the
nursery every session runs in; on shutdown it closes every session with 1001 (a pending poll
gets the close packet), so clients reconnect to the next server. Request handlers only borrow
sessions; a WebSocket request task owns its socket and closes it with the session's close code.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from typing import Any

import trio
from quart import Blueprint, Response, request, websocket
from werkzeug.datastructures import Headers
from werkzeug.exceptions import RequestEntityTooLarge

from dramaverse.domain.close_codes import CloseCode
from dramaverse.http.cookies import CookieAuth, SocketCookie, joined
from dramaverse.http.security import CorsPolicy, client_address
from dramaverse.realtime.engineio import (
    BAD_HANDSHAKE_METHOD,
    BAD_REQUEST,
    CORS_HEADERS,
    CORS_METHODS,
    FORBIDDEN,
    MAX_SID_LENGTH,
    OPEN,
    PAYLOAD_TOO_LARGE,
    PING,
    PONG,
    PROTOCOL_VERSION,
    SHUTTING_DOWN,
    TEXT_TYPE,
    TRANSPORT_UNKNOWN,
    UNKNOWN_SID,
    UNSUPPORTED_PROTOCOL_VERSION,
    UPGRADE,
    UPGRADE_TIMEOUT,
    EngineConfig,
    EngineSession,
    RequestRefused,
    SessionHandler,
    Transport,
    grant_headers,
)

log = logging.getLogger(__name__)


class EngineServer:
    """The session table and the nursery sessions run in; also answers the HTTP side."""

    def __init__(
        self,
        config: EngineConfig,
        cors: CorsPolicy,
        shutdown: trio.Event,
        handler_factory: Callable[[EngineSession], SessionHandler],
        *,
        sid_prefix: str = "",
        cookies: CookieAuth | None = None,
    ) -> None:
        self.config = config
        self.sid_prefix = sid_prefix
        self._cookies = cookies
        self.sessions: dict[str, EngineSession] = {}
        self.closing = False
        self._cors = cors
        self._shutdown = shutdown
        self._factory = handler_factory
        self._nursery: trio.Nursery | None = None
        self._open_packets = {
            transport: OPEN
            + json.dumps(
                {
                    "sid": "",
                    "upgrades": ["websocket"] if transport is Transport.POLLING else [],
                    "pingInterval": round(config.ping_interval * 1000),
                    "pingTimeout": round(config.ping_timeout * 1000),
                    "maxPayload": config.max_payload,
                },
                separators=(",", ":"),
            )
            for transport in (Transport.POLLING, Transport.WEBSOCKET)
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the sessions' nursery; on shutdown close every session (clients reconnect)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await self._shutdown.wait()
            self.closing = True
            for session in list(self.sessions.values()):
                session.close("server shutting down", CloseCode.GOING_AWAY)

    def forget(self, session: EngineSession) -> None:
        if self.sessions.get(session.sid) is session:
            del self.sessions[session.sid]

    def open_packet(self, session: EngineSession) -> str:
        template = self._open_packets[session.transport]
        return template.replace('"sid":""', f'"sid":"{session.sid}"', 1)

    async def open_session(
        self, transport: Transport, address: str, cookie: SocketCookie | None = None
    ) -> EngineSession:
        if self._nursery is None or self.closing:
            raise RequestRefused(SHUTTING_DOWN)
        sid = self.sid_prefix + secrets.token_urlsafe(15)
        session = EngineSession(self.config, sid, transport, address, self.forget)
        session.cookie = cookie
        session.handler = self._factory(session)
        self.sessions[sid] = session
        await self._nursery.start(session.run)
        return session

    def _lookup(self, sid: str) -> EngineSession:
        session = self.sessions.get(sid) if len(sid) <= MAX_SID_LENGTH else None
        if session is None:
            raise RequestRefused(UNKNOWN_SID)
        return session

    def _address(self, peer: str | None, forwarded: str | None) -> str:
        return client_address(peer, forwarded, self.config.trust_proxy)

    def _cookie(self, headers: Headers) -> SocketCookie | None:
        """The opening handshake's auth cookie (None without one or without cookie auth)."""
        if self._cookies is None:
            return None
        return self._cookies.socket_cookie(headers.get("Origin"), joined(headers.getlist("Cookie")))

    # -- HTTP long-polling -----------------------------------------------------------------

    async def handle_http(self) -> Response:
        origin = request.headers.get("Origin")
        if not self._cors.allows(origin):
            log.info("engine.io request refused: origin %r is not allowed", origin)
            return FORBIDDEN.response()
        if request.method == "OPTIONS":
            response = Response(b"", 204)
            if origin is not None:
                response.headers.extend(grant_headers(origin))
                response.headers["Access-Control-Allow-Methods"] = CORS_METHODS
                response.headers["Access-Control-Allow-Headers"] = (
                    request.headers.get("Access-Control-Request-Headers") or CORS_HEADERS
                )
                response.headers["Access-Control-Max-Age"] = "600"
            return response
        try:
            response = await self._polling_request()
        except RequestRefused as refused:
            return refused.error.response(origin)
        if origin is not None:
            response.headers.extend(grant_headers(origin))
        return response

    async def _polling_request(self) -> Response:
        args = request.args
        transport = args.get("transport")
        if transport != "polling":
            # A plain HTTP request naming the websocket transport is a bad request, not unknown.
            raise RequestRefused(BAD_REQUEST if transport == "websocket" else TRANSPORT_UNKNOWN)
        if args.get("EIO") != PROTOCOL_VERSION:
            raise RequestRefused(UNSUPPORTED_PROTOCOL_VERSION)
        sid = args.get("sid")
        if sid is None:
            if request.method != "GET":
                raise RequestRefused(BAD_HANDSHAKE_METHOD)
            address = self._address(request.remote_addr, request.headers.get("X-Forwarded-For"))
            cookie = self._cookie(request.headers)
            session = await self.open_session(Transport.POLLING, address, cookie)
            return Response(self.open_packet(session), 200, content_type=TEXT_TYPE)
        session = self._lookup(sid)
        if request.method == "GET":
            return Response(await session.poll(), 200, content_type=TEXT_TYPE)
        if request.method == "POST":
            length = request.content_length
            if length is not None and length > self.config.max_payload:
                session.close("payload too large")
                raise RequestRefused(PAYLOAD_TOO_LARGE)
            await session.post(self._read_body)
            return Response("ok", 200, content_type="text/html")
        raise RequestRefused(BAD_REQUEST)

    @staticmethod
    async def _read_body() -> bytes:
        try:
            return await request.get_data(False, False, False)
        except RequestEntityTooLarge:  # the app-wide body limit, below ours
            raise RequestRefused(PAYLOAD_TOO_LARGE) from None

    # -- WebSocket -------------------------------------------------------------------------

    async def handle_websocket(self) -> Response | None:
        origin = websocket.headers.get("Origin")
        if not self._cors.allows(origin):
            # Cross-site WebSocket hijacking: refuse before the upgrade, as /api/ws does.
            log.info("engine.io websocket refused: origin %r is not allowed", origin)
            return FORBIDDEN.response()
        args = websocket.args
        transport = args.get("transport")
        if transport != "websocket":
            refusal = BAD_REQUEST if transport == "polling" else TRANSPORT_UNKNOWN
            return refusal.response(origin)
        if args.get("EIO") != PROTOCOL_VERSION:
            return UNSUPPORTED_PROTOCOL_VERSION.response(origin)
        ws = websocket._get_current_object()  # type: ignore[attr-defined]
        sid = args.get("sid")
        if sid is not None:
            session = self.sessions.get(sid) if len(sid) <= MAX_SID_LENGTH else None
            if session is None:
                return UNKNOWN_SID.response(origin)
            if not session.claim_upgrade():
                # Already upgrading or upgraded: accepted and closed, as the reference server
                # does (its test suite's client treats a refused handshake as an error).
                log.info("engine.io session %s: second websocket closed", session.sid)
                await ws.accept()
                await _close_socket(ws, CloseCode.PROTOCOL_ERROR, "session already upgrading")
                return None
            await self._upgrade(session, ws)
            return None
        address = self._address(ws.remote_addr, ws.headers.get("X-Forwarded-For"))
        try:
            session = await self.open_session(
                Transport.WEBSOCKET, address, self._cookie(ws.headers)
            )
        except RequestRefused as refused:
            return refused.error.response(origin)
        await ws.accept()
        await self._serve(session, ws, self.open_packet(session))
        return None

    async def _upgrade(self, session: EngineSession, ws: Any) -> None:
        """Accept, probe, wait for the client's ``5``, then carry the session on this socket.

        The caller has claimed the upgrade (:meth:`EngineSession.claim_upgrade`); whatever
        happens before the switch, the claim is released and polling goes on.
        """
        upgraded = False
        try:
            await ws.accept()
            upgraded = await self._probe(session, ws)
        finally:
            if not upgraded:  # also when cancelled: polling goes on as before
                session.abort_upgrade()
        if not upgraded:
            await _close_socket(ws, CloseCode.PROTOCOL_ERROR, "upgrade failed")
            return
        await self._serve(session, ws, None)

    @staticmethod
    async def _probe(session: EngineSession, ws: Any) -> bool:
        probe: str | bytes | None = None
        with trio.move_on_after(UPGRADE_TIMEOUT):
            probe = await ws.receive()
        if probe != PING + "probe" or session.transport is not Transport.POLLING:
            return False
        await ws.send(PONG + "probe")
        session.begin_upgrade()
        confirm: str | bytes | None = None
        with trio.move_on_after(UPGRADE_TIMEOUT):
            confirm = await ws.receive()
        if confirm != UPGRADE:
            return False
        return session.complete_upgrade()

    async def _serve(self, session: EngineSession, ws: Any, first: str | None) -> None:
        try:
            if first is not None:
                await ws.send(first)
            await session.serve_websocket(ws)
        finally:
            session.close("transport closed")
            await _close_socket(ws, session.close_code, session.close_reason or "")


async def _close_socket(ws: Any, code: int, reason: str) -> None:
    with trio.move_on_after(1) as cleanup:
        cleanup.shield = True
        try:
            await ws.close(code, reason[:120])
        except Exception:  # the peer may already be gone
            log.debug("close frame not sent", exc_info=True)


def blueprint(server: EngineServer) -> Blueprint:
    """The Quart routes of ``server``: polling (GET, POST, preflight) and WebSocket, one path."""
    routes = Blueprint("engineio", __name__)
    path = server.config.path
    methods = ["GET", "POST", "OPTIONS", "PUT", "PATCH", "DELETE"]

    @routes.route(path, methods=methods)
    async def engineio_polling() -> Response:
        return await server.handle_http()

    @routes.websocket(path)
    async def engineio_websocket() -> Response | None:
        return await server.handle_websocket()

    return routes
