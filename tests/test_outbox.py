"""Bounded outboxes: who marks a receiver that cannot take a frame (``actors/outbox.py``)."""

from __future__ import annotations

import trio

from dramaverse.actors.outbox import offer, push_frame
from dramaverse.actors.session import Device
from dramaverse.domain.close_codes import CloseCode


def _device(size: int = 1) -> tuple[Device, list[int]]:
    outbox, _inbox = trio.open_memory_channel[str](size)
    evicted: list[int] = []
    return Device(outbox, lambda code, _reason: evicted.append(code)), evicted


async def test_push_frame_drops_a_full_receiver_once_and_offer_marks_nothing() -> None:
    actor_side, evicted = _device()
    assert push_frame(actor_side, "a")
    assert not push_frame(actor_side, "b")  # full: evicted as slow, dropped by the actor
    assert (actor_side.dropped, actor_side.closed) == (True, False)
    assert not push_frame(actor_side, "c")  # gone: not evicted twice
    assert evicted == [CloseCode.SLOW_CONSUMER]

    connection_side, evicted = _device()
    assert offer(connection_side, "a")
    assert not offer(connection_side, "b")  # evicted; the caller records it in its own flag
    assert (connection_side.dropped, connection_side.closed) == (False, False)
    assert evicted == [CloseCode.SLOW_CONSUMER]


async def test_a_closed_receiver_takes_nothing_and_is_not_evicted() -> None:
    device, evicted = _device(size=4)
    device.closed = True  # its connection ended
    assert not offer(device, "a")
    assert not push_frame(device, "a")
    assert device.outbox.statistics().current_buffer_used == 0
    assert evicted == []
