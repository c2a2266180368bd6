"""CPU per relayed frame in the watch-party relay's Sender: queue it, then publish it.

    python -m bench.relay_sender_bench [--frames 2000] [--rounds 200] [--runs 5]

In one process, no server and no Redis: each round queues ``--frames`` frames for 8 other
processes through :meth:`~dramaverse.actors.room_sender.Sender.frame` (three in four are copies
of one broadcast, which the sender merges into one item per process, as a room's broadcast to
its relayed members), then lets the sender's task publish them on the in-process broker (no
subscribers, so publishing costs the batching and JSON encoding only). Prints one JSON
document: microseconds per frame for each run.
"""

from __future__ import annotations

import argparse
import json
import time

import trio
import trio.testing

from dramaverse.actors.room_sender import Sender
from dramaverse.broker.memory import MemoryBroker

PROCESSES = 8


async def measure(frames: int, rounds: int, runs: int) -> list[float]:
    sender = Sender(MemoryBroker())
    texts = [json.dumps({"type": "room.state", "n": i}) for i in range(frames)]
    nodes = [f"node{i}" for i in range(PROCESSES)]
    results: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(sender.run)
        for _ in range(runs):
            start = time.perf_counter()
            for _ in range(rounds):
                for i in range(frames):
                    text = texts[0] if i % 4 else texts[i]
                    sender.frame(nodes[i % PROCESSES], "ROOMCODE", i, text)
                await trio.testing.wait_all_tasks_blocked()  # published
            results.append((time.perf_counter() - start) / (rounds * frames) * 1e6)
        nursery.cancel_scope.cancel()
    assert sender.refused == 0, "the backlog bound was reached: use fewer --frames"
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    runs = trio.run(measure, args.frames, args.rounds, args.runs)
    print(json.dumps({"us_per_frame": [round(value, 3) for value in runs]}))


if __name__ == "__main__":
    main()
