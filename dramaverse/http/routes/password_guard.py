"""Checking a password against the per-account limits (``http/login_limits.py``), for login and
for the routes that ask for the current password (docs/auth.md, "Passwords and login limits").

**Login.** Every attempt is counted on the account and on the (account, client address) pair
before its password is checked. It is refused with 429 when

- the pair is past the limit (this address failed too often for this account), or
- the account is past the limit and this address has never signed in to it: no sign-in session
  from it is on record (live, or ended within ``SESSION_RETENTION_SECONDS``).

An address the account has signed in from keeps its own budget while the account is locked, so
an attacker who spreads guesses over many addresses locks the account against everyone except
its owner's usual addresses. The refusal (status, message, ``Retry-After``) depends on the
counters only, never on whether the username exists; an unknown username is counted under its
would-be key and has no addresses on record. A right password takes back its own two hits.

**Password change and deletion.** The token's sign-in session has its own budget of wrong
passwords (``credential_key``), which the account's lock does not touch: an attacker flooding
the login cannot stop the owner from changing the password. A wrong password also counts on the
account and the pair, like a failed login.
"""

from __future__ import annotations

from dataclasses import dataclass

from quart import g, request

from dramaverse.domain.sessions import MAX_ADDRESS_LENGTH, bounded
from dramaverse.errors import Forbidden, TooManyRequests, Unauthorized
from dramaverse.http.auth import TOKEN_INVALID, AuthUser
from dramaverse.http.login_limits import (
    Hit,
    PasswordLimits,
    account_key,
    address_key,
    credential_key,
)
from dramaverse.http.state import AppState
from dramaverse.storage.base import UserRecord


def request_address(state: AppState) -> str:
    """The client's address as the rate limits count it (``TRUST_PROXY``)."""
    return state.perimeter.address(request.remote_addr, request.headers.get("X-Forwarded-For"))


def refuse(limits: PasswordLimits, hit: Hit) -> None:
    """429 with the limits' message and ``Retry-After`` (after the per-address limit's
    ``RateLimit-*`` headers, when it set any)."""
    headers = list(g.get("extra_headers") or [])
    g.extra_headers = [*headers, ("Retry-After", str(hit.seconds_left))]
    raise TooManyRequests(limits.message())


async def signed_in_from(state: AppState, username: str, address: str) -> bool:
    """Whether the account has a sign-in session on record from ``address``."""
    user = await state.storage.get_user_by_username(username)
    if user is None:
        return False
    try:
        sessions = await state.storage.list_sessions(user.id, state.clock_ms(), include_ended=True)
    except Unauthorized:  # deleted meanwhile
        return False
    stored_as = bounded(address, MAX_ADDRESS_LENGTH)  # as sessions record it
    return any(session.address == stored_as for session in sessions)


@dataclass(frozen=True, slots=True)
class LoginAttempt:
    """A login the limits let through and counted; :meth:`take_back` once its password was
    right, or when it failed before the password could be judged (the database was down)."""

    limits: PasswordLimits
    hits: tuple[Hit, Hit]

    async def take_back(self) -> None:
        for hit in self.hits:
            await self.limits.take_back(hit)


async def start_login(state: AppState, username: str, address: str) -> LoginAttempt | None:
    """Count a login attempt; 429 when the limits refuse it. None when the limit is off."""
    limits = state.password_limits
    if limits is None:
        return None
    account = await limits.spend(account_key(username))
    pair = await limits.spend(address_key(username, address))
    attempt = LoginAttempt(limits, (account, pair))
    if limits.over(pair):
        refuse(limits, pair)
    if limits.over(account):
        try:
            known = await signed_in_from(state, username, address)
        except Exception:  # no verdict (the database is down): not a failure
            await attempt.take_back()
            raise
        if not known:
            refuse(limits, account)
    return attempt


async def count_failure(state: AppState, username: str, address: str) -> None:
    """A wrong password given outside a login: it counts against the account all the same."""
    limits = state.password_limits
    if limits is not None:
        await limits.spend(account_key(username))
        await limits.spend(address_key(username, address))


async def check_own_password(
    state: AppState, user: AuthUser, password: str, address: str, wrong: str
) -> UserRecord:
    """The signed-in user as stored, once ``password`` is theirs: 403 ``wrong`` otherwise, 429
    past the session's budget, 401 when the user no longer exists."""
    stored = await state.storage.get_user(user.id)
    if stored is None:
        raise Unauthorized(TOKEN_INVALID)
    limits = state.password_limits
    hit = None
    if limits is not None:
        hit = await limits.spend(credential_key(user))
        if limits.over(hit):
            refuse(limits, hit)
    try:
        right = await state.passwords.verify(password, stored.password_hash)
    except Exception:  # no verdict: nothing to hold against the session
        if limits is not None and hit is not None:
            await limits.take_back(hit)
        raise
    if not right:
        await count_failure(state, stored.username, address)
        raise Forbidden(wrong)
    if limits is not None and hit is not None:
        await limits.take_back(hit)
    return stored
