"""The room actor's messages and errors: what a connection sends a room, and how it is answered.

A connection talks to its room through these (``Join``, ``Command``, ``Disconnect``, ``Call``);
the registry's own task receives ``Start``. A request that wants an answer carries a
:class:`~dramaverse.actors.reply.Reply`. The actor is ``room.py``, the registry
``room_registry.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dramaverse.actors.outbox import Outbox, push_frame
from dramaverse.actors.reply import Reply
from dramaverse.domain.numbers import REQUEST_ID_RULE, is_request_id
from dramaverse.domain.rooms import Room
from dramaverse.errors import BadRequest, DramaverseError, ServiceUnavailable

if TYPE_CHECKING:
    from dramaverse.actors.room import RoomActor

MAX_VERB_LENGTH = 40  # of a client's message type, in the log


def render_json(message: dict[str, Any]) -> str:
    """The native protocol's frame for a room message: compact JSON, UTF-8 kept as is."""
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class RoomGone(ServiceUnavailable):
    """The room actor stopped before the request could be handled; join again."""


class RoomFailed(DramaverseError):
    """The room failed on this request (a server bug) and was restarted from its state before
    it: the request was not applied (500)."""


@dataclass(eq=False)
class RoomPeer:
    """One connection of a member as the room sees it.

    ``evict(code, reason)`` is called from the actor's task when the connection must go (a full
    outbox: 4001); it must not block. ``render`` turns a room message into the transport's
    frame; the actor renders a broadcast once per distinct renderer. ``on_error(status)`` is
    called (in the actor's task, must not block) when the actor answers this peer with an error
    frame, so a transport can count malformed commands. ``dropped`` is written by the room
    actor's task only (replaced, evicted, the room stopped), ``closed`` by the connection's side
    only (its ``disconnect``: the connection ended); ``gone`` is either (``actors/outbox.py``).
    """

    outbox: Outbox
    evict: Callable[[int, str], None] = lambda code, reason: None
    render: Callable[[dict[str, Any]], str] = render_json
    on_error: Callable[[int], None] = lambda status: None
    dropped: bool = False  # the room's: no more room messages to this connection
    closed: bool = False  # the connection's: it ended

    @property
    def gone(self) -> bool:
        return self.dropped or self.closed

    def push(self, frame: str) -> bool:
        """Queue a frame without waiting; evict the peer when its outbox is full."""
        return push_frame(self, frame)


@dataclass(eq=False)
class Join:
    member_id: str
    name: str
    peer: RoomPeer
    reply: Reply[dict[str, Any]] = field(default_factory=Reply)


@dataclass(eq=False)
class Command:
    """A client command. With ``reply`` the caller awaits the result; otherwise the answer
    (``ack`` with ``request_id``, or ``error``) goes to the member's peer. With ``peer`` the
    command counts only if that peer is still the member's connection (another connection of
    the member may have replaced it); it is refused with 403 otherwise."""

    member_id: str
    kind: object
    data: object
    request_id: object = None
    reply: Reply[dict[str, Any]] | None = None
    peer: RoomPeer | None = None


@dataclass(eq=False)
class Disconnect:
    member_id: str
    peer: RoomPeer


@dataclass(eq=False)
class Call:
    """Run ``fn(room, now)`` inside the actor (reads and admin changes; never blocking)."""

    fn: Callable[[Room, float], Any]
    reply: Reply[Any] = field(default_factory=Reply)


Message = Join | Command | Disconnect | Call


@dataclass(eq=False)
class Start:
    """Start ``actor`` (registered already) in the registry's nursery; answers its handle."""

    actor: RoomActor
    reply: Reply[RoomActor] = field(default_factory=Reply)


def error_frame(error: DramaverseError, request_id: object) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "status": error.status, "message": error.message}
    if request_id is not None:
        frame["id"] = request_id
    return frame


def verb_of(message: Message) -> str:
    """What a message was, for the log (a client's type is cut short: it may be anything)."""
    match message:
        case Command(kind=kind):
            text = kind if isinstance(kind, str) else repr(kind)
            return text[:MAX_VERB_LENGTH]
        case Join():
            return "room.join"
        case Disconnect():
            return "disconnect"
        case Call():
            return "call"
    return "?"


def check_request_id(request_id: object) -> None:
    if request_id is not None and not is_request_id(request_id):
        raise BadRequest(f"id must be {REQUEST_ID_RULE}.")
