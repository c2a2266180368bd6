"""collector.py: the garbage collector on a clock (virtual clock for the schedule, the real gc for
tune)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from dramaverse import collector


async def test_pace_collects_young_on_time_and_older_generations_in_turn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[tuple[float, int]] = []
    with trio.move_on_after(3.0 + 0.01):
        await collector.pace(
            young_seconds=0.25,
            middle_every=3,
            full_every=2,
            collect=lambda generation: calls.append((trio.current_time(), generation)),
        )
    assert [g for _, g in calls] == [0, 0, 1, 0, 0, 2, 0, 0, 1, 0, 0, 2]
    assert [round(t, 2) for t, _ in calls] == [0.25 * k for k in range(1, 13)]


async def test_pace_defaults_collect_the_young_generation_four_times_a_second(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[int] = []
    with trio.move_on_after(60.01):
        await collector.pace(collect=calls.append)
    assert len(calls) == 240
    assert set(calls) == {0}  # the middle generation waits for 5 minutes
    assert collector.MIDDLE_EVERY * collector.YOUNG_SECONDS == 300
    assert collector.FULL_EVERY * collector.MIDDLE_EVERY * collector.YOUNG_SECONDS == 1800


@pytest.fixture
def restored_gc() -> Iterator[tuple[int, int, int]]:
    thresholds = gc.get_threshold()
    yield thresholds
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_tune_freezes_start_up_and_leaves_older_generations_to_the_clock(
    restored_gc: tuple[int, int, int],
) -> None:
    keep = [object() for _ in range(10)] + [[n] for n in range(1000)]
    previous = collector.tune()
    assert previous == restored_gc
    threshold = gc.get_threshold()
    assert threshold[0] == collector.THRESHOLD_YOUNG
    assert min(threshold[1:]) >= 1 << 30  # never by allocation counts
    assert gc.get_freeze_count() >= len(keep) - 10


@pytest.mark.parametrize(
    ("implementation", "version"),
    [("pypy", (3, 11)), ("graalpy", (3, 12)), ("cpython", (3, 10)), ("cpython", (3, 14))],
)
def test_tune_refuses_an_interpreter_it_was_not_measured_on(
    restored_gc: tuple[int, int, int],
    caplog: pytest.LogCaptureFixture,
    implementation: str,
    version: tuple[int, int],
) -> None:
    frozen = gc.get_freeze_count()
    assert collector.tune(implementation=implementation, version=version) is None
    assert gc.get_threshold() == restored_gc
    assert gc.get_freeze_count() == frozen
    warnings = [r for r in caplog.records if r.name == "dramaverse.collector"]
    assert len(warnings) == 1
    assert warnings[0].levelname == "WARNING"
    assert f"{implementation} {version[0]}.{version[1]}" in warnings[0].getMessage()


@pytest.mark.parametrize("version", [(3, 11), (3, 12), (3, 13)])
def test_tune_accepts_the_cpython_versions_it_was_measured_on(
    restored_gc: tuple[int, int, int], caplog: pytest.LogCaptureFixture, version: tuple[int, int]
) -> None:
    assert collector.tune(implementation="cpython", version=version) == restored_gc
    assert gc.get_threshold()[0] == collector.THRESHOLD_YOUNG
    assert not [r for r in caplog.records if r.name == "dramaverse.collector"]
