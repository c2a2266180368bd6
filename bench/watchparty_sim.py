"""Watch-party simulator: N rooms x M simulated members against the real room actors.

    python -m bench.watchparty_sim [--rooms 50] [--members 4] [--clock mock|real] [--seed 1]
    python -m bench.watchparty_sim --rooms 2000 --clock real      # the issue's target scale

Everything runs in one process: a real
:class:`~dramaverse.actors.room_registry.RoomRegistry` with its room actors (default
``Settings()``), and one simulated client per member. Messages travel by
in-process message passing with injected network behaviour: every member has its own one-way
delay (uniform 20-300 ms, ``--delay-min/--delay-max``, the same base both ways), a per-message
jitter (uniform 0-50 ms, ``--jitter``), in-order delivery per direction (a WebSocket is one TCP
stream), and its own clock offset (uniform +-5 s, ``--clock-offset``). Up-frames are JSON-encoded
by the client and decoded before they reach the actor's inbox (``Command``), and the actor renders
its frames to JSON, so the protocol's serialisation cost is in the CPU figures. The client object
itself is its peer's outbox (``send_nowait`` puts the frame on the simulated wire): there is no
writer task per member, whose cost belongs to the socket layer. One scheduler task runs every
in-flight message and client timer from a heap, on a 1 ms grid (``--tick``).

A simulated client models a player and a well-behaved app: it answers ``clock.ping`` at once
and uses the offset of ``clock.sync`` (before that, the welcome's ``serverTime``); on ``waiting``
with ``startAt`` it seeks (paused) to the position and starts when its own clock says the start
time has come; on ``playing`` it joins in by seeking to the extrapolated position; it reports its
position every ``reportInterval`` and once 0.5 s after every (re)start, and obeys ``room.drift``
(rate nudges and seeks). The player is imperfect on purpose: its media clock runs off by up to
+-0.05 % (``--rate-error``), a seek takes 50-250 ms of which the client predicts 150 ms, and
loading new content takes 0.2-1.5 s.

Script per room (rooms start at random within the first ``--ramp`` seconds, default 10): members
join 0.1 s apart; at 5 s the host sets a movie and presses play (the room waits for everyone to
load, then starts at now + lead); at 17 s the host seeks; at 29 s one member stalls for 1.5 s (the
buffering barrier); in a quarter of the rooms one member stalls for 12 s at 39 s (past the 8 s
barrier deadline: it is left out and catches up alone); the run lasts ``ramp + 55`` seconds.

Time: ``--clock mock`` (default) runs on trio's ``MockClock`` with autojump, so simulated time
jumps whenever every task waits: results show the protocol's behaviour, independent of CPU speed.
``--clock real`` runs on the real clock: every figure then also includes CPU contention (all
clients share the process, and the core, with the rooms), and ``scheduler_lateness_ms`` says how
late the simulator ran its events (if it grows, the process is saturated).

GC: most garbage here dies young (JSON dicts, messages) while rooms and clients live long; with
Python's default generation-0 threshold (700) the collector rescans the long-lived objects
hundreds of times a second (7 s of 37 s CPU at 2,000 rooms, pauses up to 280 ms). The simulator
raises the threshold to 50,000 (``--gc-threshold``, 0 keeps Python's) and ``gc.freeze()``-s
once every room exists (``--no-gc-freeze``); a server process holding many rooms wants the same.
With thousands of sockets, the tasks waiting on them leave so many live objects in the young
generation that a collection stops the process for 100 ms and more; so, like the server
(``dramaverse/collector.py``), the simulator collects on a clock (``--no-gc-paced`` to leave
it to Python's allocation counts): its own pauses would otherwise delay every simulated member
at once, which 8,000 separate devices never do.

Measured (one JSON document on stdout, also ``--json-out``):

- ``error_ms``: |member position - the room's true position| (the true position is the room
  actor's own anchor at the true time), sampled every ``--sample-interval`` for every member
  that is playing, not stalled, and past a 2 s settle window after its own last start, seek or
  catch-up, while the room is playing and at least 2 s past its last (re)start: p50/p90/p99/max;
- ``seek_convergence_s``: from the host sending a seek until every member is within 100 ms of
  the true position (checked every 50 ms); ``seek_breakdown_s`` splits it into ``scheduled``
  (from the host sending the seek to the start the server scheduled: the seek's way up plus the
  lead) and ``after_start`` (from that start until everyone is within 100 ms);
- ``start_convergence_s``: the same from the host pressing play on new content (includes the
  members' 0.2-1.5 s of loading);
- rooms held, barriers entered, members left out, corrections, frames each way, error frames,
  CPU time, RSS (current and peak).

Server mode (``--server``): the same clients and script against a real ``python -m dramaverse
serve`` on loopback (a temporary data directory, SQLite, ``bench.wsclient.BenchServer``): every
member is a registered user with its own native WebSocket (``/api/ws``, the lean bench client),
the host creates its room with ``room.create`` and the others ``room.join`` it, and the injected
delays and jitter are added on the client side, on top of loopback. The true position comes from
the room's own ``room.state`` frames as the host's socket receives them (before the injected
delay), with server time = this process's wall clock (same machine). Runs on the real clock;
the figures add the server's CPU time (also per 5 s: ``server.cpu_timeline``) and RSS. Bounded
to 8,000 members (one socket each).

    python -m bench.watchparty_sim --server --rooms 50 --members 4

Exit status: 0 when the targets hold (p99 error < 100 ms, every seek converged within 2 s, no
error frames, no socket closed by the server: ``closed_by_server`` counts them by code and
reason), 2 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import heapq
import json
import math
import random
import resource
import sys
import time
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

import trio
import trio.testing

from bench.wsclient import (
    HOST,
    PONG,
    BenchServer,
    WSClosed,
    WSConn,
    open_session,
    raise_nofile_limit,
    register_users,
)
from dramaverse import collector
from dramaverse.actors.room import RoomActor, ServerClock
from dramaverse.actors.room_messages import Command, RoomPeer
from dramaverse.actors.room_registry import RoomRegistry, open_rooms
from dramaverse.config import Settings

SCRIPT = 55.0  # seconds of each room's script
SETTLE = 2.0  # seconds excluded after a (re)start, seek or catch-up
CONVERGED = 0.1  # seconds of error that count as converged
SLOW_SEEK = 2.0  # seeks slower than the target are reported in detail
CONVERGENCE_INTERVAL = 0.05  # seconds between convergence checks of rooms after a seek
PREDICTED_SEEK = 0.15  # what a client assumes a seek takes
EARLY_REPORT = 0.5  # seconds after a (re)start when a client reports once out of turn
HIST_RESOLUTION = 10_000  # bins per second: 0.1 ms
HIST_LIMIT = 30.0  # seconds; larger errors land in the last bin (and in max)
MAX_SERVER_MEMBERS = 8000  # --server: one socket per member
CPU_TIMELINE_S = 5.0  # --server: the server's CPU is sampled this often
SERVER_OUTBOX = 256  # --server: frames a member may have queued for its socket


class Histogram:
    """Fixed 0.1 ms bins: millions of samples in constant memory (RSS is measured too)."""

    def __init__(self) -> None:
        self.bins = array("q", bytes(8 * (int(HIST_LIMIT * HIST_RESOLUTION) + 1)))
        self.count = 0
        self.max = 0.0

    def add(self, value: float) -> None:
        self.bins[min(int(value * HIST_RESOLUTION), len(self.bins) - 1)] += 1
        self.count += 1
        self.max = max(self.max, value)

    def summary_ms(self) -> dict[str, Any]:
        out: dict[str, Any] = {"samples": self.count}
        if not self.count:
            return out
        wanted = [("p50", 0.50), ("p90", 0.90), ("p99", 0.99)]
        seen = 0
        index = 0
        for i, n in enumerate(self.bins):
            seen += n
            while index < len(wanted) and seen >= wanted[index][1] * self.count:
                upper = min((i + 1) / HIST_RESOLUTION, self.max)  # the bin's upper edge
                out[wanted[index][0]] = round(upper * 1000, 1)
                index += 1
            if index == len(wanted):
                break
        out["max"] = round(self.max * 1000, 1)
        return out


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)], 3)

    return {
        "count": len(ordered),
        "p50": pick(0.5),
        "p90": pick(0.9),
        "p99": pick(0.99),
        "max": round(ordered[-1], 3),
    }


class Scheduler:
    """One task runs every timed event (message arrivals, client timers) from a heap.

    Event times are rounded up to a ``tick`` (1 ms): events due in the same millisecond run in
    one wake-up, which costs the simulated network at most 1 ms of extra delay.
    """

    def __init__(self, tick: float) -> None:
        self.tick = tick
        self.heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self.seq = 0
        self.scope: trio.CancelScope | None = None
        self.lateness = Histogram()

    def at(self, when: float, fn: Callable[..., None], *args: Any) -> None:
        when = math.ceil(when / self.tick) * self.tick
        heapq.heappush(self.heap, (when, self.seq, fn, args))
        self.seq += 1
        if self.scope is not None and when < self.scope.deadline:
            self.scope.deadline = when

    async def run(self) -> None:
        while True:
            now = trio.current_time()
            ran = 0
            while self.heap and self.heap[0][0] <= now:
                when, seq, fn, args = heapq.heappop(self.heap)
                if seq % 16 == 0:
                    self.lateness.add(now - when)
                fn(*args)
                ran += 1
                if ran % 256 == 0:  # let the actors run between batches
                    await trio.lowlevel.checkpoint()
                    now = trio.current_time()
            deadline = self.heap[0][0] if self.heap else math.inf
            with trio.CancelScope(deadline=deadline) as self.scope:
                await trio.sleep_forever()
            self.scope = None


@dataclass
class Player:
    """An imperfect media player: a media clock off by ``rate_error``; seeks take time."""

    rate_error: float
    position0: float = 0.0
    since: float = 0.0  # true time from which position0 advances (after a seek completes)
    playing: bool = False
    rate: float = 1.0

    def position(self, t: float) -> float:
        if not self.playing or t <= self.since:
            return self.position0
        return self.position0 + (t - self.since) * self.rate * (1 + self.rate_error)

    def pause(self, t: float) -> None:
        self.position0 = self.position(t)
        self.since = max(self.since, t)
        self.playing = False

    def set_rate(self, t: float, rate: float) -> None:
        if self.playing and t > self.since:
            self.position0 = self.position(t)
            self.since = t
        self.rate = rate

    def seek(self, t: float, target: float, latency: float, *, play: bool) -> None:
        """Jump to ``target``; playback (if ``play``) resumes from it after ``latency``."""
        self.position0 = target
        self.since = t + latency
        self.playing = play

    def play(self, t: float) -> None:
        if not self.playing:
            self.since = max(self.since, t)
            self.playing = True


@dataclass(eq=False)
class Client:
    sim: Sim
    room: RoomSim
    member_id: str
    rng: random.Random
    base_delay: float
    clock_offset: float
    player: Player
    offset_est: float | None = None
    anchor: dict[str, Any] | None = None
    content_key: str | None = None
    loaded: bool = False
    stalled: bool = False
    connected: bool = False
    version: int = 0
    report_interval: float = 1.0  # the current pace (room.pace relaxes it)
    fast_interval: float = 1.0  # the welcome's reportInterval
    report_chain: int = 0  # periodic reports of an older chain are dropped
    busy_until: float = 0.0
    last_up: float = 0.0
    last_down: float = 0.0
    peer: RoomPeer | None = None
    socket: trio.MemorySendChannel[str] | None = None  # --server: frames for the socket

    # --- transport -----------------------------------------------------------------------

    def send_up(
        self, kind: str, data: dict[str, Any] | None = None, request_id: str | None = None
    ) -> None:
        message: dict[str, Any] = {"type": kind, "data": data}
        if self.room.code is not None and kind not in ("room.create", "room.join"):
            message["room"] = self.room.code  # --server: the native protocol's envelope
        if request_id is not None:
            message["id"] = request_id
        frame = json.dumps(message, separators=(",", ":"))
        now = trio.current_time()
        when = max(now + self.base_delay + self.rng.uniform(0, self.sim.args.jitter), self.last_up)
        self.last_up = when
        self.sim.frames_up += 1
        self.sim.scheduler.at(when, self.arrive_up, frame)

    def arrive_up(self, frame: str) -> None:
        if self.socket is not None:  # --server: onto the real socket
            try:
                self.socket.send_nowait(frame)
            except trio.WouldBlock:
                self.sim.inbox_full += 1
                self.sim.scheduler.at(trio.current_time() + 0.001, self.arrive_up, frame)
            return
        message = json.loads(frame)  # what the socket layer would do
        actor = self.room.actor
        assert actor is not None
        try:
            actor.inbox.send_nowait(Command(self.member_id, message["type"], message["data"]))
        except trio.WouldBlock:  # the actor's inbox is full: the socket reader would wait
            self.sim.inbox_full += 1
            self.sim.scheduler.at(trio.current_time() + 0.001, self.arrive_up, frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.sim.room_gone += 1  # only while shutting down at the end of the run

    def send_nowait(self, frame: str | dict[str, Any]) -> None:
        """The member's outbox as the room actor sees it (see ``Outbox``): the frame goes on the
        simulated wire at once, as a connection's writer task would send it."""
        now = trio.current_time()
        jitter = self.rng.uniform(0, self.sim.args.jitter)
        when = max(now + self.base_delay + jitter, self.last_down)
        self.last_down = when
        self.sim.frames_down += 1
        self.sim.scheduler.at(when, self.on_frame, frame)

    # --- clocks --------------------------------------------------------------------------

    def local_now(self) -> float:
        return trio.current_time() + self.clock_offset

    def server_time(self, true_time: float) -> float:
        """What this client believes the server clock reads at ``true_time``."""
        return true_time + self.clock_offset - (self.offset_est or 0.0)

    def true_time_of(self, server_time: float) -> float:
        return server_time + (self.offset_est or 0.0) - self.clock_offset

    def expected(self, true_time: float) -> float:
        """The room's position at ``true_time`` according to this client's anchor."""
        anchor = self.anchor
        assert anchor is not None
        at = anchor["at"] / 1000
        if anchor["phase"] != "playing":
            return float(anchor["position"])
        return float(anchor["position"]) + (self.server_time(true_time) - at) * anchor["rate"]

    # --- protocol ------------------------------------------------------------------------

    def on_frame(self, frame: str | dict[str, Any]) -> None:
        message = json.loads(frame) if isinstance(frame, str) else frame
        kind = message["type"]
        now = trio.current_time()
        if kind == "clock.ping":
            local_ms = self.local_now() * 1000
            self.send_up("clock.pong", {"seq": message["seq"], "t1": local_ms, "t2": local_ms})
        elif kind == "clock.sync":
            self.offset_est = message["offset"] / 1000
        elif kind == "room.welcome":
            self.connected = True
            self.room.code = message["room"]  # --server: its frames name the room from now on
            self.fast_interval = self.report_interval = message["reportInterval"] / 1000
            if self.offset_est is None:  # rough until clock.sync: off by the one-way delay
                self.offset_est = self.local_now() - message["serverTime"] / 1000
            self.apply(message["state"])
            self.report_chain += 1
            first = now + self.rng.uniform(0, self.report_interval)
            self.sim.scheduler.at(first, self.report, self.report_chain)
        elif kind == "room.state":
            self.fast_pace(now)
            self.apply(message)
        elif kind == "room.drift":
            self.fast_pace(now)
            self.on_drift(message, now)
        elif kind == "room.pace":
            self.report_interval = message["reportInterval"] / 1000
            self.sim.paces += 1
        elif kind == "error":
            self.sim.errors.append(message)
        elif kind == "ack" and message.get("id") == "create":  # --server: the room's code
            self.room.code = message["result"]["room"]
            self.room.created.set()

    def apply(self, state: dict[str, Any]) -> None:
        now = trio.current_time()
        self.version += 1
        self.anchor = state
        key = json.dumps(state["content"], sort_keys=True)
        if key != self.content_key:
            self.content_key = key
            self.loaded = False
            if state["content"] is not None:
                load = self.rng.uniform(0.2, 1.5)
                self.sim.scheduler.at(now + load, self.loaded_content, key)
        self.player.set_rate(now, state["rate"])  # a new state drops any nudge
        phase = state["phase"]
        if self.stalled:
            return
        if phase == "playing":
            if self.loaded:
                self.catch_up(now, force=not self.player.playing)
            return
        self.player.pause(now)
        if abs(self.player.position(now) - state["position"]) > 0.001:
            latency = self.rng.uniform(0.05, 0.25) if phase == "waiting" else 0.0
            self.player.seek(now, float(state["position"]), latency, play=False)
        if phase == "waiting" and state["startAt"] is not None:
            start = max(now, self.true_time_of(state["startAt"] / 1000))
            self.sim.scheduler.at(start, self.start, self.version)

    def loaded_content(self, key: str) -> None:
        if key != self.content_key:
            return
        self.loaded = True
        if not self.stalled:
            self.send_up("room.status", {"state": "ready"})
            if self.anchor is not None and self.anchor["phase"] == "playing":
                self.catch_up(trio.current_time(), force=True)

    def start(self, version: int) -> None:
        if version != self.version or self.stalled or not self.loaded:
            return
        now = trio.current_time()
        self.player.play(now)
        self.busy_until = max(now, self.player.since) + SETTLE
        self.report_soon()

    def report_soon(self) -> None:
        """One extra report shortly after (re)starting: a bad start is corrected at once."""
        self.sim.scheduler.at(self.player.since + EARLY_REPORT, self.report, None)

    def catch_up(self, now: float, *, force: bool) -> None:
        """Seek to where the room will be once the seek is done (as far as we can predict)."""
        if not force and abs(self.player.position(now) - self.expected(now)) <= 0.5:
            return
        target = self.expected(now + PREDICTED_SEEK)
        latency = self.rng.uniform(0.05, 0.25)
        self.player.seek(now, max(0.0, target), latency, play=True)
        self.busy_until = now + latency + SETTLE
        self.sim.catch_ups += 1
        self.report_soon()

    def on_drift(self, message: dict[str, Any], now: float) -> None:
        if self.stalled or not self.player.playing or self.anchor is None:
            return
        if message["action"] == "rate":
            self.player.set_rate(now, message["rate"])
            self.sim.nudges += 1
        else:
            self.sim.drift_seeks += 1
            self.catch_up(now, force=True)

    def fast_pace(self, now: float) -> None:
        """``room.state`` and ``room.drift`` put the member back on the welcome's pace."""
        if self.report_interval != self.fast_interval:
            self.report_interval = self.fast_interval
            self.report_chain += 1  # the relaxed chain's next report is too far away
            self.sim.scheduler.at(now + self.report_interval, self.report, self.report_chain)

    def report(self, chain: int | None = None) -> None:
        """A position report: periodic (``chain``) or once out of turn (``None``)."""
        now = trio.current_time()
        if chain is not None:
            if chain != self.report_chain:
                return  # superseded by a newer chain
            self.sim.scheduler.at(now + self.report_interval, self.report, chain)
        if (
            self.connected
            and self.loaded
            and not self.stalled
            and self.player.playing
            and now >= self.player.since
        ):
            position = self.player.position(now)
            self.send_up(
                "room.position", {"position": position, "at": self.server_time(now) * 1000}
            )

    def stall(self, seconds: float) -> None:
        now = trio.current_time()
        self.stalled = True
        self.player.pause(now)
        self.send_up("room.status", {"state": "buffering"})
        self.sim.scheduler.at(now + seconds, self.unstall)

    def unstall(self) -> None:
        self.stalled = False
        self.send_up("room.status", {"state": "ready"})
        if self.anchor is not None:
            self.apply(self.anchor)


@dataclass(eq=False)
class RoomSim:
    index: int
    base: float
    clients: list[Client] = field(default_factory=list)
    actor: RoomActor | None = None
    long_stall: bool = False
    pending_seek: float | None = None
    pending_start: float | None = None
    in_barrier: bool = False
    # --server: the room's code, and its latest state and member list as the host receives them
    code: str | None = None
    created: trio.Event = field(default_factory=trio.Event)
    state: dict[str, Any] | None = None
    members: list[dict[str, Any]] = field(default_factory=list)
    states: deque[tuple[float, str, float | None]] = field(default_factory=lambda: deque(maxlen=8))

    def in_barrier_now(self) -> bool:
        if self.actor is not None:
            return self.actor.room.barrier is not None
        state = self.state
        return state is not None and state["phase"] == "waiting" and state["startAt"] is None


class Sim:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.scheduler = Scheduler(args.tick)
        self.errors_hist = Histogram()
        self.seek_convergence: list[float] = []
        self.seek_scheduled: list[float] = []  # host sends the seek -> the start it scheduled
        self.seek_after_start: list[float] = []  # that start -> everyone within 100 ms
        self.slow_seeks: list[dict[str, Any]] = []
        self.start_convergence: list[float] = []
        self.not_converged = 0
        self.errors: list[dict[str, Any]] = []
        self.frames_up = self.frames_down = 0
        self.inbox_full = 0
        self.room_gone = 0
        self.nudges = self.drift_seeks = self.catch_ups = 0
        self.paces = 0  # room.pace frames received (reports relaxed)
        self.closed_by_server: dict[str, int] = {}  # --server: "code reason" -> sockets
        self.stopping = False
        self.barriers = 0
        self.rooms_peak = 0
        self.rooms: list[RoomSim] = []
        self.converging: set[RoomSim] = set()  # rooms with a seek or start to time
        self.wall_offset = 0.0  # --server: server time (wall clock) minus trio time

    def build(self) -> None:
        args = self.args
        for index in range(args.rooms):
            base = self.rng.uniform(0, args.ramp)
            room = RoomSim(index, base, long_stall=self.rng.random() < 0.25)
            for k in range(args.members):
                rng = random.Random(self.rng.random())
                room.clients.append(
                    Client(
                        self,
                        room,
                        f"m{k}",
                        rng,
                        base_delay=rng.uniform(args.delay_min, args.delay_max),
                        clock_offset=rng.uniform(-args.clock_offset, args.clock_offset),
                        player=Player(rate_error=rng.uniform(-args.rate_error, args.rate_error)),
                    )
                )
            self.rooms.append(room)

    async def room_script(
        self, registry: RoomRegistry | None, room: RoomSim, nursery: trio.Nursery, t0: float
    ) -> None:
        await trio.sleep_until(t0 + room.base)
        host = room.clients[0]
        if registry is None:  # --server: over the sockets
            host.send_up("room.create", {"name": "Host"}, "create")
            with trio.move_on_after(5.0):
                await room.created.wait()
            if room.code is None:
                return  # counted as not held
            for k, client in enumerate(room.clients[1:], start=1):
                await trio.sleep_until(t0 + room.base + 0.1 * k)
                client.send_up("room.join", {"code": room.code, "name": client.member_id.upper()})
        else:
            room.actor = actor = await registry.create(host.member_id, "Host")
            for k, client in enumerate(room.clients):
                await trio.sleep_until(t0 + room.base + 0.1 * k)
                # The client itself is the peer's outbox: no reader task and channel per member
                # (a connection's writer task is the socket layer's cost, not the room's).
                client.peer = RoomPeer(cast("trio.MemorySendChannel[str]", client))
                await trio.sleep(client.base_delay)  # the join request travels up
                await actor.join(client.member_id, client.member_id.upper(), client.peer)
        await trio.sleep_until(t0 + room.base + 5.0)
        movie = {"tmdbId": 27205 + room.index, "type": "movie", "duration": 8880}
        host.send_up("room.content", {"content": movie})
        host.send_up("room.play", {})
        room.pending_start = trio.current_time()
        self.converging.add(room)
        await trio.sleep_until(t0 + room.base + 17.0)
        host.send_up("room.seek", {"position": round(self.rng.uniform(300, 6000), 3)})
        room.pending_seek = trio.current_time()
        self.converging.add(room)
        await trio.sleep_until(t0 + room.base + 29.0)
        self.rng.choice(room.clients).stall(1.5)
        if room.long_stall:
            await trio.sleep_until(t0 + room.base + 39.0)
            self.rng.choice(room.clients).stall(12.0)

    def truth(self, room: RoomSim, now: float) -> tuple[float, float] | None:
        """(the room's true position now, the true time of its anchor) while it plays."""
        if room.actor is not None:
            playback = room.actor.room.playback
            if playback.phase.value != "playing":
                return None
            return playback.position_at(now), playback.at
        state = room.state
        if state is None or state["phase"] != "playing":
            return None
        at = state["at"] / 1000 - self.wall_offset
        return float(state["position"]) + (now - at) * state["rate"], at

    def room_errors(self, room: RoomSim, now: float, *, record: bool) -> list[float] | None:
        """Every in-sync member's |error| now, or None when the room is not playing."""
        anchor = self.truth(room, now)
        if anchor is None:
            return None
        truth, at = anchor
        settled = now >= at + SETTLE
        errors = []
        for client in room.clients:
            if not client.connected or client.stalled or not client.loaded:
                continue
            error = abs(client.player.position(now) - truth)
            errors.append(error)
            if record and settled and client.player.playing and now >= client.busy_until:
                self.errors_hist.add(error)
        return errors

    async def sampler(self, registry: RoomRegistry | None) -> None:
        """Steady-state errors, barriers and rooms held; yields between chunks of rooms so a
        sweep over thousands of rooms never holds up the simulated network."""
        while True:
            await trio.sleep(self.args.sample_interval)
            self.rooms_peak = max(self.rooms_peak, self.rooms_held(registry))
            for i, room in enumerate(self.rooms):
                if i % 100 == 99:
                    await trio.lowlevel.checkpoint()
                if room.actor is not None or room.state is not None:
                    in_barrier = room.in_barrier_now()
                    self.barriers += in_barrier and not room.in_barrier
                    room.in_barrier = in_barrier
                self.room_errors(room, trio.current_time(), record=True)

    async def convergence(self) -> None:
        """Every 50 ms, rooms after a seek or a start: when is everyone within 100 ms?"""
        while True:
            await trio.sleep(CONVERGENCE_INTERVAL)
            now = trio.current_time()
            for room in list(self.converging):
                if room.pending_seek is None and room.pending_start is None:
                    self.converging.discard(room)
                    continue
                for name, bucket in (
                    ("pending_seek", self.seek_convergence),
                    ("pending_start", self.start_convergence),
                ):
                    since = getattr(room, name)
                    if since is None:
                        continue
                    errors = self.room_errors(room, now, record=False)
                    anchor = self.truth(room, now)
                    started = anchor is not None and anchor[1] >= since
                    if errors and started and max(errors) < CONVERGED:
                        bucket.append(now - since)
                        setattr(room, name, None)
                        if name == "pending_seek" and anchor is not None:
                            self.seek_scheduled.append(anchor[1] - since)
                            self.seek_after_start.append(now - anchor[1])
                            if now - since > SLOW_SEEK:
                                self.slow_seeks.append(self.slow_seek(room, since, now))
                    elif now - since > 10.0:
                        self.not_converged += 1
                        setattr(room, name, None)

    def slow_seek(self, room: RoomSim, since: float, now: float) -> dict[str, Any]:
        """What a seek that took longer than the target went through (for the report)."""
        return {
            "room": room.index,
            "seconds": round(now - since, 3),
            "one_way_delays_ms": [round(c.base_delay * 1000) for c in room.clients],
            "states_after_seek": [
                {
                    "t": round(t - since, 3),
                    "phase": phase,
                    "at": None if at is None else round(at - since, 3),
                }
                for t, phase, at in room.states
                if t >= since
            ],
        }

    def rooms_held(self, registry: RoomRegistry | None) -> int:
        if registry is not None:
            return len(registry.rooms)
        return sum(1 for room in self.rooms if room.state is not None)  # --server: created

    def left_out(self) -> int:
        if self.args.server:
            return sum(1 for room in self.rooms for m in room.members if m["leftOut"])
        return sum(
            1
            for room in self.rooms
            if room.actor is not None
            for member in room.actor.room.members.values()
            if member.left_out
        )

    async def run(self) -> dict[str, Any]:
        args = self.args
        self.build()
        rss_start = rss_mb()
        cpu_start = cpu_seconds()
        wall_start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            # Server time = trio time, so the simulator's true time is the server's.
            clock = ServerClock(epoch=trio.current_time())
            settings = Settings()
            if args.report_interval is not None:
                settings = dataclasses.replace(settings, watch_report_seconds=args.report_interval)
            if args.report_relaxed is not None:
                settings = dataclasses.replace(
                    settings, watch_report_relaxed_seconds=args.report_relaxed
                )
            async with open_rooms(settings, clock=clock) as registry:
                rooms_held = await self.script(registry, nursery)
                rss_peak_now = rss_mb()
                nursery.cancel_scope.cancel()  # the clients first, then the rooms
                registry.close()
        cpu = cpu_seconds() - cpu_start
        wall = time.perf_counter() - wall_start
        return self.report(rooms_held, cpu, wall, {"start": rss_start, "end": rss_peak_now})

    async def run_server(self, server: BenchServer) -> dict[str, Any]:
        """The same script over real sockets against ``server`` (see the module docstring)."""
        args = self.args
        self.build()
        self.wall_offset = time.time() - trio.current_time()
        clients = [client for room in self.rooms for client in room.clients]
        names = [f"wp{room.index}m{k}" for room in self.rooms for k in range(args.members)]
        tokens = await register_users(HOST, server.port, names)
        pairs: list[tuple[WSConn, Client]] = []
        limit = trio.CapacityLimiter(32)

        async def connect(token: str, client: Client) -> None:
            async with limit:
                conn, _ = await open_session(HOST, server.port, token)
                pairs.append((conn, client))

        async with trio.open_nursery() as connecting:
            for token, client in zip(tokens, clients, strict=True):
                connecting.start_soon(connect, token, client)
        rss_start = rss_mb()
        cpu_start = cpu_seconds()
        server_cpu_start = server.cpu_s() or 0.0
        server_rss_start = server.rss_mb()
        wall_start = time.perf_counter()
        timeline: list[dict[str, float]] = []
        async with trio.open_nursery() as nursery:
            for conn, client in pairs:
                send, receive = trio.open_memory_channel[str](SERVER_OUTBOX)
                client.socket = send
                nursery.start_soon(self._socket_writer, conn, receive)
                nursery.start_soon(self._socket_reader, conn, client)
            nursery.start_soon(self._server_cpu_timeline, server, timeline)
            rooms_held = await self.script(None, nursery)
            rss_peak_now = rss_mb()
            server_rss = server.rss_mb()
            self.stopping = True
            nursery.cancel_scope.cancel()
        for conn, _ in pairs:
            with trio.move_on_after(1):
                await conn.aclose()
        cpu = cpu_seconds() - cpu_start
        wall = time.perf_counter() - wall_start
        result = self.report(rooms_held, cpu, wall, {"start": rss_start, "end": rss_peak_now})
        result["server"] = {
            "cpu_seconds": round((server.cpu_s() or 0.0) - server_cpu_start, 2),
            "cpu_per_sim_second": round(
                ((server.cpu_s() or 0.0) - server_cpu_start) / args.duration, 3
            ),
            "rss_mb": {"start": server_rss_start, "end": server_rss},
            "sockets": len(pairs),
            "cpu_timeline": timeline,
        }
        return result

    @staticmethod
    async def _server_cpu_timeline(server: BenchServer, out: list[dict[str, float]]) -> None:
        """The server's CPU, in cores, over each 5 s of the script (joins and bursts vs the
        steady state)."""
        t0 = time.perf_counter()
        last = server.cpu_s() or 0.0
        while True:
            await trio.sleep(CPU_TIMELINE_S)
            now = server.cpu_s() or 0.0
            elapsed = time.perf_counter() - t0
            out.append({"t": round(elapsed), "cores": round((now - last) / CPU_TIMELINE_S, 3)})
            last = now

    async def _socket_writer(self, conn: WSConn, receive: trio.MemoryReceiveChannel[str]) -> None:
        """The only task that sends on ``conn`` (WSConn has no locking)."""
        with contextlib.suppress(WSClosed):
            async for frame in receive:
                await conn.send_text(frame)

    async def _socket_reader(self, conn: WSConn, client: Client) -> None:
        room = client.room
        is_host = client is room.clients[0]
        assert client.socket is not None
        try:
            await self._read_socket(conn, client, room, is_host)
        except WSClosed as closed:
            if not self.stopping:  # the server ended it during the run: count why
                key = f"{closed.code} {closed.reason}".strip()
                self.closed_by_server[key] = self.closed_by_server.get(key, 0) + 1

    async def _read_socket(
        self, conn: WSConn, client: Client, room: RoomSim, is_host: bool
    ) -> None:
        assert client.socket is not None
        while True:
            frame = json.loads(await conn.receive())
            kind = frame["type"]
            if kind == "ping":  # the heartbeat: answered at once, through the writer
                client.socket.send_nowait(PONG)
                continue
            if is_host:  # the truth: the room's broadcasts as they leave the server
                if kind == "room.state":
                    room.state = frame
                    at = frame.get("at")
                    when = at / 1000 - self.wall_offset if isinstance(at, int | float) else None
                    room.states.append((trio.current_time(), str(frame.get("phase")), when))
                elif kind == "room.welcome":
                    room.state = frame["state"]
                    room.members = frame["members"]
                elif kind == "room.members":
                    room.members = frame["members"]
            client.send_nowait(frame)

    async def script(self, registry: RoomRegistry | None, nursery: trio.Nursery) -> int:
        """Run every room's script and the samplers; return the rooms held at the end."""
        args = self.args
        nursery.start_soon(self.scheduler.run)
        nursery.start_soon(self.sampler, registry)
        nursery.start_soon(self.convergence)
        if args.gc_paced:
            nursery.start_soon(partial(collector.pace))
        t0 = trio.current_time()
        async with trio.open_nursery() as scripts:
            for room in self.rooms:
                scripts.start_soon(self.room_script, registry, room, nursery, t0)
            if args.gc_freeze:
                await trio.sleep_until(t0 + args.ramp + 0.5)
                gc.freeze()  # rooms and clients are long-lived: stop rescanning them
        await trio.sleep_until(t0 + args.ramp + SCRIPT)
        return self.rooms_held(registry)

    def report(
        self, rooms_held: int, cpu: float, wall: float, rss: dict[str, float]
    ) -> dict[str, Any]:
        args = self.args
        error = self.errors_hist.summary_ms()
        seek = summary(self.seek_convergence)
        ok = (
            error.get("p99", math.inf) < 100
            and seek.get("count") == args.rooms
            and seek.get("max", math.inf) <= 2.0
            and not self.errors
            and not self.closed_by_server
        )
        return {
            "ok": ok,
            "mode": "server" if args.server else "in-process",
            "clock": args.clock,
            "rooms": args.rooms,
            "members_per_room": args.members,
            "members": args.rooms * args.members,
            "rooms_held": rooms_held,
            "rooms_held_peak": self.rooms_peak,
            "sim_seconds": args.duration,
            "error_ms": error,
            "seek_convergence_s": seek,
            "seek_breakdown_s": {
                "scheduled": summary(self.seek_scheduled),
                "after_start": summary(self.seek_after_start),
                "slowest": sorted(self.slow_seeks, key=lambda s: -s["seconds"])[:10],
            },
            "start_convergence_s": summary(self.start_convergence),
            "not_converged_within_10s": self.not_converged,
            "barriers_entered": self.barriers,
            "left_out": self.left_out(),
            "corrections": {
                "rate_nudges": self.nudges,
                "drift_seeks": self.drift_seeks,
                "client_catch_ups": self.catch_ups,
            },
            "reports_relaxed": self.paces,
            "closed_by_server": self.closed_by_server,
            "frames": {
                "up": self.frames_up,
                "down": self.frames_down,
                "per_sim_second": round((self.frames_up + self.frames_down) / args.duration),
            },
            "inbox_full_retries": self.inbox_full,
            "frames_to_closed_rooms": self.room_gone,
            "error_frames": len(self.errors),
            "error_examples": self.errors[:3],
            "cpu_seconds": round(cpu, 2),
            "wall_seconds": round(wall, 2),
            "cpu_per_sim_second": round(cpu / args.duration, 3),
            "rss_mb": {**rss, "peak": max_rss_mb()},
            "rss_kb_per_member": round(
                (rss["end"] - rss["start"]) * 1024 / max(1, args.rooms * args.members), 1
            ),
            "scheduler_lateness_ms": self.scheduler.lateness.summary_ms(),
            "settings": {
                "delay_ms": [args.delay_min * 1000, args.delay_max * 1000],
                "jitter_ms": args.jitter * 1000,
                "clock_offset_s": args.clock_offset,
                "rate_error": args.rate_error,
                "sample_interval_s": args.sample_interval,
                "tick_s": args.tick,
                "gc_threshold": list(gc.get_threshold()),
                "gc_freeze": args.gc_freeze,
                "gc_paced": args.gc_paced,
                "report_interval_s": args.report_interval,
                "seed": args.seed,
            },
        }


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return round(pages * resource.getpagesize() / 2**20, 1)


def max_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=50)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--clock", choices=("mock", "real"), default="mock")
    parser.add_argument(
        "--ramp", type=float, default=10.0, help="rooms start at random within this many seconds"
    )
    parser.add_argument("--delay-min", type=float, default=0.020, help="one-way, seconds")
    parser.add_argument("--delay-max", type=float, default=0.300, help="one-way, seconds")
    parser.add_argument("--jitter", type=float, default=0.050, help="seconds, per message")
    parser.add_argument("--clock-offset", type=float, default=5.0, help="+- seconds")
    parser.add_argument("--rate-error", type=float, default=0.0005, help="media clock error")
    parser.add_argument("--sample-interval", type=float, default=0.2, help="seconds")
    parser.add_argument(
        "--report-interval", type=float, help="WATCH_REPORT_SECONDS (default: the server's)"
    )
    parser.add_argument(
        "--report-relaxed",
        type=float,
        help="WATCH_REPORT_RELAXED_SECONDS (default: the server's; 0: never relax)",
    )
    parser.add_argument(
        "--gc-threshold",
        type=int,
        default=50_000,
        help="gc generation-0 threshold (Python's default is 700; 0 keeps the default)",
    )
    parser.add_argument(
        "--no-gc-freeze",
        dest="gc_freeze",
        action="store_false",
        help="do not gc.freeze() the long-lived objects once every room exists",
    )
    parser.add_argument(
        "--no-gc-paced",
        dest="gc_paced",
        action="store_false",
        help="collect when Python's allocation counts say so, not on a clock (collector.py)",
    )
    parser.add_argument("--tick", type=float, default=0.001, help="event time grid, seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--server",
        action="store_true",
        help="drive a real server on loopback over the native WebSocket (real clock)",
    )
    parser.add_argument("--json-out", help="also write the JSON document here")
    args = parser.parse_args(argv)
    if args.rooms < 1 or args.members < 1 or args.ramp < 0:
        parser.error("need at least 1 room, 1 member and a ramp of 0 s or more")
    if args.server:
        if args.rooms * args.members > MAX_SERVER_MEMBERS:
            parser.error(f"--server drives at most {MAX_SERVER_MEMBERS} members (one socket each)")
        args.clock = "real"
    args.duration = args.ramp + SCRIPT
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.gc_threshold:
        # Most garbage here dies young (JSON dicts, messages); with the default threshold the
        # collector rescans the long-lived rooms and clients hundreds of times a second.
        gc.set_threshold(args.gc_threshold, *((1 << 30, 1 << 30) if args.gc_paced else (20, 20)))
    sim = Sim(args)
    clock = trio.testing.MockClock(autojump_threshold=0) if args.clock == "mock" else None
    where = "against a real server" if args.server else f"on the {args.clock} clock"
    print(f"simulating {args.rooms} rooms x {args.members} members {where}...", file=sys.stderr)
    if args.server:
        env = {}
        if args.report_interval is not None:
            env["WATCH_REPORT_SECONDS"] = str(args.report_interval)
        if args.report_relaxed is not None:
            env["WATCH_REPORT_RELAXED_SECONDS"] = str(args.report_relaxed)
        log = partial(print, file=sys.stderr)
        raise_nofile_limit()  # one socket per member here and one in the server (it inherits)
        with BenchServer("watchparty", env_extra=env, log=log) as server:
            result = trio.run(sim.run_server, server)
    else:
        result = trio.run(sim.run, clock=clock)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return 0 if result["ok"] else 2


if __name__ == "__main__":
    sys.exit(main())
