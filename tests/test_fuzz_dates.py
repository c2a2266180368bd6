"""The air-date parser against V8 itself: generated dates, parsed here and by Node.

``dramaverse.domain.dates`` reimplements what the original server computed,
``new Date(aired_date.split(' - ')[0]).getTime()`` under ``TZ=UTC``. Hypothesis builds strings
from the pieces V8's ISO and legacy parsers react to (month names, numbers of every length,
signs, separators, zones, am/pm, parentheses, Unicode spaces, a range dash) and plain text;
one ``node`` process (``tests/node/v8_date.mjs``) answers each, and both answers must be the same
number or both unparseable. Without Node the test skips; under ``DRAMAVERSE_REQUIRE_SERVICES=1``
(CI) it fails. Bounded: ``FUZZ_EXAMPLES`` examples per strategy (default 400: about two seconds).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dramaverse.domain.dates import parse_aired_start_ms
from tests.services import require_node

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "400"))
SCRIPT = Path(__file__).resolve().parent / "node" / "v8_date.mjs"

WORDS = [
    "Jan", "feb", "MAR", "April", "may", "jun", "July", "aug", "Sept", "september", "Oct",
    "nov", "DEC", "Mayday", "ja", "am", "pm", "AM", "a.m.", "UT", "UTC", "GMT", "Z", "z", "T",
    "EST", "edt", "CST", "cdt", "MST", "mdt", "PST", "pdt", "CET", "Mon", "Tuesday", "foo", "x",
]  # fmt: skip
SEPARATORS = [
    " ", "  ", ",", ", ", "-", " - ", "/", ":", ".", "+", "(", ")", "T", "Z",
    "\t", "\n", "\u00a0", "\u3000", "\u2028", "\x00", "'", "_",
]  # fmt: skip


def digits(max_digits: int) -> st.SearchStrategy[str]:
    return st.integers(1, max_digits).flatmap(
        lambda n: st.text("0123456789", min_size=n, max_size=n)
    )


tokens = st.one_of(st.sampled_from(WORDS), st.sampled_from(SEPARATORS), digits(12))
date_like = st.lists(tokens, max_size=12).map("".join)
iso_like = st.builds(
    "{}{}-{}-{}{}{}:{}{}{}{}".format,
    st.sampled_from(["", "+", "-"]),
    digits(6),
    digits(3),
    digits(3),
    st.sampled_from(["T", " ", "t", ""]),
    digits(3),
    digits(3),
    st.sampled_from(["", ":00", ":59", ":60", ":5"]),
    st.sampled_from(["", ".5", ".250", ".1234", "."]),
    st.sampled_from(["", "Z", "z", "+09:00", "-0530", "+24:00", "+9", " GMT"]),
)
legacy_like = st.builds(
    "{} {}, {}{}".format,
    st.sampled_from(WORDS[:14]),
    digits(3),
    digits(6),
    st.sampled_from(["", " 10:00", " 12:00 pm", " 13:00 am", " 24:00", " (premiere) 10:00"]),
)
anything = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=24)


class V8:
    """One ``node`` process answering ``new Date(text.split(' - ')[0]).getTime()``."""

    def __init__(self, node: str) -> None:
        self._process = subprocess.Popen(
            [node, str(SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            env={**os.environ, "TZ": "UTC"},
        )
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._stdin, self._stdout = self._process.stdin, self._process.stdout

    def time(self, text: str) -> float | None:
        self._stdin.write(json.dumps(text) + "\n")
        self._stdin.flush()
        answer = json.loads(self._stdout.readline())
        return None if answer is None else float(answer)

    def close(self) -> None:
        self._stdin.close()  # node's loop over stdin ends
        self._process.wait(timeout=10)
        self._stdout.close()


@pytest.fixture(scope="module")
def v8() -> Iterator[V8]:
    node = V8(require_node())
    yield node
    node.close()


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.mark.parametrize(
    "text",
    ["Sep 25, 2023 - Nov 14, 2023", "Jan 1 2023 GMT+0900", "+275760-09-13", "12345678901", ""],
)
def test_node_agrees_on_known_dates(v8: V8, text: str) -> None:
    assert parse_aired_start_ms(text) == v8.time(text)


@FUZZ
@given(date_like)
def test_generated_date_words_parse_like_v8(v8: V8, text: str) -> None:
    assert parse_aired_start_ms(text) == v8.time(text)


@FUZZ
@given(st.one_of(iso_like, legacy_like))
def test_generated_iso_and_legacy_forms_parse_like_v8(v8: V8, text: str) -> None:
    assert parse_aired_start_ms(text) == v8.time(text)


@FUZZ
@given(anything)
def test_any_text_parses_like_v8(v8: V8, text: str) -> None:
    assert parse_aired_start_ms(text) == v8.time(text)
