"""Air dates parsed the way the original server's JavaScript engine parses them.

The original server sorts by ``new Date(aired_date.split(' - ')[0]).getTime()``. That is V8's
date parser: an ISO 8601 pass first, then a permissive "legacy" pass that accepts things like
``Sep 25, 2023``, ``25 Sep 2023`` or ``2023/09/25`` and rejects others. Sort results must be
identical, so this module reimplements that behaviour (not the C++ code) for a process whose time
zone is UTC, including its quirks: days up to 31 roll over into the next month, two-digit years
map to 1950-2049 outside ISO forms, and numbers keep only their first nine significant digits.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

__all__ = ["parse_aired_start_ms"]

# ECMAScript time values are limited to +-100,000,000 days around the epoch.
_MAX_TIME_MS = 8_640_000_000_000_000
# Local times may exceed that by up to ten days before their conversion to UTC.
_MAX_LOCAL_TIME_MS = _MAX_TIME_MS + 864_000_000
_MAX_SIGNIFICANT_DIGITS = 9
# Node builds V8 without pointer compression: small integers are 32-bit.
_SMI_MAX = 2**31 - 1

# JavaScript WhiteSpace (not LineTerminator): these end a word; line terminators do not.
_JS_WHITESPACE = frozenset(
    "\t\v\f \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u202f\u205f\u3000\ufeff"
)
_JS_SPACE_OR_LINE = _JS_WHITESPACE | frozenset("\n\r\u2028\u2029")

# Token kinds.
_END, _INVALID, _NUMBER, _SYMBOL, _SPACE, _WORD, _UNKNOWN = range(7)
# Keyword kinds (a word that is none of these is "garbage").
_NOT_KEYWORD, _MONTH, _AM_PM, _ZONE, _TIME_SEP = range(5)

# Keyed by the first three characters of a word, ASCII-lowercased. Months also match any longer
# word with that prefix ("sept", "september"); the others must be the whole word.
_KEYWORDS: dict[str, tuple[int, int]] = {
    **{
        m: (_MONTH, i + 1)
        for i, m in enumerate(
            ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
        )
    },
    "am": (_AM_PM, 0),
    "pm": (_AM_PM, 12),
    "ut": (_ZONE, 0),
    "utc": (_ZONE, 0),
    "z": (_ZONE, 0),
    "gmt": (_ZONE, 0),
    "cdt": (_ZONE, -5),
    "cst": (_ZONE, -6),
    "edt": (_ZONE, -4),
    "est": (_ZONE, -5),
    "mdt": (_ZONE, -6),
    "mst": (_ZONE, -7),
    "pdt": (_ZONE, -7),
    "pst": (_ZONE, -8),
    "t": (_TIME_SEP, 0),
}

_NONE = -1  # an unset component


@dataclass(frozen=True, slots=True)
class _Token:
    kind: int
    value: int = 0  # number value, keyword value
    length: int = 0  # characters consumed (numbers, words)
    symbol: str = ""  # for _SYMBOL
    keyword: int = _NOT_KEYWORD  # for _WORD

    def is_symbol(self, char: str) -> bool:
        return self.kind == _SYMBOL and self.symbol == char

    def is_sign(self) -> bool:
        return self.kind == _SYMBOL and self.symbol in "+-"

    def is_number_of_length(self, length: int) -> bool:
        return self.kind == _NUMBER and self.length == length

    def is_keyword_z(self) -> bool:
        return self.kind == _WORD and self.keyword == _ZONE and self.length == 1 and self.value == 0


_END_TOKEN = _Token(_END)
_INVALID_TOKEN = _Token(_INVALID)
_UNKNOWN_TOKEN = _Token(_UNKNOWN)


class _Scanner:
    """Splits the text into tokens with one token of lookahead."""

    __slots__ = ("_next", "_pos", "_text")

    def __init__(self, text: str) -> None:
        # An embedded NUL ends the input, as it does for the engine.
        self._text = text.split("\0", 1)[0]
        self._pos = 0
        self._next = self._scan()

    def peek(self) -> _Token:
        return self._next

    def next(self) -> _Token:
        token = self._next
        self._next = self._scan()
        return token

    def skip_symbol(self, char: str) -> bool:
        if self._next.is_symbol(char):
            self.next()
            return True
        return False

    def _scan(self) -> _Token:
        text, start = self._text, self._pos
        if start >= len(text):
            return _END_TOKEN
        char = text[start]
        if "0" <= char <= "9":
            pos = start
            while pos < len(text) and text[pos] == "0":
                pos += 1
            digits_start = pos
            while pos < len(text) and "0" <= text[pos] <= "9":
                pos += 1
            significant = text[digits_start : min(pos, digits_start + _MAX_SIGNIFICANT_DIGITS)]
            self._pos = pos
            return _Token(_NUMBER, value=int(significant or "0"), length=pos - start)
        if char in ":-+.)":
            self._pos = start + 1
            return _Token(_SYMBOL, symbol=char)
        if char >= "A" and char not in _JS_WHITESPACE:
            pos = start
            while pos < len(text) and text[pos] >= "A" and text[pos] not in _JS_WHITESPACE:
                pos += 1
            self._pos = pos
            prefix = text[start : min(pos, start + 3)]
            found = _KEYWORDS.get(prefix.lower()) if prefix.isascii() else None
            length = pos - start
            if found is None or (length > 3 and found[0] != _MONTH):
                return _Token(_WORD, length=length)
            return _Token(_WORD, value=found[1], length=length, keyword=found[0])
        if char in _JS_SPACE_OR_LINE:
            self._pos = start + 1
            return _Token(_SPACE, length=1)
        if char == "(":
            depth, pos = 0, start
            while True:
                if text[pos] == ")":
                    depth -= 1
                elif text[pos] == "(":
                    depth += 1
                pos += 1
                if depth <= 0 or pos >= len(text):
                    break
            self._pos = pos
            return _UNKNOWN_TOKEN
        self._pos = start + 1
        return _UNKNOWN_TOKEN


def _is_month(value: int) -> bool:
    return 1 <= value <= 12


def _is_day(value: int) -> bool:
    return 1 <= value <= 31


def _is_minute(value: int) -> bool:
    return 0 <= value <= 59


def _iso_sixtieths(scanner: _Scanner, hour_is_24: bool) -> bool:
    """Whether the next token is an ISO minute or second field: two digits, 00-59, and 00
    after hour 24."""
    peek = scanner.peek()
    return (
        peek.is_number_of_length(2)
        and _is_minute(peek.value)
        and not (hour_is_24 and peek.value > 0)
    )


def _is_hour(value: int) -> bool:
    return 0 <= value <= 23


class _Day:
    __slots__ = ("iso", "named_month", "parts")

    def __init__(self) -> None:
        self.parts: list[int] = []
        self.named_month = _NONE
        self.iso = False

    def add(self, value: int) -> bool:
        if len(self.parts) >= 3:
            return False
        self.parts.append(value)
        return True

    def resolve(self) -> tuple[int, int, int] | None:
        """Return (year, month 1-12, day 1-31), or None when the components are invalid."""
        if not self.parts:
            return None
        # Missing components default to 1, so the "three components" branches always apply.
        first, second, third = [*self.parts, 1, 1][:3]
        if self.named_month == _NONE:
            if self.iso or not _is_day(first):
                year, month, day = first, second, third
            else:
                month, day, year = first, second, third
        else:
            month = self.named_month
            if not _is_day(first):
                year, day = first, second
            else:
                day, year = first, second
        if not self.iso:
            if 0 <= year <= 49:
                year += 2000
            elif 50 <= year <= 99:
                year += 1900
        if not (-_SMI_MAX - 1 <= year <= _SMI_MAX) or not _is_month(month) or not _is_day(day):
            return None
        return year, month, day


class _Time:
    __slots__ = ("hour_offset", "parts")

    def __init__(self) -> None:
        self.parts: list[int] = []
        self.hour_offset = _NONE

    def is_empty(self) -> bool:
        return not self.parts

    def add(self, value: int) -> bool:
        if len(self.parts) >= 4:
            return False
        self.parts.append(value)
        return True

    def add_final(self, value: int) -> bool:
        if not self.add(value):
            return False
        self.parts.extend([0] * (4 - len(self.parts)))
        return True

    def is_expecting(self, value: int) -> bool:
        count = len(self.parts)
        return (
            (count == 1 and _is_minute(value))
            or (count == 2 and _is_minute(value))
            or (count == 3 and 0 <= value <= 999)
        )

    def resolve(self) -> tuple[int, int, int, int] | None:
        hour, minute, second, milli = [*self.parts, 0, 0, 0, 0][:4]
        if self.hour_offset != _NONE:
            if not 0 <= hour <= 12:
                return None
            hour = hour % 12 + self.hour_offset
        in_range = _is_hour(hour) and _is_minute(minute) and _is_minute(second) and milli <= 999
        # 24:00:00.000 is the end of the day; any other 24th hour is invalid.
        if not in_range and (hour, minute, second, milli) != (24, 0, 0, 0):
            return None
        return hour, minute, second, milli


class _Zone:
    __slots__ = ("hour", "minute", "sign")

    def __init__(self) -> None:
        self.sign = 0  # unset; otherwise -1 or 1
        self.hour = _NONE
        self.minute = _NONE

    def set_hours(self, offset_hours: int) -> None:
        self.sign = -1 if offset_hours < 0 else 1
        self.hour = abs(offset_hours)
        self.minute = 0

    def is_empty(self) -> bool:
        return self.hour == _NONE

    def is_utc(self) -> bool:
        return self.hour == 0 and self.minute == 0

    def is_expecting(self, value: int) -> bool:
        return self.hour != _NONE and self.minute == _NONE and _is_minute(value)

    def offset_seconds(self) -> int | None:
        """Seconds east of UTC, None for local time; raises ValueError when out of range."""
        if self.sign == 0:
            return None
        hour = 0 if self.hour == _NONE else self.hour
        minute = 0 if self.minute == _NONE else self.minute
        # The engine computes this in unsigned 32-bit arithmetic, wrapping huge offsets.
        total = (hour * 3600 + minute * 60) % 2**32
        if total > _SMI_MAX:
            raise ValueError("offset out of range")
        return total * self.sign


def _milliseconds(token: _Token) -> int:
    """Scale a fraction-of-second numeral to three digits, as if it were ``0.<digits>``."""
    number, length = token.value, token.length
    if length == 1:
        return number * 100
    if length == 2:
        return number * 10
    if length > 3:
        divisor: int = 10 ** (min(length, _MAX_SIGNIFICANT_DIGITS) - 3)
        return number // divisor
    return number


def _parse_iso(scanner: _Scanner, day: _Day, time: _Time, zone: _Zone) -> _Token:
    """The ISO 8601 pass: return END on success, INVALID on a hard failure, or the first token
    it could not use, from which the legacy pass continues (keeping what was read so far)."""
    if scanner.peek().is_sign():
        sign_token = scanner.next()
        if not scanner.peek().is_number_of_length(6):
            return sign_token
        year = scanner.next().value
        if sign_token.symbol == "-" and year == 0:
            return sign_token
        day.add(-year if sign_token.symbol == "-" else year)
    elif scanner.peek().is_number_of_length(4):
        day.add(scanner.next().value)
    else:
        return scanner.next()
    if scanner.skip_symbol("-"):
        if not scanner.peek().is_number_of_length(2) or not _is_month(scanner.peek().value):
            return scanner.next()
        day.add(scanner.next().value)
        if scanner.skip_symbol("-"):
            if not scanner.peek().is_number_of_length(2) or not _is_day(scanner.peek().value):
                return scanner.next()
            day.add(scanner.next().value)
    peek = scanner.peek()
    if not (peek.kind == _WORD and peek.keyword == _TIME_SEP):
        if peek.kind != _END:
            return scanner.next()
    else:
        scanner.next()
        if not scanner.peek().is_number_of_length(2) or not 0 <= scanner.peek().value <= 24:
            return _INVALID_TOKEN
        hour_is_24 = scanner.peek().value == 24
        time.add(scanner.next().value)
        if not scanner.skip_symbol(":"):
            return _INVALID_TOKEN
        if not _iso_sixtieths(scanner, hour_is_24):
            return _INVALID_TOKEN
        time.add(scanner.next().value)
        if scanner.skip_symbol(":"):
            if not _iso_sixtieths(scanner, hour_is_24):
                return _INVALID_TOKEN
            time.add(scanner.next().value)
            if scanner.skip_symbol("."):
                peek = scanner.peek()
                if peek.kind != _NUMBER or (hour_is_24 and peek.value > 0):
                    return _INVALID_TOKEN
                time.add(_milliseconds(scanner.next()))
        if scanner.peek().is_keyword_z():
            scanner.next()
            zone.set_hours(0)
        elif scanner.peek().is_sign():
            zone.sign = -1 if scanner.next().symbol == "-" else 1
            if scanner.peek().is_number_of_length(4):
                hour, minute = divmod(scanner.next().value, 100)
                if not _is_hour(hour) or not _is_minute(minute):
                    return _INVALID_TOKEN
                zone.hour, zone.minute = hour, minute
            else:
                peek = scanner.peek()
                if not peek.is_number_of_length(2) or not _is_hour(peek.value):
                    return _INVALID_TOKEN
                zone.hour = scanner.next().value
                if not scanner.skip_symbol(":"):
                    return _INVALID_TOKEN
                peek = scanner.peek()
                if not peek.is_number_of_length(2) or not _is_minute(peek.value):
                    return _INVALID_TOKEN
                zone.minute = scanner.next().value
        if scanner.peek().kind != _END:
            return _INVALID_TOKEN
    # Date-only ISO forms are UTC; date-time forms without an offset are local time.
    if zone.is_empty() and time.is_empty():
        zone.set_hours(0)
    day.iso = True
    return _END_TOKEN


def _parse_legacy(scanner: _Scanner, token: _Token, day: _Day, time: _Time, zone: _Zone) -> bool:
    """The permissive pass, from ``token`` on; False when the text is not a date."""
    has_read_number = bool(day.parts)
    while token.kind != _END:
        if token.kind == _NUMBER:
            has_read_number = True
            number = token.value
            if scanner.skip_symbol(":"):
                if scanner.skip_symbol(":"):
                    if not time.is_empty():
                        return False
                    time.add(number)
                    time.add(0)
                else:
                    if not time.add(number):
                        return False
                    if scanner.peek().is_symbol("."):
                        scanner.next()
            elif scanner.skip_symbol(".") and time.is_expecting(number):
                # The "." is consumed even when it does not introduce milliseconds.
                time.add(number)
                if scanner.peek().kind != _NUMBER:
                    return False
                time.add_final(_milliseconds(scanner.next()))
            elif zone.is_expecting(number):
                zone.minute = number
            elif time.is_expecting(number):
                time.add_final(number)
                peek = scanner.peek()
                if not (peek.kind in (_END, _SPACE) or peek.is_keyword_z() or peek.is_sign()):
                    return False
            else:
                if not day.add(number):
                    return False
                scanner.skip_symbol("-")
        elif token.kind == _WORD:
            if token.keyword == _AM_PM and not time.is_empty():
                time.hour_offset = token.value
            elif token.keyword == _MONTH:
                day.named_month = token.value
                scanner.skip_symbol("-")
            elif token.keyword == _ZONE and has_read_number:
                zone.set_hours(token.value)
            else:
                # Unknown words (weekdays, "TBA") are allowed only before the first number,
                # and not glued to it.
                if has_read_number or scanner.peek().kind == _NUMBER:
                    return False
        elif token.is_sign() and (zone.is_utc() or not time.is_empty()):
            zone.sign = -1 if token.symbol == "-" else 1
            value, length = 0, 0
            if scanner.peek().kind == _NUMBER:
                number_token = scanner.next()
                value, length = number_token.value, number_token.length
            has_read_number = True
            if scanner.peek().is_symbol(":"):
                zone.hour, zone.minute = value, _NONE
            elif length in (1, 2):
                zone.hour, zone.minute = value, 0
            elif length in (3, 4):
                zone.hour, zone.minute = divmod(value, 100)
            else:
                return False
        elif (token.is_sign() or token.is_symbol(")")) and has_read_number:
            return False
        token = scanner.next()
    return True


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (month 1-12, any day number)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468 + day - 1


@lru_cache(maxsize=65536)
def _parse_ms(text: str) -> float | None:
    scanner = _Scanner(text)
    day, time, zone = _Day(), _Time(), _Zone()
    token = _parse_iso(scanner, day, time, zone)
    if token.kind == _INVALID:
        return None
    if token.kind != _END and not _parse_legacy(scanner, token, day, time, zone):
        return None
    ymd = day.resolve()
    hms = time.resolve()
    if ymd is None or hms is None:
        return None
    try:
        offset = zone.offset_seconds()
    except ValueError:
        return None
    year, month, date = ymd
    if not -1_000_000 <= year <= 1_000_000:
        return None
    hour, minute, second, milli = hms
    ms = _days_from_civil(year, month, 1) + date - 1
    ms = ms * 86_400_000 + hour * 3_600_000 + minute * 60_000 + second * 1000 + milli
    if offset is None:
        # Local time; the process time zone is UTC, so no shift, but a wider range check first.
        if abs(ms) > _MAX_LOCAL_TIME_MS:
            return None
    else:
        ms -= offset * 1000
    if abs(ms) > _MAX_TIME_MS:
        return None
    return float(ms)


def parse_aired_start_ms(aired_date: str) -> float | None:
    """Milliseconds since the epoch of the start of an air-date range, or None if unparseable.

    ``"Sep 25, 2023 - Nov 14, 2023"`` gives 2023-09-25T00:00:00Z. Same result as JavaScript's
    ``new Date(aired_date.split(' - ')[0]).getTime()`` under ``TZ=UTC``, with NaN as None.
    """
    return _parse_ms(aired_date.split(" - ", 1)[0])
