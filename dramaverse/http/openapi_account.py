"""The user's own account in the OpenAPI document: password change, export, deletion
(``routes/password.py``, ``routes/user_data.py``; docs/auth.md)."""

from __future__ import annotations

from typing import Any

from dramaverse.http.openapi_parts import answer, body, error, operation, ref, shared

PASSWORD_LIMITED = error(
    "Over RATE_LIMIT_USER or RATE_LIMIT_AUTH for this address (RateLimit headers), or too "
    "many wrong passwords with this session's token (Retry-After)."
)


def account_paths() -> dict[str, Any]:
    return {
        "/api/user/password": {
            "post": operation(
                "Change the password; sign out every other session",
                operation_id="changePassword",
                tag="account",
                auth=True,
                description=(
                    "Every other sign-in session ends and every token issued before the change "
                    "is refused, on every process; their sockets close (4100, or a Socket.IO "
                    "disconnect). The current session continues with the token of the answer "
                    "(also set as the auth cookie when the request came by cookie); sockets "
                    "opened with its old token close too and reconnect with the new one."
                ),
                request=body(
                    {
                        "type": "object",
                        "required": ["currentPassword", "newPassword"],
                        "properties": {
                            "currentPassword": {"type": "string", "minLength": 1},
                            "newPassword": {
                                "type": "string",
                                "minLength": 6,
                                "description": "At least 6 UTF-16 units, at most 72 bytes in "
                                "UTF-8; not the current password.",
                            },
                        },
                    }
                ),
                responses={
                    "200": answer(
                        "Changed: a fresh token for the current session",
                        {
                            "type": "object",
                            "required": ["user", "token"],
                            "properties": {"user": ref("UserName"), "token": ref("Token")},
                        },
                    ),
                    "400": shared("BadRequest"),
                    "403": error(
                        "Current password is incorrect (or a refused Origin, or a cookie "
                        "request failing CSRF)."
                    ),
                    "413": shared("PayloadTooLarge"),
                    "429": PASSWORD_LIMITED,
                    "503": shared("Unavailable"),
                },
            )
        },
        "/api/user/export": {
            "get": operation(
                "Everything stored about the user, as a JSON download",
                operation_id="exportUserData",
                tag="account",
                auth=True,
                description=(
                    "Sent with Content-Disposition: attachment and Cache-Control: no-store. "
                    "Only the token's own user; no password hash."
                ),
                responses={
                    "200": answer("The export", ref("UserExport")),
                    "503": shared("Unavailable"),
                },
            )
        },
        "/api/user": {
            "delete": operation(
                "Delete the account and everything stored about it",
                operation_id="deleteAccount",
                tag="account",
                auth=True,
                description=(
                    "Library, events, sessions and player statuses go with it. Every token of "
                    "the user is refused and every socket closed, on every process; a cookie "
                    "request gets its cookies cleared."
                ),
                request=body(
                    {
                        "type": "object",
                        "required": ["password"],
                        "properties": {"password": {"type": "string", "minLength": 1}},
                    }
                ),
                responses={
                    "200": answer("Deleted", ref("Message")),
                    "400": shared("BadRequest"),
                    "403": error(
                        "Password is incorrect (or a refused Origin, or a cookie request "
                        "failing CSRF)."
                    ),
                    "409": error("The last administrator cannot delete their account."),
                    "413": shared("PayloadTooLarge"),
                    "429": PASSWORD_LIMITED,
                    "503": shared("Unavailable"),
                },
            )
        },
    }


EXPORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "format",
        "exportedAt",
        "user",
        "library",
        "events",
        "sessions",
        "playerStatuses",
    ],
    "properties": {
        "format": {"const": "dramaverse.export.v1"},
        "exportedAt": {"type": "integer", "description": "ms since the epoch"},
        "user": {
            "type": "object",
            "required": [
                "id",
                "username",
                "createdAt",
                "isAdmin",
                "isBanned",
                "tokensValidAfter",
            ],
            "properties": {
                "id": {"type": "integer"},
                "username": {"type": "string"},
                "createdAt": {"type": ["integer", "null"]},
                "isAdmin": {"type": "boolean"},
                "isBanned": {"type": "boolean"},
                "tokensValidAfter": {"type": "integer"},
            },
        },
        "library": {
            "type": "object",
            "description": "The shape of GET /api/user/data's data: favorites, statuses, "
            "episode reviews.",
        },
        "events": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["seq", "name", "payload", "createdAt"],
            },
        },
        "sessions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "id",
                    "createdAt",
                    "lastSeenAt",
                    "expiresAt",
                    "endedAt",
                    "device",
                    "userAgent",
                    "address",
                ],
            },
        },
        "playerStatuses": {
            "type": "array",
            "items": {"type": "object", "required": ["roomCode", "status", "createdAt"]},
        },
    },
}
