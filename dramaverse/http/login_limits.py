"""Failed passwords counted per account, shared by every process (docs/auth.md, "Passwords and
login limits").

``RATE_LIMIT_AUTH`` counts requests per client address; spreading guesses over many addresses
gets around it. These counters follow the account instead, in fixed windows of
``RATE_LIMIT_LOGIN_ACCOUNT`` kept by the broker (Redis with several processes, so every worker
and machine counts together):

- **account**: failed passwords for one username, from anywhere: logins, and the current
  password of a password change or an account deletion;
- **account and address**: the same, from one client address;
- **credential**: wrong passwords sent with one sign-in session's token (password change,
  deletion), so a stolen token cannot be used to guess the password either.

A login is counted when it starts and the count is taken back when its password was right
(:meth:`PasswordLimits.take_back`): a burst of parallel guesses cannot all slip in under the
limit, only failures stay counted, and a success takes back its own hit only, never another
client's. An unknown username is counted under the key it would have, exactly like a known one.

Keys hold no username or address in clear, only a hash of it: bounded in size whatever the
client sent, and nothing personal in Redis.

Error handling: when the broker is unreachable, each process counts on its own (an in-process
broker) rather than not at all, as :class:`~dramaverse.http.security.SharedRateLimiter` does.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Protocol

from dramaverse.broker.memory import MemoryBroker
from dramaverse.config import RateLimit
from dramaverse.errors import ServiceUnavailable
from dramaverse.http.auth import AuthUser
from dramaverse.http.security import minutes_phrase

KEY_PREFIX = "password"


class FailureCounter(Protocol):
    """What the limits need from a broker (``broker/base.py``)."""

    async def count_in_window(self, key: str, window_ms: int) -> tuple[int, int]: ...

    async def uncount_in_window(self, key: str) -> None: ...


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def account_key(username: str) -> str:
    """The account's counter, whether or not the username exists."""
    return f"{KEY_PREFIX}:account:{_digest(username)}"


def address_key(username: str, address: str) -> str:
    """The counter of the account as tried from one client address."""
    return f"{KEY_PREFIX}:address:{_digest(username)}:{_digest(address)}"


def credential_key(user: AuthUser) -> str:
    """The counter of the token's sign-in session (of the user's tokens without one)."""
    if user.session_id is not None:
        return f"{KEY_PREFIX}:session:{user.session_id}"
    return f"{KEY_PREFIX}:legacy:{user.id}"


@dataclass(frozen=True, slots=True)
class Hit:
    """One attempt counted on ``key``: the count so far in the window, including it."""

    key: str
    count: int
    seconds_left: int  # until the window ends (Retry-After)
    local: bool  # counted by this process alone (the broker was unreachable)


class PasswordLimits:
    def __init__(self, rule: RateLimit, counter: FailureCounter) -> None:
        self.rule = rule
        self._counter = counter
        self._fallback = MemoryBroker()

    @property
    def window_ms(self) -> int:
        return int(self.rule.window * 1000)

    def message(self) -> str:
        """The refusal, the same for every account, existing or not."""
        return (
            "Too many failed password attempts for this account, please try again after "
            f"{minutes_phrase(self.rule.window)}."
        )

    async def spend(self, key: str) -> Hit:
        """Count one attempt on ``key``."""
        local = False
        try:
            count, left_ms = await self._counter.count_in_window(key, self.window_ms)
        except ServiceUnavailable:
            local = True
            count, left_ms = await self._fallback.count_in_window(key, self.window_ms)
        return Hit(key, count, max(0, math.ceil(left_ms / 1000)), local)

    def over(self, hit: Hit) -> bool:
        """Whether the attempt ``hit`` counted is past the limit (to be refused)."""
        return hit.count > self.rule.limit

    async def take_back(self, hit: Hit) -> None:
        """Uncount ``hit``: its password was right. Best effort: a broker gone since the hit
        leaves it counted until its window ends."""
        try:
            if hit.local:
                await self._fallback.uncount_in_window(hit.key)
            else:
                await self._counter.uncount_in_window(hit.key)
        except ServiceUnavailable:
            pass
