"""The catalog over HTTP: response shapes, hand-checked results on the sample, bad queries."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from tests.conftest import Server, sample_records

DEFAULT_SORT = quote(
    json.dumps([{"key": "popularity_rank", "order": "desc"}, {"key": "rating", "order": "desc"}])
)


async def test_frontend_default_query(server: Server) -> None:
    response = await server.client.get(
        f"/api/dramas?page=1&limit=24&search=&minRating=0&sort={DEFAULT_SORT}"
    )
    assert response.status_code == 200
    body = response.json()
    assert list(body) == ["totalItems", "dramas", "currentPage", "totalPages"]
    assert body["totalItems"] == 14
    assert body["currentPage"] == 1
    assert body["totalPages"] == 1
    # Worked by hand: ranks span 17..759 and ratings 9.0..9.4. Rank 138 rated 9.4 scores
    # 2 * (1 - 121/742) + 1 * 1 = 2.674, above rank 35 rated 9.2 (2.451) and rank 17 rated 9.1
    # (2.25); the least popular, rank 759 rated 9.0, scores 0 and comes last.
    ranks = [d["popularity_rank"] for d in body["dramas"]]
    assert ranks[:4] == [138, 35, 17, 21]
    assert ranks[-1] == 759
    first = body["dramas"][0]
    assert list(first)[:2] == ["url", "title"]
    original = next(r for r in sample_records() if r["url"] == first["url"])
    assert first == original


async def test_no_sort_orders_by_popularity(server: Server) -> None:
    body = (await server.client.get("/api/dramas?sort=[]&limit=5&page=2")).json()
    ranks = sorted(r["popularity_rank"] for r in sample_records())
    assert [d["popularity_rank"] for d in body["dramas"]] == ranks[5:10]
    assert body["totalPages"] == 3
    assert body["currentPage"] == 2


async def test_filters_over_http(server: Server) -> None:
    response = await server.client.get(
        "/api/dramas", params={"countries": "China", "minRating": "9.05"}
    )
    body = response.json()
    expected = {
        r["url"] for r in sample_records() if r["country"] == "China" and r["rating"] >= 9.05
    }
    assert {d["url"] for d in body["dramas"]} == expected
    assert body["totalItems"] == len(expected)


async def test_page_past_the_end(server: Server) -> None:
    body = (await server.client.get("/api/dramas?page=9&limit=5")).json()
    assert body == {"totalItems": 14, "dramas": [], "currentPage": 9, "totalPages": 3}


async def test_metadata(server: Server) -> None:
    body = (await server.client.get("/api/dramas/metadata")).json()
    assert list(body) == ["genres", "tags", "countries", "cast"]
    assert body["countries"] == ["China", "South Korea"]
    genres = {g for r in sample_records() for g in r["genres"]}
    assert body["genres"] == sorted(genres)


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("sort=not-json", "sort"),
        ("sort=" + quote('[{"key":"title","order":"asc"}]'), "sort"),
        ("sort=" + quote('[{"key":"rating","order":"up"}]'), "sort"),
        ("sort=" + quote('{"key":"rating"}'), "sort"),
        ("page=0", "page"),
        ("page=1.5", "page"),
        ("page=abc", "page"),
        ("limit=0", "limit"),
        ("limit=-3", "limit"),
        ("limit=100000", "limit"),
        ("minRating=abc", "minRating"),
        ("minRating=7abc", "minRating"),
        ("minRating=NaN", "minRating"),
        ("genres=Drama&genres=Romance", "genres"),
        ("page=1&page=2", "page"),
    ],
)
async def test_bad_queries_are_400(server: Server, query: str, fragment: str) -> None:
    response = await server.client.get(f"/api/dramas?{query}")
    assert response.status_code == 400
    assert fragment in response.json()["message"]


async def test_too_many_query_fields(server: Server) -> None:
    query = "&".join(f"x{i}=1" for i in range(40))
    response = await server.client.get(f"/api/dramas?{query}")
    assert response.status_code == 400
