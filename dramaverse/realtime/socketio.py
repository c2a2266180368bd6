"""Socket.IO v5 on Engine.IO: the Dramaverse frontend's live-sync connection (docs/socketio.md).

Each Engine.IO session gets a :class:`SocketIOConnection`. It serves the main namespace ``/``
only, as the original server did: a CONNECT carries ``auth.token`` (the login JWT); the socket
then joins its user's stream, i.e. it becomes one more :class:`~dramaverse.actors.session.Device`
of the user's session actor, exactly like a native WebSocket connection: same bounded outbox
(the Engine.IO session's), same order, same slow-consumer eviction. Events are rendered once per
event for every Socket.IO device (:func:`~dramaverse.realtime.socketio_codec.encode_event`).

Refusals use the original server's messages: ``Authentication error: Token not provided.`` and
``Authentication error: Invalid token.`` (also for a valid token whose user was deleted). A
CONNECT without a token is authenticated by the browser's auth cookie when the Engine.IO
handshake carried one with an allowed ``Origin`` (http/cookies.py); a cookie without ``Origin``
is refused with ``Authentication error: Cookie authentication requires an allowed Origin.`` Another
namespace gets ``Invalid namespace``. Events from clients are logged (debug) and ignored, as the
original server did; one that asks for an acknowledgement gets one with a single argument
``{"message": ...}`` saying the event is not handled, so a client awaiting it does not hang.
Binary packets are refused: the socket is disconnected (``41``) with a logged reason and the
attachments that follow are skipped. Malformed packets, packets for a namespace that is not
connected and a second CONNECT close the Engine.IO session, as the reference server does.

Connection-state recovery: the CONNECT answer carries a ``pid`` (see :class:`RecoveryIds`), and
every event carries its seq as its last argument, which socket.io-client keeps as the offset. A
reconnecting client sends both back; when the pid is valid for the same user and the log still
holds every event after the offset, the device resumes from it (missed events are replayed from
the durable log) and the answer repeats the pid, so the client reports ``recovered``. Otherwise
the answer has a fresh pid and the frontend refetches ``/api/user/data``, as it does on every
non-recovered connect. Should the log lose events under a live socket, the socket is made to
reconnect (the transport closes) and goes through the same decision.

Revocation: a connected socket whose token is revoked (its sign-in session ended, its user's
cut-off moved past it: docs/auth.md) gets a server DISCONNECT, as at token expiry, from the
revocation core (``http/live_sockets.py``); a CONNECT with a revoked token is refused with
``Authentication error: Invalid token.``

Resource handling: the connection's tasks run in the Engine.IO session's nursery. The socket
task owns the device: it attaches it to the hub and detaches it on the way out, whatever ended
the socket (client DISCONNECT, server disconnect, session close, token expiry).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

import trio
from quart_trio import QuartTrio

from dramaverse.actors.session import Device, SessionGone
from dramaverse.cluster.worker_routing import sid_prefix
from dramaverse.domain.close_codes import CloseCode
from dramaverse.errors import DramaverseError, Unauthorized
from dramaverse.http.auth import AuthUser
from dramaverse.http.live_sockets import LiveSocket
from dramaverse.http.state import AppState
from dramaverse.realtime import engineio_server
from dramaverse.realtime.engineio import (
    RECONNECT,
    EngineConfig,
    EngineSession,
    PacketError,
)
from dramaverse.realtime.engineio_server import EngineServer
from dramaverse.realtime.socketio_codec import (
    ACK,
    BINARY_ACK,
    BINARY_EVENT,
    CONNECT,
    DISCONNECT,
    EVENT,
    MAIN_NAMESPACE,
    MISSING,
    decode,
    encode_ack,
    encode_connect,
    encode_connect_error,
    encode_disconnect,
    encode_event,
)

log = logging.getLogger(__name__)

EXTENSION = "dramaverse.socketio"
TOKEN_NOT_PROVIDED = "Authentication error: Token not provided."
TOKEN_INVALID = "Authentication error: Invalid token."
# A CONNECT without a token whose handshake carried the auth cookie but no Origin header.
COOKIE_ORIGIN_REQUIRED = "Authentication error: Cookie authentication requires an allowed Origin."
INVALID_NAMESPACE = "Invalid namespace"
ERROR_WINDOW_SECONDS = 10.0
MAX_OFFSET_DIGITS = 15


def render_resync(head: int) -> str:
    """The log lost events this device has not seen: make the client reconnect (and refetch)."""
    return RECONNECT


class RecoveryIds:
    """Issues and checks the private session ids (``pid``) of connection-state recovery.

    A pid is ``<body>.<mac>``: the body (base64url) holds the user id, the user's head seq when
    it was issued, the issue time and a random nonce; the mac is an HMAC-SHA256 (truncated to
    16 bytes) under a key derived from the JWT secret. So any worker can check any pid without
    shared state, a pid only ever resumes the user it was issued to, and it expires ``ttl``
    seconds after issue (a recovered socket keeps its pid: the client only reports ``recovered``
    when the answer repeats it). The head is where a client that saw no event resumes from.
    """

    MAX_LENGTH = 200

    def __init__(self, secret: str, ttl: int, clock: Callable[[], float] = time.time) -> None:
        self._key = hashlib.sha256(b"dramaverse socket.io pid\x00" + secret.encode()).digest()
        self.ttl = ttl
        self._clock = clock

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()[:16]

    def issue(self, user_id: int, head: int) -> str:
        body = f"{user_id}.{head}.{int(self._clock())}.{secrets.token_hex(4)}".encode()
        return f"{_b64(body)}.{_b64(self._mac(body))}"

    def verify(self, pid: object, user_id: int) -> int | None:
        """The head stored in ``pid`` if it is genuine, unexpired and ``user_id``'s."""
        if not isinstance(pid, str) or len(pid) > self.MAX_LENGTH or pid.count(".") != 1:
            return None
        encoded_body, encoded_mac = pid.split(".")
        try:
            body, mac = _unb64(encoded_body), _unb64(encoded_mac)
            owner, head, issued, _ = body.decode("ascii").split(".")
            claim = (int(owner), int(head), int(issued))
        except (ValueError, binascii.Error):
            return None
        if not hmac.compare_digest(mac, self._mac(body)):
            return None
        owner_id, head_seq, issued_at = claim
        if owner_id != user_id or head_seq < 0 or issued_at + self.ttl < self._clock():
            return None
        return head_seq


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class _Socket:
    """One connection to namespace ``/`` (connecting or connected)."""

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.connected = False
        self.revoked = False  # its token was revoked (http/revocation_sync.py)


class SocketIOConnection:
    """The Socket.IO side of one Engine.IO session (an Engine.IO ``SessionHandler``)."""

    def __init__(self, state: AppState, session: EngineSession, pids: RecoveryIds) -> None:
        self._state = state
        self._settings = state.settings
        self._session = session
        self._pids = pids
        self._socket: _Socket | None = None
        self._changed = trio.Event()  # set (and replaced) whenever ``_socket`` changes
        self._skip_binary = 0
        self._errors: deque[float] = deque()

    def _set_socket(self, socket: _Socket | None) -> None:
        self._socket = socket
        self._changed.set()
        self._changed = trio.Event()

    async def run(self) -> None:
        """Close the session whenever it has had no socket for ``socket_io_connect_timeout``."""
        timeout = self._settings.socket_io_connect_timeout
        while True:
            changed = self._changed
            if self._socket is None:
                with trio.move_on_after(timeout):
                    await changed.wait()
                if not changed.is_set():
                    self._session.close("no Socket.IO connect in time")
                    return
            else:
                await changed.wait()

    # -- packets ---------------------------------------------------------------------------

    def on_binary(self, data: bytes) -> None:
        if self._skip_binary > 0:  # an attachment of a binary packet we refused
            self._skip_binary -= 1
            return
        raise PacketError("binary data outside a binary packet")

    def on_message(self, data: str) -> None:
        packet = decode(data)
        socket = self._socket
        if packet.type == CONNECT:
            if packet.namespace != MAIN_NAMESPACE:
                self._session.push(encode_connect_error(INVALID_NAMESPACE, packet.namespace))
                return
            if socket is not None:
                raise PacketError("CONNECT for a namespace that is already connected")
            socket = _Socket()
            self._set_socket(socket)
            assert self._session.nursery is not None
            auth = packet.data if isinstance(packet.data, dict) else {}
            self._session.nursery.start_soon(self._serve_socket, socket, auth)
            return
        if socket is None or not socket.connected or packet.namespace != MAIN_NAMESPACE:
            raise PacketError(f"packet of type {packet.type} for a namespace that is not connected")
        if packet.type == EVENT:
            self._on_event(packet.data[0], packet.ack_id)
        elif packet.type == DISCONNECT:
            self._end_socket(socket)
        elif packet.type in (BINARY_EVENT, BINARY_ACK):
            log.info(
                "socket.io session %s from %s: binary packets are not supported; disconnecting",
                self._session.sid,
                self._session.address,
            )
            self._skip_binary += packet.attachments
            self._session.push(encode_disconnect())
            self._end_socket(socket)
        elif packet.type == ACK:
            log.debug("socket.io: ack %s from a client ignored (none was requested)", packet.ack_id)

    def _on_event(self, name: object, ack_id: int | None) -> None:
        log.debug("socket.io session %s: unexpected event %r ignored", self._session.sid, name)
        if ack_id is not None:
            message = f"Event {str(name)[:100]!r} is not handled by this server."
            self._session.push(encode_ack(ack_id, [{"message": message}]))
        now = trio.current_time()
        self._errors.append(now)
        while self._errors and self._errors[0] < now - ERROR_WINDOW_SECONDS:
            self._errors.popleft()
        if len(self._errors) > self._settings.ws_max_errors:
            log.info("socket.io session %s: too many unexpected events", self._session.sid)
            self._session.close("too many unexpected events")

    def _end_socket(self, socket: _Socket) -> None:
        socket.scope.cancel()
        if self._socket is socket:
            self._set_socket(None)

    # -- the socket ------------------------------------------------------------------------

    async def _serve_socket(self, socket: _Socket, auth: dict[str, Any]) -> None:
        hub = self._state.hub
        user: AuthUser | None = None
        device: Device | None = None
        live: LiveSocket | None = None
        try:
            with socket.scope:
                user = await self._authenticate(auth)
                if user is None:
                    return
                # Known to the revocation core from here on; one that arrived while the user
                # was looked up is caught by the check that follows.
                live = self._state.sockets.add(user, partial(self._revoke, socket))
                if self._state.tokens.revocations.refuses(user):
                    self._refuse(TOKEN_INVALID)
                    return
                resume, pid = await self._recovery(user, auth)
                device = Device(
                    self._session.outbox,
                    self._evict,
                    render=encode_event,
                    render_resync=render_resync,
                )
                try:
                    await hub.attach(user.id, device, resume, self._ready(socket, user, pid))
                except SessionGone:
                    self._session.close("session unavailable", CloseCode.INTERNAL_ERROR)
                    return
                log.debug(
                    "socket.io session %s: user %d connected%s",
                    self._session.sid,
                    user.id,
                    " (recovered)" if pid is not None else "",
                )
                with trio.move_on_after(user.expires_at - time.time()):
                    await trio.sleep_forever()
                # The token expired: end the socket; the client must log in again.
                self._session.push(encode_disconnect())
        except DramaverseError as exc:  # storage unavailable: the client retries later
            log.warning("socket.io connect failed: %s", exc.message)
            self._session.close("storage unavailable", CloseCode.INTERNAL_ERROR)
        finally:
            if live is not None:
                self._state.sockets.remove(live)
            if device is not None and user is not None:
                hub.detach(user.id, device)
            if self._socket is socket:
                self._set_socket(None)

    def _ready(self, socket: _Socket, user: AuthUser, pid: str | None) -> Callable[[int], str]:
        """The CONNECT answer, rendered by the session actor as the device's first frame."""
        sid = secrets.token_urlsafe(15)
        recovery = self._pids.ttl > 0

        def render(head: int) -> str:
            if socket.revoked:  # revoked while attaching: a refusal instead
                return encode_connect_error(TOKEN_INVALID)
            socket.connected = True  # before the client can see it and send anything
            answer = pid if pid is not None else self._pids.issue(user.id, head)
            return encode_connect(sid, answer if recovery else None)

        return render

    async def _authenticate(self, auth: dict[str, Any]) -> AuthUser | None:
        token = auth.get("token")
        cookie = self._session.cookie
        if not token and cookie is not None:  # no token given: the handshake's auth cookie
            token = cookie.token
        message = None
        user = None
        if not token:
            message = TOKEN_NOT_PROVIDED if cookie is None else COOKIE_ORIGIN_REQUIRED
        elif not isinstance(token, str):
            message = TOKEN_INVALID
        else:
            try:
                user = self._state.perimeter.user_from_token(token)
            except Unauthorized:
                message = TOKEN_INVALID
            else:
                if not await self._state.storage.user_exists(user.id):
                    message = TOKEN_INVALID
        if message is not None:
            self._refuse(message)
            return None
        return user

    def _refuse(self, message: str) -> None:
        log.info("socket.io connect refused from %s: %s", self._session.address, message)
        self._session.push(encode_connect_error(message))

    def _revoke(self, socket: _Socket) -> None:
        """The token's session ended or its user was cut off (called by the revocation core,
        never blocks): a connected socket gets a server disconnect, as at token expiry (the
        client must log in again); one still attaching is refused by its ``ready``."""
        if socket.revoked:
            return
        socket.revoked = True
        if socket.connected:
            self._session.push(encode_disconnect())
        socket.scope.cancel()

    async def _recovery(
        self, user: AuthUser, auth: dict[str, Any]
    ) -> tuple[int | None, str | None]:
        """``(resume, pid)`` when this CONNECT can recover its previous socket, else ``(None,
        None)``: the pid must be genuine and the user's, and the log must hold every event
        after the offset (however many: the hub streams the replay at the socket's pace)."""
        if self._pids.ttl <= 0 or "pid" not in auth:
            return None, None
        pid = auth["pid"]
        head = self._pids.verify(pid, user.id)
        if head is None:
            return None, None
        offset = auth.get("offset", MISSING)
        if offset is not MISSING:
            if not (
                isinstance(offset, str)
                and 0 < len(offset) <= MAX_OFFSET_DIGITS
                and offset.isascii()
                and offset.isdigit()
            ):
                return None, None
            head = int(offset)
        found = await self._state.storage.read_events(user.id, head, 1)
        if not found.complete:
            return None, None
        assert isinstance(pid, str)
        return head, pid

    def _evict(self, code: int, reason: str) -> None:
        self._session.close(reason, code if code else CloseCode.SLOW_CONSUMER)


def install(app: QuartTrio, state: AppState) -> EngineServer:
    """Serve Socket.IO at ``SOCKET_IO_PATH`` in ``app``; start ``engine_server(app).run``."""
    assert state.settings.jwt_secret is not None
    pids = RecoveryIds(state.settings.jwt_secret, state.settings.socket_io_recovery_seconds)
    server = EngineServer(
        EngineConfig.from_settings(state.settings),
        state.cors,
        state.shutdown,
        lambda session: SocketIOConnection(state, session, pids),
        sid_prefix=sid_prefix(state.settings.worker_id),  # a worker's sids name it
        cookies=state.cookie_auth,
    )
    app.register_blueprint(engineio_server.blueprint(server))
    app.extensions[EXTENSION] = server
    state.engine = server
    return server


def engine_server(app: QuartTrio) -> EngineServer:
    server: EngineServer = app.extensions[EXTENSION]
    return server
