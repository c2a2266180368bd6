"""NTP-style clock synchronisation between the server and one room member. Pure: no I/O.

The server starts every exchange. It sends ``clock.ping`` stamped ``t0`` (server clock) and
remembers ``t0`` under the ping's ``seq``; the member answers ``clock.pong`` with ``t1`` (its own
clock when the ping arrived) and ``t2`` (its clock when it answered); the server stamps ``t3`` when
the pong arrives. Then, exactly as NTP does::

    delay   δ = (t3 - t0) - (t2 - t1)          the round trip without the member's own think time
    offset  θ = ((t1 - t0) + (t2 - t3)) / 2    member clock - server clock

θ is exact when the two one-way delays are equal and wrong by at most δ/2 otherwise, so the
sample with the lowest delay is the most trustworthy (NTP's clock filter): :attr:`ClockSync.best`
is the lowest-delay sample of a small sliding window. Because the server runs the exchange it
learns both numbers, tells the member its offset (``clock.sync``) and keeps the member's round
trip for scheduling starts (:attr:`ClockSync.rtt`, the window's median: a typical round trip, not
the luckiest one).

Bookkeeping: a member gets a burst of :data:`SAMPLES_PER_BURST` pings when it connects, each sent
as soon as the previous pong arrives (so pings never queue behind each other), then one ping every
:data:`RESYNC_INTERVAL` seconds to follow clock drift and route changes. An unanswered ping is
retried after :data:`PING_TIMEOUT`. The server never trusts an echoed ``t0``: it uses its own.

Units: this module works in seconds; the wire carries milliseconds (``t0``, ``t1``, ``t2``,
``offset``, ``delay``, ``rtt``), the unit of ``Date.now()`` and ``performance.now()``.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dramaverse.domain.numbers import number_in
from dramaverse.errors import BadRequest

SAMPLES_PER_BURST = 5
WINDOW = 8
PING_TIMEOUT = 2.0
RESYNC_INTERVAL = 60.0  # clocks drift by < 100 ppm (6 ms a minute); reports catch the rest
MAX_PENDING = 4
MAX_CLOCK_MS = 1e15  # any clock reading beyond this (31,000 years in ms) is garbage
MAX_THINK_TIME = 5.0  # seconds a member may take between receiving a ping and answering it
SYNC_OFFSET_STEP = 0.001  # seconds: a smaller change of the offset is not worth a clock.sync
SYNC_RTT_CHANGE = 0.2  # nor a change of the round trip under 20 % (and under SYNC_RTT_FLOOR)
SYNC_RTT_FLOOR = 0.005


def to_ms(seconds: float) -> float:
    """Seconds -> milliseconds for the wire, rounded to a microsecond."""
    return round(seconds * 1000.0, 3)


@dataclass(frozen=True, slots=True)
class ClockSample:
    offset: float  # seconds, member clock - server clock
    delay: float  # seconds, round trip
    at: float  # server time the sample was taken


@dataclass(slots=True)
class ClockSync:
    """One member's clock-sync state: pings in flight and a window of samples."""

    samples: deque[ClockSample] = field(default_factory=lambda: deque(maxlen=WINDOW))
    pending: dict[int, float] = field(default_factory=dict)  # ping seq -> t0 (server time)
    next_seq: int = 1
    burst_left: int = SAMPLES_PER_BURST
    next_ping_at: float | None = None  # server time; None = no ping planned (not connected)
    told: tuple[float, float] | None = None  # (offset, rtt) of the last clock.sync sent
    late_pongs: int = 0  # answers to pings no longer waited for (dropped)

    def start(self, now: float) -> None:
        """The member (re)connected: forget pings in flight and plan a fresh burst now."""
        self.told = None  # a new connection may be a new client: it gets a clock.sync again
        self.pending.clear()
        self.burst_left = SAMPLES_PER_BURST
        self.next_ping_at = now

    def stop(self) -> None:
        """The member disconnected: nothing to ping."""
        self.pending.clear()
        self.next_ping_at = None

    def due(self, now: float) -> bool:
        return self.next_ping_at is not None and self.next_ping_at <= now

    def ping(self, now: float) -> dict[str, Any]:
        """Start one exchange; returns the ``clock.ping`` message (without the room field)."""
        seq = self.next_seq
        self.next_seq += 1
        self.pending[seq] = now
        while len(self.pending) > MAX_PENDING:
            del self.pending[min(self.pending)]
        self.next_ping_at = now + PING_TIMEOUT
        return {"type": "clock.ping", "seq": seq, "t0": to_ms(now)}

    def check_pong(self, data: Mapping[str, Any]) -> tuple[int, float, float] | None:
        """Validate a ``clock.pong`` body; returns ``(seq, t1, t2)`` with times in seconds, or
        None for a late answer to a ping this connection was sent but no longer waits for
        (retried or pushed out of the window): a slow network or a busy server, not the
        member's fault, so it is dropped without an error."""
        seq = data.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise BadRequest("clock.pong.seq must be the integer of a clock.ping.")
        if seq not in self.pending:
            if 0 < seq < self.next_seq:
                self.late_pongs += 1
                return None
            raise BadRequest(f"clock.pong answers ping {seq}, which was never sent.")
        times = []
        for name in ("t1", "t2"):
            value = number_in(data.get(name), -MAX_CLOCK_MS, MAX_CLOCK_MS)
            if value is None:
                raise BadRequest(f"clock.pong.{name} must be a finite number of milliseconds.")
            times.append(value / 1000.0)
        t1, t2 = times
        if not 0.0 <= t2 - t1 <= MAX_THINK_TIME:
            raise BadRequest(
                f"clock.pong.t2 must not be before t1, nor more than {MAX_THINK_TIME:g} s after it."
            )
        return seq, t1, t2

    def pong(self, seq: int, t1: float, t2: float, now: float) -> ClockSample:
        """Complete an exchange checked by :meth:`check_pong`; ``now`` is t3."""
        t0 = self.pending.pop(seq)
        delay = max(0.0, (now - t0) - (t2 - t1))
        sample = ClockSample(offset=((t1 - t0) + (t2 - now)) / 2.0, delay=delay, at=now)
        self.samples.append(sample)
        if self.burst_left > 1:
            self.burst_left -= 1
            self.next_ping_at = now  # next burst ping right away
        else:
            self.burst_left = 0
            self.next_ping_at = now + RESYNC_INTERVAL
        return sample

    @property
    def best(self) -> ClockSample | None:
        """The lowest-delay sample of the window: the best offset estimate."""
        return min(self.samples, key=lambda s: s.delay, default=None)

    @property
    def rtt(self) -> float | None:
        """A typical round trip (median of the window), in seconds."""
        if not self.samples:
            return None
        return statistics.median(s.delay for s in self.samples)

    def sync_message(self) -> dict[str, Any] | None:
        """``clock.sync``: what the member should add to server times to get its own clock.

        None when there is no sample yet, or when nothing the member uses changed since the last
        one: the offset by less than :data:`SYNC_OFFSET_STEP` and the round trip by less than
        :data:`SYNC_RTT_CHANGE` (or :data:`SYNC_RTT_FLOOR`). Most samples do not improve on the
        best one, so most pings need no clock.sync."""
        best = self.best
        rtt = self.rtt
        if best is None or rtt is None:
            return None
        if self.told is not None:
            offset, told_rtt = self.told
            if abs(best.offset - offset) < SYNC_OFFSET_STEP and abs(rtt - told_rtt) < max(
                SYNC_RTT_FLOOR, SYNC_RTT_CHANGE * told_rtt
            ):
                return None
        self.told = (best.offset, rtt)
        return {
            "type": "clock.sync",
            "offset": to_ms(best.offset),
            "delay": to_ms(best.delay),
            "rtt": to_ms(rtt),
            "samples": len(self.samples),
        }
