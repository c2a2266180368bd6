"""``/api/admin``: the administrators' API (docs/auth.md, "Roles and the admin API").

- ``GET /api/admin/users?search&page&limit``: users by id, with roles, last seen and library
  sizes, one page at a time;
- ``GET /api/admin/stats?days``: registrations per day, users, active sessions, and the devices
  connected to this process now;
- ``GET /api/admin/users/<id>/data``: everything stored about a user (no password hash);
- ``POST /api/admin/users/<id>/{promote,demote,ban,unban,reset-password}``;
- ``DELETE /api/admin/users/<id>``.

Every route passes ``admin_required`` (401 without a valid token, 429 over the ``/api/user``
limit, 403 ``Admin access required`` for anyone whose stored role is not admin) and takes the
cookie with CSRF like any other route. The steps themselves are ``http/moderation.py``'s: a ban,
reset or deletion refuses the user's tokens and closes their sockets on every process at once.
Demoting, banning or deleting the last admin who is not banned is 409; an id that is no whole
number from 1 to 2^53-1 is 400, one nobody has 404.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

from quart import Blueprint, Response, request

from dramaverse.domain.numbers import MAX_SAFE_INTEGER
from dramaverse.errors import BadRequest, NotFound
from dramaverse.http.auth import AuthUser
from dramaverse.http.moderation import USER_NOT_FOUND, Moderation
from dramaverse.http.responses import json_response
from dramaverse.http.routes.guards import admin_required
from dramaverse.http.state import AppState, app_state
from dramaverse.storage.accounts import MAX_PAGE, MAX_PAGE_SIZE, MAX_SEARCH_LENGTH, MAX_STATS_DAYS
from dramaverse.storage.base import UserRecord

blueprint = Blueprint("admin", __name__)

DEFAULT_PAGE_SIZE: Final = 20
DEFAULT_STATS_DAYS: Final = 30
INVALID_USER_ID: Final = f"Invalid user id: a whole number from 1 to {MAX_SAFE_INTEGER}."
INVALID_SEARCH: Final = (
    f"Invalid search: at most {MAX_SEARCH_LENGTH} characters, without control characters."
)
_DIGITS = re.compile(r"[0-9]{1,20}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def parse_user_id(text: str) -> int:
    """A path's user id: decimal digits naming a safe integer from 1; 400 otherwise."""
    if not _DIGITS.fullmatch(text) or not 1 <= int(text) <= MAX_SAFE_INTEGER:
        raise BadRequest(INVALID_USER_ID)
    return int(text)


def whole_argument(name: str, default: int, low: int, high: int) -> int:
    """A query argument that must be a whole number in ``[low, high]`` (``default`` when it is
    absent); 400 naming the argument and its range otherwise."""
    raw = request.args.get(name)
    if raw is None:
        return default
    if not _DIGITS.fullmatch(raw) or not low <= int(raw) <= high:
        raise BadRequest(f"Invalid {name}: a whole number from {low} to {high}.")
    return int(raw)


def search_argument() -> str:
    search = request.args.get("search", "")
    if len(search) > MAX_SEARCH_LENGTH or _CONTROL.search(search):
        raise BadRequest(INVALID_SEARCH)
    return search


def moderation(state: AppState) -> Moderation:
    tokens = state.tokens  # a cut-off is compared with tokens' iat: their clock
    return Moderation(state.storage, state.revoker, state.passwords, lambda: tokens.now() * 1000)


def user_json(user: UserRecord) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "createdAt": user.created_at,
        "isAdmin": user.is_admin,
        "isBanned": user.is_banned,
    }


@blueprint.after_request
async def not_stored(response: Response) -> Response:
    """Nothing an administrator reads (user data, a generated password) stays in a cache."""
    response.headers["Cache-Control"] = "no-store"
    return response


def changed(message: str, user: UserRecord, **extra: Any) -> Response:
    return json_response({"message": message, **extra, "user": user_json(user)})


# -- reading ------------------------------------------------------------------------------------


@blueprint.get("/api/admin/users")
@admin_required
async def list_users(admin: AuthUser) -> Response:
    search = search_argument()
    page = whole_argument("page", 1, 1, MAX_PAGE)
    limit = whole_argument("limit", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
    found = await app_state().storage.list_users(search, page, limit)
    return json_response(
        {
            "users": [user.to_json() for user in found.users],
            "total": found.total,
            "page": page,
            "limit": limit,
            "totalPages": math.ceil(found.total / limit),
        }
    )


@blueprint.get("/api/admin/stats")
@admin_required
async def stats(admin: AuthUser) -> Response:
    days = whole_argument("days", DEFAULT_STATS_DAYS, 1, MAX_STATS_DAYS)
    state = app_state()
    counted = await state.storage.account_stats(state.clock_ms(), days)
    return json_response(
        {
            **counted.to_json(),
            "days": days,
            # This process's sockets (native and Socket.IO): with --workers N each worker
            # answers for itself, and "worker" says which one answered.
            "connectedDevices": state.sockets.count(),
            "worker": state.settings.worker_id,
        }
    )


@blueprint.get("/api/admin/users/<user_id>/data")
@admin_required
async def user_data(admin: AuthUser, user_id: str) -> Response:
    exported = await app_state().storage.export_user(parse_user_id(user_id))
    if exported is None:
        raise NotFound(USER_NOT_FOUND)
    return json_response(exported.to_json())


# -- changing -----------------------------------------------------------------------------------


@blueprint.post("/api/admin/users/<user_id>/promote")
@admin_required
async def promote(admin: AuthUser, user_id: str) -> Response:
    user = await moderation(app_state()).set_admin(parse_user_id(user_id), True)
    return changed(f"{user.username} is an admin.", user)


@blueprint.post("/api/admin/users/<user_id>/demote")
@admin_required
async def demote(admin: AuthUser, user_id: str) -> Response:
    user = await moderation(app_state()).set_admin(parse_user_id(user_id), False)
    return changed(f"{user.username} is no longer an admin.", user)


@blueprint.post("/api/admin/users/<user_id>/ban")
@admin_required
async def ban(admin: AuthUser, user_id: str) -> Response:
    user = await moderation(app_state()).ban(parse_user_id(user_id))
    return changed(f"{user.username} is banned and signed out everywhere.", user)


@blueprint.post("/api/admin/users/<user_id>/unban")
@admin_required
async def unban(admin: AuthUser, user_id: str) -> Response:
    user = await moderation(app_state()).unban(parse_user_id(user_id))
    return changed(f"{user.username} is no longer banned.", user)


@blueprint.post("/api/admin/users/<user_id>/reset-password")
@admin_required
async def reset_password(admin: AuthUser, user_id: str) -> Response:
    steps = moderation(app_state())
    target = parse_user_id(user_id)
    password = await steps.reset_password(target)
    user = await steps.user(target)
    return changed(
        f"The password of {user.username} was reset and they are signed out everywhere; "
        "the new password is shown only this once.",
        user,
        password=password,
    )


@blueprint.delete("/api/admin/users/<user_id>")
@admin_required
async def delete_user(admin: AuthUser, user_id: str) -> Response:
    steps = moderation(app_state())
    user = await steps.user(parse_user_id(user_id))
    await steps.delete(user.id)
    return json_response({"message": f"{user.username} and everything stored about them deleted."})
