"""Remote routes, in the room cluster's task: what owners send this process's relayed members,
the joins and heartbeats this process sends owners.

A message on this process's node topic (``node:<id>``, ``room_relay.py`` describes the wire)
reaches the cluster's mailbox as ``NodeItems`` (the broker's callback only queues it), and
:meth:`RemoteRoutes.handle` applies its items to the remote routes: frames go into the
connections' outboxes (``RoomPeer.push``: a full outbox evicts its connection, 4001; on this
side the cluster's task is the one writer of a relayed peer's ``dropped``), answers to joins
settle them, and ``drop``, ``beat``, ``moved`` and ``ended`` change the route's membership.
:meth:`RemoteRoutes.beat` runs every ``beat`` seconds: each remote route sends its owner the
list of its connections (the owner answers with the ones it does not know, as it was restored
since: they join again, and the ones it dropped, replaced by another connection of the member),
repeats the joins not answered yet, and reports whether its owner has been silent for
``silence`` seconds (the cluster then tries the lease).

Error handling: an item that is not ours (a version mismatch or a bug) is counted in
``malformed`` and skipped; a word from an owner the route no longer follows is ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from dramaverse.actors.room_relay import decode, relayed_error
from dramaverse.actors.room_routes import Conn, RoomRoute


class RemoteRoutes:
    """The relay side of the cluster's remote routes (every method runs in its task).

    ``routes`` is the cluster's route table, ``post(route, message)`` queues a message for the
    owner of ``route``'s room without waiting, ``tidy(route)`` lets the cluster forget a route
    that leads nowhere."""

    def __init__(
        self,
        routes: dict[str, RoomRoute],
        post: Callable[[RoomRoute, dict[str, Any]], bool],
        tidy: Callable[[RoomRoute], None],
        *,
        beat: float,
        silence: float,
    ) -> None:
        self._routes = routes
        self._post = post
        self._tidy = tidy
        self._beat = beat
        self._silence = silence
        self.malformed = 0  # node-topic messages and items that were not ours

    def join(self, route: RoomRoute, conn: Conn, *, again: bool = False) -> None:
        """Send ``conn``'s join to the owner: a repeat of the current attempt (answers to it
        count), or with ``again`` a new one (the owner changed)."""
        if again:
            conn.ref += 1
        conn.rejoin_at = trio.current_time() + 2 * self._beat  # again, if unanswered
        message = {"op": "join", "conn": conn.id, "member": conn.member, "name": conn.name}
        self._post(route, message | {"ref": conn.ref})  # if the queue is full: the next beat

    def beat(self) -> list[RoomRoute]:
        """Heartbeats and owed joins of remote routes; sweep connections that ended (a
        ``Forget`` may have been lost). Returns the routes whose owner went silent."""
        now = trio.current_time()
        silent: list[RoomRoute] = []
        for route in list(self._routes.values()):
            route.prune()
            if route.actor is not None or route.stopped.is_set():
                continue
            if not route.conns:
                self._tidy(route)
                continue
            conns = [[c.id, c.member] for c in route.conns.values() if not c.leaving_until]
            self._post(route, {"op": "beat", "conns": conns})
            for conn in list(route.conns.values()):
                if conn.leaving_until is not None:
                    if conn.leaving_until <= now:
                        route.remove(conn.peer)
                elif conn.answer is not None:
                    self.join(route, conn)  # a join not answered yet: repeat it
                elif conn.rejoin_at is not None and conn.rejoin_at <= now:
                    self.join(route, conn)
            if now - route.heard >= self._silence:
                silent.append(route)
            self._tidy(route)
        return silent

    def handle(self, data: bytes) -> None:
        """Apply one node-topic message."""
        message = decode(data)
        items = message.get("items") if message is not None else None
        if not isinstance(items, list):
            self.malformed += 1
            return
        now = trio.current_time()
        for item in items:
            if not (isinstance(item, list) and len(item) >= 2 and isinstance(item[1], str)):
                self.malformed += 1
                continue
            route = self._routes.get(item[1])
            if route is None or route.actor is not None or route.stopped.is_set():
                continue  # a late word from an old owner
            route.heard = now
            try:
                self._apply(route, item)
            except (IndexError, TypeError, ValueError):
                self.malformed += 1
            self._tidy(route)

    def _apply(self, route: RoomRoute, item: list[Any]) -> None:
        match item[0]:
            case "f":
                if not isinstance(item[3], str):
                    raise TypeError("a frame must be text")
                for conn_id in item[2]:
                    conn = route.conns.get(conn_id)
                    if conn is not None:
                        conn.peer.push(item[3])
            case "joined" | "refused":
                conn = route.conns.get(item[2])
                if conn is None or item[3] != conn.ref:
                    return
                conn.rejoin_at = None
                if item[0] == "joined":
                    route.answered(conn)
                    return
                error = relayed_error(item[4], item[5])
                if conn.answer is not None:
                    route.answered(conn, error)
                elif error.status == 503:  # an unasked rejoin, while the room moves: retry
                    conn.rejoin_at = trio.current_time() + self._beat
                else:  # an unasked rejoin was refused: not a member
                    route.remove(conn.peer)
            case "err":
                conn = route.conns.get(item[2])
                if conn is not None:
                    conn.peer.on_error(int(item[3]))
            case "drop":
                conn = route.conns.get(item[2])
                if conn is not None:
                    route.remove(conn.peer)
                    if item[3] is not None:
                        conn.peer.evict(int(item[3]), str(item[4]))
            case "beat":
                for conn_id in item[2]:  # unknown to the owner: it was restored since
                    conn = route.conns.get(conn_id)
                    if conn is not None and conn.answer is None:
                        self.join(route, conn, again=True)
                for conn_id in item[3]:  # replaced by another connection of the member
                    conn = route.conns.get(conn_id)
                    if conn is not None:
                        route.remove(conn.peer)
            case "moved":  # its owner lost the lease: join whoever owns it next
                for conn in route.conns.values():
                    conn.ref += 1
                    conn.rejoin_at = trio.current_time()
            case "ended":
                route.end()
            case _:
                self.malformed += 1
