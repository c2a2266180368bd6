"""Accounts: password hashing, JWT issue and verification, credential validation.

Passwords are hashed with bcrypt in worker threads so the Trio loop never stalls on the key
schedule. bcrypt reads at most 72 bytes of a password: we refuse longer passwords at registration
(clear 400) and, at login, compare only the first 72 bytes, which is what bcryptjs did for
accounts created by the original server, so their users keep logging in.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import bcrypt
import jwt
import trio

from dramaverse.domain.numbers import MAX_SAFE_INTEGER, number_in, safe_integer
from dramaverse.domain.sessions import is_session_id
from dramaverse.errors import BadRequest, Unauthorized

USERNAME_RE = re.compile(r"[a-zA-Z0-9_.-]{3,20}")
MIN_PASSWORD_LENGTH = 6
BCRYPT_MAX_BYTES = 72
REGISTER_INVALID = (
    "Invalid input: Username must be 3-20 alphanumeric characters (letters, numbers, _, ., -). "
    "Password must be at least 6 characters."
)
PASSWORD_TOO_LONG = f"Invalid input: Password must be at most {BCRYPT_MAX_BYTES} bytes in UTF-8."
LOGIN_INVALID = "Username and password are required."
TOKEN_REQUIRED = "Authentication token required"
TOKEN_INVALID = "Invalid or expired token"


def js_length(text: str) -> int:
    """``text.length`` in JavaScript: UTF-16 code units, so an emoji counts twice."""
    return len(text.encode("utf-16-le")) // 2


def parse_registration(body: object) -> tuple[str, str]:
    fields = body if isinstance(body, dict) else {}
    username, password = fields.get("username"), fields.get("password")
    if (
        not isinstance(username, str)
        or not isinstance(password, str)
        or not USERNAME_RE.fullmatch(username)
        or js_length(password) < MIN_PASSWORD_LENGTH
    ):
        raise BadRequest(REGISTER_INVALID)
    if len(password.encode("utf-8")) > BCRYPT_MAX_BYTES:
        raise BadRequest(PASSWORD_TOO_LONG)
    return username, password


def parse_login(body: object) -> tuple[str, str]:
    fields = body if isinstance(body, dict) else {}
    username, password = fields.get("username"), fields.get("password")
    if (
        not isinstance(username, str)
        or not isinstance(password, str)
        or not username
        or not password
    ):
        raise BadRequest(LOGIN_INVALID)
    return username, password


@dataclass(frozen=True, slots=True)
class AuthUser:
    """The identity a valid token carries.

    ``session_id`` is the sign-in session the token was issued for (its ``sid`` claim); None
    for a token issued before sessions existed, which only the user's cut-off can revoke.
    ``issued_at`` is the token's ``iat`` in whole seconds (0 when it has none).
    """

    id: int
    username: str
    expires_at: float
    session_id: str | None = None
    issued_at: int = 0


class TokenRefusal(Protocol):
    """Whether a token that verified must still be refused (its session ended, its user's
    cut-off moved past it): ``http/revocations.py``'s :class:`RevocationList`."""

    def refuses(self, user: AuthUser) -> bool: ...


class _RefuseNothing:
    def refuses(self, user: AuthUser) -> bool:
        return False


class TokenService:
    """HS256 JWTs carrying ``id`` and ``username``, like the original server's, plus ``sid``
    (the sign-in session) and ``jti`` (a random token id) for tokens issued with a session.

    Verified tokens are remembered (at most ``cache_size``, oldest dropped first): a device sends
    the same token with every request, and checking the signature again costs more than the
    rest of a library write. A remembered token is still refused once its ``exp`` has passed,
    and every verification, remembered or not, asks ``revocations`` (two dictionary lookups)
    whether the token's session has ended or its user's cut-off has moved past it.
    """

    ALGORITHM = "HS256"

    def __init__(
        self,
        secret: str,
        ttl_seconds: int,
        *,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
        revocations: TokenRefusal | None = None,
    ) -> None:
        self._secret = secret
        self.ttl_seconds = ttl_seconds
        self._cache: dict[str, AuthUser] = {}
        self._cache_size = cache_size
        self._clock = clock
        self.revocations: TokenRefusal = _RefuseNothing() if revocations is None else revocations

    def now(self) -> int:
        """The current time in whole seconds, as ``iat`` records it."""
        return int(self._clock())

    def issue(
        self,
        user_id: int,
        username: str,
        *,
        session_id: str | None = None,
        now: float | None = None,
    ) -> str:
        """A token for ``user_id``; with ``session_id`` it carries ``sid`` and ``jti`` (every
        token the server issues since sessions exist does: one without is a legacy token)."""
        issued = int(self._clock() if now is None else now)
        claims: dict[str, Any] = {
            "id": user_id,
            "username": username,
            "iat": issued,
            "exp": issued + self.ttl_seconds,
        }
        if session_id is not None:
            claims["sid"] = session_id
            claims["jti"] = secrets.token_urlsafe(12)
        return jwt.encode(claims, self._secret, algorithm=self.ALGORITHM)

    def verify(self, token: str) -> AuthUser:
        user = self._cache.get(token)
        if user is None:
            user = self._check(token)
            if len(self._cache) >= self._cache_size:
                del self._cache[next(iter(self._cache))]
            self._cache[token] = user
        elif user.expires_at <= self._clock():
            del self._cache[token]
            raise Unauthorized(TOKEN_INVALID)
        if self.revocations.refuses(user):
            raise Unauthorized(TOKEN_INVALID)
        return user

    def _check(self, token: str) -> AuthUser:
        try:
            # Expiry is checked below against our clock (the cache uses the same one).
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=[self.ALGORITHM],
                options={"require": ["exp"], "verify_exp": False},
            )
        except (jwt.PyJWTError, ArithmeticError, ValueError, TypeError):
            # PyJWT's own iat/nbf checks call int() on the claim: 1e400 raises OverflowError.
            raise Unauthorized(TOKEN_INVALID) from None
        # Range checks before anything uses the claims: a user id storage can look up, an
        # expiry that is a finite time (1e400 decodes to inf, which would never expire), a
        # session id of the shape we issue.
        user_id = safe_integer(claims.get("id"), 0)
        username = claims.get("username")
        expires = number_in(claims["exp"], 0, MAX_SAFE_INTEGER)
        issued = number_in(claims.get("iat", 0), 0, MAX_SAFE_INTEGER)
        session_id = claims.get("sid")
        if (
            user_id is None
            or not isinstance(username, str)
            or expires is None
            or expires <= self._clock()
            or issued is None
            or ("sid" in claims and not is_session_id(session_id))
        ):
            raise Unauthorized(TOKEN_INVALID)
        return AuthUser(user_id, username, expires, session_id, int(issued))

    def verify_header(self, header: str | None) -> AuthUser:
        """Check an ``Authorization: Bearer <token>`` header."""
        if not header or not header.startswith("Bearer "):
            raise Unauthorized(TOKEN_REQUIRED)
        parts = header.split(" ")
        return self.verify(parts[1])


class PasswordHasher:
    """bcrypt in worker threads, at most ``concurrency`` at once (it is CPU-bound)."""

    def __init__(self, rounds: int, concurrency: int = 2) -> None:
        self.rounds = rounds
        self._limiter = trio.CapacityLimiter(concurrency)
        # Compared against when the username does not exist, so a miss costs as much as a
        # wrong password and response times do not reveal which usernames exist. Made on first
        # use with the configured cost.
        self._decoy: str | None = None

    async def hash(self, password: str) -> str:
        raw = password.encode("utf-8")
        rounds = self.rounds

        def run() -> str:
            return bcrypt.hashpw(raw, bcrypt.gensalt(rounds)).decode("ascii")

        return await trio.to_thread.run_sync(run, limiter=self._limiter)

    async def verify(self, password: str, stored_hash: str | None) -> bool:
        raw = password.encode("utf-8")[:BCRYPT_MAX_BYTES]
        if stored_hash is None and self._decoy is None:
            self._decoy = await self.hash("decoy-password")
        target = (stored_hash or self._decoy or "").encode("utf-8")

        def run() -> bool:
            try:
                return bcrypt.checkpw(raw, target)
            except ValueError:  # a malformed stored hash never matches
                return False

        matched = await trio.to_thread.run_sync(run, limiter=self._limiter)
        return matched and stored_hash is not None
