"""``/api/auth``: registration and login; each creates a sign-in session (docs/auth.md).

The answers keep the original server's shapes; the token now also carries the session's id
(``sid``) and a token id (``jti``). The session records when and from where it started, and a
device label derived from the User-Agent ("Firefox on Windows"). With ``"cookie": true`` in
the body they also set the auth and CSRF cookies for browsers (``http/cookies.py``); the answer
is the same either way. Failed logins are also counted per account, so that spreading guesses
over many addresses does not help (``routes/password_guard.py``).
"""

from __future__ import annotations

from quart import Blueprint, Response, request

from dramaverse.domain.sessions import (
    MAX_ADDRESS_LENGTH,
    MAX_USER_AGENT_LENGTH,
    bounded,
    device_label,
    new_session_id,
)
from dramaverse.errors import Forbidden, Unauthorized
from dramaverse.http.auth import parse_login, parse_registration
from dramaverse.http.cookies import cookie_requested
from dramaverse.http.responses import json_response, read_json_body
from dramaverse.http.routes.guards import auth_rate_limited
from dramaverse.http.routes.password_guard import request_address, start_login
from dramaverse.http.state import AppState, app_state
from dramaverse.storage.accounts import SessionStart
from dramaverse.storage.base import UserRecord

blueprint = Blueprint("accounts", __name__)

BANNED = "This account has been banned."


def new_session(state: AppState, now_ms: int, issued: int) -> SessionStart:
    """The session a login or registration at ``now_ms`` starts, from this request, for a
    token issued at ``issued`` (seconds, the token service's clock)."""
    user_agent = request.headers.get("User-Agent")
    address = state.perimeter.address(request.remote_addr, request.headers.get("X-Forwarded-For"))
    expires_ms = (issued + state.tokens.ttl_seconds) * 1000  # the token's exp
    return SessionStart(
        new_session_id(),
        now_ms,
        expires_ms,
        bounded(address, MAX_ADDRESS_LENGTH),
        device_label(user_agent),
        bounded(user_agent, MAX_USER_AGENT_LENGTH),
    )


async def refuse_if_changed(
    state: AppState, user: UserRecord, session_id: str, now_ms: int
) -> None:
    """Read the user again now that the session is stored: a ban or a password reset that
    committed while the password was being checked refuses this login (its session ends, no
    token is issued). One committed after this read finds the session and ends it itself
    (http/moderation.py)."""
    current = await state.storage.get_user(user.id)
    if (
        current is not None
        and not current.is_banned
        and current.password_hash == user.password_hash
    ):
        return
    await state.storage.end_session(user.id, session_id, now_ms)
    if current is not None and current.is_banned:
        raise Forbidden(BANNED)
    raise Unauthorized("Invalid credentials")


@blueprint.post("/api/auth/register")
@auth_rate_limited
async def register() -> Response:
    body = await read_json_body()
    username, password = parse_registration(body)
    wants_cookie = cookie_requested(body)
    state = app_state()
    password_hash = await state.passwords.hash(password)
    now_ms, issued = state.clock_ms(), state.tokens.now()
    session = new_session(state, now_ms, issued)
    user_id = await state.storage.create_user(
        username, password_hash, now_ms=now_ms, session=session
    )
    token = state.tokens.issue(user_id, username, session_id=session.id, now=issued)
    response = json_response(
        {"message": "User created successfully", "user": {"username": username}, "token": token},
        201,
    )
    if wants_cookie:
        state.cookie_auth.set_auth_cookies(response, token)
    return response


@blueprint.post("/api/auth/login")
@auth_rate_limited
async def login() -> Response:
    body = await read_json_body()
    username, password = parse_login(body)
    wants_cookie = cookie_requested(body)
    state = app_state()
    attempt = await start_login(state, username, request_address(state))  # 429: locked
    try:
        user = await state.storage.get_user_by_username(username)
        right = await state.passwords.verify(password, user.password_hash if user else None)
    except Exception:  # no verdict (the database is down): not a failure
        if attempt is not None:
            await attempt.take_back()
        raise
    if not right:
        raise Unauthorized("Invalid credentials")
    assert user is not None
    if attempt is not None:
        await attempt.take_back()  # only failures stay counted
    if user.is_banned:  # only said to whoever knows the password
        raise Forbidden(BANNED)
    now_ms, issued = state.clock_ms(), state.tokens.now()
    session = new_session(state, now_ms, issued)
    try:
        await state.storage.create_session(user.id, session)
    except Unauthorized:  # deleted since it was looked up
        raise Unauthorized("Invalid credentials") from None
    await refuse_if_changed(state, user, session.id, now_ms)
    token = state.tokens.issue(user.id, user.username, session_id=session.id, now=issued)
    response = json_response({"user": {"username": user.username}, "token": token})
    if wants_cookie:
        state.cookie_auth.set_auth_cookies(response, token)
    return response
