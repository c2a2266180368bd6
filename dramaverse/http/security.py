"""CORS, security headers, rate limits and the client address: the HTTP perimeter.

The headers mirror helmet's defaults (what the original Express server sent). CORS follows the
``cors`` middleware configured with an allow-list and credentials, except that a disallowed
origin gets a clear 403 instead of a 500. Rate limits are fixed windows per client address,
like express-rate-limit's memory store, and announce themselves with the standard
``RateLimit-*`` headers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from dramaverse.config import RateLimit
from dramaverse.errors import ServiceUnavailable

# helmet's defaults (v7), so browsers treat our responses exactly as they treated the seed's.
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    (
        "Content-Security-Policy",
        "default-src 'self';base-uri 'self';font-src 'self' https: data:;"
        "form-action 'self';frame-ancestors 'self';img-src 'self' data:;object-src 'none';"
        "script-src 'self';script-src-attr 'none';style-src 'self' https: 'unsafe-inline';"
        "upgrade-insecure-requests",
    ),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Origin-Agent-Cluster", "?1"),
    ("Referrer-Policy", "no-referrer"),
    ("Strict-Transport-Security", "max-age=31536000; includeSubDomains"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-DNS-Prefetch-Control", "off"),
    ("X-Download-Options", "noopen"),
    ("X-Frame-Options", "SAMEORIGIN"),
    ("X-Permitted-Cross-Domain-Policies", "none"),
    ("X-XSS-Protection", "0"),
)

CORS_METHODS = "GET,POST,PUT,PATCH,DELETE,OPTIONS"
# X-CSRF-Token: what a page authenticated by the cookie sends with its writes (http/csrf.py).
CORS_HEADERS = "Content-Type,Authorization,X-CSRF-Token"
CORS_MAX_AGE = "600"


class CorsPolicy:
    """An allow-list of exact origins. Requests without an Origin header are not CORS.

    An allowed origin may send credentials (``Access-Control-Allow-Credentials: true``): the
    auth cookie (http/cookies.py). A page on it still needs the CSRF token for its writes.
    """

    def __init__(self, origins: Iterable[str]) -> None:
        self.origins = frozenset(origins)

    def allows(self, origin: str | None) -> bool:
        return origin is None or origin in self.origins

    @staticmethod
    def grant_headers(origin: str) -> list[tuple[str, str]]:
        return [
            ("Access-Control-Allow-Origin", origin),
            ("Access-Control-Allow-Credentials", "true"),
            ("Vary", "Origin"),
        ]

    @staticmethod
    def preflight_headers(origin: str) -> list[tuple[str, str]]:
        return [
            ("Access-Control-Allow-Origin", origin),
            ("Access-Control-Allow-Credentials", "true"),
            ("Vary", "Origin"),
            ("Access-Control-Allow-Methods", CORS_METHODS),
            ("Access-Control-Allow-Headers", CORS_HEADERS),
            ("Access-Control-Max-Age", CORS_MAX_AGE),
        ]


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    headers: list[tuple[str, str]]


def decide(rule: RateLimit, count: int, seconds_left: float) -> RateDecision:
    """The answer for the ``count``-th hit of a window with ``seconds_left`` to run."""
    reset = max(0, math.ceil(seconds_left))
    allowed = count <= rule.limit
    headers = [
        ("RateLimit-Policy", rule.policy),
        ("RateLimit-Limit", str(rule.limit)),
        ("RateLimit-Remaining", str(max(0, rule.limit - count))),
        ("RateLimit-Reset", str(reset)),
    ]
    if not allowed:
        headers.append(("Retry-After", str(reset)))
    return RateDecision(allowed, headers)


class SharedRateLimiter:
    """Fixed-window counters kept by the broker, so every worker and machine counts together.

    With several processes a per-process counter lets a client make N times the allowed attempts
    (one budget per process). The authentication limit guards passwords against guessing, so it
    is shared: each attempt is one counter round trip in Redis (the in-process broker counts
    locally). Should Redis be unreachable, the process falls back to its own counter rather than
    to no limit at all.
    """

    def __init__(self, rule: RateLimit, counter: WindowCounter, name: str) -> None:
        self.rule = rule
        self._counter = counter
        self._name = name
        self._fallback = RateLimiter(rule)

    async def hit(self, key: str) -> RateDecision:
        try:
            count, left_ms = await self._counter.count_in_window(
                f"{self._name}:{key}", int(self.rule.window * 1000)
            )
        except ServiceUnavailable:
            return self._fallback.hit(key)
        return decide(self.rule, count, left_ms / 1000)


class WindowCounter(Protocol):
    async def count_in_window(self, key: str, window_ms: int) -> tuple[int, int]: ...


class RateLimiter:
    """Fixed-window counters per key, bounded in memory.

    Each key's window starts at its first request. Expired entries are swept when the table
    grows; if it still holds ``max_keys`` live keys, the oldest windows are dropped first, so
    memory stays bounded even under an address-spraying flood.
    """

    def __init__(
        self,
        rule: RateLimit,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.rule = rule
        self._clock = clock
        self._max_keys = max_keys
        self._windows: dict[str, list[float]] = {}  # key -> [count, window_end]

    def hit(self, key: str) -> RateDecision:
        now = self._clock()
        entry = self._windows.get(key)
        if entry is None or entry[1] <= now:
            if entry is None and len(self._windows) >= self._max_keys:
                self._sweep(now)
            entry = [0.0, now + self.rule.window]
            self._windows[key] = entry
        entry[0] += 1
        return decide(self.rule, int(entry[0]), entry[1] - now)

    def _sweep(self, now: float) -> None:
        live = {k: v for k, v in self._windows.items() if v[1] > now}
        if len(live) >= self._max_keys:
            keep = sorted(live.items(), key=lambda item: item[1][1])[
                len(live) - self._max_keys // 2 :
            ]
            live = dict(keep)
        self._windows = live

    def __len__(self) -> int:
        return len(self._windows)


def client_address(peer: str | None, forwarded_for: str | None, trusted_hops: int) -> str:
    """The client's address, trusting ``trusted_hops`` proxies' X-Forwarded-For entries.

    With no trusted proxies X-Forwarded-For is ignored: anyone can send it, and honouring it
    would let a client pick a fresh rate-limit bucket for every request.
    """
    address = peer or "unknown"
    if trusted_hops <= 0 or not forwarded_for:
        return address
    hops = [address] + [part.strip() for part in reversed(forwarded_for.split(",")) if part.strip()]
    return hops[min(trusted_hops, len(hops) - 1)]


def minutes_phrase(window: float) -> str:
    minutes = max(1, round(window / 60))
    return f"{minutes} minute" if minutes == 1 else f"{minutes} minutes"
