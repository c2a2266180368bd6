"""Per-route guards: authentication, roles and rate limits, in the original server's order."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from quart import g, request

from dramaverse.errors import Forbidden, Unauthorized
from dramaverse.http.auth import TOKEN_INVALID, AuthUser
from dramaverse.http.cookies import CookieRequest, parse_cookies
from dramaverse.http.security import RateDecision
from dramaverse.http.state import app_state

ADMIN_REQUIRED = "Admin access required"

P = ParamSpec("P")
R = TypeVar("R")


def _address() -> str:
    return app_state().perimeter.address(
        request.remote_addr, request.headers.get("X-Forwarded-For")
    )


def _enforce(decision: RateDecision | None, message: str) -> None:
    if decision is not None:
        g.extra_headers = decision.headers
    app_state().perimeter.refuse_over_limit(decision, message)


def request_user() -> AuthUser:
    """The request's user: its Bearer token or, without an ``Authorization`` header, its auth
    cookie once the CSRF rules pass (http/cookies.py); 401 or 403 otherwise."""
    state = app_state()
    authorization = request.headers.get("Authorization")
    if authorization is None:
        cookie = CookieRequest.from_headers(request.headers)
        token = state.cookie_auth.request_token(request.method, cookie)
        if token is not None:
            return state.perimeter.user_from_token(token)
    return state.perimeter.user_from_header(authorization)


def authenticated_by_cookie() -> bool:
    """Whether :func:`request_user` took the request's credential from the auth cookie (no
    ``Authorization`` header, an auth cookie): its answer may set or clear the cookies."""
    if request.headers.get("Authorization") is not None:
        return False
    return parse_cookies(CookieRequest.from_headers(request.headers).cookie).token is not None


def auth_rate_limited(handler: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """``/api/auth/*``: every attempt counts, successful or not."""

    @wraps(handler)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        perimeter = app_state().perimeter  # the limit is shared by every process
        if perimeter.auth_limiter is not None:
            decision = await perimeter.spend_auth_limit(_address())
            _enforce(decision, perimeter.auth_limit_message())
        return await handler(*args, **kwargs)

    return guarded


def authenticated(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """``/api/user/*``: a valid token first (401; 403 for a cookie failing CSRF), then the
    per-address limit (429)."""

    @wraps(handler)
    async def guarded(*args: Any, **kwargs: Any) -> Any:
        perimeter = app_state().perimeter
        user: AuthUser = request_user()
        if perimeter.user_limiter is not None:
            _enforce(perimeter.spend_user_limit(_address()), perimeter.user_limit_message())
        return await handler(user, *args, **kwargs)

    return guarded


def admin_required(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """``/api/admin/*``: a valid token (401; 403 for a cookie failing CSRF), the per-address
    limit of ``/api/user`` (429), then the role as storage holds it now (403).

    The role is read on every request, not taken from the token: a demotion or a ban counts
    from the next request on, on every process (admin requests are few; one indexed read each).
    The same read applies the user's cut-off as stored, so a token a ban refuses is refused
    here even before this process has heard of the ban.
    """

    @wraps(handler)
    async def guarded(*args: Any, **kwargs: Any) -> Any:
        state = app_state()
        perimeter = state.perimeter
        user: AuthUser = request_user()
        if perimeter.user_limiter is not None:
            _enforce(perimeter.spend_user_limit(_address()), perimeter.user_limit_message())
        stored = await state.storage.get_user(user.id)
        if stored is None or stored.is_banned or user.issued_at * 1000 < stored.tokens_valid_after:
            raise Unauthorized(TOKEN_INVALID)
        if not stored.is_admin:
            raise Forbidden(ADMIN_REQUIRED)
        return await handler(user, *args, **kwargs)

    return guarded
