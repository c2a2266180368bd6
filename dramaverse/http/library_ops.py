"""Library operations shared by HTTP routes and the native WebSocket protocol.

One code path means one validation, one conflict rule and one event flow: the write and its
event land in one storage transaction, then the event is published on the user's broker topic
(never handed to an actor directly), and the session actors deliver it to every device.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from dramaverse.actors.session import user_topic
from dramaverse.domain.library import parse_episode_review, parse_favorite, parse_status
from dramaverse.errors import Unauthorized
from dramaverse.http.auth import TOKEN_INVALID, AuthUser
from dramaverse.http.state import AppState
from dramaverse.storage.base import WriteResult

SUCCESS: dict[str, Any] = {"success": True}


async def _publish(state: AppState, result: WriteResult) -> None:
    if result.event is not None:
        await state.broker.publish(user_topic(result.event.user_id), result.event.encode())


async def get_library(state: AppState, user: AuthUser, body: object = None) -> dict[str, Any]:
    library = await state.storage.get_library(user.id)
    if library is None:  # a valid token for an account that no longer exists
        raise Unauthorized(TOKEN_INVALID)
    return {"user": {"username": user.username}, "data": library.to_json()}


async def set_favorite(state: AppState, user: AuthUser, body: object) -> dict[str, Any]:
    change = parse_favorite(body)
    await _publish(state, await state.storage.set_favorite(user.id, change))
    return SUCCESS


async def set_status(state: AppState, user: AuthUser, body: object) -> dict[str, Any]:
    change = parse_status(body)
    await _publish(state, await state.storage.set_status(user.id, change))
    return SUCCESS


async def save_episode_review(state: AppState, user: AuthUser, body: object) -> dict[str, Any]:
    change = parse_episode_review(body)
    result = await state.storage.save_episode_review(user.id, change, state.clock_ms())
    await _publish(state, result)
    if result.updated_at is None:
        return SUCCESS
    return {"success": True, "newUpdatedAt": result.updated_at}


Operation = Callable[[AppState, AuthUser, object], Awaitable[dict[str, Any]]]

# The native protocol's request types.
OPERATIONS: dict[str, Operation] = {
    "library.get": get_library,
    "favorite.set": set_favorite,
    "status.set": set_status,
    "review.save": save_episode_review,
}
