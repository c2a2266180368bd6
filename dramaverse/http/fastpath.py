"""The library writes served as raw ASGI, in front of the Quart application.

``POST /api/user/favorites``, ``/api/user/statuses`` and ``/api/user/reviews/episodes`` are the
hot path of live sync: every change a user makes on any device goes through one of them, and
the fan-out benchmark (bench/fanout_bench.py) is bound by their cost. Quart's request context,
routing and hooks cost about as much as the write itself, so these three routes are answered
here, directly on the ASGI messages, with the same perimeter as every other route, in the same
order: Origin (403), Bearer token (401; without an Authorization header, the auth cookie under
the CSRF rules of ``csrf.py``, 403), per-address rate limit (429 with RateLimit headers),
body size (413), JSON (400), then the shared operation from :mod:`library_ops` (validation,
404, 409 with serverVersion). Responses carry the same security and CORS headers.

Everything else, including other methods on these paths (405 with Allow) and preflights, goes
to the Quart app unchanged. The HTTP test-suite runs against this path.
"""

from __future__ import annotations

import logging
from typing import Any

from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGISendCallable,
    HTTPResponseStartEvent,
    HTTPScope,
    Scope,
)

from dramaverse.errors import (
    Conflict,
    DramaverseError,
)
from dramaverse.http import library_ops
from dramaverse.http.auth import AuthUser
from dramaverse.http.cookies import CookieRequest
from dramaverse.http.responses import JSON_TYPE, dumps, mimetype_of, parse_json_body
from dramaverse.http.security import SECURITY_HEADERS, CorsPolicy
from dramaverse.http.state import AppState

log = logging.getLogger(__name__)

Receive = ASGIReceiveCallable
Send = ASGISendCallable

ROUTES: dict[str, library_ops.Operation] = {
    "/api/user/favorites": library_ops.set_favorite,
    "/api/user/statuses": library_ops.set_status,
    "/api/user/reviews/episodes": library_ops.save_episode_review,
}
_WANTED = (b"origin", b"authorization", b"content-type", b"content-length", b"x-forwarded-for")
_STATIC_HEADERS = [(b"content-type", JSON_TYPE.encode())] + [
    (name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS
]
SERVER_ERROR = "Something broke! A server error occurred."


class LibraryWriteFastPath:
    def __init__(self, app: ASGIFramework, state: AppState) -> None:
        self._app = app
        self._state = state
        self._perimeter = state.perimeter
        self._limit_message = state.perimeter.user_limit_message()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            operation = ROUTES.get(scope["path"])
            if operation is not None:
                await self._serve(operation, scope, receive, send)
                return
        await self._app(scope, receive, send)

    async def _serve(
        self, operation: library_ops.Operation, scope: HTTPScope, receive: Receive, send: Send
    ) -> None:
        state = self._state
        headers: dict[bytes, str] = {}
        for name, value in scope["headers"]:
            if name in _WANTED and name not in headers:  # the first one wins, as in Quart
                headers[name] = value.decode("latin-1")
        extra: list[tuple[str, str]] = []
        perimeter = self._perimeter
        origin = headers.get(b"origin")
        if origin is not None and perimeter.allows_origin(origin):
            extra.extend(CorsPolicy.grant_headers(origin))
        try:
            perimeter.check_origin(origin)
            user = self._user(scope, headers.get(b"authorization"))
            if perimeter.user_limiter is not None:
                peer = scope.get("client")
                address = perimeter.address(
                    peer[0] if peer else None, headers.get(b"x-forwarded-for")
                )
                decision = perimeter.spend_user_limit(address)
                if decision is not None:
                    extra.extend(decision.headers)
                perimeter.refuse_over_limit(decision, self._limit_message)
            data = await self._read_body(receive, headers.get(b"content-length"))
            if data is None:
                return  # the client went away
            body = parse_json_body(data, mimetype_of(headers.get(b"content-type")))
            result = await operation(state, user, body)
        except DramaverseError as error:
            payload: dict[str, Any] = {"message": error.message}
            if isinstance(error, Conflict):
                payload.update(error.extra)
            if error.status >= 500:
                log.warning("%s on POST %s: %s", error.status, scope["path"], error.message)
            await _respond(send, error.status, payload, extra)
            return
        except Exception:
            log.exception("unexpected error on POST %s", scope["path"])
            await _respond(send, 500, {"message": SERVER_ERROR}, extra)
            return
        await _respond(send, 200, result, extra)

    def _user(self, scope: HTTPScope, authorization: str | None) -> AuthUser:
        """The Bearer token's user or, without ``Authorization``, the cookie's (guards.py's
        ``request_user`` on the ASGI scope; the headers are read again only then)."""
        if authorization is None:
            cookie = CookieRequest.from_scope(scope["headers"])
            token = self._state.cookie_auth.request_token(scope["method"], cookie)
            if token is not None:
                return self._perimeter.user_from_token(token)
        return self._perimeter.user_from_header(authorization)

    async def _read_body(self, receive: Receive, declared: str | None) -> bytes | None:
        perimeter = self._perimeter
        perimeter.check_declared_length(declared)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            assert isinstance(chunk, bytes)
            size += len(chunk)
            perimeter.check_received(size)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


async def _respond(send: Send, status: int, value: Any, extra: list[tuple[str, str]]) -> None:
    body = dumps(value)
    headers = [*_STATIC_HEADERS, (b"content-length", str(len(body)).encode())]
    headers.extend((name.lower().encode(), value.encode("latin-1")) for name, value in extra)
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": status,
        "headers": headers,
        "trailers": False,
    }
    await send(start)
    await send({"type": "http.response.body", "body": body, "more_body": False})
