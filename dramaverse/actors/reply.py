"""The one reply type of every request-response message to an actor: :class:`Reply`.

A caller that needs an answer puts a ``Reply`` in its message, sends the message to the actor's
mailbox and awaits :meth:`Reply.wait`. The actor (or, when the actor stopped first, whoever
drains its mailbox: its own ``finally``, its supervisor) settles it exactly once, with
:meth:`Reply.resolve` or :meth:`Reply.fail`; a second settlement is ignored, so "answer
whatever is still waiting" needs no bookkeeping of what was answered.

Resource handling: a reply owns no task and no channel; it is settled in the actor's task and
awaited in the caller's. A caller that gives up (a timeout around its own ``wait``) just stops
waiting: the late answer is dropped with the reply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar, cast

import trio

T = TypeVar("T")


@dataclass(eq=False)
class Reply(Generic[T]):
    """A rendezvous for a caller awaiting an actor: a result or an error, set once."""

    done: trio.Event = field(default_factory=trio.Event)
    result: T | None = None
    error: Exception | None = None

    def resolve(self, result: T) -> None:
        if not self.done.is_set():
            self.result = result
            self.done.set()

    def fail(self, error: Exception) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()

    async def wait(self) -> T:
        """The result; raises the error the reply was failed with."""
        await self.done.wait()
        if self.error is not None:
            raise self.error
        return cast(T, self.result)
