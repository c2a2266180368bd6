"""The OpenAPI 3.1 document the server serves at ``GET /api/openapi.json``.

The document is data built here (components, the shared responses) and in ``openapi_paths.py``
(one entry per route). ``tests/test_openapi.py`` walks the application's URL map, the raw-ASGI
routes in front of it (the library writes of ``fastpath.py``, the native WebSocket) and checks
that every route is described and nothing else is, so the document cannot drift from the code.
The new resources (sessions) are described fully, with every status they answer; the routes
kept from the original server have their path, method, summary, authentication and main
answers.

The document depends on the settings only through ``SOCKET_IO_PATH``; it is encoded once per
application (:func:`document_bytes`).
"""

from __future__ import annotations

import json
from typing import Any, Final

from dramaverse import __version__
from dramaverse.config import Settings
from dramaverse.http import openapi_admin
from dramaverse.http.openapi_account import EXPORT_SCHEMA
from dramaverse.http.openapi_parts import error
from dramaverse.http.openapi_paths import paths

SCHEMAS: Final[dict[str, Any]] = {
    "Message": {
        "type": "object",
        "required": ["message"],
        "properties": {"message": {"type": "string"}},
    },
    "Credentials": {
        "type": "object",
        "required": ["username", "password"],
        "properties": {
            "username": {"type": "string", "pattern": "^[a-zA-Z0-9_.-]{3,20}$"},
            "password": {
                "type": "string",
                "minLength": 6,
                "description": "At least 6 UTF-16 units, at most 72 bytes in UTF-8.",
            },
        },
    },
    "UserName": {
        "type": "object",
        "required": ["username"],
        "properties": {"username": {"type": "string"}},
    },
    "Token": {
        "type": "string",
        "description": (
            "An HS256 JWT with id, username, iat, exp and, since sessions exist, sid (the "
            "sign-in session) and jti (docs/auth.md)."
        ),
    },
    "Success": {
        "type": "object",
        "required": ["success"],
        "properties": {"success": {"const": True}},
    },
    "Session": {
        "type": "object",
        "required": [
            "id",
            "current",
            "device",
            "userAgent",
            "address",
            "createdAt",
            "lastSeenAt",
            "expiresAt",
        ],
        "properties": {
            "id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{16,64}$"},
            "current": {
                "type": "boolean",
                "description": "Whether the request's own token belongs to this session.",
            },
            "device": {
                "type": "string",
                "maxLength": 64,
                "description": "A label from the User-Agent, like 'Firefox on Windows'.",
            },
            "userAgent": {"type": "string", "maxLength": 512},
            "address": {"type": "string", "maxLength": 64},
            "createdAt": {"type": "integer", "description": "ms since the epoch"},
            "lastSeenAt": {
                "type": "integer",
                "description": "ms since the epoch; written in batches, so up to "
                "SESSION_TOUCH_SECONDS late for other processes' requests",
            },
            "expiresAt": {"type": "integer", "description": "when the session's token expires"},
        },
    },
    "UserExport": EXPORT_SCHEMA,
}

RESPONSES: Final[dict[str, Any]] = {
    "Unauthorized": error(
        "No token ('Authentication token required'), or one that is invalid, expired or "
        "revoked: its session ended or its user was signed out everywhere "
        "('Invalid or expired token')."
    ),
    "TooManyRequests": error("Over the rate limit; RateLimit headers say when to retry."),
    "OriginRefused": error("A browser page on an origin that is not allowed."),
    "BadRequest": error("Malformed JSON or an invalid field; nothing was changed."),
    "PayloadTooLarge": error("The body is over MAX_BODY_BYTES."),
    "Unavailable": error("The database cannot be reached right now; retry later."),
}


def document(settings: Settings) -> dict[str, Any]:
    """The whole OpenAPI document for a server with ``settings``."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Dramaverse",
            "version": __version__,
            "description": (
                "The HTTP API of the Dramaverse server: the original server's contract "
                "(catalog, accounts, library, player status) and the resources added since "
                "(sign-in sessions, the user's own account, the admin API). Errors are "
                '{"message": ...} JSON. Real-time: the native '
                "WebSocket /api/ws (docs/protocol.md) and Socket.IO (docs/socketio.md)."
            ),
        },
        "tags": [
            {"name": "catalog"},
            {"name": "accounts"},
            {"name": "sessions", "description": "Sign-in sessions (docs/auth.md)."},
            {"name": "admin", "description": "Administrators only (docs/auth.md, roles)."},
            {
                "name": "account",
                "description": "The user's own account: password, export, deletion (docs/auth.md).",
            },
            {"name": "library"},
            {"name": "player"},
            {"name": "realtime"},
            {"name": "server"},
        ],
        "paths": {**paths(settings.socket_io_path), **openapi_admin.paths()},
        "components": {
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
            "schemas": {**SCHEMAS, **openapi_admin.SCHEMAS},
            "responses": RESPONSES,
        },
    }


def document_bytes(settings: Settings) -> bytes:
    return json.dumps(document(settings), separators=(",", ":")).encode()
