"""Watch parties across worker processes: ``serve --workers 2`` on the real PostgreSQL and Redis.

Members are pinned to workers through the workers' private sockets (as in ``test_workers.py``):
the host on worker 0, which then owns the room (it holds the lease ``room:<code>``), a guest on
worker 1, relayed through Redis. They must see the very same room states; then the owner is
killed with SIGKILL, and the room must move (the lease changes hands, the room is restored from
its snapshot) with the guest carried over and the host coming back. Every wait is bounded.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed

from tests.cluster import Cluster, hello, open_worker_ws, poll, running_cluster
from tests.postgres_tools import fresh_schema
from tests.services import require_redis
from tests.test_broker_contract import RawRedis, unique_prefix
from tests.test_ws_rooms import MOVIE, Member

pytestmark = pytest.mark.slow


async def ready(member: Member, token: str) -> Member:
    await hello(member.ws, token)
    return member


async def create(member: Member) -> str:
    request_id = await member.send("room.create")
    await member.expect("room.welcome")
    ack = await member.expect("ack", id=request_id)
    code: str = ack["result"]["room"]
    member.room = code
    return code


async def join(member: Member, code: str) -> dict[str, Any]:
    request_id = await member.send("room.join", {"code": code})
    welcome = await member.expect("room.welcome")
    answer = await member.expect("ack", id=request_id)
    assert answer["result"] == {"room": code}
    member.room = code
    return welcome


async def same_state(phase: str, *members: Member, **fields: Any) -> dict[str, Any]:
    states = [await m.expect("room.state", phase=phase, **fields) for m in members]
    assert all(s == states[0] for s in states), states
    return states[0]


async def is_host(cluster: Cluster, worker: int, token: str, code: str, user_id: int) -> bool:
    """``isHost`` of a status posted through ``worker`` (the room may live in the other one)."""
    async with cluster.http(worker) as client:
        headers = {"Authorization": f"Bearer {token}"}
        body = {"roomCode": code, "player": {"time": 1}, "isHost": True}
        response = await client.post("/api/player/status", json=body, headers=headers)
        assert response.status_code == 200, response.text
        response = await client.get(
            f"/api/player/status?roomCode={code}&userId={user_id}", headers=headers
        )
    flag: bool = response.json()["statuses"][-1]["isHost"]
    return flag


async def test_members_on_two_workers_stay_in_sync_and_the_room_survives_its_owner(
    tmp_path: Path,
) -> None:
    redis_url, prefix = require_redis(), unique_prefix()
    raw = RawRedis(redis_url, prefix)
    async with (
        fresh_schema() as (url, _name),
        running_cluster(
            tmp_path,
            database_url=url,
            redis_url=redis_url,
            redis_prefix=prefix,
            WATCH_LEAD_MIN_SECONDS="0.2",
            # Every change written at once: the test kills the owner right after the last one
            # and expects exactly that state back (by default a crash may lose the last 1 s).
            ROOM_SNAPSHOT_DELAY_SECONDS="0",
        ) as cluster,
    ):
        alice_token = await cluster.register("alice")
        bob_token = await cluster.register("bob")
        try:
            with trio.fail_after(120):
                async with open_worker_ws(cluster.socket(1)) as bob_ws:
                    bob = await ready(Member(bob_ws, "bob"), bob_token)
                    async with open_worker_ws(cluster.socket(0)) as alice_ws:
                        alice = await ready(Member(alice_ws, "alice"), alice_token)
                        code, lease, before = await play_together(
                            cluster, alice, bob, raw, (alice_token, bob_token)
                        )

                        # SIGKILL the owner: alice's socket dies with it; bob gets the room
                        # back, restored from its snapshot, with the same playback anchor.
                        pids = cluster.worker_pids()
                        os.kill(pids[0], signal.SIGKILL)
                        with pytest.raises(ConnectionClosed):
                            await alice.next()
                    welcome = await bob.expect("room.welcome")
                    state = welcome["state"]
                    assert state["phase"] == "playing"
                    for key in ("at", "position", "rate", "content"):
                        assert state[key] == before[key], key
                    assert welcome["host"] == "1"  # alice keeps her role through the grace
                    assert [(m["id"], m["connected"]) for m in welcome["members"]] == [
                        ("1", False),
                        ("2", True),
                    ]
                    after = await raw.lease_value(f"room:{code}")
                    assert after is not None
                    assert after != lease  # another process holds the lease now
                    log = "restored here from its snapshot"
                    await poll(lambda: log in cluster.log_tail(400), 10)

                    # Alice reconnects to the restarted worker 0 and gets her place back;
                    # commands work again, whichever worker adopted the room.
                    await cluster.wait_worker(0, within=60)
                    assert cluster.worker_pids()[0] != pids[0]
                    async with open_worker_ws(cluster.socket(0)) as alice_ws:
                        alice = await ready(Member(alice_ws, "alice"), alice_token)
                        welcome = await join(alice, code)
                        assert welcome["host"] == "1"
                        assert welcome["state"]["at"] == before["at"]
                        await bob.expect("room.members")
                        await alice.ok("room.pause")
                        paused = await same_state("paused", alice, bob)
                        assert paused["position"] > before["position"]
                        await bob.ok("room.chat", {"text": "still together"})
                        for member in (alice, bob):
                            assert (await member.expect("room.chat"))["text"] == "still together"
                        await alice.ok("room.status", {"state": "ready"})
                        await bob.ok("room.status", {"state": "ready"})
                        await alice.ok("room.play")
                        await same_state("waiting", alice, bob)
                        await same_state("playing", alice, bob)
        finally:
            await trio.to_thread.run_sync(raw.close)


async def play_together(
    cluster: Cluster, alice: Member, bob: Member, raw: RawRedis, tokens: tuple[str, str]
) -> tuple[str, bytes, dict[str, Any]]:
    """Alice (worker 0) creates a room, bob (worker 1) joins; they play, seek, chat.
    Returns the code, the owner's lease token and the last playing state."""
    code = await create(alice)
    lease = await raw.lease_value(f"room:{code}")  # worker 0 holds it
    assert lease is not None
    welcome = await join(bob, code)
    assert [m["id"] for m in welcome["members"]] == ["1", "2"]
    assert welcome["host"] == "1"
    await alice.expect("room.members")

    # Playback: both get the same states (anchor, start time, position).
    await alice.ok("room.content", {"content": MOVIE})
    assert await bob.ok("room.status", {"state": "ready"}) == {"status": "ready"}
    await alice.ok("room.status", {"state": "ready"})
    await alice.ok("room.play")
    waiting = await same_state("waiting", alice, bob)
    assert waiting["startAt"] is not None
    await same_state("playing", alice, bob)
    await alice.ok("room.seek", {"position": 600})
    await same_state("waiting", alice, bob, position=600)
    before = await same_state("playing", alice, bob)
    answer = await bob.call("room.pause")  # not the host: refused by the owner
    assert (answer["type"], answer["status"]) == ("error", 403)

    # Chat reaches both, whoever sends it.
    assert (await bob.ok("room.chat", {"text": "from worker 1"}))["id"] == 1
    for member in (alice, bob):
        assert (await member.expect("room.chat"))["text"] == "from worker 1"

    # isHost is right on the worker that does not run the room.
    assert await is_host(cluster, 1, tokens[0], code, 1) is True
    assert await is_host(cluster, 1, tokens[1], code, 2) is False
    return code, lease, before
