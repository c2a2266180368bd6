"""JSON in and out, with the original server's conventions (compact JSON, ``{message}`` errors)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from quart import Response, request

from dramaverse.domain.jsjson import unstorable_text
from dramaverse.errors import BadRequest

JSON_TYPE = "application/json; charset=utf-8"
UNSTORABLE = "Malformed JSON body: strings must not contain NUL characters or lone surrogates."


def dumps(value: Any) -> bytes:
    """Serialise like JavaScript's JSON.stringify: compact, non-ASCII kept as UTF-8."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def json_response(value: Any, status: int = 200) -> Response:
    return Response(dumps(value), status, content_type=JSON_TYPE)


def raw_json_response(body: bytes, status: int = 200) -> Response:
    return Response(body, status, content_type=JSON_TYPE)


def error_response(status: int, message: str, **extra: Any) -> Response:
    return json_response({"message": message, **extra}, status)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _is_json(mimetype: str) -> bool:
    return mimetype == "application/json" or (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    )


async def read_json_body() -> Any:
    """The request's JSON value; ``{}`` when the body is empty or not declared as JSON.

    The size limit is enforced by Quart (MAX_CONTENT_LENGTH -> 413) before anything is parsed.
    """
    data = await request.get_data(as_text=False)
    assert isinstance(data, bytes)
    return parse_json_body(data, request.mimetype)


MAX_QUERY_FIELDS = 32


def query_pairs(limit: int = MAX_QUERY_FIELDS) -> list[tuple[str, str]]:
    """The request's query string as (name, value) pairs; more than ``limit`` is a 400."""
    try:
        return parse_qsl(
            request.query_string.decode("ascii", "replace"),
            keep_blank_values=True,
            max_num_fields=limit,
        )
    except ValueError:
        raise BadRequest(f"Too many query parameters (at most {limit}).") from None


def mimetype_of(content_type: str | None) -> str:
    """``application/json; charset=utf-8`` -> ``application/json`` (lower case)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_json_body(data: bytes, mimetype: str) -> Any:
    """Parse a request body like express.json does: only a JSON content type is parsed.

    A text/plain post therefore validates as an empty payload (400) rather than being trusted.
    """
    if not _is_json(mimetype) or not data.strip():
        return {}
    try:
        text = data.decode("utf-8")
        value = json.loads(text, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise BadRequest("Malformed JSON body: not valid UTF-8.") from None
    except RecursionError:
        raise BadRequest("Malformed JSON body: nested too deeply.") from None
    except ValueError as exc:
        raise BadRequest(f"Malformed JSON body: {exc}.") from None
    if "\\u" in text and unstorable_text(value):  # only \u escapes can produce them
        raise BadRequest(UNSTORABLE)
    return value
