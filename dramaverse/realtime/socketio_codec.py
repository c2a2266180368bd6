"""Socket.IO v5 packets, sans I/O: decode what clients send, encode what the server sends.

A packet is ``<type>[<attachments>-][<namespace>,][<ack id>][<JSON payload>]`` carried in an
Engine.IO message (so on the wire it follows the ``4``: ``42["event",{...}]``). Decoding follows
the reference parser's rules, and is stricter where the reference would accept nonsense: the
namespace is at most 256 printable characters, an ack id at most 15 digits, JSON must be plain
JSON (no ``NaN``), and the payload must fit the packet type (an object or nothing for CONNECT,
an array starting with a non-reserved event name for EVENT, an array for ACK, nothing for
DISCONNECT). Anything else raises :class:`~dramaverse.realtime.engineio.PacketError`, which closes
the Engine.IO session, as the reference server does on a parse error.

The encoders return complete Engine.IO message packets (with the leading ``4``), ready to queue.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from dramaverse.domain.events import UserEvent
from dramaverse.realtime.engineio import MESSAGE, PacketError

CONNECT, DISCONNECT, EVENT, ACK, CONNECT_ERROR, BINARY_EVENT, BINARY_ACK = range(7)
MAIN_NAMESPACE = "/"
MAX_NAMESPACE_LENGTH = 256
MAX_ACK_ID_DIGITS = 15
MAX_ATTACHMENTS = 64
RESERVED_EVENTS = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)
_DIGITS = frozenset("0123456789")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()
"""The payload of a packet that has none (``41``), as opposed to a JSON ``null``."""


@dataclass(frozen=True, slots=True)
class Packet:
    type: int
    namespace: str = MAIN_NAMESPACE
    data: Any = MISSING
    ack_id: int | None = None
    attachments: int = 0


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode(text: str) -> Packet:
    """Parse one Socket.IO packet; raise PacketError when it is malformed."""
    kind = text[:1]
    if kind not in ("0", "1", "2", "3", "4", "5", "6"):
        raise PacketError(f"unknown socket.io packet type {kind!r}")
    packet_type = int(kind)
    size = len(text)
    i = 1
    attachments = 0
    if packet_type in (BINARY_EVENT, BINARY_ACK):
        dash = text.find("-", 1, 8)
        digits = text[1:dash] if dash > 0 else ""
        if not digits or not _DIGITS.issuperset(digits) or int(digits) > MAX_ATTACHMENTS:
            raise PacketError("illegal attachment count")
        attachments = int(digits)
        i = dash + 1
    namespace = MAIN_NAMESPACE
    if i < size and text[i] == "/":
        comma = text.find(",", i)
        end = size if comma == -1 else comma
        namespace = text[i:end]
        if len(namespace) > MAX_NAMESPACE_LENGTH or not namespace.isprintable():
            raise PacketError("invalid namespace")
        i = end + 1
    start = i
    while i < size and text[i] in _DIGITS:
        i += 1
    ack_id = None
    if i > start:
        if i - start > MAX_ACK_ID_DIGITS:
            raise PacketError("ack id too long")
        ack_id = int(text[start:i])
    data: Any = MISSING
    if i < size:
        try:
            data = json.loads(text[i:], parse_constant=_reject_constant)
        except RecursionError:
            raise PacketError("invalid payload: nested too deeply") from None
        except ValueError:
            raise PacketError("invalid payload: not JSON") from None
    _check_payload(packet_type, data)
    return Packet(packet_type, namespace, data, ack_id, attachments)


def _check_payload(packet_type: int, data: Any) -> None:
    if packet_type == CONNECT:
        valid = data is MISSING or isinstance(data, dict)
    elif packet_type == DISCONNECT:
        valid = data is MISSING
    elif packet_type in (EVENT, BINARY_EVENT):
        valid = isinstance(data, list) and bool(data) and _is_event_name(data[0])
    elif packet_type in (ACK, BINARY_ACK):
        valid = isinstance(data, list)
    else:  # CONNECT_ERROR: only servers send it
        valid = False
    if not valid:
        raise PacketError(f"invalid payload for a packet of type {packet_type}")


def _is_event_name(name: object) -> bool:
    if isinstance(name, str):
        return name not in RESERVED_EVENTS
    return isinstance(name, int | float) and not isinstance(name, bool)


def _prefix(packet_type: int, namespace: str) -> str:
    if namespace == MAIN_NAMESPACE:
        return f"{MESSAGE}{packet_type}"
    return f"{MESSAGE}{packet_type}{namespace},"


def encode_connect(sid: str, pid: str | None) -> str:
    body: dict[str, str] = {"sid": sid}
    if pid is not None:
        body["pid"] = pid
    return _prefix(CONNECT, MAIN_NAMESPACE) + _dumps(body)


def encode_connect_error(message: str, namespace: str = MAIN_NAMESPACE) -> str:
    return _prefix(CONNECT_ERROR, namespace) + _dumps({"message": message})


def encode_disconnect(namespace: str = MAIN_NAMESPACE) -> str:
    return _prefix(DISCONNECT, namespace)


def encode_ack(ack_id: int, args: list[Any], namespace: str = MAIN_NAMESPACE) -> str:
    return f"{_prefix(ACK, namespace)}{ack_id}{_dumps(args)}"


def encode_event(event: UserEvent) -> str:
    """``42["<name>",<payload>,"<seq>"]``: the seq as the last string argument is the offset a
    recovering socket.io-client sends back (it keeps the last string argument of each event)."""
    return f'{MESSAGE}2[{_dumps(event.name)},{_dumps(event.payload)},"{event.seq}"]'
