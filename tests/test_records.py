from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from dramaverse.domain.records import RecordError, validate_record

SAMPLE = Path(__file__).parents[1] / "dramaverse" / "data" / "dramas.json"


def record(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "url": "https://example.test/1",
        "title": "A Title",
        "alternative_names": ["Other"],
        "country": "South Korea",
        "aired_date": "Sep 25, 2023 - Nov 14, 2023",
        "genres": ["Drama"],
        "tags": ["Friendship"],
        "rating": 9.1,
        "watchers": 1000,
        "popularity_rank": 3,
        "cast": [{"actor_name": "Someone", "role": "Main Role"}],
    }
    base.update(changes)
    return base


def test_every_sample_record_is_valid() -> None:
    for raw in json.loads(SAMPLE.read_text(encoding="utf-8")):
        assert validate_record(raw) == raw


def test_returns_a_copy_with_other_keys_untouched_and_in_order() -> None:
    raw = record(extra={"nested": [1, 2]}, episodes=16)
    result = validate_record(raw)
    assert result == raw
    assert list(result) == list(raw)
    assert result is not raw
    assert result["extra"] is raw["extra"]


def test_accepts_boundary_values() -> None:
    validate_record(record(url="u" * 2048, title="t" * 1000))
    validate_record(record(title="", genres=[], tags=[], cast=[]))
    validate_record(record(rating=0, watchers=0.0, popularity_rank=-5))
    validate_record(record(watchers=10**300))  # large but still a finite double


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"url": ""}, "url must be a non-empty string"),
        ({"url": None}, "url must be a non-empty string"),
        ({"url": 5}, "url must be a non-empty string"),
        ({"url": "u" * 2049}, "url must be at most 2048 characters"),
        ({"title": None}, "title must be a string"),
        ({"title": 7}, "title must be a string"),
        ({"title": "t" * 1001}, "title must be at most 1000 characters"),
        ({"country": None}, "country must be a string"),
        ({"aired_date": 2023}, "aired_date must be a string"),
        ({"genres": "Drama"}, "genres must be a list of strings"),
        ({"genres": ["Drama", 3]}, "genres[1] must be a string"),
        ({"tags": None}, "tags must be a list of strings"),
        ({"tags": [None]}, "tags[0] must be a string"),
        ({"cast": {"actor_name": "x"}}, "cast must be a list of objects"),
        ({"cast": ["Someone"]}, "cast[0] must be an object"),
        ({"cast": [{"actor_name": "a"}, {"role": "Main"}]}, "cast[1].actor_name must be a string"),
        ({"cast": [{"actor_name": 1}]}, "cast[0].actor_name must be a string"),
        ({"rating": "9.1"}, "rating must be a number"),
        ({"rating": True}, "rating must be a number"),
        ({"rating": None}, "rating must be a number"),
        ({"rating": math.nan}, "rating must be a finite number"),
        ({"watchers": math.inf}, "watchers must be a finite number"),
        ({"watchers": False}, "watchers must be a number"),
        ({"popularity_rank": -math.inf}, "popularity_rank must be a finite number"),
        ({"popularity_rank": 10**400}, "popularity_rank must be a finite number"),
        ({"popularity_rank": [1]}, "popularity_rank must be a number"),
    ],
)
def test_rejects_with_a_reason_naming_the_field(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(RecordError) as caught:
        validate_record(record(**changes))
    assert caught.value.reason == reason
    assert str(caught.value) == reason


@pytest.mark.parametrize(
    "field", ["url", "title", "country", "aired_date", "genres", "tags", "cast"]
)
def test_missing_required_field(field: str) -> None:
    raw = record()
    del raw[field]
    with pytest.raises(RecordError, match=f"^{field} must be"):
        validate_record(raw)


@pytest.mark.parametrize("field", ["rating", "watchers", "popularity_rank"])
def test_missing_number(field: str) -> None:
    raw = record()
    del raw[field]
    with pytest.raises(RecordError, match=f"^{field} must be a number$"):
        validate_record(raw)


@pytest.mark.parametrize("obj", [None, [], "record", 3, {1: "x"}])
def test_rejects_non_objects(obj: object) -> None:
    with pytest.raises(RecordError, match="^record must be an object$"):
        validate_record(obj)


def test_record_error_is_a_value_error() -> None:
    assert issubclass(RecordError, ValueError)
