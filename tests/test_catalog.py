"""The catalog index must answer exactly as the original server's ``GET /api/dramas`` does.

Expectations are worked out by hand from the rules (sample catalog, tiny catalogs), and a
brute-force reimplementation of the original handler checks the index on random catalogs.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import pyuca

from dramaverse.domain.catalog import (
    CatalogIndex,
    CatalogQuery,
    SortPriority,
    js_json,
    js_number,
    parse_query,
)
from dramaverse.domain.dates import parse_aired_start_ms
from dramaverse.errors import BadRequest

SAMPLE = Path(__file__).parents[1] / "dramaverse" / "data" / "dramas.json"

# Sample catalog titles by catalog position, for readable expectations.
TWINKLING = "Twinkling Watermelon"  # 0: rank 35, rating 9.2
TANGERINES = "When Life Gives You Tangerines"  # 1: rank 138, rating 9.4
PLAYLIST_2 = "Hospital Playlist Season 2"  # 2: rank 97, rating 9.1
TRAUMA = "The Trauma Code: Heroes on Call"  # 3: rank 237, rating 9.1
WEAK_HERO = "Weak Hero Class 1"  # 4: rank 30, rating 9.1
NIRVANA = "Nirvana in Fire"  # 5: rank 307, rating 9.1, China
MOVE = "Move to Heaven"  # 6: rank 39, rating 9.1
FLOWER = "Flower of Evil"  # 7: rank 17, rating 9.1
ALCHEMY = "Alchemy of Souls"  # 8: rank 21, rating 9.1
MOVING = "Moving"  # 9: rank 93, rating 9.0
PLAYLIST = "Hospital Playlist"  # 10: rank 40, rating 9.0
FLY = "When I Fly Towards You"  # 11: rank 145, rating 9.0, China
JOY = "Joy of Life"  # 12: rank 513, rating 9.0, China
LOTUS = "Mysterious Lotus Casebook"  # 13: rank 759, rating 9.0, China

BY_POPULARITY = [
    FLOWER,
    ALCHEMY,
    WEAK_HERO,
    TWINKLING,
    MOVE,
    PLAYLIST,
    MOVING,
    PLAYLIST_2,
    TANGERINES,
    FLY,
    TRAUMA,
    NIRVANA,
    JOY,
    LOTUS,
]


@pytest.fixture(scope="module")
def sample_records() -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = json.loads(SAMPLE.read_text(encoding="utf-8"))
    return records


@pytest.fixture(scope="module")
def sample(sample_records: list[dict[str, Any]]) -> CatalogIndex:
    return CatalogIndex.build(sample_records)


_urls = itertools.count()


def drama(title: str = "Title", **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "url": f"https://example.test/{next(_urls)}",
        "title": title,
        "country": "South Korea",
        "aired_date": "Jan 1, 2020",
        "genres": [],
        "tags": [],
        "rating": 8.0,
        "watchers": 100,
        "popularity_rank": 10,
        "cast": [],
    }
    record.update(fields)
    return record


def run(index: CatalogIndex, **params: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(index.query(parse_query(params.items())))
    return result


def titles(result: dict[str, Any]) -> list[str]:
    return [item["title"] for item in result["dramas"]]


def sort(*priorities: tuple[str, str | None]) -> str:
    return json.dumps(
        [
            {"key": key} if order is None else {"key": key, "order": order}
            for key, order in priorities
        ]
    )


# -- parse_query ----------------------------------------------------------------------------------


def test_defaults() -> None:
    assert parse_query([]) == CatalogQuery(
        page=1,
        limit=24,
        search="",
        min_rating=0.0,
        genres=(),
        exclude_genres=(),
        tags=(),
        exclude_tags=(),
        countries=(),
        cast=(),
        sort=(),
    )


def test_parses_every_parameter() -> None:
    query = parse_query(
        [
            ("page", "3"),
            ("limit", "500"),
            ("search", "Love "),
            ("minRating", "7.5"),
            ("genres", "Drama,Romance"),
            ("excludeGenres", "Horror"),
            ("tags", "a,"),
            ("excludeTags", ",b"),
            ("countries", "Japan"),
            ("cast", "IU,Park Bo Gum"),
            ("sort", '[{"key": "rating", "order": "asc", "extra": 1}, {"key": "aired_date"}]'),
            ("unknown", "ignored"),
        ]
    )
    assert query == CatalogQuery(
        page=3,
        limit=500,
        search="Love ",
        min_rating=7.5,
        genres=("Drama", "Romance"),
        exclude_genres=("Horror",),
        tags=("a", ""),
        exclude_tags=("", "b"),
        countries=("Japan",),
        cast=("IU", "Park Bo Gum"),
        sort=(SortPriority("rating", "asc"), SortPriority("aired_date", "desc")),
    )


def test_empty_lists_and_leading_zeros() -> None:
    query = parse_query([("genres", ""), ("page", "007"), ("limit", "0024"), ("sort", " [ ] ")])
    assert (query.genres, query.page, query.limit, query.sort) == ((), 7, 24, ())


@pytest.mark.parametrize(
    ("text", "value"),
    [("7", 7.0), ("7.5", 7.5), ("-1", -1.0), (".5", 0.5), ("+2", 2.0), ("7.", 7.0), ("1e1", 10.0)],
)
def test_min_rating_numbers(text: str, value: float) -> None:
    assert parse_query([("minRating", text)]).min_rating == value


def test_negative_zero_min_rating_is_not_a_filter() -> None:
    assert not parse_query([("minRating", "-0")]).has_active_filters
    assert parse_query([("minRating", "0.001")]).has_active_filters
    assert parse_query([("cast", "x")]).has_active_filters


_NINE = json.dumps([{"key": "rating"}] * 9)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("page", "0"),
        ("page", "-1"),
        ("page", "+1"),
        ("page", "1.5"),
        ("page", ""),
        ("page", "abc"),
        ("page", " 1"),
        ("page", "1\n"),
        ("page", "1000000001"),
        ("page", "9" * 5000),
        ("page", "\u0661"),  # an Arabic-Indic digit
        ("limit", "0"),
        ("limit", "501"),
        ("limit", ""),
        ("limit", "2.0"),
        ("limit", "1e2"),
        ("minRating", ""),
        ("minRating", "abc"),
        ("minRating", "7abc"),
        ("minRating", "NaN"),
        ("minRating", "Infinity"),
        ("minRating", "-Infinity"),
        ("minRating", "1e999"),
        ("minRating", " 7"),
        ("minRating", "0x10"),
        ("minRating", "7,5"),
        ("sort", ""),
        ("sort", "["),
        ("sort", "{}"),
        ("sort", "null"),
        ("sort", '"rating"'),
        ("sort", "[1]"),
        ("sort", '[["rating"]]'),
        ("sort", "[{}]"),
        ("sort", '[{"key": "title"}]'),
        ("sort", '[{"key": "Rating"}]'),
        ("sort", '[{"key": "rating", "order": "up"}]'),
        ("sort", '[{"key": "rating", "order": "ASC"}]'),
        ("sort", '[{"key": "rating", "order": null}]'),
        ("sort", '[{"key": "rating", "x": NaN}]'),
        ("sort", _NINE),
        ("sort", "[" * 100_000),
    ],
)
def test_invalid_parameters(name: str, value: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_query([(name, value)])
    assert caught.value.status == 400
    assert caught.value.message.startswith(f"Invalid query parameter '{name}': ")


def test_limit_message() -> None:
    with pytest.raises(BadRequest) as caught:
        parse_query([("limit", "501")])
    assert caught.value.message == (
        "Invalid query parameter 'limit': must be an integer between 1 and 500."
    )


def test_eight_priorities_are_allowed() -> None:
    assert len(parse_query([("sort", json.dumps([{"key": "watchers"}] * 8))]).sort) == 8


@pytest.mark.parametrize("name", ["page", "limit", "search", "minRating", "genres", "cast", "sort"])
def test_repeated_parameter(name: str) -> None:
    with pytest.raises(BadRequest, match=f"'{name}'"):
        parse_query([(name, "1"), ("other", "x"), (name, "1")])


def test_unknown_parameters_may_repeat() -> None:
    assert parse_query([("utm", "a"), ("utm", "b")]) == parse_query([])


# -- JSON like JavaScript -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (-7, "-7"),
        (0.0, "0"),
        (-0.0, "0"),
        (9.0, "9"),
        (100.0, "100"),
        (9.2, "9.2"),
        (0.1 + 0.2, "0.30000000000000004"),
        (123456789.125, "123456789.125"),
        (0.000001, "0.000001"),
        (0.00001, "0.00001"),
        (1e-7, "1e-7"),
        (-1.5e-7, "-1.5e-7"),
        (5e-324, "5e-324"),
        (1e16, "10000000000000000"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (-1.5e300, "-1.5e+300"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (2.0**60, "1152921504606847000"),
        (2**53, "9007199254740992"),
        (2**60, "1152921504606847000"),  # JSON.parse turns big integers into doubles
        (10**400, "null"),
        (math.nan, "null"),
        (math.inf, "null"),
        (-math.inf, "null"),
    ],
)
def test_js_number(value: float, text: str) -> None:
    assert js_number(value) == text


def test_js_number_refuses_booleans() -> None:
    with pytest.raises(TypeError):
        js_number(True)


def test_js_json_strings() -> None:
    assert js_json('a"b\\c\n\t\x01\x7f') == b'"a\\"b\\\\c\\n\\t\\u0001\x7f"'
    assert js_json("\u2028é😀") == '"\u2028é😀"'.encode()
    # Lone surrogates are escaped; two surrogate code points forming a pair are one character.
    assert js_json(["\ud800", "x\udfff"]) == b'["\\ud800","x\\udfff"]'
    assert js_json("\ud83d\ude00") == '"😀"'.encode()


def test_js_json_values_and_key_order() -> None:
    value = {"b": [1.0, None, True, False, (2.5,)], "2": {"z": 1, "0": 0}, "1": "x", "01": -0.0}
    assert js_json(value) == b'{"1":"x","2":{"0":0,"z":1},"b":[1,null,true,false,[2.5]],"01":0}'
    assert js_json({"4294967295": 1, "4294967294": 2}) == b'{"4294967294":2,"4294967295":1}'


def test_js_json_rejects_other_types() -> None:
    with pytest.raises(TypeError):
        js_json({"x": {1, 2}})
    with pytest.raises(TypeError):
        js_json({1: "x"})


# -- output format ---------------------------------------------------------------------------------


def test_exact_body_of_a_tiny_catalog() -> None:
    record = {
        "genres": ["Drama"],
        "title": "Ünïcode “T”",
        "url": "https://example.test/u",
        "rating": 9.0,
        "watchers": 12,
        "popularity_rank": 1,
        "country": "Japan",
        "aired_date": "?",
        "tags": [],
        "cast": [{"actor_name": "A", "rating": 7.0}],
        "score": 1,  # the original server strips these from its output
        "genresSet": [],
    }
    body = CatalogIndex.build([record]).query(parse_query([]))
    assert (
        body
        == (
            '{"totalItems":1,"dramas":[{"url":"https://example.test/u","title":"Ünïcode “T”",'
            '"genres":["Drama"],"rating":9,"watchers":12,"popularity_rank":1,"country":"Japan",'
            '"aired_date":"?","tags":[],"cast":[{"actor_name":"A","rating":7}]}],'
            '"currentPage":1,"totalPages":1}'
        ).encode()
    )


def test_sample_records_come_back_unchanged(
    sample: CatalogIndex, sample_records: list[dict[str, Any]]
) -> None:
    result = run(sample, limit="500")
    by_url = {record["url"]: record for record in sample_records}
    assert [item["url"] for item in result["dramas"]] != [r["url"] for r in sample_records]
    for item in result["dramas"]:
        original = by_url[item["url"]]
        assert item == original
        assert list(item) == list(original)  # url, title first already in the sample
    body = sample.query(parse_query([("search", "Hospital Playlist")]))
    assert b'"rating":9,' in body  # Hospital Playlist's 9.0
    assert b'"rating":9.1,' in body


def test_response_key_order(sample: CatalogIndex) -> None:
    body = sample.query(parse_query([("limit", "1")]))
    assert list(json.loads(body)) == ["totalItems", "dramas", "currentPage", "totalPages"]


# -- filters -------------------------------------------------------------------------------------


def test_default_order_is_popularity_rank(sample: CatalogIndex) -> None:
    result = run(sample)
    assert titles(result) == BY_POPULARITY
    assert (result["totalItems"], result["currentPage"], result["totalPages"]) == (14, 1, 1)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"countries": "China"}, [FLY, NIRVANA, JOY, LOTUS]),
        ({"countries": "Japan,China"}, [FLY, NIRVANA, JOY, LOTUS]),  # any of them
        ({"countries": "Japan"}, []),
        ({"genres": "Medical"}, [PLAYLIST, PLAYLIST_2, TRAUMA]),
        ({"genres": "Romance,Drama"}, [TWINKLING, PLAYLIST_2, TANGERINES]),  # all of them
        ({"genres": "Drama,Nope"}, []),
        ({"excludeGenres": "Romance"}, [WEAK_HERO, MOVE, PLAYLIST, MOVING, TRAUMA, NIRVANA, LOTUS]),
        ({"excludeGenres": "Romance,Drama"}, [MOVING, LOTUS]),  # none of them
        ({"excludeGenres": "Nope"}, BY_POPULARITY),
        ({"tags": "Friendship,Bromance"}, [WEAK_HERO, PLAYLIST, LOTUS]),
        ({"excludeTags": "Friendship,Comedy"}, [FLOWER, MOVE, MOVING, TANGERINES, TRAUMA, NIRVANA]),
        ({"cast": "Jo Jung Suk"}, [PLAYLIST, PLAYLIST_2]),
        ({"cast": "Jo Jung Suk,Yoo Yeon Seok"}, [PLAYLIST, PLAYLIST_2]),
        ({"cast": "Jo Jung Suk,IU"}, []),
        (
            {"minRating": "9.1"},
            [FLOWER, ALCHEMY, WEAK_HERO, TWINKLING, MOVE, PLAYLIST_2, TANGERINES, TRAUMA, NIRVANA],
        ),
        ({"minRating": "9.4"}, [TANGERINES]),
        ({"minRating": "9.5"}, []),
        ({"minRating": "9.1", "countries": "China"}, [NIRVANA]),
        ({"search": "hospital"}, [PLAYLIST, PLAYLIST_2]),
        ({"search": "PLAYLIST season"}, [PLAYLIST_2]),
        ({"search": "of"}, [FLOWER, ALCHEMY, JOY]),
        ({"search": "hospital", "genres": "Comedy"}, [PLAYLIST]),
        ({"search": "zzz"}, []),
        (
            {
                "genres": "Drama",
                "excludeTags": "Friendship",
                "countries": "South Korea",
                "minRating": "9.1",
            },
            [MOVE, PLAYLIST_2, TANGERINES, TRAUMA],
        ),
    ],
)
def test_filters(sample: CatalogIndex, params: dict[str, str], expected: list[str]) -> None:
    result = run(sample, **params)
    assert titles(result) == expected
    assert result["totalItems"] == len(expected)
    assert result["totalPages"] == (1 if expected else 0)


def test_min_rating_applies_only_with_active_filters() -> None:
    index = CatalogIndex.build(
        [drama("low", rating=-2.0), drama("mid", rating=-0.5), drama("zero", rating=0)]
    )
    # A minRating of 0 or less alone is no filter at all, so -2 stays.
    assert titles(run(index, minRating="-1")) == ["low", "mid", "zero"]
    # With another filter active, rating >= minRating applies, negative or not.
    assert titles(run(index, minRating="-1", excludeGenres="Nope")) == ["mid", "zero"]
    assert titles(run(index, minRating="0", excludeGenres="Nope")) == ["zero"]
    assert titles(run(index, minRating="0.0001")) == []


def test_empty_list_values_match_only_empty_strings() -> None:
    index = CatalogIndex.build(
        [drama("a", genres=["Drama"]), drama("b", genres=["Drama", ""]), drama("c", tags=[""])]
    )
    assert titles(run(index, genres="Drama,")) == ["b"]
    assert titles(run(index, excludeTags=",")) == ["a", "b"]
    assert titles(run(index, genres="")) == ["a", "b", "c"]  # an empty parameter is no filter


def test_country_and_cast_are_exact_and_case_sensitive() -> None:
    index = CatalogIndex.build(
        [
            drama("a", country="Japan", cast=[{"actor_name": "IU"}, {"actor_name": "Kim"}]),
            drama("b", country="japan", cast=[{"actor_name": "iu"}]),
        ]
    )
    assert titles(run(index, countries="Japan")) == ["a"]
    assert titles(run(index, cast="IU")) == ["a"]
    assert titles(run(index, cast="Kim,IU")) == ["a"]
    assert titles(run(index, cast="iu")) == ["b"]


def test_search_lowercases_both_sides() -> None:
    index = CatalogIndex.build(
        [drama("ΟΔΟΣ"), drama("İstanbul"), drama("Straße"), drama("LOVE Me"), drama("glove")]
    )
    assert titles(run(index, search="love")) == ["LOVE Me", "glove"]
    assert titles(run(index, search="LoVe m")) == ["LOVE Me"]
    assert titles(run(index, search="οδος")) == ["ΟΔΟΣ"]  # final sigma, as JavaScript lowercases
    assert titles(run(index, search="i̇st")) == ["İstanbul"]  # İ lowercases to i + dot above
    assert titles(run(index, search="strasse")) == []  # no case folding, only lowercasing


def test_search_never_spans_two_titles() -> None:
    index = CatalogIndex.build([drama("abc"), drama("def")])
    assert titles(run(index, search="cd")) == []
    assert titles(run(index, search="c\0d")) == []
    assert titles(run(index, search="ef")) == ["def"]


def test_search_with_nul_in_titles() -> None:
    index = CatalogIndex.build([drama("a\0b"), drama("b"), drama("x\0")])
    assert titles(run(index, search="\0")) == ["a\0b", "x\0"]
    assert titles(run(index, search="b")) == ["a\0b", "b"]
    assert titles(run(index, search="\0b")) == ["a\0b"]


# -- sorting ------------------------------------------------------------------------------------


def test_sample_by_rating(sample: CatalogIndex) -> None:
    result = run(sample, sort=sort(("rating", "desc")))
    assert titles(result) == [
        TANGERINES,  # 9.4
        TWINKLING,  # 9.2
        ALCHEMY,  # the seven at 9.1, by title
        FLOWER,
        PLAYLIST_2,
        MOVE,
        NIRVANA,
        TRAUMA,
        WEAK_HERO,
        PLAYLIST,  # the five at 9.0, by title
        JOY,
        MOVING,
        LOTUS,
        FLY,
    ]
    ascending = run(sample, sort=sort(("rating", "asc")))
    assert titles(ascending) == [
        PLAYLIST,  # the five at 9.0, by title
        JOY,
        MOVING,
        LOTUS,
        FLY,
        ALCHEMY,
        FLOWER,
        PLAYLIST_2,
        MOVE,
        NIRVANA,
        TRAUMA,
        WEAK_HERO,
        TWINKLING,
        TANGERINES,
    ]


def weights_catalog() -> list[dict[str, Any]]:
    return [
        drama("banana", rating=8.0, popularity_rank=10),
        drama("Apple", rating=9.0, popularity_rank=30),
        drama("cherry", rating=7.0, popularity_rank=20),
        drama("date", rating=9.0, popularity_rank=10),
    ]


def test_weighted_score_by_hand() -> None:
    index = CatalogIndex.build(weights_catalog())
    # rating spans 7..9, popularity_rank 10..30; weights 2 (first) and 1 (second).
    # rating desc:        banana 0.5, Apple 1, cherry 0, date 1        (x2)
    # popularity desc:    banana 1,   Apple 0, cherry 0.5, date 1      (lower rank is better)
    # totals:             banana 2,   Apple 2, cherry 0.5, date 3      -> tie broken by title
    result = run(index, sort=sort(("rating", "desc"), ("popularity_rank", "desc")))
    assert titles(result) == ["date", "Apple", "banana", "cherry"]
    # popularity asc inverts the second term: banana 1+0, Apple 2+1, cherry 0+0.5, date 2+0.
    result = run(index, sort=sort(("rating", "desc"), ("popularity_rank", "asc")))
    assert titles(result) == ["Apple", "date", "banana", "cherry"]
    # The order of priorities sets the weights: popularity first now weighs 2.
    # banana 2+0.5, Apple 0+1, cherry 1+0, date 2+1
    result = run(index, sort=sort(("popularity_rank", "desc"), ("rating", "desc")))
    assert titles(result) == ["date", "banana", "Apple", "cherry"]


def test_missing_order_means_descending() -> None:
    index = CatalogIndex.build(weights_catalog())
    implicit = run(index, sort=sort(("rating", None), ("watchers", None)))
    explicit = run(index, sort=sort(("rating", "desc"), ("watchers", "desc")))
    assert titles(implicit) == titles(explicit) == ["Apple", "date", "banana", "cherry"]


def test_popularity_priority_breaks_ties_by_title_not_catalog_order() -> None:
    index = CatalogIndex.build(
        [
            drama("b", popularity_rank=2),
            drama("c", popularity_rank=1),
            drama("a", popularity_rank=2),
        ]
    )
    assert titles(run(index)) == ["c", "b", "a"]  # no priorities: stable by rank
    assert titles(run(index, sort=sort(("popularity_rank", "desc")))) == ["c", "a", "b"]
    assert titles(run(index, sort=sort(("popularity_rank", "asc")))) == ["a", "b", "c"]


def test_a_key_without_spread_is_skipped() -> None:
    index = CatalogIndex.build(
        [drama("a", watchers=1), drama("b", watchers=3), drama("c", watchers=2)]
    )
    # All ratings are equal: only watchers orders, whatever its weight.
    result = run(index, sort=sort(("rating", "asc"), ("watchers", "desc")))
    assert titles(result) == ["b", "c", "a"]


def test_stats_come_from_the_filtered_set() -> None:
    index = CatalogIndex.build(
        [
            drama("a", rating=9.0, watchers=10, genres=["x"]),
            drama("b", rating=5.0, watchers=30, genres=["x"]),
            drama("c", rating=1.0, watchers=20),
        ]
    )
    order = sort(("rating", "desc"), ("watchers", "desc"))
    # Over everything: a 2*1 + 0 = 2, b 2*0.5 + 1 = 2, c 0 + 0.5; a and b tie, a first by title.
    assert titles(run(index, sort=order)) == ["a", "b", "c"]
    # Over genre x only: a 2*1 + 0 = 2, b 0 + 1 = 1.
    assert titles(run(index, sort=order, genres="x")) == ["a", "b"]
    # One record: every spread is 0, the score is 0, and it is still returned.
    assert titles(run(index, sort=order, search="c")) == ["c"]


def test_air_date_unparseable_and_epoch_count_as_minimum() -> None:
    index = CatalogIndex.build(
        [
            drama("2020", aired_date="Jan 1, 2020 - Mar 1, 2020"),
            drama("b-before", aired_date="Dec 31, 1969"),
            drama("2000", aired_date="2000-01-01"),
            drama("a-epoch", aired_date="Jan 1, 1970"),
            drama("c-unknown", aired_date="?"),
        ]
    )
    # The epoch (0) is falsy in JavaScript's `timestamp || min`, so it scores like the minimum
    # (1969-12-31) and like the unparseable date: the three tie and go by title.
    newest = run(index, sort=sort(("aired_date", "desc")))
    assert titles(newest) == ["2020", "2000", "a-epoch", "b-before", "c-unknown"]
    oldest = run(index, sort=sort(("aired_date", "asc")))
    assert titles(oldest) == ["a-epoch", "b-before", "c-unknown", "2000", "2020"]


def test_no_parseable_air_date_skips_that_priority() -> None:
    # Every date counts as the minimum, so the aired_date spread is zero and only the other
    # priorities order the set. (The original server's scores all became NaN here and it
    # ignored every priority: a bug we do not copy.)
    records = [
        drama("b", aired_date="?", rating=1.0),
        drama("a", aired_date="TBA", rating=9.0),
        drama("c", aired_date="", rating=5.0),
        drama("d", aired_date="Jan 1, 2020", rating=7.0),
    ]
    undated = CatalogIndex.build(records[:3])
    by_rating_then_date = sort(("rating", "desc"), ("aired_date", "desc"))
    assert titles(run(undated, sort=by_rating_then_date)) == ["a", "c", "b"]
    by_date_then_rating = sort(("aired_date", "desc"), ("rating", "asc"))
    assert titles(run(undated, sort=by_date_then_rating)) == ["b", "c", "a"]
    # With one dated record in a filtered set the same holds: its own spread is zero too.
    index = CatalogIndex.build(records)
    filtered = run(index, sort=by_rating_then_date, excludeGenres="x")
    # rating spans 1..9 (weight 2); the one date is the only parseable one, so the undated
    # three count as that minimum too and aired_date contributes nothing.
    assert titles(filtered) == ["a", "d", "c", "b"]


def test_one_distinct_air_date_is_skipped() -> None:
    index = CatalogIndex.build(
        [drama("x", aired_date="?", rating=1.0), drama("y", aired_date="2020", rating=2.0)]
    )
    # One parseable date: spread 0, so aired_date is skipped and rating decides.
    assert titles(run(index, sort=sort(("aired_date", "desc"), ("rating", "desc")))) == ["y", "x"]


# Checked against Node 20: ``titles.sort((a, b) => a.localeCompare(b))``.
LOCALE_ORDER = [
    "10",
    "2",
    "9",
    "cafe",
    "Cafe",
    "café",
    "Café",
    "cafes",
    "co-op",
    "Co-op",
    "coop",
    "ss",
    "SS",
    "ß",
    "the end",
    "The End",
    "theend",
    "z",
    "Z",
    "Ω",
    "가",
    "日本",
]


def test_ties_follow_locale_compare() -> None:
    shuffled = LOCALE_ORDER[::-1]
    random.Random(4).shuffle(shuffled)
    index = CatalogIndex.build([drama(title) for title in shuffled])
    assert titles(run(index, sort=sort(("rating", "desc")))) == LOCALE_ORDER
    simple = CatalogIndex.build([drama(t) for t in ["banana", "Banana", "apple", "b", "A", "a"]])
    assert titles(run(simple, sort=sort(("watchers", "asc")))) == [
        "a",
        "A",
        "apple",
        "b",
        "banana",
        "Banana",
    ]


def test_titles_equal_under_collation_keep_catalog_order() -> None:
    records = [
        drama("Same", watchers=1),
        drama("same", watchers=2),
        drama("Same", watchers=3),
        drama("Other", rating=1.0),
    ]
    index = CatalogIndex.build(records)
    result = run(index, sort=sort(("rating", "desc")))
    assert [item["watchers"] for item in result["dramas"]] == [2, 1, 3, 100]


def test_fast_sort_keys_agree_with_pyuca(sample_records: list[dict[str, Any]]) -> None:
    from dramaverse.domain.collation import _sort_keys

    collator = pyuca.Collator()
    rnd = random.Random(11)
    alphabet = list(
        "abcLl·\u0387-'. 09éE\u0301\u0327ßİ\u0131\u0307Σ\u03c3ς日本한가ｶカ😀\x00\t\u200b"
    )
    strings = [r["title"] for r in sample_records]
    strings += [name for r in sample_records for name in r["alternative_names"]]
    strings += [*LOCALE_ORDER, "l·", "L\u0387x", "al·la", "\u0e40\u0e01"]
    strings += ["".join(rnd.choices(alphabet, k=rnd.randint(0, 9))) for _ in range(3000)]
    fast = _sort_keys()
    assert [fast(text) for text in strings] == [collator.sort_key(text) for text in strings]


# -- paging ----------------------------------------------------------------------------------------


def test_pages(sample: CatalogIndex) -> None:
    third = run(sample, limit="5", page="3")
    assert titles(third) == BY_POPULARITY[10:]
    assert (third["totalItems"], third["currentPage"], third["totalPages"]) == (14, 3, 3)
    past = run(sample, limit="5", page="4")
    assert (past["dramas"], past["totalItems"], past["currentPage"], past["totalPages"]) == (
        [],
        14,
        4,
        3,
    )
    far = run(sample, page="1000000000", limit="500", sort=sort(("rating", "desc")))
    assert (far["dramas"], far["currentPage"], far["totalPages"]) == ([], 1_000_000_000, 1)
    assert titles(run(sample, limit="1", page="14")) == [LOTUS]
    sorted_page = run(sample, limit="4", page="2", sort=sort(("rating", "desc")))
    assert titles(sorted_page) == [PLAYLIST_2, MOVE, NIRVANA, TRAUMA]


def test_empty_result_has_no_pages(sample: CatalogIndex) -> None:
    assert sample.query(parse_query([("search", "nothing like this")])) == (
        b'{"totalItems":0,"dramas":[],"currentPage":1,"totalPages":0}'
    )


# -- metadata and basics ---------------------------------------------------------------------------


def test_sample_metadata(sample: CatalogIndex, sample_records: list[dict[str, Any]]) -> None:
    metadata = json.loads(sample.metadata_json)
    assert list(metadata) == ["genres", "tags", "countries", "cast"]
    assert metadata["genres"] == [
        "Action",
        "Comedy",
        "Crime",
        "Drama",
        "Fantasy",
        "Historical",
        "Life",
        "Medical",
        "Melodrama",
        "Military",
        "Mystery",
        "Political",
        "Romance",
        "Supernatural",
        "Thriller",
        "Wuxia",
        "Youth",
    ]
    assert metadata["countries"] == ["China", "South Korea"]
    assert metadata["tags"][:3] == ["1990s", "Action", "Adventure"]
    assert len(metadata["tags"]) == 105
    assert len(metadata["cast"]) == 70
    assert metadata["cast"][:2] == ["Bian Tian Yang", "Cha Tae Hyun"]
    assert metadata["tags"] == sorted(metadata["tags"])  # all BMP here: code units = code points


def test_metadata_sorts_by_utf16_code_units() -> None:
    index = CatalogIndex.build(
        [
            drama(genres=["😀", "\uff01", "a"], tags=["b"], country="Z"),
            drama(genres=["B", "é", "a", ""], tags=[], country="A", cast=[{"actor_name": "Ω"}]),
        ]
    )
    metadata = json.loads(index.metadata_json)
    # U+1F600 is the surrogate pair D83D DE00, which sorts before U+FF01 in UTF-16.
    assert metadata == {
        "genres": ["", "B", "a", "é", "😀", "\uff01"],
        "tags": ["b"],
        "countries": ["A", "Z"],
        "cast": ["Ω"],
    }


def test_empty_index() -> None:
    index = CatalogIndex.empty()
    assert len(index) == 0
    assert "https://example.test/x" not in index
    assert index.metadata_json == b'{"genres":[],"tags":[],"countries":[],"cast":[]}'
    for params in ({}, {"search": "x"}, {"genres": "x", "sort": sort(("aired_date", "asc"))}):
        assert index.query(parse_query(params.items())) == (
            b'{"totalItems":0,"dramas":[],"currentPage":1,"totalPages":0}'
        )


def test_len_and_contains(sample: CatalogIndex, sample_records: list[dict[str, Any]]) -> None:
    assert len(sample) == 14
    assert sample_records[3]["url"] in sample
    assert "https://mydramalist.com/nope" not in sample
    assert None not in sample
    assert ["list"] not in sample


def test_repeated_queries_are_identical(sample: CatalogIndex) -> None:
    query = parse_query([("sort", sort(("popularity_rank", "desc"), ("rating", "desc")))])
    first = sample.query(query)
    for params in ({"search": "of"}, {"genres": "Drama"}, {"limit": "3"}):
        sample.query(parse_query(params.items()))
    assert sample.query(query) == first


def test_sample_frontend_default_sort(sample: CatalogIndex) -> None:
    # popularity_rank (weight 2, ranks 17..759, lower is better) then rating (weight 1, 9.0..9.4):
    # score = 2 * (1 - (rank - 17) / 742) + (rating - 9.0) / 0.4
    result = run(sample, sort=sort(("popularity_rank", "desc"), ("rating", "desc")))
    assert titles(result) == [
        TANGERINES,  # 2 * 0.8369 + 1    = 2.674
        TWINKLING,  # 2 * 0.9757 + 0.5   = 2.451
        FLOWER,  # 2 * 1 + 0.25          = 2.25
        ALCHEMY,  # 2 * 0.9946 + 0.25    = 2.239
        WEAK_HERO,  # 2 * 0.9825 + 0.25  = 2.215
        MOVE,  # 2 * 0.9704 + 0.25       = 2.191
        PLAYLIST_2,  # 2 * 0.8922 + 0.25 = 2.034
        PLAYLIST,  # 2 * 0.9690 + 0      = 1.938
        MOVING,  # 2 * 0.8976 + 0        = 1.795
        TRAUMA,  # 2 * 0.7035 + 0.25     = 1.657
        FLY,  # 2 * 0.8275 + 0           = 1.655
        NIRVANA,  # 2 * 0.6092 + 0.25    = 1.468
        JOY,  # 2 * 0.3315 + 0           = 0.663
        LOTUS,  # 2 * 0 + 0              = 0
    ]


# -- against a brute-force reimplementation of the original handler ----------------------------

_COLLATOR = pyuca.Collator()


@functools.cache
def collation_key(title: str) -> tuple[int, ...]:
    key: tuple[int, ...] = _COLLATOR.sort_key(title)
    return key


def reference(records: Sequence[dict[str, Any]], params: dict[str, str]) -> dict[str, Any]:
    """The original handler's rules, written as plainly as possible."""
    page = int(params.get("page", "1"))
    limit = int(params.get("limit", "24"))
    term = params.get("search", "").lower()
    min_rating = float(params.get("minRating", "0"))

    def listed(name: str) -> list[str]:
        value = params.get(name, "")
        return value.split(",") if value else []

    genres, no_genres = listed("genres"), listed("excludeGenres")
    tags, no_tags = listed("tags"), listed("excludeTags")
    countries, cast = listed("countries"), listed("cast")
    priorities = [(p["key"], p.get("order", "desc")) for p in json.loads(params.get("sort", "[]"))]

    result = list(records)
    if term:
        result = [r for r in result if term in r["title"].lower()]
    if genres or no_genres or tags or no_tags or countries or cast or min_rating > 0:
        result = [
            r
            for r in result
            if r["rating"] >= min_rating
            and (not countries or r["country"] in countries)
            and all(g in r["genres"] for g in genres)
            and not any(g in r["genres"] for g in no_genres)
            and all(t in r["tags"] for t in tags)
            and not any(t in r["tags"] for t in no_tags)
            and all(a in [c["actor_name"] for c in r["cast"]] for a in cast)
        ]
    if priorities and result:
        stats = {}
        for key in ("rating", "popularity_rank", "watchers"):
            values = [float(r[key]) for r in result]
            stats[key] = (min(values), max(values))
        stamps = [parse_aired_start_ms(r["aired_date"]) for r in result]
        parsed = [s for s in stamps if s is not None]
        # No parseable date: all count as the minimum, a zero spread (we deliberately differ
        # from the original server, whose scores became NaN here).
        stats["aired_date"] = (min(parsed), max(parsed)) if parsed else (0.0, 0.0)
        scored = []
        for record, stamp in zip(result, stamps, strict=True):
            score = 0.0
            for index, (key, order) in enumerate(priorities):
                low, high = stats[key]
                spread = high - low
                if spread == 0:
                    continue
                # For dates, None (unparseable) and 0 (the epoch) are both falsy: `|| min`.
                value = (stamp or low) if key == "aired_date" else float(record[key])
                normalized = (value - low) / spread
                if key == "popularity_rank":
                    normalized = 1 - normalized
                if order == "asc":
                    normalized = 1 - normalized
                score += normalized * (len(priorities) - index)
            scored.append((score, record))

        def compare(a: tuple[float, dict[str, Any]], b: tuple[float, dict[str, Any]]) -> int:
            if a[0] != b[0]:
                return -1 if b[0] < a[0] else 1
            key_a, key_b = collation_key(a[1]["title"]), collation_key(b[1]["title"])
            return (key_a > key_b) - (key_a < key_b)

        result = [record for _, record in sorted(scored, key=functools.cmp_to_key(compare))]
    else:
        result = sorted(result, key=lambda r: r["popularity_rank"])
    start = (page - 1) * limit
    return {
        "totalItems": len(result),
        "urls": [r["url"] for r in result[start : start + limit]],
        "currentPage": page,
        "totalPages": math.ceil(len(result) / limit),
    }


WORDS = [
    "love",
    "Love",
    "LOVE",
    "apple",
    "Apple",
    "banana",
    "café",
    "Cafe",
    "the",
    "a",
    "Ω",
    "日本",
]
GENRES = ["Drama", "Romance", "Comedy", "Action", "Thriller", "", "😀", "\uff01"]
TAGS = [f"tag{i}" for i in range(12)] + [""]
COUNTRIES = ["South Korea", "Japan", "China", ""]
ACTORS = [f"Actor {i}" for i in range(25)]
DATES = ["Sep 25, 2023 - Nov 14, 2023", "Jan 1, 1970", "?", "", "2023", "Feb 30, 2023", "1999-12"]
KEYS = ["rating", "popularity_rank", "watchers", "aired_date"]


def synthetic_catalog(
    count: int, rnd: random.Random, dates: Sequence[str] = DATES
) -> list[dict[str, Any]]:
    records = []
    for i in range(count):
        title = " ".join(rnd.choices(WORDS, k=rnd.randint(1, 2)))
        records.append(
            {
                "url": f"https://example.test/{i}",
                "title": title,
                "country": rnd.choice(COUNTRIES),
                "aired_date": rnd.choice(dates),
                "genres": rnd.sample(GENRES, rnd.randint(0, 3)),
                "tags": rnd.sample(TAGS, rnd.randint(0, 4)),
                "rating": rnd.choice([9.0, 8.5, 8.5, 7.25, 0.0, 10.0, -1.5, 9.2]),
                "watchers": rnd.choice([0, 10, 10, 500, 123456, 99.5]),
                "popularity_rank": rnd.choice([1, 2, 3, 3, 3, 10, 50.0, 100]),
                "cast": [{"actor_name": a} for a in rnd.sample(ACTORS, rnd.randint(0, 3))],
            }
        )
    return records


def random_params(rnd: random.Random, max_page: int = 5) -> dict[str, str]:
    params: dict[str, str] = {}
    if rnd.random() < 0.5:
        params["page"] = str(rnd.randint(1, max_page))
    if rnd.random() < 0.7:
        params["limit"] = str(rnd.choice([1, 5, 24, 100, 500]))
    if rnd.random() < 0.3:
        params["search"] = rnd.choice(["love", "LOVE", "a", "é", "e b", "日", "x", "Ω"])
    if rnd.random() < 0.3:
        params["minRating"] = str(rnd.choice([0, 5, 8.5, 9, -1, -2, 10]))
    pools = {
        "genres": [*GENRES, "Nope"],
        "excludeGenres": GENRES,
        "tags": TAGS,
        "excludeTags": TAGS,
        "countries": [*COUNTRIES, "Mars"],
        "cast": ACTORS,
    }
    for name, pool in pools.items():
        if rnd.random() < 0.15:
            params[name] = ",".join(rnd.sample(pool, rnd.randint(1, 2)))
    if rnd.random() < 0.8:
        priorities = []
        for _ in range(rnd.randint(0, 4)):
            priority = {"key": rnd.choice(KEYS)}
            if rnd.random() < 0.8:
                priority["order"] = rnd.choice(["asc", "desc"])
            priorities.append(priority)
        params["sort"] = json.dumps(priorities)
    return params


def check_against_reference(
    records: list[dict[str, Any]], queries: Iterator[dict[str, str]] | list[dict[str, str]]
) -> int:
    index = CatalogIndex.build(records)
    checked = 0
    for params in queries:
        got = json.loads(index.query(parse_query(params.items())))
        got["urls"] = [item["url"] for item in got.pop("dramas")]
        assert got == reference(records, params), params
        checked += 1
    return checked


def test_matches_reference_on_a_random_catalog() -> None:
    rnd = random.Random(20240601)
    records = synthetic_catalog(2000, rnd)
    queries = [random_params(rnd) for _ in range(200)]
    queries += queries[:20]  # again, now from the caches
    assert check_against_reference(records, queries) == 220


def test_matches_reference_on_a_catalog_with_few_dates() -> None:
    rnd = random.Random(7)
    records = synthetic_catalog(600, rnd, dates=["?"] * 30 + ["Jan 1, 1970", "May 2024"])
    assert check_against_reference(records, [random_params(rnd) for _ in range(120)]) == 120


def test_matches_reference_on_a_large_catalog() -> None:
    # Over 4096 matches exercise the partial sort for early pages, and common search terms the
    # switch from jumping between matches to testing every title.
    rnd = random.Random(99)
    records = synthetic_catalog(6000, rnd)
    queries = [
        {"search": "a", "sort": sort(("rating", "desc"))},
        {"search": "e", "limit": "500", "page": "2"},
        {"excludeGenres": "Nope", "sort": sort(("rating", "desc"), ("aired_date", "asc"))},
        {"excludeGenres": "Drama", "page": "3", "limit": "100", "sort": sort(("watchers", None))},
        {
            "minRating": "-1",
            "countries": "Japan,China,South Korea,",
            "sort": sort(("rating", None)),
        },
    ]
    queries += [random_params(rnd, max_page=3) for _ in range(25)]
    assert check_against_reference(records, queries) == 30


def test_many_sort_orders_through_the_cache() -> None:
    # More distinct unfiltered sort orders than the cache holds, each asked twice.
    rnd = random.Random(5)
    records = synthetic_catalog(300, rnd)
    choices = [(key, order) for key in KEYS for order in ("asc", "desc")]
    combos = itertools.chain.from_iterable(itertools.permutations(choices, n) for n in (1, 2, 3))
    orders = [
        json.dumps([{"key": key, "order": order} for key, order in combo])
        for combo in itertools.islice(combos, 70)
    ]
    queries = [{"sort": order, "limit": "500"} for order in orders]
    assert check_against_reference(records, queries + queries[::-1]) == 140
