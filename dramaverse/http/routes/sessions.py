"""Signing out and the user's own sessions (docs/auth.md).

- ``POST /api/auth/logout``: ends the token's session;
- ``GET /api/user/sessions``: the user's live sessions, newest first, ``current`` marking the
  one of the token;
- ``DELETE /api/user/sessions/<id>``: ends one of the user's own sessions (someone else's id
  answers 404 exactly like an unknown one: ids are not confirmed to strangers);
- ``POST /api/user/sessions/logout-others``: ends every session but the token's.

Each change is committed to storage, then published (``Revoker``): from then on the tokens of
the ended sessions get 401 on every process and their sockets are closed. A token from before
sessions existed has no session to end: its logout moves the user's cut-off, which signs out
every token issued before it (all of the user's sessions and legacy tokens).

All routes need a valid Bearer token or the auth cookie with its CSRF rules (401); a logout by
cookie clears the cookies. They all count toward ``RATE_LIMIT_USER`` (429).
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response

from dramaverse.domain.sessions import SESSION_ID_RULE, is_session_id
from dramaverse.errors import BadRequest, NotFound
from dramaverse.http.auth import AuthUser
from dramaverse.http.cookies import clear_auth_cookies
from dramaverse.http.responses import json_response
from dramaverse.http.routes.guards import authenticated, authenticated_by_cookie
from dramaverse.http.state import app_state
from dramaverse.storage.accounts import SessionRecord, cutoff_at

blueprint = Blueprint("sessions", __name__)

LOGGED_OUT = "Logged out."
LOGGED_OUT_EVERYWHERE = "Logged out everywhere (this token belonged to no session)."
SESSION_ENDED = "Session ended."
SESSION_NOT_FOUND = "Session not found."
INVALID_SESSION_ID = f"Invalid session id: {SESSION_ID_RULE}."


def session_json(
    session: SessionRecord, current: str | None, pending: int | None
) -> dict[str, Any]:
    last_seen = session.last_seen_at if pending is None else max(pending, session.last_seen_at)
    return {
        "id": session.id,
        "current": session.id == current,
        "device": session.device,
        "userAgent": session.user_agent,
        "address": session.address,
        "createdAt": session.created_at,
        "lastSeenAt": last_seen,
        "expiresAt": session.expires_at,
    }


@blueprint.post("/api/auth/logout")
@authenticated
async def logout(user: AuthUser) -> Response:
    state = app_state()
    now = state.clock_ms()
    if user.session_id is None:
        now = state.tokens.now() * 1000  # a cut-off is compared with iat: the tokens' clock
        ended = await state.storage.end_all_sessions(user.id, now, cut_off=True)
        await state.revoker.cut_off(user.id, cutoff_at(now))
        await state.revoker.end_sessions(user.id, ended, now)
        return _signed_out(LOGGED_OUT_EVERYWHERE)
    await state.storage.end_session(user.id, user.session_id, now)
    # Published even if storage found it ended already: this token must stop here, now.
    await state.revoker.end_sessions(user.id, [user.session_id], now)
    return _signed_out(LOGGED_OUT)


def _signed_out(message: str) -> Response:
    """The logout answer; a browser signed in by cookie also gets its cookies cleared."""
    response = json_response({"message": message})
    if authenticated_by_cookie():
        clear_auth_cookies(response)
    return response


@blueprint.get("/api/user/sessions")
@authenticated
async def list_sessions(user: AuthUser) -> Response:
    state = app_state()
    sessions = await state.storage.list_sessions(user.id, state.clock_ms())
    pending = state.activity.pending
    return json_response(
        {"sessions": [session_json(s, user.session_id, pending(s.id)) for s in sessions]}
    )


# No slash merging: "/api/user/sessions//x" is no session's path (Werkzeug would answer it
# with an HTML redirect to ".../x").
@blueprint.delete("/api/user/sessions/<session_id>", merge_slashes=False)
@authenticated
async def end_session(user: AuthUser, session_id: str) -> Response:
    if not is_session_id(session_id):
        raise BadRequest(INVALID_SESSION_ID)
    state = app_state()
    now = state.clock_ms()
    if not await state.storage.end_session(user.id, session_id, now):
        raise NotFound(SESSION_NOT_FOUND)
    await state.revoker.end_sessions(user.id, [session_id], now)
    return json_response({"message": SESSION_ENDED, "current": session_id == user.session_id})


@blueprint.post("/api/user/sessions/logout-others")
@authenticated
async def logout_others(user: AuthUser) -> Response:
    state = app_state()
    now = state.clock_ms()
    if user.session_id is None:  # a legacy token: every session is another one
        ended = await state.storage.end_all_sessions(user.id, now)
    else:
        ended = await state.storage.end_other_sessions(user.id, user.session_id, now)
    await state.revoker.end_sessions(user.id, ended, now)
    noun = "session" if len(ended) == 1 else "sessions"
    return json_response(
        {"message": f"Logged out of {len(ended)} other {noun}.", "ended": len(ended)}
    )
