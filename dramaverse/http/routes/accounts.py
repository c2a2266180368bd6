"""``/api/auth``: registration and login."""

from __future__ import annotations

from quart import Blueprint, Response

from dramaverse.errors import Unauthorized
from dramaverse.http.auth import parse_login, parse_registration
from dramaverse.http.responses import json_response, read_json_body
from dramaverse.http.routes.guards import auth_rate_limited
from dramaverse.http.state import app_state

blueprint = Blueprint("accounts", __name__)


@blueprint.post("/api/auth/register")
@auth_rate_limited
async def register() -> Response:
    username, password = parse_registration(await read_json_body())
    state = app_state()
    password_hash = await state.passwords.hash(password)
    user_id = await state.storage.create_user(username, password_hash)
    token = state.tokens.issue(user_id, username)
    return json_response(
        {"message": "User created successfully", "user": {"username": username}, "token": token},
        201,
    )


@blueprint.post("/api/auth/login")
@auth_rate_limited
async def login() -> Response:
    username, password = parse_login(await read_json_body())
    state = app_state()
    user = await state.storage.get_user_by_username(username)
    if not await state.passwords.verify(password, user.password_hash if user else None):
        raise Unauthorized("Invalid credentials")
    assert user is not None
    token = state.tokens.issue(user.id, user.username)
    return json_response({"user": {"username": user.username}, "token": token})
