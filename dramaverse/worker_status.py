"""What the supervisor tells its workers about each other: a small status file.

With ``serve --workers N`` the supervisor writes ``<WORKER_SOCKET_DIR>/supervisor.json``
whenever a worker starts or leaves a crash loop (:class:`StatusWriter`), and every worker's
``/api/health`` reads it (:class:`StatusReader`, at most once a second, so the health check
stays a cheap request), so that a load balancer or an operator polling any worker sees that a
sibling keeps crashing:

    {"crashLooping": [{"worker": 0, "crashes": 5, "lastExit": "exit status 1",
                       "restartInSeconds": 8.0, "since": "2026-01-01T10:00:00Z"}]}

A file rather than a pipe or a socket: the workers never talk to the supervisor otherwise, the
file survives a worker's restart, and reading it costs a worker nothing between health checks.
It is replaced atomically (written aside, then renamed), so a reader never sees half of it.

Resource handling: the writer opens the file only while writing; :func:`remove` (the
supervisor, when it stops) deletes it. The reader holds nothing open.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dramaverse.config import Settings

log = logging.getLogger(__name__)

FILE_NAME = "supervisor.json"
READ_EVERY = 1.0  # seconds a reader trusts what it read


def status_path(settings: Settings) -> Path:
    """``<WORKER_SOCKET_DIR>/supervisor.json``, next to the workers' sockets."""
    return settings.worker_socket_path.parent / FILE_NAME


@dataclass(slots=True)
class CrashLoop:
    """A worker that crashed ``crashes`` times in a row, each soon after it started."""

    worker: int
    crashes: int
    last_exit: str
    restart_in: float
    since: float  # time.time() of the crash that made it a loop

    def to_json(self) -> dict[str, Any]:
        since = datetime.fromtimestamp(self.since, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "worker": self.worker,
            "crashes": self.crashes,
            "lastExit": self.last_exit,
            "restartInSeconds": round(self.restart_in, 3),
            "since": since,
        }


class StatusWriter:
    """The supervisor's side: :meth:`write` the current crash loops (an empty list is health)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._failed = False

    def write(self, loops: list[CrashLoop]) -> None:
        # A few hundred bytes on a local disk, a handful of times per crash: written inline.
        body = json.dumps({"crashLooping": [loop.to_json() for loop in loops]}).encode()
        aside = self.path.with_name(self.path.name + ".tmp")
        try:
            aside.write_bytes(body)
            os.replace(aside, self.path)
        except OSError as exc:
            if not self._failed:  # the workers go on; /api/health just cannot tell
                log.warning("cannot write the worker status file %s: %s", self.path, exc)
            self._failed = True
        else:
            self._failed = False

    def remove(self) -> None:
        for path in (self.path, self.path.with_name(self.path.name + ".tmp")):
            path.unlink(missing_ok=True)


class StatusReader:
    """A worker's side: the crash-looping siblings, as JSON, read at most every ``READ_EVERY``."""

    def __init__(self, path: Path, *, read_every: float = READ_EVERY) -> None:
        self.path = path
        self._read_every = read_every
        self._next_read = 0.0
        self._loops: list[dict[str, Any]] = []

    def crash_loops(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        if now >= self._next_read:
            self._next_read = now + self._read_every
            self._loops = self._read()
        return self._loops

    def _read(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.path.read_bytes())
            loops = data["crashLooping"]
        except (OSError, ValueError, KeyError, TypeError):  # none yet, or not the supervisor's
            return []
        return [loop for loop in loops if isinstance(loop, dict)] if isinstance(loops, list) else []
