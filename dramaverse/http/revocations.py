"""What a token must not be honoured for any more, in memory, and the message that says so.

Two tables answer every token check in O(1) (docs/auth.md):

- the **ended sessions**: session id -> (user id, when it ended). A token whose ``sid`` is here
  is refused;
- the **cut-offs**: user id -> ``tokens_valid_after`` (ms). A token issued before it is refused,
  whether it carries a session id or not (legacy tokens only ever meet this one).

An entry is only worth keeping while a token it refuses could still be unexpired: a token is
issued before its session ends or its cut-off is set, and lives at most ``ttl_seconds``, so
entries older than ``now - ttl`` are dropped (:meth:`RevocationList.prune`). Storage keeps the
same facts durably (``Storage.load_revocations``); this is its cache, filled at start, refreshed
as a safety net, and updated at once by :class:`Revocation` messages on the broker topic
:data:`TOPIC` (``http/revocation_sync.py``).

A deleted user has no row left to hold a cut-off: its message puts one a token lifetime in the
future, which refuses every token that can exist for it (user ids are never reused).
"""

from __future__ import annotations

import enum
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from dramaverse.domain.sessions import is_session_id
from dramaverse.http.auth import AuthUser
from dramaverse.storage.accounts import MAX_MS, MAX_TOUCH_BATCH, MAX_USER_ID, RevocationSnapshot

log = logging.getLogger(__name__)

TOPIC = "auth:revocations"
MAX_MESSAGE_BYTES = 512 * 1024  # 10,000 session ids of at most 64 characters, and then some


class Kind(enum.Enum):
    ENDED = "ended"  # these sessions of the user ended
    CUTOFF = "cutoff"  # the user's tokens issued before ``at`` are refused
    REMOVED = "removed"  # the user was deleted: every token of theirs is refused


@dataclass(frozen=True, slots=True)
class Revocation:
    """One revocation, as every process hears it (``encode``/``decode``: the broker's form)."""

    kind: Kind
    user_id: int
    at: int  # ms: when the sessions ended, the cut-off, when the user was removed
    session_ids: tuple[str, ...] = ()

    def encode(self) -> bytes:
        body: dict[str, object] = {"k": self.kind.value, "u": self.user_id, "t": self.at}
        if self.session_ids:
            body["s"] = list(self.session_ids)
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Revocation | None:
        """The message, or None for anything malformed (logged; never raises)."""
        try:
            if len(raw) > MAX_MESSAGE_BYTES:
                raise ValueError("too large")
            body = json.loads(raw)
            kind = Kind(body["k"])
            user_id, at, ids = body["u"], body["t"], body.get("s", [])
            if not (_whole(user_id, 1, MAX_USER_ID) and _whole(at, 0, MAX_MS)):
                raise ValueError("user id or time out of range")
            if not isinstance(ids, list) or len(ids) > MAX_TOUCH_BATCH:
                raise ValueError("session ids must be a list")
            if not all(is_session_id(sid) for sid in ids):
                raise ValueError("not a session id")
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            log.warning("ignoring a malformed revocation message: %s", exc)
            return None
        return cls(kind, user_id, at, tuple(ids))


def _whole(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


class RevocationList:
    """The two tables; :meth:`refuses` is the request path's check.

    State ownership: written only from the process's Trio thread (the broker's callback, the
    refresh task, a route that revoked something), read by every token check; no awaits
    inside any method, so no reader sees half an update.
    """

    def __init__(self, ttl_seconds: int, clock_ms: Callable[[], int] | None = None) -> None:
        self.ttl_ms = ttl_seconds * 1000
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self._ended: dict[str, tuple[int, int]] = {}
        self._cutoffs: dict[int, int] = {}

    def refuses(self, user: AuthUser) -> bool:
        sid = user.session_id
        if sid is not None and sid in self._ended:
            return True
        cutoff = self._cutoffs.get(user.id)
        return cutoff is not None and user.issued_at * 1000 < cutoff

    def apply(self, revocation: Revocation) -> None:
        if revocation.kind is Kind.ENDED:
            for sid in revocation.session_ids:
                self._ended[sid] = (revocation.user_id, revocation.at)
        elif revocation.kind is Kind.CUTOFF:
            self._cut_off(revocation.user_id, revocation.at)
        else:  # REMOVED: every token that can exist for the user was issued before this
            self._cut_off(revocation.user_id, min(MAX_MS, revocation.at + self.ttl_ms + 1000))

    def _cut_off(self, user_id: int, at: int) -> None:
        if at > self._cutoffs.get(user_id, 0):
            self._cutoffs[user_id] = at

    def merge(self, snapshot: RevocationSnapshot) -> None:
        """Add what storage holds (a start, a refresh); nothing known already is lost."""
        self._ended.update(snapshot.ended)
        for user_id, at in snapshot.cutoffs.items():
            self._cut_off(user_id, at)

    def prune(self) -> int:
        """Drop entries that can no longer refuse an unexpired token; return how many."""
        oldest = self._clock_ms() - self.ttl_ms
        ended = [sid for sid, (_, at) in self._ended.items() if at < oldest]
        cutoffs = [user for user, at in self._cutoffs.items() if at < oldest]
        for sid in ended:
            del self._ended[sid]
        for user in cutoffs:
            del self._cutoffs[user]
        return len(ended) + len(cutoffs)

    def since(self) -> int:
        """Where a load from storage starts: older facts only refuse expired tokens."""
        return max(0, self._clock_ms() - self.ttl_ms)

    def ended_sessions(self) -> Iterable[str]:
        return self._ended.keys()

    def __len__(self) -> int:
        return len(self._ended) + len(self._cutoffs)
