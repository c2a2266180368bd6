"""The Quart-Trio application: routes, the security perimeter, and the error mapping.

Every error leaves as ``{"message": ...}`` JSON with the status the exception tree gives
(``dramaverse.errors``); anything unexpected is logged and becomes the original server's 500.
"""

from __future__ import annotations

import logging

from quart import Response, g, has_request_context, has_websocket_context, request, websocket
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from dramaverse.errors import Conflict, DramaverseError
from dramaverse.http.health import HealthCheck
from dramaverse.http.openapi import document_bytes
from dramaverse.http.responses import error_response, json_response, raw_json_response
from dramaverse.http.routes import (
    accounts,
    admin,
    catalog,
    library,
    password,
    player,
    sessions,
    user_data,
)
from dramaverse.http.security import SECURITY_HEADERS, CorsPolicy
from dramaverse.http.state import AppState
from dramaverse.realtime import socketio

log = logging.getLogger(__name__)
SERVER_ERROR = "Something broke! A server error occurred."
HEALTH_OK = b'{"status":"ok"}'


def create_app(state: AppState) -> QuartTrio:
    app = QuartTrio(__name__, static_folder=None)  # no static files: every route is ours
    app.extensions["dramaverse"] = state
    app.config["MAX_CONTENT_LENGTH"] = state.settings.max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.json.sort_keys = False  # type: ignore[attr-defined]
    perimeter = state.perimeter
    engine_path = state.settings.socket_io_path  # Engine.IO answers CORS itself (credentials)

    @app.before_request
    async def check_origin() -> Response | None:
        if request.path == engine_path:
            return None
        origin = request.headers.get("Origin")
        if not perimeter.allows_origin(origin):
            # The original server raised here and answered 500; a refusal is a 403.
            return error_response(403, perimeter.origin_refusal(origin))
        if request.method == "OPTIONS":
            response = Response(b"", 204)
            if origin is not None:
                response.headers.extend(CorsPolicy.preflight_headers(origin))
            return response
        return None

    @app.after_request
    async def add_headers(response: Response) -> Response:
        headers = response.headers
        headers.extend(SECURITY_HEADERS)
        origin = request.headers.get("Origin")
        if (
            origin is not None
            and perimeter.allows_origin(origin)
            and request.method != "OPTIONS"
            and request.path != engine_path
        ):
            headers.extend(CorsPolicy.grant_headers(origin))
        extra = g.get("extra_headers")
        if extra:
            headers.extend(extra)
        return response

    checks = HealthCheck(state)

    @app.get("/api/health")
    async def health() -> Response:
        # Healthy: the precomputed body. Degraded (Redis unreachable, a sibling worker crash
        # looping) still answers 200: this process serves. No database: 503 (http/health.py).
        answer = await checks.answer()
        if answer is None:
            return raw_json_response(HEALTH_OK)
        status, body = answer
        return json_response(body, status)

    openapi_body = document_bytes(state.settings)

    @app.get("/api/openapi.json")
    async def openapi() -> Response:
        return raw_json_response(openapi_body)  # built once (http/openapi.py)

    app.register_blueprint(catalog.blueprint)
    app.register_blueprint(accounts.blueprint)
    app.register_blueprint(library.blueprint)
    app.register_blueprint(player.blueprint)
    app.register_blueprint(sessions.blueprint)
    app.register_blueprint(admin.blueprint)
    app.register_blueprint(password.blueprint)
    app.register_blueprint(user_data.blueprint)
    socketio.install(app, state)  # its sessions' nursery: runtime starts engine_server(app).run

    @app.errorhandler(DramaverseError)
    async def known_error(error: DramaverseError) -> Response:
        extra = error.extra if isinstance(error, Conflict) else {}
        if error.status >= 500:
            log.warning("%s on %s %s: %s", error.status, *_current(), error.message)
        return error_response(error.status, error.message, **extra)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        method, path = _current()
        if status == 404:
            message = f"Not found: {method} {path}"
        elif status == 405:
            message = f"Method {method} is not allowed on {path}."
        elif status == 413:
            message = perimeter.body_refusal()
        elif status >= 500:
            message = SERVER_ERROR
        else:
            message = error.description or error.name
        response = error_response(status, message)
        if status == 405:
            for name, value in error.get_headers():
                if name.lower() == "allow":
                    response.headers["Allow"] = value
        return response

    @app.errorhandler(Exception)
    async def unexpected_error(error: Exception) -> Response:
        log.exception("unhandled error on %s %s", *_current(), exc_info=error)
        return error_response(500, SERVER_ERROR)

    return app


def _current() -> tuple[str, str]:
    """The method and path of the request or WebSocket handshake being handled (a WebSocket
    upgrade to an unknown path is answered by the same handlers, outside a request context)."""
    if has_request_context():
        return request.method, request.path
    if has_websocket_context():
        return "GET", websocket.path
    return "?", "?"
