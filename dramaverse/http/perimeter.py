"""The perimeter: what every door checks, in one order, with one wording.

Requests reach the server through four doors: the Quart routes (``app.py`` and
``routes/guards.py``), the raw-ASGI library writes (``fastpath.py``), the native WebSocket
(``ws.py``) and Engine.IO (``engineio_server.py``). Each checks, in this order:

1. **Origin** against ``CORS_ALLOWED_ORIGINS`` (no Origin: a non-browser client, allowed);
2. **the token** (``Authorization: Bearer``, or the socket's ``hello`` / subprotocol): its
   signature and expiry, then whether it was revoked (its session ended, its user's cut-off
   moved past it: ``revocations.py``, two dictionary lookups); a session that passes is noted
   as seen (``session_activity.py``, written in batches);
3. **the rate limit** of the client's address (``TRUST_PROXY`` decides whether
   ``X-Forwarded-For`` is believed);
4. **the body size** (``MAX_BODY_BYTES``).

The doors differ in how they read headers (Quart's ``request``, an ASGI scope) and how they
answer (a JSON response, an error frame, an Engine.IO error), so each keeps its own plumbing and
calls these checks; the rules and the messages live here once. Engine.IO is handed the same
``CorsPolicy`` and ``TRUST_PROXY`` and answers with its own protocol's error bodies; the Socket.IO
``connect`` packet's token goes through :meth:`Perimeter.user_from_token`.
"""

from __future__ import annotations

from dataclasses import dataclass

from dramaverse.config import Settings
from dramaverse.errors import Forbidden, PayloadTooLarge, TooManyRequests
from dramaverse.http.auth import AuthUser, TokenService
from dramaverse.http.security import (
    CorsPolicy,
    RateDecision,
    RateLimiter,
    SharedRateLimiter,
    client_address,
    minutes_phrase,
)
from dramaverse.http.session_activity import SessionActivity


@dataclass(frozen=True, slots=True)
class Perimeter:
    settings: Settings
    cors: CorsPolicy
    tokens: TokenService
    auth_limiter: SharedRateLimiter | None
    user_limiter: RateLimiter | None
    activity: SessionActivity | None = None

    # -- 1. Origin -------------------------------------------------------------------------------

    def allows_origin(self, origin: str | None) -> bool:
        return self.cors.allows(origin)

    @staticmethod
    def origin_refusal(origin: str | None) -> str:
        return f"Origin {origin} is not allowed by CORS policy."

    def check_origin(self, origin: str | None) -> None:
        """Raise 403 for a browser page on an origin not in the allow-list."""
        if not self.cors.allows(origin):
            raise Forbidden(self.origin_refusal(origin))

    # -- 2. the token ----------------------------------------------------------------------------

    def user_from_header(self, authorization: str | None) -> AuthUser:
        """The user of an ``Authorization: Bearer`` header; 401 otherwise (also revoked)."""
        user = self.tokens.verify_header(authorization)
        if self.activity is not None:
            self.activity.note(user)
        return user

    def user_from_token(self, token: str) -> AuthUser:
        """The user of a token sent some other way (a socket's ``hello``); 401 otherwise."""
        user = self.tokens.verify(token)
        if self.activity is not None:
            self.activity.note(user)
        return user

    # -- 3. the rate limit -----------------------------------------------------------------------

    def address(self, peer: str | None, forwarded_for: str | None) -> str:
        """The client's address as the rate limits count it."""
        return client_address(peer, forwarded_for, self.settings.trust_proxy)

    def user_limit_message(self) -> str:
        window = self.user_limiter.rule.window if self.user_limiter is not None else 0
        return f"Too many requests, please try again after {minutes_phrase(window)}."

    def auth_limit_message(self) -> str:
        window = self.auth_limiter.rule.window if self.auth_limiter is not None else 0
        return f"Too many authentication attempts, please try again after {minutes_phrase(window)}."

    def spend_user_limit(self, address: str) -> RateDecision | None:
        """Count one ``/api/user``-class request; None when the limit is off. The caller adds
        the decision's headers to its answer and refuses when it is not ``allowed``."""
        return None if self.user_limiter is None else self.user_limiter.hit(address)

    async def spend_auth_limit(self, address: str) -> RateDecision | None:
        """Count one ``/api/auth`` attempt (shared by every process); None when off."""
        return None if self.auth_limiter is None else await self.auth_limiter.hit(address)

    def refuse_over_limit(self, decision: RateDecision | None, message: str) -> None:
        if decision is not None and not decision.allowed:
            raise TooManyRequests(message)

    # -- 4. the body size ------------------------------------------------------------------------

    @property
    def max_body_bytes(self) -> int:
        return self.settings.max_body_bytes

    def body_refusal(self) -> str:
        return f"Request body too large (limit {self.settings.max_body_bytes} bytes)."

    def check_declared_length(self, declared: str | None) -> None:
        """Refuse a body whose ``Content-Length`` is over the limit before reading it."""
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise PayloadTooLarge(self.body_refusal())

    def check_received(self, size: int) -> None:
        """Refuse a body that has grown over the limit while being read."""
        if size > self.max_body_bytes:
            raise PayloadTooLarge(self.body_refusal())
