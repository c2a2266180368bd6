"""The admin API in the OpenAPI document: its schemas and its routes (``routes/admin.py``).

Kept apart from ``openapi_paths.py`` because it is one resource with schemas of its own;
``openapi.py`` adds both to the document and ``tests/test_openapi.py`` checks them against the
routes served.
"""

from __future__ import annotations

from typing import Any, Final

from dramaverse.domain.numbers import MAX_SAFE_INTEGER
from dramaverse.http.openapi_parts import answer, error, operation, query, ref, shared
from dramaverse.storage.accounts import MAX_PAGE, MAX_PAGE_SIZE, MAX_SEARCH_LENGTH, MAX_STATS_DAYS

TAG: Final = "admin"
_MS = {"type": "integer", "description": "ms since the epoch"}
_NULLABLE_MS = {"type": ["integer", "null"], "description": "ms since the epoch, or null"}

SCHEMAS: Final[dict[str, Any]] = {
    "AdminUser": {
        "type": "object",
        "required": ["id", "username", "createdAt", "isAdmin", "isBanned"],
        "properties": {
            "id": {"type": "integer", "minimum": 1},
            "username": {"type": "string"},
            "createdAt": {
                **_NULLABLE_MS,
                "description": "ms since the epoch; null for accounts older than the column",
            },
            "isAdmin": {"type": "boolean"},
            "isBanned": {"type": "boolean"},
        },
    },
    "UserSummary": {
        "type": "object",
        "required": [
            "id",
            "username",
            "createdAt",
            "isAdmin",
            "isBanned",
            "lastSeenAt",
            "library",
        ],
        "properties": {
            "id": {"type": "integer", "minimum": 1},
            "username": {"type": "string"},
            "createdAt": _NULLABLE_MS,
            "isAdmin": {"type": "boolean"},
            "isBanned": {"type": "boolean"},
            "lastSeenAt": {
                **_NULLABLE_MS,
                "description": "the latest last-seen time of the user's sessions (written in "
                "batches), or null",
            },
            "library": {
                "type": "object",
                "required": ["favorites", "statuses", "episodeReviews"],
                "properties": {
                    "favorites": {"type": "integer", "minimum": 0},
                    "statuses": {"type": "integer", "minimum": 0},
                    "episodeReviews": {"type": "integer", "minimum": 0},
                },
            },
        },
    },
    "AccountChange": {
        "type": "object",
        "required": ["message", "user"],
        "properties": {
            "message": {"type": "string"},
            "user": ref("AdminUser"),
            "password": {
                "type": "string",
                "description": "reset-password only: the generated password, shown this once",
            },
        },
    },
}

USER_ID: Final = {
    "name": "user_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_SAFE_INTEGER},
    "description": "decimal digits; anything else is a 400",
}

_REFUSED = error(
    "'Admin access required' (the stored role is not admin), a browser page on an origin "
    "that is not allowed, or a cookie request that fails CSRF."
)
_BAD_ID = error(f"Invalid user id: a whole number from 1 to {MAX_SAFE_INTEGER}.")
_NOT_FOUND = error("User not found")
_LAST_ADMIN = error("The last admin cannot be demoted, banned or deleted.")


def _action(
    action: str, summary: str, operation_id: str, description: str, *, last_admin: bool
) -> dict[str, Any]:
    responses = {
        "200": answer("Done", ref("AccountChange")),
        "400": _BAD_ID,
        "403": _REFUSED,
        "404": _NOT_FOUND,
        "503": shared("Unavailable"),
    }
    if last_admin:
        responses["409"] = _LAST_ADMIN
    return {
        f"/api/admin/users/{{user_id}}/{action}": {
            "post": operation(
                summary,
                operation_id=operation_id,
                tag=TAG,
                auth=True,
                description=description + " No body.",
                parameters=[USER_ID],
                responses=responses,
            )
        }
    }


def _whole(name: str, description: str, low: int, high: int, default: int) -> dict[str, Any]:
    schema = {"type": "integer", "minimum": low, "maximum": high, "default": default}
    return query(name, description, schema)


def paths() -> dict[str, Any]:
    """The admin routes, by path."""
    listing = {
        "type": "object",
        "required": ["users", "total", "page", "limit", "totalPages"],
        "properties": {
            "users": {"type": "array", "items": ref("UserSummary")},
            "total": {"type": "integer", "minimum": 0, "description": "users matching"},
            "page": {"type": "integer"},
            "limit": {"type": "integer"},
            "totalPages": {"type": "integer", "minimum": 0},
        },
    }
    stats = {
        "type": "object",
        "required": [
            "users",
            "registrationsPerDay",
            "activeSessions",
            "days",
            "connectedDevices",
            "worker",
        ],
        "properties": {
            "users": {"type": "integer", "minimum": 0},
            "registrationsPerDay": {
                "type": "array",
                "description": "UTC days with at least one registration, oldest first",
                "items": {
                    "type": "object",
                    "required": ["day", "count"],
                    "properties": {
                        "day": {"type": "string", "format": "date"},
                        "count": {"type": "integer", "minimum": 1},
                    },
                },
            },
            "activeSessions": {
                "type": "integer",
                "description": "sessions not ended whose token has not expired (all processes)",
            },
            "days": {"type": "integer"},
            "connectedDevices": {
                "type": "integer",
                "description": "native and Socket.IO sockets connected to the process that "
                "answered, now (with --workers N: that worker only)",
            },
            "worker": {
                "type": ["integer", "null"],
                "description": "the worker that answered; null for a single process",
            },
        },
    }
    export = {
        "type": "object",
        "required": ["user", "library", "events", "sessions", "playerStatuses"],
        "description": "Everything stored about the user, without the password hash.",
        "properties": {
            "user": {"type": "object"},
            "library": {"type": "object"},
            "events": {"type": "array", "items": {"type": "object"}},
            "sessions": {"type": "array", "items": {"type": "object"}},
            "playerStatuses": {"type": "array", "items": {"type": "object"}},
        },
    }
    read_answers = {"403": _REFUSED, "503": shared("Unavailable")}
    return {
        "/api/admin/users": {
            "get": operation(
                "Users by id, one page at a time",
                operation_id="adminListUsers",
                tag=TAG,
                auth=True,
                parameters=[
                    query(
                        "search",
                        "only names containing this text, case-insensitive",
                        {"type": "string", "maxLength": MAX_SEARCH_LENGTH},
                    ),
                    _whole("page", "the page, from 1", 1, MAX_PAGE, 1),
                    _whole("limit", "users per page", 1, MAX_PAGE_SIZE, 20),
                ],
                responses={
                    "200": answer("A page of users", listing),
                    "400": error("Invalid page, limit or search (the message names which)."),
                    **read_answers,
                },
            )
        },
        "/api/admin/stats": {
            "get": operation(
                "Registrations, sessions and connected devices",
                operation_id="adminStats",
                tag=TAG,
                auth=True,
                parameters=[_whole("days", "how many UTC days back", 1, MAX_STATS_DAYS, 30)],
                responses={
                    "200": answer("The figures", stats),
                    "400": error("Invalid days: a whole number from 1 to 366."),
                    **read_answers,
                },
            )
        },
        "/api/admin/users/{user_id}/data": {
            "get": operation(
                "Everything stored about a user",
                operation_id="adminUserData",
                tag=TAG,
                auth=True,
                parameters=[USER_ID],
                responses={
                    "200": answer("The user's data", export),
                    "400": _BAD_ID,
                    "404": _NOT_FOUND,
                    **read_answers,
                },
            )
        },
        **_action(
            "promote",
            "Make a user an admin",
            "adminPromote",
            "Counts from the user's next request.",
            last_admin=False,
        ),
        **_action(
            "demote",
            "Take the admin role away",
            "adminDemote",
            "Counts from the user's next request; never the last admin who is not banned.",
            last_admin=True,
        ),
        **_action(
            "ban",
            "Ban a user",
            "adminBan",
            "The user cannot log in (403), every session ends, every token is refused and "
            "every socket closed, on every process.",
            last_admin=True,
        ),
        **_action(
            "unban",
            "Lift a ban",
            "adminUnban",
            "The user can log in again; old tokens stay refused.",
            last_admin=False,
        ),
        **_action(
            "reset-password",
            "Set a generated password",
            "adminResetPassword",
            "Answers the new password once (only its hash is stored) and signs the user out "
            "everywhere.",
            last_admin=False,
        ),
        "/api/admin/users/{user_id}": {
            "delete": operation(
                "Delete a user and everything stored about them",
                operation_id="adminDeleteUser",
                tag=TAG,
                auth=True,
                description="Library, events, sessions, player statuses; tokens refused and "
                "sockets closed on every process.",
                parameters=[USER_ID],
                responses={
                    "200": answer("Deleted", ref("Message")),
                    "400": _BAD_ID,
                    "404": _NOT_FOUND,
                    "409": _LAST_ADMIN,
                    **read_answers,
                },
            )
        },
    }
