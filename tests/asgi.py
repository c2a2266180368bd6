"""Helpers for tests that serve small ASGI applications on real Hypercorn."""

from __future__ import annotations

from typing import Any


async def answer_lifespan(receive: Any, send: Any) -> None:
    """Complete Hypercorn's lifespan startup and shutdown."""
    while True:
        message = await receive()
        done = message["type"].replace("startup", "startup.complete")
        await send({"type": done.replace("shutdown", "shutdown.complete")})
        if message["type"] == "lifespan.shutdown":
            return
