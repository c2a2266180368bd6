"""Watch-party verbs on the native WebSocket (``docs/protocol.md``, "Watch parties").

A :class:`RoomLink` is one connection's part in the rooms it joined. The native connection
hands it every frame whose type starts with ``room.`` or ``clock.``; the link creates and joins
rooms through the room cluster (``actors/room_cluster.py``) and forwards the other commands to
the room's route: the room actor when the room runs in this process, its owner through the
broker otherwise. The room answers (``ack``/``error``) and broadcasts through the connection's
own outbox either way. So a connection's room frames and library events share one ordered
queue and one slow-consumer rule: a full outbox closes the whole connection with 4001, whoever
filled it.

Identity: a member is the *user* (its id as a string), named by its username unless the client
gives a display name. A second connection of the same user joining the same room replaces the
first one there (which gets ``room.left`` with ``reason: "replaced"``), so one person counts once
and keeps its role when it moves from one device to another.

Resource handling: the link remembers, per room, the route and the peer it joined with; the
connection calls :meth:`RoomLink.close` whatever ended it, which tells each room (never
blocking) that this connection is gone. Membership and role then wait out the reconnect grace.

Error handling: every refusal is answered with the native error frame (``status`` as in HTTP)
and changes nothing; the socket stays usable. Refusals decided here go through the connection's
``error`` (400s count toward ``WS_MAX_ERRORS``); the room actor's own refusals reach the
connection's ``count_error`` through the peer.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import trio

from dramaverse.actors.room_cluster import RoomCluster
from dramaverse.actors.room_messages import RoomGone, RoomPeer, render_json
from dramaverse.actors.room_registry import RoomRegistry
from dramaverse.actors.room_routes import RoomRoute
from dramaverse.domain.numbers import REQUEST_ID_RULE, is_request_id
from dramaverse.domain.room_rules import message_fields
from dramaverse.domain.rooms import (
    HANDLERS,
    MAX_NAME_LENGTH,
    Control,
    check_text,
    normalize_room_code,
)
from dramaverse.errors import (
    BadRequest,
    Conflict,
    DramaverseError,
    Forbidden,
    NotFound,
    ServiceUnavailable,
)
from dramaverse.http.auth import AuthUser
from dramaverse.http.state import AppState, RoomHostLookup
from dramaverse.storage.base import Storage

MAX_ROOMS_PER_CONNECTION = 4
ROOM_COMMANDS = frozenset(HANDLERS)  # room.play ... room.leave, clock.pong


def is_room_message(kind: str) -> bool:
    """Whether a native frame type belongs to the watch-party protocol."""
    return kind.startswith(("room.", "clock."))


def room_host_lookup(registry: RoomRegistry, storage: Storage | None = None) -> RoomHostLookup:
    """``AppState.room_host_lookup`` backed by this process's rooms (and, with ``storage``, by
    the stored snapshots of rooms that run in other processes).

    True iff the room's host is that user. For a room that lives here it reads the ``host`` its
    actor published after its last step (``RoomActor.host``) instead of asking the actor, so
    the HTTP request never waits behind a busy room. For any other room it reads
    the room's latest snapshot (written within ROOM_SNAPSHOT_DELAY_SECONDS of a change), when
    ``storage`` is given (several processes). A malformed code raises BadRequest, which the
    caller takes as False.
    """

    async def is_host(room_code: str, user_id: int) -> bool:
        actor = registry.find(room_code)
        if actor is not None:
            return actor.host == str(user_id)
        if storage is None:
            return False
        text = await storage.load_room_snapshot(normalize_room_code(room_code))
        try:
            host = json.loads(text)["host"] if text is not None else None
        except (ValueError, TypeError, KeyError):
            return False
        return isinstance(host, str) and host == str(user_id)

    return is_host


class RoomLink:
    """One connection's rooms. Construct once the connection is authenticated.

    ``outbox`` is the connection's bounded outbox (shared with its other frames), ``error``
    answers a refusal (and counts malformed frames), ``count_error(status)`` counts a refusal
    the room actor already answered, ``evict(code, reason)`` closes the connection.
    """

    def __init__(
        self,
        state: AppState,
        user: AuthUser,
        address: str,
        outbox: trio.MemorySendChannel[str],
        *,
        error: Callable[[int, str, object], None],
        count_error: Callable[[int], None],
        evict: Callable[[int, str], None],
    ) -> None:
        self._cluster = state.room_cluster
        self._perimeter = state.perimeter
        self._address = address
        self._member = str(user.id)
        self._name = user.username
        self._outbox = outbox
        self._error = error
        self._count_error = count_error
        self._evict = evict
        self.joined: dict[str, tuple[RoomRoute, RoomPeer]] = {}

    async def handle(self, message: dict[str, Any]) -> None:
        """Act on one room frame (its ``type`` is a string); answer refusals with an error."""
        request_id = message.get("id")
        try:
            if request_id is not None and not is_request_id(request_id):
                request_id = None
                raise BadRequest(f"id must be {REQUEST_ID_RULE}.")
            kind = message["type"]
            if kind == "room.create":
                await self._create(message.get("data"), request_id)
            elif kind == "room.join":
                await self._join(message.get("data"), request_id)
            elif kind in ROOM_COMMANDS:
                await self._command(kind, message, request_id)
            else:
                raise BadRequest(f"Unknown message type {kind!r}."[:200])
        except DramaverseError as exc:
            self._error(exc.status, exc.message, request_id)

    def close(self) -> None:
        """The connection ended: tell every joined room. Never blocks."""
        for route, peer in self.joined.values():
            route.disconnect(self._member, peer)
        self.joined.clear()

    # --- verbs ---------------------------------------------------------------------------

    def _rooms(self) -> RoomCluster:
        if self._cluster is None:
            raise ServiceUnavailable("Watch parties are not available on this server.")
        return self._cluster

    async def _create(self, data: object, request_id: object) -> None:
        fields = message_fields("room.create", data, ("name", "control", "waitForJoiners"))
        name = self._display_name(fields)
        control = fields.get("control", Control.HOST.value)
        if control not in (Control.HOST.value, Control.ALL.value):
            raise BadRequest("control must be 'host' or 'all'.")
        wait = fields.get("waitForJoiners", False)
        if not isinstance(wait, bool):
            raise BadRequest("waitForJoiners must be true or false.")
        cluster = self._rooms()
        self._check_capacity()
        self._spend()
        route = await cluster.create(
            self._member, name, control=Control(control), wait_for_joiners=wait
        )
        await self._attach(route, name, request_id)

    async def _join(self, data: object, request_id: object) -> None:
        fields = message_fields("room.join", data, ("code", "name"))
        if fields.get("code") is None:
            raise BadRequest("room.join needs data.code, the room's code.")
        code = normalize_room_code(fields["code"])
        name = self._display_name(fields)
        cluster = self._rooms()
        entry = self._entry(code)
        if entry is not None:
            raise Conflict(f"You are already in room {code} on this connection.")
        self._check_capacity()
        self._spend()
        await self._attach(await cluster.locate(code), name, request_id)

    async def _command(self, kind: str, message: Mapping[str, Any], request_id: object) -> None:
        raw = message.get("room")
        if raw is None:
            raise BadRequest(f"{kind} needs 'room', the code of a room you joined.")
        code = normalize_room_code(raw)
        cluster = self._rooms()
        entry = self._entry(code)
        if entry is None:
            if cluster.find(code) is None:
                raise NotFound(f"Room {code} not found.")
            raise Forbidden(f"You are not in room {code}: join it first.")
        route, peer = entry
        if kind == "room.leave":
            del self.joined[code]  # the room still answers through the peer
        try:
            await route.submit(self._member, kind, message.get("data"), request_id, peer=peer)
        except RoomGone:
            self.joined.pop(code, None)
            raise

    # --- helpers -------------------------------------------------------------------------

    async def _attach(self, route: RoomRoute, name: str, request_id: object) -> None:
        """Join ``route``'s room with a peer on this connection's outbox; ack with its code.

        The peer is remembered before the join is sent, so a connection that ends while it
        waits still disconnects it."""
        peer = RoomPeer(self._outbox, self._evict, render_json, self._count_error)
        self.joined[route.code] = (route, peer)
        try:
            await route.join(self._member, name, peer)
        except BaseException:
            self.joined.pop(route.code, None)
            route.disconnect(self._member, peer)  # a no-op unless the join went through
            raise
        if request_id is not None:
            ack = {"type": "ack", "id": request_id, "result": {"room": route.code}}
            self._push(json.dumps(ack, ensure_ascii=False, separators=(",", ":")))

    def _push(self, frame: str) -> None:
        try:
            self._outbox.send_nowait(frame)
        except trio.WouldBlock:
            self._evict(4001, "slow consumer: outbox full")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the connection is ending

    def _entry(self, code: str) -> tuple[RoomRoute, RoomPeer] | None:
        """This connection's membership of ``code``, unless it ended (replaced by another
        connection, dropped, the room ended): read from the route, never written here."""
        entry = self.joined.get(code)
        if entry is not None and not entry[0].holds(entry[1]):
            del self.joined[code]
            entry[0].forget(entry[1])
            return None
        return entry

    def _display_name(self, fields: Mapping[str, Any]) -> str:
        name = fields.get("name")
        return self._name if name is None else check_text(name, "name", MAX_NAME_LENGTH)

    def _check_capacity(self) -> None:
        for code in list(self.joined):
            self._entry(code)  # forget rooms this connection was replaced in
        if len(self.joined) >= MAX_ROOMS_PER_CONNECTION:
            raise Conflict(
                f"A connection can be in at most {MAX_ROOMS_PER_CONNECTION} rooms: leave one first."
            )

    def _spend(self) -> None:
        """Creating and joining share the per-address limit of library requests."""
        perimeter = self._perimeter
        decision = perimeter.spend_user_limit(self._address)
        perimeter.refuse_over_limit(decision, perimeter.user_limit_message())
