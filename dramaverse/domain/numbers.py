"""Numbers from outside, checked for type, finiteness and range before any arithmetic.

JSON decodes numbers to Python ``int`` (unbounded) or ``float`` (possibly ``inf`` for ``1e400``).
Three traps follow, each of which once turned a request into a 500 or a crashed actor:

- ``bool`` is an ``int`` in Python, but not a number in JavaScript (``typeof true``);
- ``float(10**400)`` and ``math.isfinite(10**400)`` raise ``OverflowError``;
- ``inf`` and ``nan`` compare quietly, so a range check alone lets ``inf`` through as "large".

Every number a client, a token or a peer sends goes through :func:`finite` (or one of the range
helpers built on it) first. They return ``None`` rather than raise, so each caller keeps its own
error wording (the HTTP contract's ``Invalid payload.``, the room protocol's sentences).
"""

from __future__ import annotations

import math
import sys
from typing import Final

__all__ = [
    "MAX_REQUEST_ID_LENGTH",
    "MAX_SAFE_INTEGER",
    "REQUEST_ID_RULE",
    "finite",
    "is_number",
    "is_request_id",
    "number_in",
    "safe_integer",
    "whole_in",
]

MAX_SAFE_INTEGER: Final = 2**53 - 1  # JavaScript's Number.MAX_SAFE_INTEGER
# float() of an int beyond the largest double raises; comparing ints first keeps it safe.
_MAX_DOUBLE_INT: Final = int(sys.float_info.max)


def is_number(value: object) -> bool:
    """``typeof value === 'number'``: an int or float that is not a bool (finite or not)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def finite(value: object) -> float | None:
    """``value`` as a finite double, or None when it is not a number or no double holds it."""
    if type(value) is float:
        return value if math.isfinite(value) else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return float(value) if -_MAX_DOUBLE_INT <= value <= _MAX_DOUBLE_INT else None
    if isinstance(value, float):  # a float subclass
        return float(value) if math.isfinite(value) else None
    return None


def number_in(value: object, low: float, high: float) -> float | None:
    """A finite number within ``[low, high]``, as a float; None otherwise."""
    number = finite(value)
    if number is None or not low <= number <= high:
        return None
    return number


def whole_in(value: object, low: int, high: int) -> int | None:
    """A whole number within ``[low, high]`` (``4.0`` counts as 4); None otherwise."""
    if type(value) is int:
        return value if low <= value <= high else None
    number = number_in(value, low, high)
    if number is None or not number.is_integer():
        return None
    return int(number)


def safe_integer(
    value: object, low: int = -MAX_SAFE_INTEGER, high: int = MAX_SAFE_INTEGER
) -> int | None:
    """An ``int`` (not a float, not a bool) JavaScript can hold exactly, within ``[low, high]``.

    For identifiers and sequence numbers: a client that sends ``4.0`` or ``2**70`` as an id has
    made a mistake worth telling it about.
    """
    if type(value) is not int:
        return None
    if not max(low, -MAX_SAFE_INTEGER) <= value <= min(high, MAX_SAFE_INTEGER):
        return None
    return value


MAX_REQUEST_ID_LENGTH: Final = 64


def is_request_id(value: object) -> bool:
    """A request id a client may choose: a string of at most 64 characters or a safe integer.

    Ids are echoed back verbatim, so an integer JavaScript cannot hold exactly is refused rather
    than answered with a different number.
    """
    if isinstance(value, str):
        return len(value) <= MAX_REQUEST_ID_LENGTH
    return safe_integer(value) is not None


REQUEST_ID_RULE: Final = (
    f"a string of at most {MAX_REQUEST_ID_LENGTH} characters or a whole number below 2^53"
)
