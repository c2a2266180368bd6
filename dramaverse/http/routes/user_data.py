"""The signed-in user's own data: ``GET /api/user/export`` and ``DELETE /api/user`` (docs/auth.md,
"Your data: export and deletion").

**Export** answers everything storage holds about the user as one JSON document, read in one
snapshot: the account (without its password hash), the library, the event log, the sign-in
sessions (ended ones included, while they are kept) and the player statuses. It is sent as a
download (``Content-Disposition: attachment``) and never cached. Only the token's own user is
read: there is no parameter naming a user.

**Deletion** needs the account's password in the body (``{"password": ...}``; a wrong one is
403, and counts against the account like a failed login). The last administrator cannot delete
their account (409). Otherwise the account and everything stored about it are removed in one
transaction, then every token of the user is refused and every socket of theirs closed, on
every process (the revocation core's "removed" message). The answer is 200 with a message; a
request that came by cookie gets the cookies cleared too.

Limits: the token (401) and ``RATE_LIMIT_USER`` (429) for both; deletion also spends
``RATE_LIMIT_AUTH`` and the session's budget of wrong passwords (``routes/password_guard.py``).
"""

from __future__ import annotations

import datetime
import re
from typing import Any, Final

from quart import Blueprint, Response

from dramaverse.errors import BadRequest, Unauthorized
from dramaverse.http.auth import TOKEN_INVALID, AuthUser
from dramaverse.http.cookies import clear_auth_cookies
from dramaverse.http.responses import json_response, read_json_body
from dramaverse.http.routes.guards import (
    auth_rate_limited,
    authenticated,
    authenticated_by_cookie,
)
from dramaverse.http.routes.password import MAX_PASSWORD_CHARS
from dramaverse.http.routes.password_guard import check_own_password, request_address
from dramaverse.http.state import app_state

blueprint = Blueprint("user_data", __name__)

EXPORT_FORMAT: Final = "dramaverse.export.v1"
DELETE_INVALID: Final = "Invalid input: password is required, a string."
PASSWORD_TOO_LONG: Final = (
    f"Invalid input: password must be at most {MAX_PASSWORD_CHARS} characters."
)
WRONG_PASSWORD: Final = "Password is incorrect; the account was not deleted."
DELETED: Final = "Account deleted."
_UNSAFE_IN_FILENAME = re.compile(r"[^A-Za-z0-9_.-]")


def export_filename(username: str, now_ms: int) -> str:
    """``dramaverse-<name>-<UTC date>.json``, with only safe characters in the name."""
    day = datetime.datetime.fromtimestamp(now_ms / 1000, datetime.UTC).date().isoformat()
    name = _UNSAFE_IN_FILENAME.sub("_", username)[:40] or "user"
    return f"dramaverse-{name}-{day}.json"


@blueprint.get("/api/user/export")
@authenticated
async def export(user: AuthUser) -> Response:
    state = app_state()
    stored = await state.storage.export_user(user.id)
    if stored is None:  # deleted since the token was checked
        raise Unauthorized(TOKEN_INVALID)
    now = state.clock_ms()
    document: dict[str, Any] = {"format": EXPORT_FORMAT, "exportedAt": now, **stored.to_json()}
    response = json_response(document)
    filename = export_filename(str(stored.user.get("username", "")), now)
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.headers["Cache-Control"] = "no-store"
    return response


def parse_deletion(body: object) -> str:
    fields = body if isinstance(body, dict) else {}
    password = fields.get("password")
    if not isinstance(password, str) or not password:
        raise BadRequest(DELETE_INVALID)
    if len(password) > MAX_PASSWORD_CHARS:
        raise BadRequest(PASSWORD_TOO_LONG)
    return password


@blueprint.delete("/api/user")
@authenticated
@auth_rate_limited
async def delete_account(user: AuthUser) -> Response:
    password = parse_deletion(await read_json_body())
    state = app_state()
    await check_own_password(state, user, password, request_address(state), WRONG_PASSWORD)
    # LastAdmin (409) leaves everything as it was.
    if not await state.storage.delete_user(user.id):
        raise Unauthorized(TOKEN_INVALID)  # deleted meanwhile
    await state.revoker.user_removed(user.id, state.clock_ms())
    response = json_response({"message": DELETED})
    if authenticated_by_cookie():
        clear_auth_cookies(response)
    return response
