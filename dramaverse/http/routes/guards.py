"""Per-route guards: authentication and rate limits, in the original server's order."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from quart import g, request

from dramaverse.errors import TooManyRequests
from dramaverse.http.auth import AuthUser
from dramaverse.http.security import RateDecision, client_address, minutes_phrase
from dramaverse.http.state import app_state

P = ParamSpec("P")
R = TypeVar("R")


def _address() -> str:
    settings = app_state().settings
    return client_address(
        request.remote_addr, request.headers.get("X-Forwarded-For"), settings.trust_proxy
    )


def _enforce(decision: RateDecision, message: str) -> None:
    g.extra_headers = decision.headers
    if not decision.allowed:
        raise TooManyRequests(message)


def auth_rate_limited(handler: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """``/api/auth/*``: every attempt counts, successful or not."""

    @wraps(handler)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        limiter = app_state().auth_limiter
        if limiter is not None:  # shared by every process (SharedRateLimiter)
            when = minutes_phrase(limiter.rule.window)
            _enforce(
                await limiter.hit(_address()),
                f"Too many authentication attempts, please try again after {when}.",
            )
        return await handler(*args, **kwargs)

    return guarded


def authenticated(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """``/api/user/*``: a valid Bearer token first (401), then the per-address limit (429)."""

    @wraps(handler)
    async def guarded(*args: Any, **kwargs: Any) -> Any:
        state = app_state()
        user: AuthUser = state.tokens.verify_header(request.headers.get("Authorization"))
        limiter = state.user_limiter
        if limiter is not None:
            when = minutes_phrase(limiter.rule.window)
            _enforce(limiter.hit(_address()), f"Too many requests, please try again after {when}.")
        return await handler(user, *args, **kwargs)

    return guarded
