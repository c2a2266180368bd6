"""Cookie authentication for browsers, alongside ``Authorization: Bearer`` (docs/auth.md).

``POST /api/auth/login`` and ``/api/auth/register`` with ``"cookie": true`` in their body also
set two cookies; the JSON answer is the same as without (the token is still in it):

- ``dramaverse_token``: the very JWT of the answer. ``HttpOnly; SameSite=Lax; Path=/``,
  ``Max-Age`` the token's lifetime (``JWT_TTL_SECONDS``), ``Secure`` in production
  (``DRAMAVERSE_ENV=production``).
- ``dramaverse_csrf``: the CSRF value signed for that token (``csrf.py``), same attributes but
  readable by the page's scripts, which send it back in ``X-CSRF-Token``.

Every door takes the token from the cookie where it reads ``Authorization`` today, and only
when there is no ``Authorization`` header at all (Bearer wins), then verifies it the same way.
The HTTP doors first apply the CSRF rules to a cookie request that changes state
(:meth:`CookieAuth.request_token`); the socket handshakes accept the cookie only with an allowed
``Origin`` header (:meth:`CookieAuth.socket_cookie`): only browsers send cookies, and a
cookie-bearing handshake without ``Origin`` is not one we can vouch for.

Reading is bounded and total: a ``Cookie`` header over :data:`MAX_COOKIE_HEADER_CHARS` is
ignored, only our two names are looked at (the first of each wins), and whatever the values
are, the token verifier or the CSRF check judges them; nothing here raises but the 403 of the
CSRF rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from quart import Response
from werkzeug.datastructures import Headers

from dramaverse.config import Settings
from dramaverse.errors import BadRequest
from dramaverse.http.csrf import CsrfSigner, check_cookie_request
from dramaverse.http.security import CorsPolicy

AUTH_COOKIE = "dramaverse_token"
CSRF_COOKIE = "dramaverse_csrf"
COOKIE_FIELD = "cookie"
# Browsers keep at most 4 KiB per cookie and Hypercorn refuses a head over 16 KiB; anything
# longer did not come from a browser we gave cookies to.
MAX_COOKIE_HEADER_CHARS = 16 * 1024
COOKIE_FIELD_INVALID = f"Invalid input: '{COOKIE_FIELD}' must be true or false."
SOCKET_ORIGIN_REQUIRED = "Cookie authentication requires an allowed Origin header."


@dataclass(frozen=True, slots=True)
class AuthCookies:
    """Our two cookies as a request carries them (None: absent or empty)."""

    token: str | None
    csrf: str | None


NO_COOKIES = AuthCookies(None, None)


def parse_cookies(header: str | None) -> AuthCookies:
    """The auth and CSRF cookies of a ``Cookie`` header (RFC 6265 ``name=value; ...``)."""
    if not header or len(header) > MAX_COOKIE_HEADER_CHARS:
        return NO_COOKIES
    found: dict[str, str] = {}
    for pair in header.split(";"):
        name, equals, value = pair.partition("=")
        name = name.strip()
        if equals and name in (AUTH_COOKIE, CSRF_COOKIE) and name not in found:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':  # a quoted cookie-value
                value = value[1:-1]
            found[name] = value
    return AuthCookies(found.get(AUTH_COOKIE) or None, found.get(CSRF_COOKIE) or None)


def joined(values: Iterable[str]) -> str | None:
    """Several ``Cookie`` fields (HTTP/2 sends one per cookie) as one header value."""
    parts = list(values)
    return "; ".join(parts) if parts else None


@dataclass(frozen=True, slots=True)
class CookieRequest:
    """What the cookie rules read from a request, whichever door it came through."""

    cookie: str | None
    origin: str | None
    referer: str | None
    csrf_header: str | None

    @classmethod
    def from_headers(cls, headers: Headers) -> CookieRequest:
        """From Quart's request headers."""
        return cls(
            joined(headers.getlist("Cookie")),
            headers.get("Origin"),
            headers.get("Referer"),
            headers.get("X-CSRF-Token"),
        )

    @classmethod
    def from_scope(cls, headers: Iterable[tuple[bytes, bytes]]) -> CookieRequest:
        """From an ASGI scope's headers (lower-case names; the first of each wins, as in
        Quart, except ``Cookie`` fields, which are joined)."""
        cookies: list[str] = []
        seen: dict[bytes, str] = {}
        for name, value in headers:
            if name == b"cookie":
                cookies.append(value.decode("latin-1"))
            elif name in (b"origin", b"referer", b"x-csrf-token") and name not in seen:
                seen[name] = value.decode("latin-1")
        return cls(
            joined(cookies), seen.get(b"origin"), seen.get(b"referer"), seen.get(b"x-csrf-token")
        )


@dataclass(frozen=True, slots=True)
class SocketCookie:
    """A handshake's auth cookie: its token, or why it cannot be used (``refusal``)."""

    token: str | None
    refusal: str | None = None


def cookie_requested(body: object) -> bool:
    """Whether a login or registration body asks for the cookies (``"cookie": true``)."""
    value = body.get(COOKIE_FIELD, False) if isinstance(body, dict) else False
    if not isinstance(value, bool):
        raise BadRequest(COOKIE_FIELD_INVALID)
    return value


def clear_auth_cookies(response: Response) -> None:
    """Make the browser forget both cookies (for logout). Without ``Secure``: a deletion over
    HTTPS removes a Secure cookie all the same, and over plain HTTP one must not be asked."""
    response.delete_cookie(AUTH_COOKIE, path="/", httponly=True, samesite="Lax")
    response.delete_cookie(CSRF_COOKIE, path="/", samesite="Lax")


@dataclass(frozen=True, slots=True)
class CookieAuth:
    """The cookie rules of one server: its allow-list, CSRF key, cookie lifetime and scheme."""

    cors: CorsPolicy
    signer: CsrfSigner
    max_age: int
    secure: bool

    @classmethod
    def from_settings(cls, settings: Settings, cors: CorsPolicy) -> CookieAuth:
        assert settings.jwt_secret is not None, "resolve the secret first (Settings.with_secret)"
        return cls(
            cors,
            CsrfSigner(settings.jwt_secret),
            settings.jwt_ttl_seconds,
            settings.env == "production",
        )

    def set_auth_cookies(self, response: Response, token: str) -> None:
        """Add both cookies for ``token`` (just issued, so ``Max-Age`` is its lifetime)."""
        for name, value, httponly in (
            (AUTH_COOKIE, token, True),
            (CSRF_COOKIE, self.signer.issue(token), False),  # the page reads this one
        ):
            response.set_cookie(
                name,
                value,
                max_age=self.max_age,
                path="/",
                secure=self.secure,
                httponly=httponly,
                samesite="Lax",
            )

    def request_token(self, method: str, request: CookieRequest) -> str | None:
        """The auth cookie's token for an HTTP request without ``Authorization``, once the CSRF
        rules pass (403 otherwise); None when it has no auth cookie."""
        cookies = parse_cookies(request.cookie)
        if cookies.token is None:
            return None
        check_cookie_request(
            self.cors,
            self.signer,
            method=method,
            origin=request.origin,
            referer=request.referer,
            csrf_header=request.csrf_header,
            csrf_cookie=cookies.csrf,
            token=cookies.token,
        )
        return cookies.token

    def socket_cookie(self, origin: str | None, cookie: str | None) -> SocketCookie | None:
        """A WebSocket or Engine.IO handshake's auth cookie (None: it has none). Usable only
        with an ``Origin`` header on the allow-list."""
        token = parse_cookies(cookie).token
        if token is None:
            return None
        if origin is None or not self.cors.allows(origin):
            return SocketCookie(None, SOCKET_ORIGIN_REQUIRED)
        return SocketCookie(token)
