"""Every live socket of this process, by user and by sign-in session, so a revocation can end them.

A native WebSocket (``realtime/ws.py``) and a Socket.IO socket (``realtime/socketio.py``) add
themselves once their token is accepted, with a ``close`` callback, and remove themselves
whatever ends them. When a revocation arrives (``http/revocation_sync.py``), the sockets of that
user whose token is now refused are closed: the ones of the ended sessions, or the ones whose
token predates the user's new cut-off. ``close`` is called from the revocation's task: it must
not block (both connections only record the reason and cancel their own tasks), and it may be
called more than once.

Resource handling: the registry holds only callbacks; each connection removes its own entry in
its ``finally``, so the registry never outlives what it names. Only the Trio thread touches it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from dramaverse.http.auth import AuthUser

K = TypeVar("K", int, str)


@dataclass(eq=False, slots=True)
class LiveSocket:
    user: AuthUser
    close: Callable[[], None]


class LiveSockets:
    def __init__(self) -> None:
        self._by_user: dict[int, set[LiveSocket]] = {}
        self._by_session: dict[str, set[LiveSocket]] = {}

    def add(self, user: AuthUser, close: Callable[[], None]) -> LiveSocket:
        socket = LiveSocket(user, close)
        self._by_user.setdefault(user.id, set()).add(socket)
        if user.session_id is not None:
            self._by_session.setdefault(user.session_id, set()).add(socket)
        return socket

    def remove(self, socket: LiveSocket) -> None:
        _discard(self._by_user, socket.user.id, socket)
        if socket.user.session_id is not None:
            _discard(self._by_session, socket.user.session_id, socket)

    def close_sessions(self, session_ids: tuple[str, ...] | list[str]) -> int:
        """Close every socket opened with a token of one of ``session_ids``."""
        doomed = [s for sid in session_ids for s in self._by_session.get(sid, ())]
        return _close(doomed)

    def close_refused(self, user_id: int, refuses: Callable[[AuthUser], bool]) -> int:
        """Close the user's sockets whose token ``refuses`` now refuses."""
        return _close([s for s in self._by_user.get(user_id, ()) if refuses(s.user)])

    def sweep(self, refuses: Callable[[AuthUser], bool]) -> int:
        """Close every socket whose token is refused now (the safety net's pass)."""
        return _close([s for sockets in self._by_user.values() for s in sockets if refuses(s.user)])

    def session_ids(self) -> Iterator[str]:
        """The sessions with a live socket here (they are in use: last seen now)."""
        return iter(self._by_session)

    def count(self, user_id: int | None = None) -> int:
        if user_id is not None:
            return len(self._by_user.get(user_id, ()))
        return sum(len(sockets) for sockets in self._by_user.values())


def _discard(index: dict[K, set[LiveSocket]], key: K, socket: LiveSocket) -> None:
    sockets = index.get(key)
    if sockets is not None:
        sockets.discard(socket)
        if not sockets:
            del index[key]


def _close(sockets: list[LiveSocket]) -> int:
    for socket in sockets:
        socket.close()
    return len(sockets)
