"""The process's counters, gathered in one place for the operator (a metrics endpoint later).

Each counting component has ``counters() -> dict[str, int]``; :func:`collect` prefixes each name
with its component. The names are stable (a dashboard will depend on them); they only grow:

- ``room_snapshots.writes`` / ``.deletes`` / ``.failures``: room snapshots written, deleted, and
  writes or deletes that failed (``actors/room_snapshots.py``).
- ``room_cluster.takeovers``: rooms adopted from a process that lost them;
  ``room_cluster.malformed``: messages on this process's node topic that were not ours;
  ``room_cluster.dropped``: node-topic messages lost because the cluster's mailbox was full
  (``actors/room_cluster.py``).
- ``room_cluster.relay_published``: broker messages sent to other processes;
  ``room_cluster.relay_refused``: frames refused because the relay's backlog was full
  (``actors/room_sender.py``, :class:`~dramaverse.actors.room_sender.Sender`).
- ``broker.reconnects`` / ``.dropped`` / ``.received`` / ``.foreign``: Redis reconnections,
  publishes that never reached Redis, messages delivered here from other processes, messages
  without our envelope (``broker/redis.py``; absent with the in-process broker).

Not here: counters that live and die with one room or one member (a room port's ``dropped`` and
``malformed`` in ``room_relay.py``, a member's ``late_pongs`` in ``domain/clocksync.py``).

This module reads the application state and imports nothing of ``http`` (nothing does): the
state is described by :class:`Parts`, which ``http.state.AppState`` satisfies.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Counted(Protocol):
    def counters(self) -> dict[str, int]: ...


class Parts(Protocol):
    """What :func:`collect` reads (``AppState`` has these attributes)."""

    @property
    def broker(self) -> object: ...

    @property
    def room_snapshots(self) -> Counted | None: ...

    @property
    def room_cluster(self) -> Counted | None: ...


def collect(state: Parts) -> dict[str, int]:
    """Every counter of the process, as ``component.name`` -> value."""
    found: dict[str, int] = {}
    parts: dict[str, object] = {
        "room_snapshots": state.room_snapshots,
        "room_cluster": state.room_cluster,
        "broker": state.broker,
    }
    for component, part in parts.items():
        if isinstance(part, Counted):
            found.update({f"{component}.{name}": value for name, value in part.counters().items()})
    return found
