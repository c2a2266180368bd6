"""``/api/user``: the signed-in user's library (favorites, statuses, episode reviews)."""

from __future__ import annotations

from quart import Blueprint, Response

from dramaverse.http import library_ops
from dramaverse.http.auth import AuthUser
from dramaverse.http.responses import json_response
from dramaverse.http.routes.guards import authenticated
from dramaverse.http.state import app_state

blueprint = Blueprint("library", __name__)


@blueprint.get("/api/user/data")
@authenticated
async def user_data(user: AuthUser) -> Response:
    return json_response(await library_ops.get_library(app_state(), user))


# POST on these paths is answered by the raw-ASGI fast path in front of Quart
# (dramaverse/http/fastpath.py). They stay registered here so the routing table knows them:
# other methods get 405 with ``Allow: POST`` like every route.
@blueprint.post("/api/user/favorites")
@blueprint.post("/api/user/statuses")
@blueprint.post("/api/user/reviews/episodes")
async def served_by_fast_path() -> Response:  # pragma: no cover - never reached
    raise RuntimeError("library writes are served by dramaverse.http.fastpath")
