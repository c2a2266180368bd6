"""``POST /api/user/password``: the signed-in user changes their password (docs/auth.md,
"Passwords and login limits").

The body is ``{"currentPassword": ..., "newPassword": ...}``. The new password follows the
registration rules (at least 6 characters, at most 72 bytes in UTF-8, what bcrypt reads). A
wrong current password is 403 (not 401: a client takes 401 for "your token is gone" and the
token is fine). On success the hash is stored, the user's cut-off moves to now and every other
sign-in session ends, in storage and then on every process: their tokens and any token without
a session are refused and their sockets closed. The current session lives on with a fresh
token, returned like login's ``{user, token}`` (and set as the auth cookie when the request
came by cookie); its old token is refused too, so its sockets reconnect with the new one.

A login that checked the old password just before the change commits may store its session
just after: the other sessions are ended a second time once the change is stored.

Limits: the token (401), ``RATE_LIMIT_USER`` and ``RATE_LIMIT_AUTH`` per address (429), and
the session's budget of wrong passwords (429, ``routes/password_guard.py``).
"""

from __future__ import annotations

from typing import Final

from quart import Blueprint, Response

from dramaverse.errors import BadRequest, NotFound, Unauthorized
from dramaverse.http.auth import (
    BCRYPT_MAX_BYTES,
    MIN_PASSWORD_LENGTH,
    TOKEN_INVALID,
    AuthUser,
    js_length,
)
from dramaverse.http.responses import json_response, read_json_body
from dramaverse.http.routes.accounts import new_session
from dramaverse.http.routes.guards import (
    auth_rate_limited,
    authenticated,
    authenticated_by_cookie,
)
from dramaverse.http.routes.password_guard import check_own_password, request_address
from dramaverse.http.state import AppState, app_state
from dramaverse.storage.accounts import cutoff_at
from dramaverse.storage.base import UserRecord

blueprint = Blueprint("password", __name__)

# A password typed by a person; anything longer is not one (bcrypt reads 72 bytes anyway).
MAX_PASSWORD_CHARS: Final = 1024
CHANGE_INVALID: Final = "Invalid input: currentPassword and newPassword are required, both strings."
CURRENT_TOO_LONG: Final = (
    f"Invalid input: currentPassword must be at most {MAX_PASSWORD_CHARS} characters."
)
NEW_TOO_SHORT: Final = (
    f"Invalid input: newPassword must be at least {MIN_PASSWORD_LENGTH} characters."
)
NEW_TOO_LONG: Final = (
    f"Invalid input: newPassword must be at most {BCRYPT_MAX_BYTES} bytes in UTF-8."
)
NEW_IS_CURRENT: Final = "Invalid input: newPassword must differ from the current password."
WRONG_CURRENT: Final = "Current password is incorrect."


def parse_password_change(body: object) -> tuple[str, str]:
    """(current, new) from the body; 400 with what is wrong."""
    fields = body if isinstance(body, dict) else {}
    current, new = fields.get("currentPassword"), fields.get("newPassword")
    if not isinstance(current, str) or not isinstance(new, str) or not current:
        raise BadRequest(CHANGE_INVALID)
    if len(current) > MAX_PASSWORD_CHARS:
        raise BadRequest(CURRENT_TOO_LONG)
    if js_length(new) < MIN_PASSWORD_LENGTH:
        raise BadRequest(NEW_TOO_SHORT)
    if len(new.encode("utf-8")) > BCRYPT_MAX_BYTES:
        raise BadRequest(NEW_TOO_LONG)
    return current, new


@blueprint.post("/api/user/password")
@authenticated
@auth_rate_limited
async def change_password(user: AuthUser) -> Response:
    current, new = parse_password_change(await read_json_body())
    state = app_state()
    stored = await check_own_password(state, user, current, request_address(state), WRONG_CURRENT)
    if new == current:  # said only to whoever knows the current password
        raise BadRequest(NEW_IS_CURRENT)
    password_hash = await state.passwords.hash(new)
    # On the tokens' clock: the cut-off is compared with their iat, and the fresh token is
    # issued in the same second, so it is not refused.
    issued = state.tokens.now()
    now = issued * 1000
    keep = user.session_id
    try:
        ended = await state.storage.set_password_hash(
            user.id, password_hash, now, keep_session=keep
        )
    except NotFound:  # deleted since the password was checked
        raise Unauthorized(TOKEN_INVALID) from None
    if keep is None:  # a token without a session: every session is another one
        ended += await state.storage.end_all_sessions(user.id, now)
    else:  # a racing login's (see the module docstring)
        ended += await state.storage.end_other_sessions(user.id, keep, now)
    await state.revoker.cut_off(user.id, cutoff_at(now))
    await state.revoker.end_sessions(user.id, sorted(set(ended)), now)
    token = await fresh_token(state, stored, keep, issued)
    response = json_response({"user": {"username": stored.username}, "token": token})
    if authenticated_by_cookie():
        state.cookie_auth.set_auth_cookies(response, token)
    return response


async def fresh_token(state: AppState, user: UserRecord, keep: str | None, issued: int) -> str:
    """A token for the kept session, issued at ``issued`` (seconds, not before the new
    cut-off). A token without a session, or one whose session ended meanwhile, gets a new
    session, as a login would: the current password was just proven."""
    if keep is not None:
        expires_ms = (issued + state.tokens.ttl_seconds) * 1000  # the token's exp
        if await state.storage.renew_session(user.id, keep, expires_ms):
            return state.tokens.issue(user.id, user.username, session_id=keep, now=issued)
    session = new_session(state, state.clock_ms(), issued)
    try:
        await state.storage.create_session(user.id, session)
    except Unauthorized:  # deleted meanwhile
        raise Unauthorized(TOKEN_INVALID) from None
    return state.tokens.issue(user.id, user.username, session_id=session.id, now=issued)
