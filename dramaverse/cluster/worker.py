"""What a worker process of ``serve --workers N`` adds to one server: where it listens, and a
header naming it on every answer (docs/scaling.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from dramaverse.config import Settings

if TYPE_CHECKING:
    from hypercorn.typing import (
        ASGIFramework,
        ASGIReceiveCallable,
        ASGISendCallable,
        ASGISendEvent,
        Scope,
    )

WORKER_HEADER = b"x-dramaverse-worker"


def worker_binds(settings: Settings) -> list[str] | None:
    """Hypercorn binds of a worker: the inherited socket and its private Unix socket."""
    if settings.worker_id is None:
        return None
    return [f"fd://{settings.worker_listen_fd}", f"unix:{settings.worker_socket_path}"]


def worker_app(settings: Settings, app: ASGIFramework) -> ASGIFramework:
    """In a worker, ``app`` behind :class:`WorkerHeader`; otherwise ``app`` itself."""
    if settings.worker_id is None:
        return app
    return WorkerHeader(app, settings.worker_id)


class WorkerHeader:
    """ASGI middleware: every response and WebSocket handshake names the worker that served it.

    ``X-Dramaverse-Worker: <id>`` lets an operator (and the tests) see which process answered
    through the shared port, without any per-request work beyond appending one header. A
    Socket.IO answer relayed from another worker (``cluster/worker_routing.py``) keeps that
    worker's header in front of ours: ``1, 0`` is "served by 1, relayed by 0".
    """

    def __init__(self, app: ASGIFramework, worker_id: int) -> None:
        self._app = app
        self._header = (WORKER_HEADER, str(worker_id).encode())

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "lifespan":
            await self._app(scope, receive, send)
            return
        header = self._header

        async def send_with_header(message: ASGISendEvent) -> None:
            if message["type"] in (
                "http.response.start",
                "websocket.accept",
                "websocket.http.response.start",
            ):
                # The app's own headers stay as they are (Quart may reuse the list).
                event = cast(dict[str, Any], message)
                headers = [*event.get("headers", ()), header]
                message = cast("ASGISendEvent", {**event, "headers": headers})
            await send(message)

        await self._app(scope, receive, send_with_header)
