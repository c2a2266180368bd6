"""Air-date parsing must agree with V8's ``new Date(text).getTime()`` under TZ=UTC.

Expected values are computed independently with ``datetime`` (and were checked against Node 20).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from dramaverse.domain.dates import parse_aired_start_ms


def utc_ms(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> float:
    moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    return float(int(moment.timestamp()) * 1000)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # The catalog's own format, with and without an end date.
        ("Sep 25, 2023 - Nov 14, 2023", utc_ms(2023, 9, 25)),
        ("Jan 24, 2025", utc_ms(2025, 1, 24)),
        ("Nov 26, 2019 - Jan 1, 2020", utc_ms(2019, 11, 26)),
        # Month names: any case, full or abbreviated, any word starting with the abbreviation.
        ("September 25, 2023", utc_ms(2023, 9, 25)),
        ("sept 5, 2023", utc_ms(2023, 9, 5)),
        ("DEC 25, 2023", utc_ms(2023, 12, 25)),
        ("Dec 25 2023", utc_ms(2023, 12, 25)),
        ("25 Dec 2023", utc_ms(2023, 12, 25)),
        ("Sep 2023", utc_ms(2023, 9, 1)),
        ("Mon, 01 Jan 2024", utc_ms(2024, 1, 1)),
        # ISO forms are UTC for dates, local (= UTC here) for date-times.
        ("2023", utc_ms(2023, 1, 1)),
        ("2023-05", utc_ms(2023, 5, 1)),
        ("2023-05-17", utc_ms(2023, 5, 17)),
        ("2021-06-01T10:00", utc_ms(2021, 6, 1, 10)),
        ("2021-06-01T10:00:30Z", utc_ms(2021, 6, 1, 10, 0, 30)),
        ("2021-06-01T10:00:30.250Z", utc_ms(2021, 6, 1, 10, 0, 30) + 250),
        ("2021-06-01T10:00:30.5Z", utc_ms(2021, 6, 1, 10, 0, 30) + 500),
        ("2021-06-01T10:00+09:00", utc_ms(2021, 6, 1, 1)),
        ("2023-01-15T24:00", utc_ms(2023, 1, 16)),
        # Days up to 31 roll into the next month, in both parsers.
        ("Feb 30, 2023", utc_ms(2023, 3, 2)),
        ("Feb 29, 2023", utc_ms(2023, 3, 1)),
        ("Feb 29, 2024", utc_ms(2024, 2, 29)),
        ("2023-02-30", utc_ms(2023, 3, 2)),
        ("Apr 31, 2023", utc_ms(2023, 5, 1)),
        # Legacy numeric forms.
        ("2023/01/15", utc_ms(2023, 1, 15)),
        ("01/15/2023", utc_ms(2023, 1, 15)),
        ("2023-1-5", utc_ms(2023, 1, 5)),
        ("2023-01-15 10:00", utc_ms(2023, 1, 15, 10)),
        ("Jan 1 2023 12:00 pm", utc_ms(2023, 1, 1, 12)),
        ("Jan 1 2023 12:00 am", utc_ms(2023, 1, 1)),
        ("Jan 1 2023 (premiere) 10:00", utc_ms(2023, 1, 1, 10)),
        ("Jan 1 2023 GMT+0900", utc_ms(2022, 12, 31, 15)),
        ("Jan 1 2023 EST", utc_ms(2023, 1, 1, 5)),
        # Two-digit years outside ISO forms, and the default year 2001.
        ("Jan 1, 49", utc_ms(2049, 1, 1)),
        ("Jan 1, 50", utc_ms(1950, 1, 1)),
        ("Jan 5", utc_ms(2001, 1, 5)),
        # The epoch itself is a valid 0 (the catalog treats it specially, not the parser).
        ("Jan 1, 1970", 0.0),
        ("1970-01-01", 0.0),
        ("Dec 31, 1969", -86_400_000.0),
        # The extremes of the ECMAScript time range.
        ("+275760-09-13", 8.64e15),
        ("-271821-04-20", -8.64e15),
    ],
)
def test_parses_like_v8(text: str, expected: float) -> None:
    result = parse_aired_start_ms(text)
    assert result == expected
    assert isinstance(result, float)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "?",
        "TBA",
        "Unknown",
        " - Nov 14, 2023",  # an empty start
        "Jan 32, 2023",
        "Jan 0, 2023",
        "2023-13-01",
        "2023-00-10",
        "15.03.2023",  # day first with dots reads as month 15
        "2023-01-15T25:00",
        "2023-01-15T10:00 extra",
        "Jan 1, 2023 TBA",  # words after a number
        "abc1 2023",  # a word glued to a number
        "Jan 1 2023\u2028",  # a line separator is a word character, not a space
        "Jan\x001 2023",  # NUL ends the input
        "12345678901",  # only nine significant digits: year 123456789
        "+275760-09-14",
        "Jan 1 2023 13:00 pm",
    ],
)
def test_rejects_what_v8_rejects(text: str) -> None:
    assert parse_aired_start_ms(text) is None


def test_only_the_part_before_the_first_spaced_dash_counts() -> None:
    assert parse_aired_start_ms("Jan 1, 2020 - ?") == utc_ms(2020, 1, 1)
    assert parse_aired_start_ms("? - Jan 1, 2020") is None
    # A dash without spaces is part of the date, not a range separator.
    assert parse_aired_start_ms("2020-03-04") == utc_ms(2020, 3, 4)


def test_unicode_spaces_separate_tokens() -> None:
    assert parse_aired_start_ms("Jan\u00a01,\u30002023") == utc_ms(2023, 1, 1)
    assert parse_aired_start_ms("Jan\t1\n2023") == utc_ms(2023, 1, 1)
