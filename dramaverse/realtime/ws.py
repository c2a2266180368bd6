"""The native WebSocket endpoint ``/api/ws`` (protocol ``dramaverse.v1``, see docs/protocol.md).

Each connection is three tasks in one nursery: the reader (this handler's task: ``hello``, then
requests, pongs), the writer (drains the bounded outbox into the socket, so there is one writer),
and the heartbeat. The user's session actor pushes events into the same outbox, and so do the
watch-party rooms the connection joined (``room.*``/``clock.*`` frames go to ``ws_rooms.py``).
Any task may end the connection with ``close(code, reason)``, which records the code and cancels
the rest; the close frame is sent once, at the end. A ``hello`` with ``resume`` gets its missed
events in the reader's task, before it reads anything else (``SessionHub.attach`` streams them at
the pace the writer sends them).

The endpoint is served on the ASGI messages in front of the Quart application
(:class:`NativeSocketEndpoint`): a frame costs one task switch less and none of Quart's
per-message wrappers, about a sixth of the server's CPU per frame (docs/architecture.md). The
handshake has the same perimeter as a Quart route: a disallowed Origin gets a 403
JSON response, a subprotocol list without ``dramaverse.v1`` gets 1002. Without a token in the
``hello``, the ``Authorization`` header or the subprotocol, the browser's auth cookie is used,
only when the handshake had an (allowed) ``Origin`` (http/cookies.py); otherwise 4100.

Once its token is accepted the connection is in the process's :class:`LiveSockets` registry
(``http/live_sockets.py``): when the token is revoked (its sign-in session ended, its user's
cut-off moved past it: docs/auth.md) the revocation core closes it with 4100.

Resource handling: the handler owns the outbox's receive side and, on the way out, whatever
ended the connection, detaches the device from the hub, disconnects it from its rooms and
leaves the registry.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import deque
from typing import Any

import trio
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGISendCallable,
    Scope,
    WebsocketScope,
)

from dramaverse.actors.session import Device, SessionGone
from dramaverse.domain.close_codes import CloseCode
from dramaverse.domain.jsjson import unstorable_text
from dramaverse.domain.numbers import REQUEST_ID_RULE, is_request_id
from dramaverse.errors import Conflict, DramaverseError, ServiceUnavailable, Unauthorized
from dramaverse.http.auth import TOKEN_INVALID, AuthUser
from dramaverse.http.cookies import CookieRequest, SocketCookie
from dramaverse.http.library_ops import OPERATIONS
from dramaverse.http.responses import JSON_TYPE
from dramaverse.http.security import SECURITY_HEADERS
from dramaverse.http.state import AppState
from dramaverse.realtime.ws_rooms import RoomLink, is_room_message

log = logging.getLogger(__name__)

PATH = "/api/ws"
PROTOCOL = "dramaverse.v1"
TOKEN_PROTOCOL_PREFIX = "dramaverse.token."
MAX_SEQ = 2**63 - 1  # the largest event seq storage holds (a signed 64-bit integer)
ERROR_WINDOW_SECONDS = 10.0


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class ProtocolError(Exception):
    """A frame the protocol does not accept; answered with an error frame."""

    def __init__(self, message: str, request_id: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id


class PeerGone(Exception):
    """The client's side of the connection is closed (ASGI ``websocket.disconnect``)."""


class AsgiSocket:
    """The connection's WebSocket, straight on the server's ASGI receive/send."""

    __slots__ = ("_receive", "_send", "gone")

    def __init__(self, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        self._receive = receive
        self._send = send
        self.gone = False

    async def receive(self) -> str | bytes:
        """The next message; :class:`PeerGone` once the client has gone."""
        message = await self._receive()
        if message["type"] == "websocket.receive":
            text = message.get("text")
            if text is not None:
                return str(text)
            return bytes(message.get("bytes") or b"")
        self.gone = True
        raise PeerGone

    async def send(self, frame: str) -> None:
        if not self.gone:
            await self._send({"type": "websocket.send", "bytes": None, "text": frame})

    async def close(self, code: int, reason: str) -> None:
        if not self.gone:
            self.gone = True
            await self._send({"type": "websocket.close", "code": code, "reason": reason})


class NativeSocketEndpoint:
    """ASGI middleware: ``/api/ws`` here, everything else to ``app``."""

    def __init__(self, app: ASGIFramework, state: AppState) -> None:
        self._app = app
        self._state = state

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "websocket" and scope["path"] == PATH:
            await native_socket(self._state, scope, receive, send)
            return
        await self._app(scope, receive, send)


_WANTED = (b"origin", b"authorization", b"x-forwarded-for")
_REFUSAL_HEADERS = [(b"content-type", JSON_TYPE.encode())] + [
    (name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS
]


async def native_socket(
    state: AppState, scope: WebsocketScope, receive: ASGIReceiveCallable, send: ASGISendCallable
) -> None:
    connect = await receive()
    if connect["type"] != "websocket.connect":
        return  # gone before the handshake
    headers: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name in _WANTED and name not in headers:  # the first one wins, as in Quart
            headers[name] = value.decode("latin-1")
    origin = headers.get(b"origin")
    perimeter = state.perimeter
    if not perimeter.allows_origin(origin):
        # Cross-site WebSocket hijacking: a page on another origin cannot ride the user's socket.
        await _refuse(scope, send, 403, perimeter.origin_refusal(origin))
        return
    offered = list(scope.get("subprotocols") or ())
    token = next(
        (
            p.removeprefix(TOKEN_PROTOCOL_PREFIX)
            for p in offered
            if p.startswith(TOKEN_PROTOCOL_PREFIX)
        ),
        None,
    )
    header = headers.get(b"authorization")
    if header and header.startswith("Bearer "):
        token = header.split(" ")[1]
    socket = AsgiSocket(receive, send)
    if offered and PROTOCOL not in offered:
        await send({"type": "websocket.accept", "subprotocol": None, "headers": []})
        await socket.close(CloseCode.PROTOCOL_ERROR, f"subprotocol {PROTOCOL} required")
        return
    await send(
        {"type": "websocket.accept", "subprotocol": PROTOCOL if offered else None, "headers": []}
    )
    peer = scope.get("client")
    address = perimeter.address(peer[0] if peer else None, headers.get(b"x-forwarded-for"))
    cookie = None
    if token is None and b"authorization" not in headers:  # the last resort, after hello's
        cookie_header = CookieRequest.from_scope(scope["headers"]).cookie
        cookie = state.cookie_auth.socket_cookie(origin, cookie_header)
    await NativeConnection(state, address, token, socket, cookie).run()


async def _refuse(scope: WebsocketScope, send: ASGISendCallable, status: int, message: str) -> None:
    """An HTTP answer to the handshake (ASGI's WebSocket denial response, which Hypercorn
    offers); a bare refusal (Hypercorn answers 403 without a body) where it is missing."""
    if "websocket.http.response" not in (scope.get("extensions") or {}):
        await send({"type": "websocket.close", "code": 1000, "reason": None})
        return
    body = _dumps({"message": message}).encode()
    headers = [*_REFUSAL_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body, "more_body": False})


class NativeConnection:
    def __init__(
        self,
        state: AppState,
        address: str,
        token: str | None,
        ws: AsgiSocket,
        cookie: SocketCookie | None = None,
    ) -> None:
        self._state = state
        self._settings = state.settings
        self._address = address
        self._token = token
        self._cookie = cookie
        self._ws = ws
        self._scope = trio.CancelScope()
        self._close: tuple[int, str] | None = None
        self._outbox: trio.MemorySendChannel[str] | None = None
        self._queued: trio.MemoryReceiveChannel[str] | None = None  # the outbox's other end
        self._last_seen = trio.current_time()
        self._errors: deque[float] = deque()
        self._rooms: RoomLink | None = None

    def close(self, code: int, reason: str) -> None:
        """End the connection with ``code``; the first caller wins. Never blocks."""
        if self._close is None:
            self._close = (code, reason)
        self._scope.cancel()

    def push(self, frame: str) -> None:
        if self._outbox is None:
            return
        try:
            self._outbox.send_nowait(frame)
        except trio.WouldBlock:
            self.close(CloseCode.SLOW_CONSUMER, "slow consumer: outbox full")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.close(CloseCode.NORMAL, "")

    async def run(self) -> None:
        try:
            with self._scope:
                await self._serve()
        finally:
            code, reason = self._close or (CloseCode.NORMAL, "")
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                try:
                    if (
                        code != CloseCode.SLOW_CONSUMER
                    ):  # a slow consumer would not take them anyway
                        await self._flush()
                    await self._ws.close(code, reason)
                except Exception:  # the peer may already be gone
                    log.debug("close frame not sent", exc_info=True)
            if self._queued is not None:
                self._queued.close()

    async def _flush(self) -> None:
        """Send what was queued before the close (the error frames that led to a 4103, say):
        the writer was cancelled with the connection's scope, its frames were not."""
        if self._queued is None:
            return
        while True:
            try:
                frame = self._queued.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return
            await self._ws.send(frame)

    async def _serve(self) -> None:
        hello = await self._receive_hello()
        if hello is None:
            return
        user = await self._authenticate(hello)
        if user is None:
            return
        # Known to the revocation core from here on (http/live_sockets.py); a revocation that
        # arrived while the user was being looked up is caught by the check that follows.
        sockets = self._state.sockets
        live = sockets.add(user, self._revoked)
        try:
            if self._state.tokens.revocations.refuses(user):
                self._revoked()
                return
            await self._serve_user(user, hello.get("resume"))
        finally:
            sockets.remove(live)

    def _revoked(self) -> None:
        """The token's session ended or its user was cut off: end this socket (4100)."""
        self.close(CloseCode.AUTH_FAILED, TOKEN_INVALID)

    async def _serve_user(self, user: AuthUser, resume: int | None) -> None:
        send, receive = trio.open_memory_channel[str](self._settings.ws_outbox_size)
        self._outbox, self._queued = send, receive
        device = Device(send, self.close)
        hub = self._state.hub
        rooms = self._rooms = RoomLink(
            self._state,
            user,
            self._address,
            send,
            error=self._error,
            count_error=self._count_error,
            evict=self.close,
        )
        expires_in = user.expires_at - time.time()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, receive)
                nursery.start_soon(self._watch_shutdown)
                with trio.move_on_after(expires_in) as expiry:  # a replay counts, too
                    try:  # ready, then the replay of what it missed, at the device's pace
                        await hub.attach(user.id, device, resume, self._ready_frame(user))
                    except SessionGone:
                        self.close(CloseCode.INTERNAL_ERROR, "session unavailable; reconnect")
                        return
                    nursery.start_soon(self._heartbeat)
                    await self._reader(user)
                if expiry.cancelled_caught:
                    self.close(CloseCode.TOKEN_EXPIRED, "token expired")
                nursery.cancel_scope.cancel()
        finally:
            rooms.close()
            hub.detach(user.id, device)

    async def _receive_hello(self) -> dict[str, Any] | None:
        raw: str | bytes | None = None
        with trio.move_on_after(self._settings.ws_auth_timeout):
            try:
                raw = await self._ws.receive()
            except PeerGone:
                self.close(CloseCode.NORMAL, "")
                return None
        if raw is None:
            self.close(CloseCode.HELLO_TIMEOUT, "no hello in time")
            return None
        try:
            message = self._parse(raw)
            if message.get("type") != "hello":
                raise ProtocolError("The first message must be hello.")
            resume = message.get("resume")
            if resume is not None and (
                not isinstance(resume, int)
                or isinstance(resume, bool)
                or not 0 <= resume <= MAX_SEQ
            ):
                raise ProtocolError(f"hello.resume must be an integer from 0 to {MAX_SEQ}.")
            token = message.get("token")
            if token is not None and not isinstance(token, str):
                raise ProtocolError("hello.token must be a string.")
        except ProtocolError as exc:
            self.close(CloseCode.AUTH_FAILED, exc.message)
            return None
        return message

    async def _authenticate(self, hello: dict[str, Any]) -> AuthUser | None:
        token = hello.get("token") or self._token
        if not token and self._cookie is not None:
            if self._cookie.token is None:
                self.close(CloseCode.AUTH_FAILED, self._cookie.refusal or "")
                return None
            token = self._cookie.token
        if not token:
            self.close(CloseCode.AUTH_FAILED, "Authentication token required")
            return None
        try:
            user = self._state.perimeter.user_from_token(token)
        except Unauthorized as exc:
            self.close(CloseCode.AUTH_FAILED, exc.message)
            return None
        try:
            exists = await self._state.storage.user_exists(user.id)
        except ServiceUnavailable:  # the database is down: come back later, with resume
            self.close(CloseCode.INTERNAL_ERROR, "database unavailable; reconnect with backoff")
            return None
        if not exists:
            self.close(CloseCode.AUTH_FAILED, "Invalid or expired token")
            return None
        return user

    def _ready_frame(self, user: AuthUser) -> Any:
        heartbeat = {
            "interval": self._settings.ws_heartbeat_interval,
            "timeout": self._settings.ws_heartbeat_timeout,
        }

        def render(head: int) -> str:
            return _dumps(
                {
                    "type": "ready",
                    "seq": head,
                    "user": {"username": user.username},
                    "heartbeat": heartbeat,
                }
            )

        return render

    async def _writer(self, receive: trio.MemoryReceiveChannel[str]) -> None:
        async for frame in receive:  # closed by run(), after the frames left are flushed
            await self._ws.send(frame)

    async def _watch_shutdown(self) -> None:
        await self._state.shutdown.wait()
        self.close(CloseCode.GOING_AWAY, "server shutting down")

    async def _heartbeat(self) -> None:
        """Ping every ``interval``; close if nothing came back within ``timeout`` of a ping.

        Pings run on an absolute schedule, so waiting for the answer does not stretch the
        period (a timeout longer than the interval stretches it to the timeout).
        """
        interval = self._settings.ws_heartbeat_interval
        timeout = self._settings.ws_heartbeat_timeout
        # The first ping comes after a random part of the interval, so that thousands of
        # sockets that connected together (a restart, a benchmark) do not ping in one burst.
        next_ping = trio.current_time() + interval * random.uniform(0.5, 1.0)
        while True:
            await trio.sleep_until(next_ping)
            sent_at = trio.current_time()
            self.push(_dumps({"type": "ping", "t": int(time.time() * 1000)}))
            next_ping = sent_at + max(interval, timeout)
            await trio.sleep(timeout)
            if self._last_seen < sent_at:
                self.close(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout")
                return

    async def _reader(self, user: AuthUser) -> None:
        while True:
            try:
                raw = await self._ws.receive()
            except PeerGone:
                self.close(CloseCode.NORMAL, "")
                return
            self._last_seen = trio.current_time()
            try:
                await self._handle(raw, user)
            except ProtocolError as exc:
                self._error(400, exc.message, exc.request_id)
            except Exception:
                # The connection's boundary: a bug behind one frame ends this socket only,
                # answered (an error frame, then 1011 so the client reconnects) and logged once.
                log.exception("native socket of user %s failed on a frame; closing it", user.id)
                self._error(500, "Internal server error; reconnect and resume.")
                self.close(CloseCode.INTERNAL_ERROR, "internal error")
                return

    def _error(self, status: int, message: str, request_id: object = None, **extra: Any) -> None:
        frame: dict[str, Any] = {"type": "error"}
        if request_id is not None:
            frame["id"] = request_id
        frame.update(status=status, message=message, **extra)
        self.push(_dumps(frame))
        self._count_error(status)

    def _count_error(self, status: int) -> None:
        """Malformed frames (400) count toward ``WS_MAX_ERRORS`` per 10 s; never blocks."""
        if status == 400:
            now = trio.current_time()
            self._errors.append(now)
            while self._errors and self._errors[0] < now - ERROR_WINDOW_SECONDS:
                self._errors.popleft()
            if len(self._errors) > self._settings.ws_max_errors:
                self.close(CloseCode.ABUSE, "too many invalid messages")

    @staticmethod
    def _parse(raw: str | bytes) -> dict[str, Any]:
        if isinstance(raw, bytes):
            raise ProtocolError("Binary frames are not supported; send JSON text frames.")
        try:
            message = json.loads(raw, parse_constant=_reject_constant)
        except RecursionError:
            raise ProtocolError("Malformed JSON: nested too deeply.") from None
        except ValueError as exc:
            raise ProtocolError(f"Malformed JSON: {exc}.") from None
        if not isinstance(message, dict):
            raise ProtocolError("A message must be a JSON object.")
        if "\\u" in raw and unstorable_text(message):
            request_id = message.get("id")
            raise ProtocolError(
                "Strings must not contain NUL characters or lone surrogates.",
                request_id if is_request_id(request_id) else None,
            )
        if not isinstance(message.get("type"), str):
            raise ProtocolError("A message needs a string 'type'.")
        return message

    async def _handle(self, raw: str | bytes, user: AuthUser) -> None:
        message = self._parse(raw)
        kind = message["type"]
        if kind == "pong":
            return
        if kind == "ping":
            self.push('{"type":"pong"}')
            return
        if kind == "hello":
            raise ProtocolError("Already authenticated: hello is only the first message.")
        if is_room_message(kind) and self._rooms is not None:  # watch parties: ws_rooms.py
            await self._rooms.handle(message)
            return
        operation = OPERATIONS.get(kind)
        if operation is None:
            raise ProtocolError(f"Unknown message type {kind!r}."[:200])
        request_id = message.get("id")
        if not is_request_id(request_id):
            raise ProtocolError(f"A {kind} request needs an 'id' ({REQUEST_ID_RULE}).")
        perimeter = self._state.perimeter
        decision = perimeter.spend_user_limit(self._address)
        if decision is not None and not decision.allowed:
            self._error(429, perimeter.user_limit_message(), request_id)
            return
        try:
            result = await operation(self._state, user, message.get("data", {}))
        except Unauthorized as exc:
            self._error(exc.status, exc.message, request_id)
            self.close(CloseCode.AUTH_FAILED, exc.message)
            return
        except DramaverseError as exc:
            extra = exc.extra if isinstance(exc, Conflict) else {}
            self._error(exc.status, exc.message, request_id, **extra)
            return
        self.push(_dumps({"type": "ack", "id": request_id, "result": result}))
