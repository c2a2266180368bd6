"""Validation of catalog records before they are imported.

The catalog index and the original server's handlers read these fields without checking them, so
a record missing one would break every catalog query. Types follow JavaScript's ``typeof``: a
boolean is not a number. Numbers must be finite because JSON cannot carry NaN or Infinity.
"""

from __future__ import annotations

from typing import Any, Final

from dramaverse.domain.numbers import finite, is_number

__all__ = ["MAX_TITLE_LENGTH", "MAX_URL_LENGTH", "RecordError", "validate_record"]

MAX_URL_LENGTH: Final = 2048
MAX_TITLE_LENGTH: Final = 1000
_NUMBER_FIELDS: Final = ("rating", "watchers", "popularity_rank")
_STRING_LIST_FIELDS: Final = ("genres", "tags")


class RecordError(ValueError):
    """A catalog record is unusable; ``reason`` names the field and the rule it breaks."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _check_number(record: dict[str, Any], name: str) -> None:
    value = record.get(name)
    if not is_number(value):
        raise RecordError(f"{name} must be a number")
    if finite(value) is None:
        raise RecordError(f"{name} must be a finite number")


def validate_record(obj: object) -> dict[str, Any]:
    """Return the record as a dict (other keys untouched), or raise RecordError."""
    if not isinstance(obj, dict) or not all(isinstance(key, str) for key in obj):
        raise RecordError("record must be an object")
    record: dict[str, Any] = dict(obj)

    url = record.get("url")
    if not isinstance(url, str) or not url:
        raise RecordError("url must be a non-empty string")
    if len(url) > MAX_URL_LENGTH:
        raise RecordError(f"url must be at most {MAX_URL_LENGTH} characters")
    title = record.get("title")
    if not isinstance(title, str):
        raise RecordError("title must be a string")
    if len(title) > MAX_TITLE_LENGTH:
        raise RecordError(f"title must be at most {MAX_TITLE_LENGTH} characters")
    for name in ("country", "aired_date"):
        if not isinstance(record.get(name), str):
            raise RecordError(f"{name} must be a string")

    for name in _STRING_LIST_FIELDS:
        values = record.get(name)
        if not isinstance(values, list):
            raise RecordError(f"{name} must be a list of strings")
        for position, value in enumerate(values):
            if not isinstance(value, str):
                raise RecordError(f"{name}[{position}] must be a string")

    cast = record.get("cast")
    if not isinstance(cast, list):
        raise RecordError("cast must be a list of objects")
    for position, member in enumerate(cast):
        if not isinstance(member, dict):
            raise RecordError(f"cast[{position}] must be an object")
        if not isinstance(member.get("actor_name"), str):
            raise RecordError(f"cast[{position}].actor_name must be a string")

    for name in _NUMBER_FIELDS:
        _check_number(record, name)
    return record
