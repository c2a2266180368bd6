"""Every WebSocket close code the server sends, what it means, and whether a client reconnects.

One table, as data, for the native protocol, Engine.IO's WebSocket transport and the room relay
(centrifuge's ``disconnect.go`` is the model: one range means "reconnect", another "do not").
docs/protocol.md's close-code table is checked against it by a test.

- 1000-1015: RFC 6455's own codes;
- 4000-4099: the server's, **reconnect** (with backoff and ``resume``);
- 4100-4199: the server's, **do not reconnect** until the cause is fixed (log in again, fix the
  client).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum

__all__ = ["TABLE", "CloseCode", "Reconnect", "reconnect_for"]


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001  # shutdown or restart
    PROTOCOL_ERROR = 1002
    ABNORMAL = 1006  # never sent: what a connection that dropped without a close reads as
    INVALID_DATA = 1007
    TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    HEARTBEAT_TIMEOUT = 4000
    SLOW_CONSUMER = 4001
    ROOM_FAILED = 4002
    AUTH_FAILED = 4100
    TOKEN_EXPIRED = 4101
    HELLO_TIMEOUT = 4102
    ABUSE = 4103


class Reconnect(Enum):
    YES = "yes"  # with backoff, and ``resume`` on the native protocol
    NO = "no"  # not until the cause is fixed
    CLIENT = "client's choice"


@dataclass(frozen=True, slots=True)
class Meaning:
    text: str
    reconnect: Reconnect


TABLE: dict[CloseCode, Meaning] = {
    CloseCode.NORMAL: Meaning("normal closure", Reconnect.CLIENT),
    CloseCode.GOING_AWAY: Meaning("server shutting down or restarting", Reconnect.YES),
    CloseCode.PROTOCOL_ERROR: Meaning("protocol error", Reconnect.NO),
    CloseCode.INVALID_DATA: Meaning("a text frame that is not UTF-8", Reconnect.NO),
    CloseCode.TOO_BIG: Meaning("a message over the size limit", Reconnect.YES),
    CloseCode.INTERNAL_ERROR: Meaning("internal server error", Reconnect.YES),
    CloseCode.HEARTBEAT_TIMEOUT: Meaning("no frame from the client in time", Reconnect.YES),
    CloseCode.SLOW_CONSUMER: Meaning("slow consumer: the outbox filled up", Reconnect.YES),
    CloseCode.ROOM_FAILED: Meaning("a room failed too often and stopped", Reconnect.YES),
    CloseCode.AUTH_FAILED: Meaning("authentication failed", Reconnect.NO),
    CloseCode.TOKEN_EXPIRED: Meaning("token expired", Reconnect.NO),
    CloseCode.HELLO_TIMEOUT: Meaning("no hello in time", Reconnect.NO),
    CloseCode.ABUSE: Meaning("too many invalid frames", Reconnect.NO),
}


def reconnect_for(code: int) -> Reconnect:
    """Whether a client closed with ``code`` should reconnect (unknown codes: by range)."""
    try:
        return TABLE[CloseCode(code)].reconnect
    except (ValueError, KeyError):
        if 4000 <= code < 4100:
            return Reconnect.YES
        if 4100 <= code < 4200:
            return Reconnect.NO
        return Reconnect.CLIENT
