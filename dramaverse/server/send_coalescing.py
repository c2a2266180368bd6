"""One socket write per small HTTP/1.1 response instead of three.

Hypercorn writes a response as separate socket sends: the status line and headers, each body
chunk, and the end of the message (an empty write when the length is known). Each send is a
system call plus a Trio scheduling round trip, and on the library-write path, where the body is
``{"success":true}``, those sends cost more than the request's own work.

:func:`send_h11_event` and :func:`stream_send` (installed on ``H11Protocol`` by
:func:`dramaverse.server.fence.install`) hold back the head of a response and write it together
with the first bytes that follow it (the body, or the end of the message), and skip empty
writes. Nothing else changes: bytes go out in the same order, a streamed response
still sends each later chunk as it comes, and error responses Hypercorn writes by itself
(``_send_error_response``) are never held.
"""

from __future__ import annotations

from typing import Any

import h11
from hypercorn.events import RawData
from hypercorn.protocol.events import Response, StreamClosed
from hypercorn.protocol.h11 import H11Protocol

_ORIGINAL_STREAM_SEND = H11Protocol.stream_send
_HOLD = "_dramaverse_hold_next"
_HELD = "_dramaverse_held"


async def send_h11_event(self: H11Protocol, event: Any) -> None:
    try:
        data = self.connection.send(event)
    except h11.LocalProtocolError:
        if self.connection.their_state != h11.ERROR:
            raise
        return
    state = self.__dict__
    held = state.pop(_HELD, None)
    if held is not None and data is not None:
        data = held + data
    if state.pop(_HOLD, False):
        state[_HELD] = data
        return
    if data:
        await self.send(RawData(data=data))


async def stream_send(self: H11Protocol, event: Any) -> None:
    if isinstance(event, Response) and event.status_code >= 200:
        self.__dict__[_HOLD] = True
    await _ORIGINAL_STREAM_SEND(self, event)
    if isinstance(event, StreamClosed):
        held = self.__dict__.pop(_HELD, None)
        if held:  # never strand bytes, whatever the sequence of events was
            await self.send(RawData(data=held))
