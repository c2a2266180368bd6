"""``/api/user``: the signed-in user's library (favorites, statuses, episode reviews)."""

from __future__ import annotations

from quart import Blueprint, Response

from dramaverse.domain.library import parse_episode_review, parse_favorite, parse_status
from dramaverse.errors import Unauthorized
from dramaverse.http.auth import TOKEN_INVALID, AuthUser
from dramaverse.http.responses import json_response, read_json_body
from dramaverse.http.routes.guards import authenticated
from dramaverse.http.state import app_state

blueprint = Blueprint("library", __name__)


@blueprint.get("/api/user/data")
@authenticated
async def user_data(user: AuthUser) -> Response:
    library = await app_state().storage.get_library(user.id)
    if library is None:  # a valid token for an account that no longer exists
        raise Unauthorized(TOKEN_INVALID)
    return json_response({"user": {"username": user.username}, "data": library.to_json()})


@blueprint.post("/api/user/favorites")
@authenticated
async def favorites(user: AuthUser) -> Response:
    change = parse_favorite(await read_json_body())
    await app_state().storage.set_favorite(user.id, change)
    return json_response({"success": True})


@blueprint.post("/api/user/statuses")
@authenticated
async def statuses(user: AuthUser) -> Response:
    change = parse_status(await read_json_body())
    await app_state().storage.set_status(user.id, change)
    return json_response({"success": True})


@blueprint.post("/api/user/reviews/episodes")
@authenticated
async def episode_reviews(user: AuthUser) -> Response:
    change = parse_episode_review(await read_json_body())
    state = app_state()
    result = await state.storage.save_episode_review(user.id, change, state.clock_ms())
    if result.updated_at is None:
        return json_response({"success": True})
    return json_response({"success": True, "newUpdatedAt": result.updated_at})
