"""Parsing ``GET /api/dramas`` query strings into a validated :class:`CatalogQuery`.

Where the original server answered bad input with a 500 or odd results, this raises
:class:`~dramaverse.errors.BadRequest` with a message naming the parameter.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from dramaverse.errors import BadRequest

__all__ = [
    "MAX_LIMIT",
    "MAX_PAGE",
    "MAX_SORT_PRIORITIES",
    "SORT_KEYS",
    "CatalogQuery",
    "SortPriority",
    "parse_query",
]

MAX_LIMIT: Final = 500
MAX_PAGE: Final = 1_000_000_000
MAX_SORT_PRIORITIES: Final = 8
SORT_KEYS: Final = ("rating", "popularity_rank", "watchers", "aired_date")
SORT_ORDERS: Final = ("asc", "desc")


@dataclass(frozen=True, slots=True)
class SortPriority:
    key: str
    order: str


@dataclass(frozen=True, slots=True)
class CatalogQuery:
    page: int
    limit: int
    search: str
    min_rating: float
    genres: tuple[str, ...]
    exclude_genres: tuple[str, ...]
    tags: tuple[str, ...]
    exclude_tags: tuple[str, ...]
    countries: tuple[str, ...]
    cast: tuple[str, ...]
    sort: tuple[SortPriority, ...]

    @property
    def has_active_filters(self) -> bool:
        """The original server applies its filters (minRating included) only when this holds."""
        return bool(
            self.genres
            or self.exclude_genres
            or self.tags
            or self.exclude_tags
            or self.countries
            or self.cast
            or self.min_rating > 0
        )


_LIST_PARAMS: Final = ("genres", "excludeGenres", "tags", "excludeTags", "countries", "cast")
_KNOWN_PARAMS: Final = frozenset(("page", "limit", "search", "minRating", "sort", *_LIST_PARAMS))
_DEFAULTS: Final = {"page": "1", "limit": "24", "search": "", "minRating": "0", "sort": "[]"}
_UNSIGNED = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _invalid(name: str, rule: str) -> BadRequest:
    return BadRequest(f"Invalid query parameter '{name}': {rule}.")


def _bounded_int(name: str, text: str, high: int) -> int:
    rule = f"must be an integer between 1 and {high}"
    # The length check keeps int() away from huge digit strings.
    if not _UNSIGNED.fullmatch(text) or len(text.lstrip("0")) > len(str(high)):
        raise _invalid(name, rule)
    value = int(text)
    if not 1 <= value <= high:
        raise _invalid(name, rule)
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_sort(text: str) -> tuple[SortPriority, ...]:
    try:
        # JSON.parse rejects NaN and Infinity; Python's parser would accept them.
        data = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise _invalid("sort", "must be a JSON array") from None
    if not isinstance(data, list):
        raise _invalid("sort", "must be a JSON array")
    if len(data) > MAX_SORT_PRIORITIES:
        raise _invalid("sort", f"must have at most {MAX_SORT_PRIORITIES} priorities")
    priorities = []
    for item in data:
        if not isinstance(item, dict):
            raise _invalid("sort", 'each priority must be an object like {"key": "rating"}')
        key = item.get("key")
        if not isinstance(key, str) or key not in SORT_KEYS:
            raise _invalid("sort", f"key must be one of {', '.join(SORT_KEYS)}")
        # The original server treats anything but "asc" as descending; a missing order is "desc".
        order = item.get("order", "desc")
        if not isinstance(order, str) or order not in SORT_ORDERS:
            raise _invalid("sort", "order must be asc or desc")
        priorities.append(SortPriority(key, order))
    return tuple(priorities)


def parse_query(pairs: Iterable[tuple[str, str]]) -> CatalogQuery:
    """Validate ``GET /api/dramas`` query parameters (already URL-decoded).

    Error handling: raises BadRequest naming the parameter when a value is malformed or out of
    bounds, or when a known parameter is repeated. Unknown parameters are ignored.
    """
    values: dict[str, str] = {}
    for name, value in pairs:
        if name not in _KNOWN_PARAMS:
            continue
        if name in values:
            raise _invalid(name, "must not be given more than once")
        values[name] = value
    params = {**_DEFAULTS, **values}

    page = _bounded_int("page", params["page"], MAX_PAGE)
    limit = _bounded_int("limit", params["limit"], MAX_LIMIT)
    min_rating_text = params["minRating"]
    min_rating = float(min_rating_text) if _DECIMAL.fullmatch(min_rating_text) else math.nan
    if not math.isfinite(min_rating):
        raise _invalid("minRating", "must be a finite number")
    lists = {
        name: tuple(values[name].split(",")) if values.get(name) else () for name in _LIST_PARAMS
    }
    return CatalogQuery(
        page=page,
        limit=limit,
        search=params["search"],
        min_rating=min_rating,
        genres=lists["genres"],
        exclude_genres=lists["excludeGenres"],
        tags=lists["tags"],
        exclude_tags=lists["excludeTags"],
        countries=lists["countries"],
        cast=lists["cast"],
        sort=_parse_sort(params["sort"]),
    )
