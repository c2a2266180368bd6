"""``/api/player/status``: the original player-status endpoints, authenticated and validated.

A player reports its state (``POST``) every few seconds; the others in the room read the recent
reports (``GET``). The shapes are the original server's; what differs and why is in
``docs/player-status.md``. In short: the reporter is the token's user (never the body's
``userId``), ``isHost`` comes from the room registry through ``AppState.room_host_lookup``
(never the body's), a room is matched exactly, every field is type-checked like JavaScript's
``typeof`` and bounded, and each user has a rate limit of their own (``PLAYER_STATUS_RATE``).

Storage keeps the newest ``PLAYER_STATUS_KEEP`` reports per user and room; reads return those
newer than ``PLAYER_STATUS_TTL_SECONDS`` and the event-log pruner deletes older ones. A refused
request (401, 403, 429, 400) changes nothing. Browsers may authenticate with the auth cookie
instead of the Bearer header, under the CSRF rules of ``http/csrf.py``.

Error handling: every refusal is a :class:`~dramaverse.errors.DramaverseError` naming the
problem, answered as ``{"message": ...}`` by the app's error mapping.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from quart import Blueprint, Response, g

from dramaverse.domain.library import is_js_number
from dramaverse.domain.numbers import finite
from dramaverse.errors import BadRequest, NotFound, TooManyRequests, Unauthorized
from dramaverse.http.auth import AuthUser, js_length
from dramaverse.http.responses import (
    dumps,
    json_response,
    query_pairs,
    raw_json_response,
    read_json_body,
)
from dramaverse.http.routes.guards import request_user
from dramaverse.http.security import minutes_phrase
from dramaverse.http.state import AppState, app_state

blueprint = Blueprint("player", __name__)

PATH = "/api/player/status"
MISSING_ROOM = "Missing required fields: roomCode"
MISSING_QUERY = "Missing required query parameters: roomCode and/or userId"
ROOM_CODE_RULE = "must be a string of 1 to 64 letters, digits, _ or -"
ROOM_CODE = re.compile(r"[A-Za-z0-9_-]{1,64}")
USER_ID = re.compile(r"[1-9][0-9]{0,17}")  # a positive whole number below 10**18
MAX_QUERY_FIELDS = 8
MAX_SECONDS = 10_000_000  # ~115 days: longer than any content or live stream position
MAX_ID = 2**53 - 1  # Number.MAX_SAFE_INTEGER: what JavaScript clients can hold exactly
MAX_EPISODE = 100_000  # as for library episode numbers
MAX_TITLE_LENGTH = 500
MAX_TYPE_LENGTH = 64
MAX_TMDB_ID_LENGTH = 64
MAX_VOLUME = 100  # covers both the 0-1 media element scale and 0-100 sliders
MAX_PLAYBACK_RATE = 16
UNKNOWN = "Unknown"

# player.<name> -> its default (the original's ``||`` fallbacks); booleans first.
_FLAGS = ("isPlaying", "isPaused", "isLoading", "hasPlayedOnce")
_SECONDS = ("time", "duration")
_CONTENT_IDS = ("seasonId", "episodeId")
_CONTENT_NUMBERS = ("seasonNumber", "episodeNumber")


@dataclass(frozen=True, slots=True)
class PlayerReport:
    """A validated report: the room and the client's ``content`` and ``player`` objects."""

    room_code: str
    content: dict[str, Any]
    player: dict[str, Any]

    def status(self, user_id: int, is_host: bool, timestamp: int) -> dict[str, Any]:
        """The stored status, in the original ``PlayerStatus`` shape and key order."""
        return {
            "userId": str(user_id),
            "roomCode": self.room_code,
            "isHost": is_host,
            "content": self.content,
            "player": self.player,
            "timestamp": timestamp,
        }


def _invalid(name: str, rule: str) -> BadRequest:
    return BadRequest(f"Invalid {name}: {rule}.")


def _js_number(value: int | float) -> int | float:
    """The number as JavaScript would print it: ``4.0`` is ``4``, ``-0`` is ``0``."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _number(
    value: object, name: str, high: float, *, whole: bool = False, positive: bool = False
) -> int | float:
    """A finite number from 0 (or above 0 when ``positive``) to ``high``."""
    low_text = "above 0" if positive else "from 0"
    kind = "a whole number" if whole else "a number"
    rule = f"must be {kind} {low_text} {'and at most' if positive else 'to'} {high:g}"
    number = finite(value)
    if number is None:
        raise _invalid(name, rule)
    too_low = number <= 0 if positive else number < 0
    if too_low or number > high or (whole and not number.is_integer()):
        raise _invalid(name, rule)
    return _js_number(number)


def _text(value: object, name: str, max_length: int) -> str:
    if not isinstance(value, str) or js_length(value) > max_length:
        raise _invalid(name, f"must be a string of at most {max_length} characters")
    return value


def _object(body: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """``body[name]`` as an object; absent or null means empty."""
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _invalid(name, "must be an object")
    return value


def _or_zero(fields: Mapping[str, Any], name: str) -> object:
    """The original's ``|| 0`` for a missing number (a present ``false`` or ``""`` is refused)."""
    value = fields.get(name)
    return 0 if value is None else value


def _present(fields: Mapping[str, Any], name: str) -> bool:
    # JSON has no ``undefined``: clients send null for a field they do not have.
    return fields.get(name) is not None


def check_room_code(value: object, name: str = "roomCode") -> str:
    if not isinstance(value, str) or not ROOM_CODE.fullmatch(value):
        raise _invalid(name, ROOM_CODE_RULE)
    return value


def parse_report(body: object) -> PlayerReport:
    """Validate a ``POST`` body; fill in the original's defaults for missing fields.

    Error handling: raises BadRequest naming the first bad field. ``userId``, ``isHost`` and
    unknown fields are ignored: the server decides who reports and who hosts.
    """
    if not isinstance(body, dict):
        raise BadRequest("Invalid payload: expected a JSON object.")
    room = body.get("roomCode")
    if room is None or room == "":
        raise BadRequest(MISSING_ROOM)
    room_code = check_room_code(room)

    given = _object(body, "content")
    content: dict[str, Any] = {}
    for name, max_length in (("title", MAX_TITLE_LENGTH), ("type", MAX_TYPE_LENGTH)):
        text = _text(given[name], f"content.{name}", max_length) if _present(given, name) else ""
        content[name] = text or UNKNOWN  # the original's ``|| 'Unknown'``, "" included
    if _present(given, "tmdbId"):
        tmdb_id = given["tmdbId"]
        if isinstance(tmdb_id, str):
            content["tmdbId"] = _text(tmdb_id, "content.tmdbId", MAX_TMDB_ID_LENGTH)
        elif is_js_number(tmdb_id):
            content["tmdbId"] = _number(tmdb_id, "content.tmdbId", MAX_ID, whole=True)
        else:
            raise _invalid(
                "content.tmdbId",
                f"must be a whole number from 0 to {MAX_ID} "
                f"or a string of at most {MAX_TMDB_ID_LENGTH} characters",
            )
    for name in _CONTENT_IDS:
        if _present(given, name):
            content[name] = _number(given[name], f"content.{name}", MAX_ID, whole=True)
    for name in _CONTENT_NUMBERS:
        if _present(given, name):
            content[name] = _number(given[name], f"content.{name}", MAX_EPISODE, whole=True)

    fields = _object(body, "player")
    player: dict[str, Any] = {}
    for name in _FLAGS:
        flag = fields.get(name, False)
        if flag is None:
            flag = False
        if not isinstance(flag, bool):
            raise _invalid(f"player.{name}", "must be true or false")
        player[name] = flag
    for name in _SECONDS:
        player[name] = _number(_or_zero(fields, name), f"player.{name}", MAX_SECONDS)
    player["volume"] = _number(_or_zero(fields, "volume"), "player.volume", MAX_VOLUME)
    rate = fields.get("playbackRate")
    player["playbackRate"] = (
        1
        if rate is None
        else _number(rate, "player.playbackRate", MAX_PLAYBACK_RATE, positive=True)
    )
    player["buffered"] = _number(_or_zero(fields, "buffered"), "player.buffered", MAX_SECONDS)
    return PlayerReport(room_code, content, player)


def _query() -> tuple[str, str | None]:
    """(roomCode, userId or None) from the query string, validated."""
    pairs = query_pairs(MAX_QUERY_FIELDS)
    values: dict[str, str] = {}
    for name, value in pairs:
        if name in ("roomCode", "userId"):
            if name in values:
                raise BadRequest(f"Invalid query parameter '{name}': must not be given twice.")
            values[name] = value
    room = values.get("roomCode", "")
    if not room:
        raise BadRequest(MISSING_QUERY)
    room_code = check_room_code(room)
    user = values.get("userId") or None  # empty means absent, as in the original
    if user is not None and not USER_ID.fullmatch(user):
        raise _invalid("userId", "must be a positive whole number like 42")
    return room_code, user


def _authenticate(state: AppState, kind: str) -> AuthUser:
    """The token's user (401), then the per-user player limit (429), like the other guards."""
    user = request_user()
    limiter = state.player_limiter
    if limiter is not None:
        decision = limiter.hit(f"{kind}:{user.id}")
        g.extra_headers = decision.headers
        if not decision.allowed:
            when = minutes_phrase(limiter.rule.window)
            raise TooManyRequests(f"Too many requests, please try again after {when}.")
    return user


async def _is_host(state: AppState, room_code: str, user_id: int) -> bool:
    try:
        return bool(await state.room_host_lookup(room_code, user_id))
    except (BadRequest, NotFound):  # a code the registry cannot parse or does not know
        return False


@blueprint.post(PATH)
async def report_status() -> Response:
    state = app_state()
    user = _authenticate(state, "post")
    report = parse_report(await read_json_body())
    is_host = await _is_host(state, report.room_code, user.id)
    timestamp = state.clock_ms()
    status = report.status(user.id, is_host, timestamp)
    await state.storage.add_player_status(
        user.id,
        report.room_code,
        dumps(status).decode("utf-8"),
        timestamp,
        keep=state.settings.player_status_keep,
    )
    return json_response({"success": True, "timestamp": timestamp})


@blueprint.get(PATH)
async def read_statuses() -> Response:
    state = app_state()
    user = _authenticate(state, "get")
    room_code, wanted = _query()
    if not await state.storage.user_exists(user.id):
        raise Unauthorized("Invalid or expired token")
    since = state.clock_ms() - state.settings.player_status_ttl_seconds * 1000
    rows = await state.storage.player_statuses(
        room_code, None if wanted is None else int(wanted), since
    )
    # The stored texts are compact JSON written by this module: splice them as they are.
    room = dumps(room_code)
    if wanted is not None:
        statuses = b",".join(text.encode("utf-8") for _, text in rows)
        return raw_json_response(
            b'{"userId":'
            + dumps(wanted)
            + b',"roomCode":'
            + room
            + b',"statuses":['
            + statuses
            + b"]}"
        )
    by_user: dict[int, list[bytes]] = {}
    for user_id, text in rows:
        by_user.setdefault(user_id, []).append(text.encode("utf-8"))
    # JavaScript objects list integer-like keys in ascending numeric order.
    users = b",".join(
        dumps(str(user_id)) + b":[" + b",".join(by_user[user_id]) + b"]"
        for user_id in sorted(by_user)
    )
    return raw_json_response(b'{"roomCode":' + room + b',"users":{' + users + b"}}")
