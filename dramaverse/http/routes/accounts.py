"""``/api/auth``: registration and login.

Both answer ``{..., "token"}`` as the original server did. With ``"cookie": true`` in the body
they also set the auth and CSRF cookies for browsers (``http/cookies.py``); the answer is the
same either way.
"""

from __future__ import annotations

from quart import Blueprint, Response

from dramaverse.errors import Unauthorized
from dramaverse.http.auth import parse_login, parse_registration
from dramaverse.http.cookies import cookie_requested
from dramaverse.http.responses import json_response, read_json_body
from dramaverse.http.routes.guards import auth_rate_limited
from dramaverse.http.state import app_state

blueprint = Blueprint("accounts", __name__)


@blueprint.post("/api/auth/register")
@auth_rate_limited
async def register() -> Response:
    body = await read_json_body()
    username, password = parse_registration(body)
    wants_cookie = cookie_requested(body)
    state = app_state()
    password_hash = await state.passwords.hash(password)
    user_id = await state.storage.create_user(username, password_hash)
    token = state.tokens.issue(user_id, username)
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
    user = await state.storage.get_user_by_username(username)
    if not await state.passwords.verify(password, user.password_hash if user else None):
        raise Unauthorized("Invalid credentials")
    assert user is not None
    token = state.tokens.issue(user.id, user.username)
    response = json_response({"user": {"username": user.username}, "token": token})
    if wants_cookie:
        state.cookie_auth.set_auth_cookies(response, token)
    return response
