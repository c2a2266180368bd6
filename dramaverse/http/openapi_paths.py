"""Every route of the server in the OpenAPI document (``openapi.py``), and the helpers that
write an entry. One function per resource, so a new route goes next to its neighbours;
``tests/test_openapi.py`` fails when a route is missing here or described but not served.
"""

from __future__ import annotations

from typing import Any

from dramaverse.http.openapi_account import account_paths
from dramaverse.http.openapi_parts import answer, body, error, operation, query, ref, shared


def _accounts() -> dict[str, Any]:
    credentials = body(ref("Credentials"))
    return {
        "/api/auth/register": {
            "post": operation(
                "Create an account and sign in",
                operation_id="register",
                tag="accounts",
                auth=False,
                description="Starts a sign-in session (device label from the User-Agent).",
                request=credentials,
                responses={
                    "201": answer(
                        "Created",
                        {
                            "type": "object",
                            "required": ["message", "user", "token"],
                            "properties": {
                                "message": {"const": "User created successfully"},
                                "user": ref("UserName"),
                                "token": ref("Token"),
                            },
                        },
                    ),
                    "400": shared("BadRequest"),
                    "409": error("Username already exists"),
                    "429": shared("TooManyRequests"),
                    "503": shared("Unavailable"),
                },
            )
        },
        "/api/auth/login": {
            "post": operation(
                "Sign in",
                operation_id="login",
                tag="accounts",
                auth=False,
                description="Starts a sign-in session (device label from the User-Agent).",
                request=credentials,
                responses={
                    "200": answer(
                        "Signed in",
                        {
                            "type": "object",
                            "required": ["user", "token"],
                            "properties": {"user": ref("UserName"), "token": ref("Token")},
                        },
                    ),
                    "400": shared("BadRequest"),
                    "401": error("Invalid credentials"),
                    "403": error("This account has been banned (or a refused Origin)."),
                    "429": error(
                        "Over RATE_LIMIT_AUTH for this address (RateLimit headers), or too "
                        "many failed passwords for this account (RATE_LIMIT_LOGIN_ACCOUNT; "
                        "Retry-After; the same answer whether or not the username exists)."
                    ),
                    "503": shared("Unavailable"),
                },
            )
        },
        "/api/auth/logout": {
            "post": operation(
                "End the token's sign-in session",
                operation_id="logout",
                tag="sessions",
                auth=True,
                description=(
                    "From then on the token gets 401 on every process and its sockets are "
                    "closed (4100, or a Socket.IO disconnect). A token from before sessions "
                    "existed has none: its logout signs the user out everywhere. No body."
                ),
                responses={
                    "200": answer("Logged out", ref("Message")),
                    "503": shared("Unavailable"),
                },
            )
        },
    }


def _sessions() -> dict[str, Any]:
    session_id = {
        "name": "session_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{16,64}$"},
    }
    return {
        "/api/user/sessions": {
            "get": operation(
                "The user's live sign-in sessions, newest first",
                operation_id="listSessions",
                tag="sessions",
                auth=True,
                responses={
                    "200": answer(
                        "The sessions",
                        {
                            "type": "object",
                            "required": ["sessions"],
                            "properties": {"sessions": {"type": "array", "items": ref("Session")}},
                        },
                    ),
                    "503": shared("Unavailable"),
                },
            )
        },
        "/api/user/sessions/{session_id}": {
            "delete": operation(
                "End one of the user's own sessions",
                operation_id="endSession",
                tag="sessions",
                auth=True,
                description=(
                    "Someone else's session id answers 404 exactly like an unknown one. "
                    "Ending the current session is a logout."
                ),
                parameters=[session_id],
                responses={
                    "200": answer(
                        "Ended",
                        {
                            "type": "object",
                            "required": ["message", "current"],
                            "properties": {
                                "message": {"const": "Session ended."},
                                "current": {"type": "boolean"},
                            },
                        },
                    ),
                    "400": error("Not a session id (16 to 64 letters, digits, - or _)."),
                    "404": error("Session not found."),
                    "503": shared("Unavailable"),
                },
            )
        },
        "/api/user/sessions/logout-others": {
            "post": operation(
                "End every session but the token's",
                operation_id="logoutOthers",
                tag="sessions",
                auth=True,
                description="No body. A legacy token (no session) ends every session.",
                responses={
                    "200": answer(
                        "Ended",
                        {
                            "type": "object",
                            "required": ["message", "ended"],
                            "properties": {
                                "message": {"type": "string"},
                                "ended": {"type": "integer", "minimum": 0},
                            },
                        },
                    ),
                    "503": shared("Unavailable"),
                },
            )
        },
    }


def _library() -> dict[str, Any]:
    write_answers = {
        "200": answer("Saved", ref("Success")),
        "400": shared("BadRequest"),
        "404": error("Drama not found: <url>"),
        "413": shared("PayloadTooLarge"),
        "503": shared("Unavailable"),
    }

    def write(summary: str, operation_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        schema = {"type": "object", "required": list(fields), "properties": fields}
        return {
            "post": operation(
                summary,
                operation_id=operation_id,
                tag="library",
                auth=True,
                description="Appends an event to the user's log and syncs every device.",
                request=body(schema),
                responses=write_answers,
            )
        }

    url = {"type": "string", "maxLength": 2048}
    episode = {"type": "integer", "minimum": 0, "maximum": 100_000}
    review = write(
        "Save or delete (blank text) an episode review",
        "saveEpisodeReview",
        {
            "dramaUrl": url,
            "episodeNumber": episode,
            "text": {"type": "string", "maxLength": 10_000},
            "clientUpdatedAt": {"type": "number"},
        },
    )
    review["post"]["responses"]["200"] = answer(
        "Saved",
        {
            "type": "object",
            "properties": {"success": {"const": True}, "newUpdatedAt": {"type": "integer"}},
        },
    )
    review["post"]["responses"]["409"] = error("Conflict detected (body has serverVersion).")
    return {
        "/api/user/data": {
            "get": operation(
                "The user's library",
                operation_id="userData",
                tag="library",
                auth=True,
                responses={
                    "200": answer("{user, data: {favorites, statuses, reviews, episodeReviews}}"),
                    "503": shared("Unavailable"),
                },
            )
        },
        "/api/user/favorites": write(
            "Set or clear a favorite",
            "setFavorite",
            {"dramaUrl": url, "isFavorite": {"type": "boolean"}},
        ),
        "/api/user/statuses": write(
            "Set (or with an empty status, delete) a watch status",
            "setStatus",
            {"dramaUrl": url, "status": {"type": "string", "maxLength": 64}},
        ),
        "/api/user/reviews/episodes": review,
    }


def _catalog() -> dict[str, Any]:
    text = {"type": "string"}
    parameters = [
        query("page", "1 or more", {"type": "integer", "minimum": 1}),
        query("limit", "1 to 500", {"type": "integer", "minimum": 1, "maximum": 500}),
        query("search", "case-insensitive substring of the title", text),
        query("minRating", "a finite number", {"type": "number"}),
        *(
            query(name, "comma-separated", text)
            for name in ("genres", "excludeGenres", "tags", "excludeTags", "countries", "cast")
        ),
        query("sort", "a JSON array of {key, order}, at most 8", text),
    ]
    return {
        "/api/dramas": {
            "get": operation(
                "One page of the filtered, sorted catalog",
                operation_id="dramas",
                tag="catalog",
                auth=False,
                parameters=parameters,
                responses={
                    "200": answer("{totalItems, dramas, currentPage, totalPages}"),
                    "400": shared("BadRequest"),
                },
            )
        },
        "/api/dramas/metadata": {
            "get": operation(
                "Genres, tags, countries and cast of the catalog",
                operation_id="dramaMetadata",
                tag="catalog",
                auth=False,
                responses={"200": answer("{genres, tags, countries, cast}, each sorted")},
            )
        },
    }


def _player() -> dict[str, Any]:
    return {
        "/api/player/status": {
            "get": operation(
                "Recent player statuses in a room",
                operation_id="playerStatuses",
                tag="player",
                auth=True,
                parameters=[
                    query("roomCode", "the room (required)", {"type": "string"}),
                    query("userId", "only this user's", {"type": "integer", "minimum": 1}),
                ],
                responses={
                    "200": answer("{roomCode, users: {<id>: [statuses]}}"),
                    "400": shared("BadRequest"),
                    "503": shared("Unavailable"),
                },
            ),
            "post": operation(
                "Report the user's player status in a room",
                operation_id="reportPlayerStatus",
                tag="player",
                auth=True,
                request=body({"type": "object", "required": ["roomCode"]}),
                responses={
                    "200": answer(
                        "Stored",
                        {
                            "type": "object",
                            "properties": {
                                "success": {"const": True},
                                "timestamp": {"type": "integer"},
                            },
                        },
                    ),
                    "400": shared("BadRequest"),
                    "413": shared("PayloadTooLarge"),
                    "503": shared("Unavailable"),
                },
            ),
        }
    }


def _server(socket_io_path: str) -> dict[str, Any]:
    upgrade = {"101": answer("Switching protocols"), "400": answer("Not a WebSocket handshake")}
    engine = {
        "200": answer("Engine.IO packets (text/plain)"),
        "400": answer("An Engine.IO error: {code, message}"),
    }
    methods = {
        "get": "Engine.IO long-polling (GET) or the WebSocket upgrade",
        "post": "Engine.IO long-polling: the client's packets",
        "put": "Not an Engine.IO method: answered with its error",
        "patch": "Not an Engine.IO method: answered with its error",
        "delete": "Not an Engine.IO method: answered with its error",
    }
    return {
        "/api/health": {
            "get": operation(
                "Health of this process",
                operation_id="health",
                tag="server",
                auth=False,
                responses={
                    "200": answer("{status: ok | degraded, broker?, workers?}"),
                    "503": answer("{status: unavailable, storage}"),
                },
            )
        },
        "/api/openapi.json": {
            "get": operation(
                "This document",
                operation_id="openapi",
                tag="server",
                auth=False,
                responses={"200": answer("OpenAPI 3.1", {"type": "object"})},
            )
        },
        "/api/ws": {
            "get": operation(
                "The native WebSocket (subprotocol dramaverse.v1, docs/protocol.md)",
                operation_id="nativeSocket",
                tag="realtime",
                auth=False,
                description="The token comes in the hello message; a revoked one gets 4100.",
                responses=upgrade,
            )
        },
        socket_io_path: {
            method: operation(
                summary,
                operation_id=f"engineio_{method}",
                tag="realtime",
                auth=False,
                description="Socket.IO v5 over Engine.IO v4 (docs/socketio.md).",
                responses=engine,
            )
            for method, summary in methods.items()
        },
    }


def paths(socket_io_path: str) -> dict[str, Any]:
    """Every route, by path, with its socket.io path as configured."""
    return {
        **_server(socket_io_path),
        **_catalog(),
        **_accounts(),
        **_sessions(),
        **account_paths(),
        **_library(),
        **_player(),
    }
