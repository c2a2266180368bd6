"""``/api/user``: the signed-in user's library (favorites, statuses, episode reviews)."""

from __future__ import annotations

from quart import Blueprint, Response

from dramaverse.http import library_ops
from dramaverse.http.auth import AuthUser
from dramaverse.http.responses import json_response, read_json_body
from dramaverse.http.routes.guards import authenticated
from dramaverse.http.state import app_state

blueprint = Blueprint("library", __name__)


@blueprint.get("/api/user/data")
@authenticated
async def user_data(user: AuthUser) -> Response:
    return json_response(await library_ops.get_library(app_state(), user))


@blueprint.post("/api/user/favorites")
@authenticated
async def favorites(user: AuthUser) -> Response:
    body = await read_json_body()
    return json_response(await library_ops.set_favorite(app_state(), user, body))


@blueprint.post("/api/user/statuses")
@authenticated
async def statuses(user: AuthUser) -> Response:
    body = await read_json_body()
    return json_response(await library_ops.set_status(app_state(), user, body))


@blueprint.post("/api/user/reviews/episodes")
@authenticated
async def episode_reviews(user: AuthUser) -> Response:
    body = await read_json_body()
    return json_response(await library_ops.save_episode_review(app_state(), user, body))
