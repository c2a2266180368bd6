"""The cyclic garbage collector of a server process, paced by time instead of by allocations.

A server with thousands of sockets has thousands of tasks waiting, and every time one of them
wakes and waits again it builds a fresh chain of coroutine objects while the previous one is
freed. CPython counts allocations minus deallocations to decide when to collect, so this
churn never triggers a collection, yet every chain it leaves lands in the youngest generation:
measured with gc callbacks on 1,000 watch-party rooms x 4 sockets, a young collection found
110,000-245,000 live objects and stopped the process for 75-165 ms; on 2,000 x 4 the young
ones took up to 263 ms and the middle generation up to 560 ms, each time delaying every room.

So the process collects the young generation every :data:`YOUNG_SECONDS` itself; the pause is
then bounded by what a quarter of a second of work leaves behind (2,000 x 4: 12.5 ms p50,
25.7 ms p99, 35.4 ms at worst, 5 % of a core in all). The middle generation is collected every
:data:`MIDDLE_EVERY` young collections (5 minutes), everything every :data:`FULL_EVERY` middle
ones (30 minutes): those pauses remain (measured up to 0.56 s and 0.87 s with 4,000-8,000
sockets), but rare. The allocation threshold stays as a backstop for bursts. Almost nothing
that survives a young collection turns into cyclic garbage here (the middle collections of
those runs freed 0 objects, once 1,296), so collecting the older generations rarely costs
memory that reference counting would not free anyway.
Everything allocated during start-up is frozen out of the collector's sight first.

These figures hold for CPython's three-generation collector as in 3.11-3.13
(:data:`MEASURED_ON`). On another interpreter (PyPy has no generations to set; CPython 3.14
changed to an incremental collector whose thresholds mean something else) :func:`tune` logs one
warning and leaves the collector as it is, and the runtime does not pace it.
"""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import Callable

import trio

log = logging.getLogger(__name__)

YOUNG_SECONDS = 0.25
MIDDLE_EVERY = 1200  # young collections per middle one: 5 minutes
FULL_EVERY = 6  # middle collections per full one: 30 minutes
THRESHOLD_YOUNG = 20_000  # allocations that trigger a young collection between the timed ones
_NEVER = 1 << 30  # the older generations are collected on time only
MEASURED_ON = ("cpython", (3, 11), (3, 13))  # implementation, first and last minor version


def tune(
    *,
    implementation: str = sys.implementation.name,
    version: tuple[int, int] = (sys.version_info.major, sys.version_info.minor),
) -> tuple[int, int, int] | None:
    """Freeze what start-up allocated and hand the older generations to :func:`pace`;
    returns the previous thresholds. On an interpreter other than :data:`MEASURED_ON` (the
    defaults describe this one) it changes nothing, logs one warning and returns None."""
    name, first, last = MEASURED_ON
    if implementation != name or not first <= version <= last:
        log.warning(
            "Garbage collector left as it is: its pacing was measured on %s %d.%d-%d.%d, "
            "not on %s %d.%d.",
            name,
            *first,
            *last,
            implementation,
            *version,
        )
        return None
    previous = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(THRESHOLD_YOUNG, _NEVER, _NEVER)
    return previous


async def pace(
    *,
    young_seconds: float = YOUNG_SECONDS,
    middle_every: int = MIDDLE_EVERY,
    full_every: int = FULL_EVERY,
    collect: Callable[[int], object] = gc.collect,
) -> None:
    """Collect on a clock until cancelled (run it next to the server)."""
    young = middle = 0
    while True:
        await trio.sleep(young_seconds)
        young += 1
        if young % middle_every:
            collect(0)
            continue
        middle += 1
        collect(2 if middle % full_every == 0 else 1)
