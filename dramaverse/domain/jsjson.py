"""JSON text exactly as JavaScript's ``JSON.stringify`` writes it.

Python's ``json`` differs in small ways that change bytes on the wire: ``9.0`` versus ``9``,
exponent formats, lone surrogates, and the order JavaScript gives integer-like object keys.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

__all__ = ["js_json", "js_number", "utf16_sorted"]


_MAX_SAFE_INTEGER = 2**53
_ARRAY_INDEX_MAX = 2**32 - 2
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# C-accelerated; escapes exactly what JSON.stringify escapes in well-formed strings.
_encode_string: Callable[[str], str] = json.encoder.encode_basestring


def js_number(value: float) -> str:
    """The text ``JSON.stringify`` writes for a number (ints are JavaScript doubles too).

    Python writes ``9.0``, ``1e-05`` and ``1e+16`` where JavaScript writes ``9``, ``0.00001`` and
    ``10000000000000000``; both pick the same shortest round-trip digits, only the layout differs.
    """
    if isinstance(value, bool):
        raise TypeError("booleans are not numbers in JSON")
    if isinstance(value, int):
        if -_MAX_SAFE_INTEGER <= value <= _MAX_SAFE_INTEGER:
            return str(value)
        try:
            value = float(value)
        except OverflowError:
            return "null"  # JSON.parse would have made it Infinity
    if not math.isfinite(value):
        return "null"
    if value == 0:
        return "0"  # also for -0
    if value.is_integer() and -_MAX_SAFE_INTEGER <= value <= _MAX_SAFE_INTEGER:
        return str(int(value))
    sign = "-" if value < 0 else ""
    mantissa, _, exponent = repr(abs(value)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    point = len(whole) + (int(exponent) if exponent else 0)  # digits = 0.DIGITS * 10**point
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")
    count = len(digits)
    # ECMAScript Number::toString: plain notation for exponents in [-6, 21), else scientific.
    if count <= point <= 21:
        text = digits + "0" * (point - count)
    elif 0 < point <= 21:
        text = f"{digits[:point]}.{digits[point:]}"
    elif -6 < point <= 0:
        text = f"0.{'0' * -point}{digits}"
    else:
        power = point - 1
        head = digits[0] + (f".{digits[1:]}" if count > 1 else "")
        text = f"{head}e{'+' if power >= 0 else '-'}{abs(power)}"
    return sign + text


def _is_array_index(key: str) -> bool:
    return (
        key.isascii()
        and key.isdigit()
        and (key == "0" or key[0] != "0")
        and int(key) <= _ARRAY_INDEX_MAX
    )


def _key_plan(keys: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """Each key with its encoded ``"key":`` prefix, in the order JavaScript lists them."""
    for key in keys:
        if not isinstance(key, str):
            raise TypeError(f"object keys must be strings, not {type(key).__name__}")
    ordered = list(keys)
    if any(key[:1].isdigit() and _is_array_index(key) for key in keys):
        # JavaScript objects list integer-like keys first, ascending, then the rest as inserted.
        indexes = sorted((key for key in keys if _is_array_index(key)), key=int)
        ordered = indexes + [key for key in keys if not _is_array_index(key)]
    return tuple((key, _encode_string(key) + ":") for key in ordered)


# Records repeat a few key sets (record, cast member) many times; planning each once is cheaper.
_KEY_PLANS: dict[tuple[str, ...], tuple[tuple[str, str], ...]] = {}
_KEY_PLANS_MAX = 4096


def _encode_object(value: Mapping[str, Any]) -> str:
    keys = tuple(value)
    plan = _KEY_PLANS.get(keys)
    if plan is None:
        plan = _key_plan(keys)
        if len(_KEY_PLANS) < _KEY_PLANS_MAX:
            _KEY_PLANS[keys] = plan
    parts = [
        prefix + (_encode_string(item) if type(item) is str else _encode(item))
        for key, prefix in plan
        for item in (value[key],)
    ]
    return "{" + ",".join(parts) + "}"


def _encode_array(value: Sequence[Any]) -> str:
    try:
        # Mostly lists of strings: one C-level pass, which raises TypeError on anything else.
        return "[" + ",".join(map(_encode_string, value)) + "]"
    except TypeError:
        return "[" + ",".join(map(_encode, value)) + "]"


def _encode(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return _encode_string(value)
    if kind is float or kind is int:
        return js_number(value)
    if kind is list:
        return _encode_array(value)
    if kind is dict:
        return _encode_object(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _encode_string(str(value))
    if isinstance(value, int):
        return js_number(int(value))
    if isinstance(value, float):
        return js_number(float(value))
    if isinstance(value, list | tuple):
        return _encode_array(value)
    if isinstance(value, Mapping):
        return _encode_object(value)
    raise TypeError(f"{kind.__name__} is not JSON serializable")


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:
        # Lone surrogates: JSON.stringify escapes them (a valid pair is one character).
        paired = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
        escaped = _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", paired)
        return escaped.encode()


def js_json(value: Any) -> bytes:
    """Compact UTF-8 JSON exactly as JavaScript's ``JSON.stringify`` writes ``value``."""
    return _utf8(_encode(value))


def utf16_sorted(values: Iterable[str]) -> list[str]:
    """Array.prototype.sort's default order: UTF-16 code units, not code points."""
    return sorted(values, key=lambda value: value.encode("utf-16-be", "surrogatepass"))


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable_text(value: Any, depth: int = 0) -> bool:
    """True when a decoded JSON value holds a string no database can store as sent.

    JSON's ``\\u`` escapes can produce lone UTF-16 surrogates (not encodable as UTF-8) and NUL
    characters (refused by PostgreSQL text columns). Both backends must answer the same, so
    requests carrying them are refused up front with a 400 instead of failing in storage.
    """
    if isinstance(value, str):
        return _UNSTORABLE.search(value) is not None
    if depth > 64:  # json.loads has already bounded the nesting; this only guards recursion
        return False
    if isinstance(value, dict):
        return any(
            unstorable_text(k, depth + 1) or unstorable_text(v, depth + 1) for k, v in value.items()
        )
    if isinstance(value, list):
        return any(unstorable_text(item, depth + 1) for item in value)
    return False
