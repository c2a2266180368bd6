"""The synthetic catalog generator used by the benchmarks (bench/gen_catalog.py)."""

from __future__ import annotations

import json
import re
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

# ``bench`` is a top-level directory of the repository, not part of the installed package: make
# it importable however pytest is launched (``pytest`` or ``python -m pytest``).
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bench.gen_catalog import GENRES, TAGS, generate, main  # noqa: E402

COUNT = 600

REQUIRED: dict[str, type] = {
    "url": str,
    "title": str,
    "alternative_names": list,
    "country": str,
    "type": str,
    "episodes": int,
    "aired_date": str,
    "aired_on": str,
    "original_network": str,
    "duration": str,
    "content_rating": str,
    "genres": list,
    "tags": list,
    "description": str,
    "cover_image": str,
    "rating": float,
    "rating_count": int,
    "watchers": int,
    "popularity_rank": int,
    "cast": list,
    "recommendations": list,
}
CAST_KEYS = {"actor_name", "character_name", "role_type", "actor_image", "profile_url"}
RECOMMENDATION_KEYS = {"title", "url", "image_url"}

SINGLE_DATE = re.compile(r"[A-Z][a-z]{2} \d{1,2}, \d{4}")
RANGE_DATE = re.compile(rf"{SINGLE_DATE.pattern} - {SINGLE_DATE.pattern}")


@pytest.fixture(scope="module")
def catalog() -> list[dict[str, Any]]:
    return generate(COUNT, 42)


def test_deterministic_for_a_seed(catalog: list[dict[str, Any]]) -> None:
    assert generate(COUNT, 42) == catalog
    assert generate(COUNT, 7) != catalog


def test_records_have_the_real_schema(catalog: list[dict[str, Any]]) -> None:
    # Same keys and value types as the real sample shipped with the server.
    real = json.loads(resources.files("dramaverse.data").joinpath("dramas.json").read_text("utf-8"))
    for sample in real:
        assert {k: type(v) for k, v in sample.items()} == REQUIRED
    assert len(catalog) == COUNT
    for record in catalog:
        assert set(record) == set(REQUIRED)
        for key, kind in REQUIRED.items():
            assert type(record[key]) is kind, (key, record[key])
        assert all(type(g) is str for g in record["genres"])
        assert all(type(t) is str for t in record["tags"])
        assert all(type(n) is str for n in record["alternative_names"])
        assert 1 <= len(record["genres"]) <= 5
        assert len(set(record["genres"])) == len(record["genres"])
        assert set(record["genres"]) <= set(GENRES)
        assert 1 <= len(record["tags"]) <= 15
        assert set(record["tags"]) <= set(TAGS)
        assert 3 <= len(record["cast"]) <= 12
        for member in record["cast"]:
            assert set(member) == CAST_KEYS
            assert all(type(v) is str for v in member.values())
        for rec in record["recommendations"]:
            assert set(rec) == RECOMMENDATION_KEYS
        assert 1.0 <= record["rating"] <= 10.0
        assert round(record["rating"], 1) == record["rating"]
        assert 200 <= len(record["description"]) <= 600
        assert re.fullmatch(r"https://mydramalist\.com/\d+-[a-z0-9-]+", record["url"])


def test_urls_unique_and_ranks_a_permutation(catalog: list[dict[str, Any]]) -> None:
    assert len({r["url"] for r in catalog}) == COUNT
    assert sorted(r["popularity_rank"] for r in catalog) == list(range(1, COUNT + 1))
    # More watchers means a better (smaller) rank, on the whole.
    top = sorted(catalog, key=lambda r: r["popularity_rank"])[: COUNT // 10]
    bottom = sorted(catalog, key=lambda r: r["popularity_rank"])[-COUNT // 10 :]
    assert min(r["watchers"] for r in top) > max(r["watchers"] for r in bottom)


def test_mixes_date_formats_including_unparseable() -> None:
    dates = [r["aired_date"] for r in generate(3000, 1)]
    ranges = sum(1 for d in dates if RANGE_DATE.fullmatch(d))
    singles = sum(1 for d in dates if SINGLE_DATE.fullmatch(d))
    other = len(dates) - ranges - singles
    assert ranges > 1000
    assert singles > 300
    assert 10 <= other <= 200  # ~2% "?", "TBA", ...
    assert {"?", "TBA"} <= set(dates)


def test_cli_writes_a_json_array(tmp_path: Path) -> None:
    out = tmp_path / "catalog.json"
    assert main(["--count", "25", "--seed", "3", "--out", str(out)]) == 0
    assert json.loads(out.read_text("utf-8")) == generate(25, 3)
