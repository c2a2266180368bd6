"""The Storage contract: every backend passes these same tests (SQLite and PostgreSQL).

Each test runs once per backend: a fresh SQLite file, or a fresh schema in the test PostgreSQL
database (skipped when no server answers, failed in CI). Only behaviour visible through the
:class:`~dramaverse.storage.base.Storage` protocol is asserted here; what is specific to one
backend lives in ``test_storage_sqlite.py`` and ``test_storage_postgres.py``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from dramaverse.domain.library import SaveEpisodeReview, SetFavorite, SetStatus
from dramaverse.errors import Conflict, NotFound, Unauthorized, UsernameTaken
from dramaverse.storage import open_storage
from dramaverse.storage import postgres as postgres_backend
from dramaverse.storage import sqlite as sqlite_backend
from dramaverse.storage.base import Library, Storage, WriteResult
from tests.conftest import make_settings, sample_records
from tests.postgres_tools import fresh_schema

BACKENDS = ["sqlite", "postgres"]
MIGRATIONS = {
    "sqlite": [name for _, name, _ in sqlite_backend.migration_files()],
    "postgres": [name for _, name, _ in postgres_backend.migration_files()],
}


@asynccontextmanager
async def open_backend(
    kind: str, tmp_path: Path, *, migrate: bool = True
) -> AsyncIterator[Storage]:
    """A fresh, empty database of ``kind`` behind ``open_storage``."""
    if kind == "sqlite":
        settings = make_settings(tmp_path, database_url=f"sqlite:///{tmp_path / 'contract.db'}")
        async with open_storage(settings, migrate=migrate) as storage:
            yield storage
        return
    async with fresh_schema() as (url, _name):
        settings = make_settings(tmp_path, database_url=url, database_pool_size=8)
        async with open_storage(settings, migrate=migrate) as storage:
            yield storage


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
async def storage(backend: str, tmp_path: Path) -> AsyncIterator[Storage]:
    async with open_backend(backend, tmp_path) as opened:
        yield opened


def dramas(count: int, prefix: str = "https://d/") -> list[dict[str, Any]]:
    return [{"url": f"{prefix}{i}", "title": f"Drama {i}", "rating": i % 10} for i in range(count)]


async def user_with_catalog(storage: Storage, records: list[dict[str, Any]] | None = None) -> int:
    await storage.import_dramas(sample_records() if records is None else records)
    return await storage.create_user("alice", "hash")


async def warm_up(storage: Storage, user: int) -> None:
    """Concurrent reads first, so a pooled backend has its connections open before a race."""
    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(storage.get_library, user)


def review(
    url: str, text: str, client_at: float = 0, *, episode: int = 1, force: bool = False
) -> SaveEpisodeReview:
    return SaveEpisodeReview(url, episode, text, client_at, force)


# -- migrations ------------------------------------------------------------------------------


async def test_migrations_apply_once_and_are_recorded(backend: str, tmp_path: Path) -> None:
    async with open_backend(backend, tmp_path, migrate=False) as storage:
        assert await storage.migrate() == MIGRATIONS[backend]
        assert await storage.migrate() == []
        assert await storage.applied_migrations() == MIGRATIONS[backend]
        assert await storage.count_dramas() == 0


# -- users -----------------------------------------------------------------------------------


async def test_users(storage: Storage) -> None:
    alice = await storage.create_user("alice", "$2b$04$hash")
    bob = await storage.create_user("Alice", "other")  # names are case-sensitive
    accented = await storage.create_user("zoë 🎬", "h")
    assert len({alice, bob, accented}) == 3
    found = await storage.get_user_by_username("alice")
    assert found is not None
    assert (found.id, found.username, found.password_hash) == (alice, "alice", "$2b$04$hash")
    named = await storage.get_user_by_username("zoë 🎬")
    assert named is not None
    assert named.id == accented
    assert await storage.get_user_by_username("nobody") is None
    with pytest.raises(UsernameTaken) as info:
        await storage.create_user("alice", "again")
    assert info.value.message == "Username already exists"
    assert await storage.user_exists(alice)
    assert not await storage.user_exists(max(alice, bob, accented) + 1)


# -- catalog ---------------------------------------------------------------------------------


async def test_empty_catalog(storage: Storage) -> None:
    assert await storage.count_dramas() == 0
    assert await storage.catalog_revision() == 0
    assert await storage.load_catalog() == []
    assert await storage.load_catalog_rows() == []
    result = await storage.import_dramas([])
    assert (result.inserted, result.updated, result.unchanged, result.revision) == (0, 0, 0, 0)


async def test_import_counts_revision_and_users_data(storage: Storage) -> None:
    records = sample_records()
    first = await storage.import_dramas(records)
    assert (first.inserted, first.updated, first.unchanged, first.revision) == (14, 0, 0, 1)
    assert await storage.catalog_revision() == 1
    assert await storage.count_dramas() == 14
    user = await storage.create_user("alice", "hash")
    url = records[3]["url"]
    await storage.set_favorite(user, SetFavorite(url, True))
    await storage.set_status(user, SetStatus(url, "Watching", 2))
    await storage.save_episode_review(user, review(url, "good"), 1000)

    same = await storage.import_dramas(records)
    assert (same.inserted, same.updated, same.unchanged) == (0, 0, 14)
    assert same.revision == 1  # nothing changed, nothing to reload

    changed = [dict(r) for r in records]
    changed[3]["rating"] = 1.5
    changed[5]["title"] = "A new title"
    changed.append({**records[0], "url": "https://example.com/new", "title": "New"})
    result = await storage.import_dramas(changed)
    assert (result.inserted, result.updated, result.unchanged) == (1, 2, 12)
    assert result.revision == 2
    assert await storage.catalog_revision() == 2

    library = await storage.get_library(user)
    assert library is not None
    assert library.favorites == [url]
    assert library.statuses == {url: {"status": "Watching", "currentEpisode": 2}}
    assert library.episode_reviews == {url: {"1": {"text": "good", "updatedAt": 1000}}}
    catalog = await storage.load_catalog()
    assert [d["url"] for d in catalog] == [d["url"] for d in changed]
    assert catalog[3]["rating"] == 1.5
    assert catalog[5]["title"] == "A new title"
    assert catalog == [{"url": r["url"], "title": r["title"], **r} for r in changed]


async def test_catalog_order_is_first_insertion_order(storage: Storage) -> None:
    a, b, c, d = ({"url": f"https://d/{x}", "title": x.upper()} for x in "zamb")
    await storage.import_dramas([a, b, c])
    result = await storage.import_dramas([{**c, "rating": 1}, d, a])
    assert (result.inserted, result.updated, result.unchanged) == (1, 1, 1)
    catalog = await storage.load_catalog()
    assert [x["url"] for x in catalog] == [
        "https://d/z",
        "https://d/a",
        "https://d/m",
        "https://d/b",
    ]
    assert catalog[2] == {"url": "https://d/m", "title": "M", "rating": 1}


async def test_catalog_rows_are_the_records_json_text(storage: Storage) -> None:
    records = sample_records()
    await storage.import_dramas(records)
    rows = await storage.load_catalog_rows()
    for row, record in zip(rows, records, strict=True):
        assert (row.url, row.title) == (record["url"], record["title"])
        rest = {k: v for k, v in record.items() if k not in ("url", "title")}
        assert row.data == json.dumps(rest, ensure_ascii=False, separators=(",", ":"))
        assert list(row.record()) == ["url", "title", *rest]  # key order survives
    assert "Dưa Hấu" in rows[0].data  # stored as text, not as \\u escapes


async def test_a_url_repeated_in_one_import_is_upserted_in_turn(storage: Storage) -> None:
    one = {"url": "https://d/1", "title": "One", "rating": 1}
    result = await storage.import_dramas([one, {**one, "rating": 2}])
    assert (result.inserted, result.updated, result.unchanged) == (1, 1, 0)
    assert await storage.load_catalog() == [{**one, "rating": 2}]
    again = await storage.import_dramas([{**one, "rating": 3}, {**one, "rating": 3}])
    assert (again.inserted, again.updated, again.unchanged) == (0, 1, 1)


async def test_import_reports_progress(storage: Storage) -> None:
    calls: list[tuple[int, int]] = []
    await storage.import_dramas(
        dramas(2500), progress=lambda done, total: calls.append((done, total))
    )
    assert calls == [(1000, 2500), (2000, 2500), (2500, 2500)]
    calls.clear()
    await storage.import_dramas(sample_records(), progress=lambda d, t: calls.append((d, t)))
    assert calls == [(14, 14)]
    assert await storage.count_dramas() == 2514


# -- library ---------------------------------------------------------------------------------


async def test_library_reads(storage: Storage) -> None:
    urls = [
        "https://d/b",
        "https://d/B",
        "https://d/_",
        "https://d/é",
        "https://d/a-z",
        "https://d/a",
    ]
    user = await user_with_catalog(storage, [{"url": u, "title": u} for u in urls])
    assert await storage.get_library(user + 1) is None
    empty = await storage.get_library(user)
    assert empty == Library()
    assert empty.to_json() == {"favorites": [], "statuses": {}, "reviews": {}, "episodeReviews": {}}
    for url in urls:
        await storage.set_favorite(user, SetFavorite(url, True))
        await storage.set_status(user, SetStatus(url, "Watching", 3))
    for episode in (10, 2):
        await storage.save_episode_review(user, review(urls[0], f"ep{episode}", episode=episode), 7)
    library = await storage.get_library(user)
    assert library is not None
    assert library.favorites == sorted(urls)  # code point (= UTF-8 byte) order on every backend
    assert list(library.statuses) == sorted(urls)
    assert library.statuses[urls[0]] == {"status": "Watching", "currentEpisode": 3}
    assert library.episode_reviews == {
        urls[0]: {"2": {"text": "ep2", "updatedAt": 7}, "10": {"text": "ep10", "updatedAt": 7}}
    }
    assert list(library.episode_reviews[urls[0]]) == ["2", "10"]


async def test_favorite_events(storage: Storage) -> None:
    user = await user_with_catalog(storage)
    url = sample_records()[0]["url"]
    added = await storage.set_favorite(user, SetFavorite(url, True))
    assert added.event is not None
    assert (added.event.user_id, added.event.seq, added.event.name) == (user, 1, "favorite_updated")
    assert added.event.payload == {"dramaUrl": url, "isFavorite": True}
    assert added.updated_at is None
    assert await storage.set_favorite(user, SetFavorite(url, True)) == WriteResult(None)
    assert await storage.event_head(user) == 1  # a write that changed nothing takes no number
    removed = await storage.set_favorite(user, SetFavorite(url, False))
    assert removed.event is not None
    assert removed.event.seq == 2
    assert removed.event.payload == {"dramaUrl": url, "isFavorite": False}
    assert await storage.set_favorite(user, SetFavorite(url, False)) == WriteResult(None)
    logged = await storage.read_events(user, 0, 10)
    assert logged.events == [added.event, removed.event]
    library = await storage.get_library(user)
    assert library is not None
    assert library.favorites == []


async def test_status_events(storage: Storage) -> None:
    user = await user_with_catalog(storage)
    url = sample_records()[0]["url"]
    first = await storage.set_status(user, SetStatus(url, "Watching", 0))
    repeat = await storage.set_status(user, SetStatus(url, "Watching", 0))
    moved = await storage.set_status(user, SetStatus(url, "Watching", 5))
    assert first.event is not None
    assert repeat.event is not None
    assert moved.event is not None
    assert first.event.name == "status_updated"
    assert first.event.payload == repeat.event.payload  # every set is announced
    assert [first.event.seq, repeat.event.seq, moved.event.seq] == [1, 2, 3]
    assert moved.event.payload == {
        "dramaUrl": url,
        "statusInfo": {"status": "Watching", "currentEpisode": 5},
    }
    library = await storage.get_library(user)
    assert library is not None
    assert library.statuses == {url: {"status": "Watching", "currentEpisode": 5}}
    removed = await storage.set_status(user, SetStatus(url, "", 0))
    assert removed.event is not None
    assert (removed.event.seq, removed.event.payload) == (4, {"dramaUrl": url, "statusInfo": None})
    assert await storage.set_status(user, SetStatus(url, "", 0)) == WriteResult(None)
    assert await storage.event_head(user) == 4
    assert [e.seq for e in (await storage.read_events(user, 0, 10)).events] == [1, 2, 3, 4]


async def test_review_conflict_rule_and_force(storage: Storage) -> None:
    user = await user_with_catalog(storage)
    url = sample_records()[0]["url"]
    saved = await storage.save_episode_review(user, review(url, "a"), 5000)
    assert saved.updated_at == 5000
    assert saved.event is not None
    assert (saved.event.seq, saved.event.name) == (1, "episode_review_updated")
    assert saved.event.payload == {
        "dramaUrl": url,
        "episodeNumber": 1,
        "review": {"text": "a", "updatedAt": 5000},
    }
    with pytest.raises(Conflict) as info:
        await storage.save_episode_review(user, review(url, "b", 4999), 6000)
    assert info.value.message == "Conflict detected."
    assert info.value.extra == {"serverVersion": {"text": "a", "updatedAt": 5000}}
    assert await storage.event_head(user) == 1  # the loser changed nothing
    # Not newer than what the client saw: no conflict (equal, or a fractional client stamp).
    equal = await storage.save_episode_review(user, review(url, "c", 5000), 6000)
    assert equal.updated_at == 6000
    later = await storage.save_episode_review(user, review(url, "d", 6000.5), 7000)
    assert later.updated_at == 7000
    forced = await storage.save_episode_review(user, review(url, "e", 0, force=True), 8000)
    assert forced.updated_at == 8000
    # The server clock went backwards: the stored stamp still moves forward.
    behind = await storage.save_episode_review(user, review(url, "f", 8000), 10)
    assert behind.updated_at == 8001
    assert behind.event is not None
    assert behind.event.payload["review"] == {"text": "f", "updatedAt": 8001}
    library = await storage.get_library(user)
    assert library is not None
    assert library.episode_reviews == {url: {"1": {"text": "f", "updatedAt": 8001}}}
    assert await storage.event_head(user) == 5


async def test_review_deletes(storage: Storage) -> None:
    user = await user_with_catalog(storage)
    url = sample_records()[0]["url"]
    assert await storage.save_episode_review(user, review(url, "  "), 1) == WriteResult(None)
    await storage.save_episode_review(user, review(url, "keep", episode=2), 5000)
    await storage.save_episode_review(user, review(url, "gone"), 5000)
    # Deleting ignores the conflict rule, and JavaScript's notion of blank counts.
    removed = await storage.save_episode_review(user, review(url, "\u00a0\t\ufeff", 0), 9)
    assert removed.event is not None
    assert removed.updated_at is None
    assert (removed.event.seq, removed.event.payload) == (
        3,
        {"dramaUrl": url, "episodeNumber": 1, "review": None},
    )
    assert await storage.save_episode_review(user, review(url, ""), 9) == WriteResult(None)
    library = await storage.get_library(user)
    assert library is not None
    assert library.episode_reviews == {url: {"2": {"text": "keep", "updatedAt": 5000}}}


async def test_unknown_drama_and_unknown_user(storage: Storage) -> None:
    user = await user_with_catalog(storage)
    url = sample_records()[0]["url"]
    missing = "https://missing.example/x"
    writes: list[Callable[[int, str], Awaitable[WriteResult]]] = [
        lambda who, where: storage.set_favorite(who, SetFavorite(where, True)),
        lambda who, where: storage.set_favorite(who, SetFavorite(where, False)),
        lambda who, where: storage.set_status(who, SetStatus(where, "Watching", 1)),
        lambda who, where: storage.set_status(who, SetStatus(where, "", 0)),
        lambda who, where: storage.save_episode_review(who, review(where, "x"), 1),
        lambda who, where: storage.save_episode_review(who, review(where, " "), 1),
    ]
    for write in writes:
        with pytest.raises(NotFound) as not_found:
            await write(user, missing)
        assert not_found.value.message == f"Drama not found: {missing}"
        for where in (url, missing):  # an unknown user is refused before the drama is looked at
            with pytest.raises(Unauthorized) as unauthorized:
                await write(user + 1, where)
            assert unauthorized.value.message == "Invalid or expired token"
    assert await storage.event_head(user) == 0
    assert await storage.event_head(user + 1) == 0
    assert await storage.get_library(user) == Library()
    assert not await storage.user_exists(user + 1)


# -- event log -------------------------------------------------------------------------------


async def test_event_head_and_read_events(storage: Storage) -> None:
    records = sample_records()
    user = await user_with_catalog(storage)
    assert await storage.event_head(user) == 0
    assert await storage.event_head(user + 7) == 0
    empty = await storage.read_events(user, 0, 10)
    assert (empty.events, empty.head, empty.complete) == ([], 0, True)
    assert not (await storage.read_events(user, 1, 10)).complete
    written = []
    for record in records[:6]:
        result = await storage.set_favorite(user, SetFavorite(record["url"], True))
        written.append(result.event)
    assert await storage.event_head(user) == 6
    everything = await storage.read_events(user, 0, 100)
    assert everything.events == written
    assert (everything.head, everything.complete) == (6, True)
    middle = await storage.read_events(user, 2, 2)  # limit
    assert [e.seq for e in middle.events] == [3, 4]
    assert (middle.head, middle.complete) == (6, True)
    caught_up = await storage.read_events(user, 6, 10)
    assert (caught_up.events, caught_up.head, caught_up.complete) == ([], 6, True)
    ahead = await storage.read_events(user, 7, 10)
    assert (ahead.events, ahead.head, ahead.complete) == ([], 6, False)
    assert not (await storage.read_events(user, -1, 10)).complete


async def test_event_heads_of_many_users_in_one_call(storage: Storage) -> None:
    records = sample_records()
    alice = await user_with_catalog(storage)
    bob = await storage.create_user("bob", "hash")
    carol = await storage.create_user("carol", "hash")  # no events: left out
    for record in records[:3]:
        await storage.set_favorite(alice, SetFavorite(record["url"], True))
    await storage.set_favorite(bob, SetFavorite(records[0]["url"], True))
    assert await storage.event_heads([alice, bob, carol, carol + 99]) == {alice: 3, bob: 1}
    assert await storage.event_heads([bob, bob]) == {bob: 1}  # repeated ids: one entry
    assert await storage.event_heads([]) == {}
    # More ids than one SQL statement takes on SQLite: chunked, same answer.
    many = [*range(carol + 100, carol + 1300), alice]
    assert await storage.event_heads(many) == {alice: 3}


async def test_prune_by_count_and_by_age(storage: Storage) -> None:
    records = sample_records()
    user = await user_with_catalog(storage)
    other = await storage.create_user("bob", "hash")
    for record in records[:6]:
        await storage.set_favorite(user, SetFavorite(record["url"], True))
    await storage.set_favorite(other, SetFavorite(records[0]["url"], True))
    assert await storage.prune_events(keep_per_user=100, older_than_ms=0) == 0

    assert await storage.prune_events(keep_per_user=4, older_than_ms=0) == 2
    assert not (await storage.read_events(user, 1, 10)).complete  # seq 2 is gone
    kept = await storage.read_events(user, 2, 10)
    assert [e.seq for e in kept.events] == [3, 4, 5, 6]
    assert kept.complete
    assert [e.seq for e in (await storage.read_events(other, 0, 10)).events] == [1]
    # Pruning by age removes the rest, but numbering continues after the head.
    assert await storage.prune_events(keep_per_user=100, older_than_ms=2**62) == 5
    assert await storage.event_head(user) == 6
    gone = await storage.read_events(user, 0, 10)
    assert (gone.events, gone.head, gone.complete) == ([], 6, False)
    later = await storage.set_favorite(user, SetFavorite(records[7]["url"], True))
    assert later.event is not None
    assert later.event.seq == 7
    resumed = await storage.read_events(user, 6, 10)
    assert ([e.seq for e in resumed.events], resumed.complete) == ([7], True)


# -- concurrency -----------------------------------------------------------------------------


async def test_fifty_concurrent_writers_get_seqs_one_to_fifty(storage: Storage) -> None:
    records = dramas(50)
    alice = await user_with_catalog(storage, records)
    bob = await storage.create_user("bob", "hash")
    results: dict[int, list[WriteResult]] = {alice: [], bob: []}

    async def write(user: int, index: int) -> None:
        url = records[index]["url"]
        if index % 3 == 0:
            result = await storage.set_favorite(user, SetFavorite(url, True))
        elif index % 3 == 1:
            result = await storage.set_status(user, SetStatus(url, f"s{index}", index))
        else:
            result = await storage.save_episode_review(user, review(url, f"r{index}"), index)
        results[user].append(result)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for index in range(50):
                nursery.start_soon(write, alice, index)
                nursery.start_soon(write, bob, index)
    for user in (alice, bob):
        events = [r.event for r in results[user] if r.event is not None]
        assert sorted(e.seq for e in events) == list(range(1, 51))
        assert await storage.event_head(user) == 50
        logged = await storage.read_events(user, 0, 1000)
        assert logged.complete
        assert logged.events == sorted(events, key=lambda e: e.seq)
        library = await storage.get_library(user)
        assert library is not None
        assert len(library.favorites) + len(library.statuses) == 34
        assert sum(len(r) for r in library.episode_reviews.values()) == 16


async def test_concurrent_reads_and_writes_lose_nothing(storage: Storage) -> None:
    records = sample_records()
    user = await user_with_catalog(storage)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for record in records:
                nursery.start_soon(storage.set_favorite, user, SetFavorite(record["url"], True))
                nursery.start_soon(storage.get_library, user)
                nursery.start_soon(storage.read_events, user, 0, 100)
    library = await storage.get_library(user)
    assert library is not None
    assert sorted(library.favorites) == sorted(r["url"] for r in records)


async def test_racing_review_saves_exactly_one_wins(storage: Storage) -> None:
    user = await user_with_catalog(storage)
    url = sample_records()[0]["url"]
    won: list[WriteResult] = []
    lost: list[Conflict] = []
    # Every racer has seen version 500; whoever saves first makes the others' copies stale.
    await storage.save_episode_review(user, review(url, "seen by all"), 500)
    await warm_up(storage, user)

    async def save(text: str) -> None:
        try:
            won.append(await storage.save_episode_review(user, review(url, text, 500), 1000))
        except Conflict as conflict:
            lost.append(conflict)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for index in range(10):
                nursery.start_soon(save, f"text {index}")
    assert len(won) == 1
    assert len(lost) == 9
    winner = won[0].event
    assert winner is not None
    text = winner.payload["review"]["text"]
    for conflict in lost:
        assert conflict.extra == {"serverVersion": {"text": text, "updatedAt": 1000}}
    library = await storage.get_library(user)
    assert library is not None
    assert library.episode_reviews == {url: {"1": {"text": text, "updatedAt": 1000}}}
    assert await storage.event_head(user) == 2


async def test_racing_forced_saves_all_apply_one_after_another(storage: Storage) -> None:
    user = await user_with_catalog(storage)
    url = sample_records()[0]["url"]
    results: list[WriteResult] = []
    await warm_up(storage, user)

    async def save(text: str) -> None:
        results.append(await storage.save_episode_review(user, review(url, text, force=True), 1000))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for index in range(10):
                nursery.start_soon(save, f"text {index}")
    # Serialised: each save saw the previous one's stamp and moved one past it.
    assert sorted(r.updated_at for r in results if r.updated_at) == list(range(1000, 1010))
    logged = (await storage.read_events(user, 0, 100)).events
    assert [e.seq for e in logged] == list(range(1, 11))
    assert [e.payload["review"]["updatedAt"] for e in logged] == list(range(1000, 1010))
    library = await storage.get_library(user)
    assert library is not None
    assert library.episode_reviews[url]["1"] == logged[-1].payload["review"]


# -- watch parties: player statuses ----------------------------------------------------------


def status_json(label: str) -> str:
    return json.dumps({"label": label, "title": "Ép 1 🎬"}, ensure_ascii=False)


def labels(rows: list[tuple[int, str]]) -> list[tuple[int, str]]:
    return [(user, json.loads(text)["label"]) for user, text in rows]


async def test_player_statuses_keep_the_newest_per_user_and_room(storage: Storage) -> None:
    alice = await storage.create_user("alice", "hash")
    bob = await storage.create_user("bob", "hash")
    for index in range(7):
        await storage.add_player_status(alice, "AB", status_json(f"a{index}"), 1000 + index)
        if index == 3:
            await storage.add_player_status(bob, "AB", status_json("b0"), 1003)
    await storage.add_player_status(alice, "XAB", status_json("x0"), 1001)
    await storage.add_player_status(alice, "ab", status_json("lower"), 1001)

    room = await storage.player_statuses("AB", None, 0)
    assert labels(room) == [
        (alice, "a2"),
        (alice, "a3"),
        (bob, "b0"),
        (alice, "a4"),
        (alice, "a5"),
        (alice, "a6"),
    ]
    assert json.loads(room[0][1]) == {"label": "a2", "title": "Ép 1 🎬"}  # text kept as stored
    assert labels(await storage.player_statuses("AB", bob, 0)) == [(bob, "b0")]
    assert [x for _, x in labels(await storage.player_statuses("AB", alice, 0))] == [
        "a2",
        "a3",
        "a4",
        "a5",
        "a6",
    ]
    # At or after the cut-off.
    assert labels(await storage.player_statuses("AB", alice, 1005)) == [
        (alice, "a5"),
        (alice, "a6"),
    ]
    assert labels(await storage.player_statuses("AB", None, 1004)) == [
        (alice, "a4"),
        (alice, "a5"),
        (alice, "a6"),
    ]
    assert await storage.player_statuses("AB", None, 1007) == []
    # Exact room match: no substrings, no case folding, no LIKE wildcards.
    assert labels(await storage.player_statuses("XAB", None, 0)) == [(alice, "x0")]
    assert labels(await storage.player_statuses("ab", None, 0)) == [(alice, "lower")]
    for other in ("A", "B", "XA", "A_", "A%", "%", "AB ", " AB", "Ab"):
        assert await storage.player_statuses(other, None, 0) == []
    assert await storage.player_statuses("AB", bob + alice + 1, 0) == []

    # A smaller keep trims on the next add; keep=1 leaves just the newest.
    await storage.add_player_status(alice, "AB", status_json("a7"), 1007, keep=2)
    assert labels(await storage.player_statuses("AB", alice, 0)) == [(alice, "a6"), (alice, "a7")]
    await storage.add_player_status(alice, "AB", status_json("a8"), 1008, keep=1)
    assert labels(await storage.player_statuses("AB", alice, 0)) == [(alice, "a8")]
    assert labels(await storage.player_statuses("AB", bob, 0)) == [(bob, "b0")]  # untouched
    assert labels(await storage.player_statuses("XAB", alice, 0)) == [(alice, "x0")]


async def test_player_status_bad_cases_store_nothing(storage: Storage) -> None:
    alice = await storage.create_user("alice", "hash")
    with pytest.raises(Unauthorized) as info:
        await storage.add_player_status(alice + 1, "AB", status_json("ghost"), 1000)
    assert info.value.message == "Invalid or expired token"
    for keep in (0, -1):
        with pytest.raises(ValueError, match="keep"):
            await storage.add_player_status(alice, "AB", status_json("bad keep"), 1000, keep=keep)
    assert await storage.player_statuses("AB", None, 0) == []
    assert await storage.prune_player_statuses(2**62) == 0


async def test_prune_player_statuses_by_age(storage: Storage) -> None:
    alice = await storage.create_user("alice", "hash")
    bob = await storage.create_user("bob", "hash")
    await storage.add_player_status(alice, "AB", status_json("old"), 1000)
    await storage.add_player_status(bob, "CD", status_json("old too"), 1500)
    await storage.add_player_status(alice, "AB", status_json("cut-off"), 2000)
    await storage.add_player_status(bob, "AB", status_json("new"), 3000)
    assert await storage.prune_player_statuses(1000) == 0  # strictly older than the cut-off
    assert await storage.prune_player_statuses(2000) == 2
    assert labels(await storage.player_statuses("AB", None, 0)) == [
        (alice, "cut-off"),
        (bob, "new"),
    ]
    assert await storage.player_statuses("CD", None, 0) == []
    assert await storage.prune_player_statuses(2000) == 0


async def test_concurrent_adds_keep_exactly_the_newest_five(storage: Storage) -> None:
    alice = await storage.create_user("alice", "hash")
    bob = await storage.create_user("bob", "hash")
    await warm_up(storage, alice)

    async def add(user: int, room: str, index: int) -> None:
        await storage.add_player_status(user, room, status_json(f"{room}{index}"), 1000 + index)

    for _round in range(3):
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for index in range(30):
                    nursery.start_soon(add, alice, "R1", index)
                    nursery.start_soon(add, bob, "R1", index)
                    if index % 2:
                        nursery.start_soon(add, alice, "R2", index)
        for user, room in ((alice, "R1"), (bob, "R1"), (alice, "R2")):
            kept = labels(await storage.player_statuses(room, user, 0))
            assert len(kept) == 5, (user, room, kept)
            assert len(set(kept)) == 5
        assert len(await storage.player_statuses("R1", None, 0)) == 10
    # Sequential adds after the race still trim to the newest five, oldest first.
    for index in range(5):
        await add(alice, "R1", 100 + index)
    assert [x for _, x in labels(await storage.player_statuses("R1", alice, 0))] == [
        f"R1{100 + index}" for index in range(5)
    ]


# -- watch parties: room snapshots -----------------------------------------------------------


async def test_room_snapshots_upsert_load_delete_prune(storage: Storage) -> None:
    assert await storage.load_room_snapshot("7KQ3M8TD") is None
    assert await storage.load_room_snapshots(0) == []
    assert not await storage.delete_room_snapshot("7KQ3M8TD")
    first = json.dumps({"v": 1, "code": "7KQ3M8TD", "history": ["héllo 🎬"]}, ensure_ascii=False)
    await storage.save_room_snapshot("7KQ3M8TD", first, 1000)
    await storage.save_room_snapshot("22222222", '{"v":1,"code":"22222222"}', 2000)
    await storage.save_room_snapshot("ZZZZZZZZ", '{"v":1,"code":"ZZZZZZZZ"}', 3000)
    assert await storage.load_room_snapshot("7KQ3M8TD") == first  # byte for byte
    assert await storage.load_room_snapshot("7kq3m8td") is None  # exact code
    assert [code for code, _ in await storage.load_room_snapshots(0)] == [
        "22222222",
        "7KQ3M8TD",
        "ZZZZZZZZ",
    ]
    assert await storage.load_room_snapshots(2000) == [
        ("22222222", '{"v":1,"code":"22222222"}'),
        ("ZZZZZZZZ", '{"v":1,"code":"ZZZZZZZZ"}'),
    ]
    # An upsert replaces the snapshot and refreshes its time.
    second = '{"v":1,"code":"7KQ3M8TD","revision":2}'
    await storage.save_room_snapshot("7KQ3M8TD", second, 4000)
    assert await storage.load_room_snapshot("7KQ3M8TD") == second
    assert await storage.load_room_snapshots(3500) == [("7KQ3M8TD", second)]
    # Pruning drops what was last saved strictly before the cut-off.
    assert await storage.prune_room_snapshots(2000) == 0
    assert await storage.prune_room_snapshots(3000) == 1
    assert await storage.load_room_snapshot("22222222") is None
    assert await storage.delete_room_snapshot("ZZZZZZZZ")
    assert not await storage.delete_room_snapshot("ZZZZZZZZ")
    assert await storage.load_room_snapshots(0) == [("7KQ3M8TD", second)]


async def test_concurrent_snapshot_saves_leave_one_row(storage: Storage) -> None:
    async def save(index: int) -> None:
        await storage.save_room_snapshot("ROOM", f'{{"revision":{index}}}', 1000 + index)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for index in range(20):
                nursery.start_soon(save, index)
    rows = await storage.load_room_snapshots(0)
    assert len(rows) == 1
    assert rows[0][0] == "ROOM"
    assert json.loads(rows[0][1])["revision"] in range(20)
