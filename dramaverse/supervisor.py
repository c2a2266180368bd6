"""``dramaverse serve --workers N``: one supervisor process and N worker processes on one port.

The supervisor (the process ``serve`` started in) does what must happen once, then keeps the
workers running:

1. it refuses to start without backends the workers can share: PostgreSQL (a SQLite file belongs
   to one process) and Redis (live events cross between workers through it);
2. it resolves the JWT secret (a development secret is created here once, not raced by N
   workers) and applies the database migrations once;
3. it binds the listening socket itself and holds it for its whole life;
4. it starts N workers, ``python -m dramaverse serve --worker-id I --listen-fd FD``, each
   inheriting that socket; each worker is today's server (its own ``trio.run``, trio-asyncio
   loop, storage pool, Redis connections and session hub) serving the inherited socket through
   Hypercorn's ``fd://`` bind, plus a private Unix socket, ``<WORKER_SOCKET_DIR>/<I>.sock``;
5. it restarts a worker that exits unexpectedly, with exponential backoff, for as long as it
   runs: a worker that keeps crashing soon after it starts is a *crash loop*, reported loudly
   (an ERROR line per crash, and ``/api/health`` of the other workers says ``degraded`` through
   the status file of ``worker_status.py``), never a reason to stop the workers that serve;
6. on SIGINT/SIGTERM it closes its copy of the socket, sends SIGTERM to every worker (each
   closes its WebSockets with 1001 and drains for ``SHUTDOWN_GRACE_SECONDS``), waits the grace
   plus a margin, then kills what is left. A second signal kills at once.

Why one shared socket rather than one SO_REUSEPORT socket per worker: the kernel hashes each
new connection to one SO_REUSEPORT socket, busy or not, and resets the connections queued on a
socket whose worker dies; with one socket held by the supervisor, whichever worker is free
accepts, and connections arriving while a worker restarts wait in the queue instead of failing.
It also keeps ``--port 0`` meaningful (the supervisor knows the port it got).

Workers are started in their own session, so a terminal's Ctrl-C reaches only the supervisor,
which forwards it; and their standard input is a pipe from the supervisor, so a worker whose
supervisor died (even by SIGKILL) sees end-of-file and shuts down by itself.

A worker that cannot start because a backend is unreachable (PostgreSQL down) exits with
:data:`EXIT_TEMPFAIL`; the supervisor keeps retrying it with backoff without counting it as a
crash, so the service comes back by itself when the database does.

Resource handling: :class:`Supervisor` owns the worker processes (their stdin pipes, reaping
them) and the status file, and closes the listening socket when it stops; :func:`serve_workers`
creates and closes the listening socket and removes the workers' Unix sockets afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import trio

from dramaverse.config import MAX_WORKERS, Settings
from dramaverse.errors import ConfigError, DramaverseError, ServiceUnavailable, lone_error
from dramaverse.storage import open_storage
from dramaverse.worker_status import CrashLoop, StatusWriter, status_path

if TYPE_CHECKING:
    from dramaverse.runtime import ServerHandle

log = logging.getLogger(__name__)

EXIT_TEMPFAIL = 75  # sysexits.h EX_TEMPFAIL: a backend was unreachable; try again later
SPAWN_FAILED = 127  # the status we record when a worker could not even be started
LISTEN_BACKLOG = 100  # Hypercorn's default; every worker re-applies its own
STOP_MARGIN = 3.0  # beyond the shutdown grace, before the supervisor kills a worker
KILL_WAIT = 5.0
MAX_UNIX_PATH = 107  # bytes of sun_path on Linux, without the terminating NUL


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When to restart a worker that exited, and when to call its crashes a crash loop.

    The delay before a restart starts at ``first_delay`` and doubles up to ``max_delay``; a
    worker that has stayed up ``stable_after`` seconds starts afresh. ``loop_after`` crashes in
    a row, each within ``stable_after`` seconds of starting, are a crash loop: reported, and
    retried at the capped delay for as long as the supervisor runs. A worker that exits with
    status 0 (someone sent it SIGTERM: a rolling restart) or with :data:`EXIT_TEMPFAIL` (a
    backend is down) is restarted with the same backoff but never counted as a crash.
    """

    first_delay: float = 0.5
    max_delay: float = 30.0
    stable_after: float = 60.0
    loop_after: int = 3

    def delay(self, attempt: int) -> float:
        return float(min(self.max_delay, self.first_delay * 2 ** max(0, attempt - 1)))


# -- checks -----------------------------------------------------------------------------------


def check_worker_count(count: int) -> int:
    if not 1 <= count <= MAX_WORKERS:
        raise ConfigError(f"--workers must be from 1 to {MAX_WORKERS} (got {count}).")
    return count


def require_shared_backends(settings: Settings) -> None:
    """Several workers need one database and one broker they all share."""
    count = settings.workers
    if urlsplit(settings.database_url).scheme not in ("postgres", "postgresql"):
        raise ConfigError(
            f"{count} workers need PostgreSQL (DATABASE_URL=postgresql://...): workers share "
            "one database, and a SQLite file belongs to one process."
        )
    if not settings.redis_url:
        raise ConfigError(
            f"{count} workers need Redis (REDIS_URL=redis://...) to carry live events from "
            "one worker to the devices connected to another."
        )


def socket_paths(settings: Settings) -> list[Path]:
    """Every worker's private Unix socket; raises ConfigError when a path is too long."""
    paths = [replace(settings, worker_id=i).worker_socket_path for i in range(settings.workers)]
    longest = max(paths, key=lambda path: len(os.fsencode(path)))
    if len(os.fsencode(longest)) > MAX_UNIX_PATH:
        raise ConfigError(
            f"The worker socket path {longest} is longer than the {MAX_UNIX_PATH} bytes a Unix "
            "socket allows: set WORKER_SOCKET_DIR to a shorter directory, like /run/dramaverse."
        )
    return paths


# -- the supervisor side ----------------------------------------------------------------------


def bind_listener(host: str, port: int) -> socket.socket:
    """The listening TCP socket every worker inherits (SO_REUSEADDR, inheritable)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        listener = socket.socket(family, kind, proto)
    except OSError as exc:
        raise DramaverseError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}.") from None
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(LISTEN_BACKLOG)
    except OSError as exc:
        listener.close()
        raise DramaverseError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}.") from None
    listener.set_inheritable(True)
    return listener


def serve_workers(settings: Settings) -> int:
    """``serve --workers N`` with N > 1: check, migrate, bind, supervise; the exit status."""
    require_shared_backends(settings)
    paths = socket_paths(settings)
    settings = settings.with_secret()
    trio.run(_migrate_once, settings)
    directory = paths[0].parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    listener = bind_listener(settings.host, settings.port)
    try:
        host, port = listener.getsockname()[:2]
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        log.info(
            "Dramaverse listening on http://%s with %d workers (worker sockets in %s)",
            where,
            settings.workers,
            directory,
        )
        supervisor = Supervisor(settings, listener, env=os.environ)
        return trio.run(supervisor.run)
    finally:
        listener.close()
        for path in paths:
            try:
                if stat.S_ISSOCK(path.lstat().st_mode):
                    path.unlink()
            except FileNotFoundError:
                pass


async def _migrate_once(settings: Settings) -> None:
    async with open_storage(settings) as storage:  # migrates; workers find everything applied
        applied = await storage.applied_migrations()
    log.info("database schema at %s", applied[-1] if applied else "(no migrations)")


class Supervisor:
    """Runs ``settings.workers`` worker processes on ``listener`` until stopped.

    ``env`` is the workers' environment: they read their settings from it (and from ``.env``
    in the working directory), exactly as this process did. ``command`` is the worker command
    line before ``--worker-id``; by default this Python running ``-m dramaverse serve``.
    """

    def __init__(
        self,
        settings: Settings,
        listener: socket.socket,
        *,
        env: Mapping[str, str],
        policy: RestartPolicy | None = None,
        command: Sequence[str] | None = None,
    ) -> None:
        self.settings = settings
        self.policy = policy or RestartPolicy()
        self.processes: dict[int, trio.Process] = {}
        self.restarts = [0] * settings.workers
        self.delays: list[list[float]] = [[] for _ in range(settings.workers)]  # chosen so far
        self.crash_loops: dict[int, CrashLoop] = {}
        self.status = StatusWriter(status_path(settings))
        self._listener = listener
        self._env = dict(env)
        self._command = list(command or [sys.executable, "-m", "dramaverse", "serve"])
        self._stopping = trio.Event()
        self._running = settings.workers  # worker tasks not yet finished

    def stop(self) -> None:
        """Ask every worker to shut down gracefully; :meth:`run` returns when they have."""
        self._stopping.set()

    async def run(
        self,
        *,
        handle_signals: bool = True,
        task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED,
    ) -> int:
        """Supervise until stopped; the exit status (0)."""
        all_done = trio.Event()
        self.status.write([])
        try:
            await self._supervise(all_done, handle_signals, task_status)
        finally:
            self.status.remove()
        log.info("all workers stopped")
        return 0

    async def _supervise(
        self,
        all_done: trio.Event,
        handle_signals: bool,
        task_status: trio.TaskStatus[Supervisor],
    ) -> None:
        async with trio.open_nursery() as nursery:
            if handle_signals:
                nursery.start_soon(self._forward_signals)
            for worker_id in range(self.settings.workers):
                nursery.start_soon(self._keep_running, worker_id, all_done)
            task_status.started(self)
            await self._stopping.wait()
            self._listener.close()  # new connections are refused rather than queued for no one
            self._signal_all(signal.SIGTERM)
            with trio.move_on_after(self.settings.shutdown_grace_seconds + STOP_MARGIN):
                await all_done.wait()
            if not all_done.is_set():
                log.warning("workers still running after the shutdown grace: killing them")
                self._signal_all(signal.SIGKILL)
                with trio.move_on_after(KILL_WAIT):
                    await all_done.wait()
            nursery.cancel_scope.cancel()

    def _signal_all(self, signum: signal.Signals) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):  # exited, not reaped yet
                    process.send_signal(signum)

    async def _forward_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if not self._stopping.is_set():
                    log.info("received %s: stopping %d workers", name, len(self.processes))
                    self.stop()
                else:
                    log.warning("received %s again: killing the workers now", name)
                    self._signal_all(signal.SIGKILL)

    async def _keep_running(self, worker_id: int, all_done: trio.Event) -> None:
        try:
            await self._restart_loop(worker_id)
        finally:
            self._running -= 1
            if self._running == 0:
                all_done.set()

    async def _restart_loop(self, worker_id: int) -> None:
        attempt = 0  # exits in a row without a stable run: sets the backoff
        crashes = 0  # of those, the crashes (not a rolling restart, not a backend down)
        while not self._stopping.is_set():
            started = trio.current_time()
            process = await self._start(worker_id)
            if process is None:
                code = SPAWN_FAILED
            else:
                try:
                    exited: int | None = None
                    with trio.move_on_after(self.policy.stable_after):
                        exited = await process.wait()
                    if exited is None:  # it stayed up: what came before is forgotten
                        attempt = crashes = 0
                        self._recovered(worker_id)
                        exited = await process.wait()
                    code = exited
                finally:
                    await _release(process)
            if self._stopping.is_set():
                if code not in (0, -signal.SIGTERM):
                    log.warning("worker %d stopped with %s", worker_id, _describe_exit(code))
                return
            uptime = trio.current_time() - started
            attempt += 1
            delay = self.policy.delay(attempt)
            self.delays[worker_id].append(delay)
            if code == EXIT_TEMPFAIL:
                log.warning(
                    "worker %d could not reach a backend after %.1f s; restarting it in %g s",
                    worker_id,
                    uptime,
                    delay,
                )
            elif code == 0:
                log.warning(
                    "worker %d exited (%s) after %.1f s; restarting it in %g s",
                    worker_id,
                    _describe_exit(code),
                    uptime,
                    delay,
                )
            else:
                crashes += 1
                self._crashed(worker_id, code, uptime, crashes, delay)
            with trio.move_on_after(delay):
                await self._stopping.wait()
            self.restarts[worker_id] += 1

    def _crashed(
        self, worker_id: int, code: int, uptime: float, crashes: int, delay: float
    ) -> None:
        """Log a crash (ERROR, always) and, from ``loop_after`` in a row, report a crash loop."""
        described = _describe_exit(code)
        if crashes < self.policy.loop_after:
            log.error(
                "worker %d exited (%s) after %.1f s; restarting it in %g s",
                worker_id,
                described,
                uptime,
                delay,
            )
            return
        loop = self.crash_loops.get(worker_id)
        if loop is None:
            loop = self.crash_loops[worker_id] = CrashLoop(worker_id, 0, "", 0.0, time.time())
        loop.crashes, loop.last_exit, loop.restart_in = crashes, described, delay
        self.status.write(list(self.crash_loops.values()))
        log.error(
            "worker %d exited (%s) after %.1f s: crash loop, %d crashes in a row each within "
            "%g s of starting; restarting it in %g s, the other workers keep serving",
            worker_id,
            described,
            uptime,
            crashes,
            self.policy.stable_after,
            delay,
        )

    def _recovered(self, worker_id: int) -> None:
        if self.crash_loops.pop(worker_id, None) is not None:
            log.warning(
                "worker %d has stayed up %g s: its crash loop is over",
                worker_id,
                self.policy.stable_after,
            )
            self.status.write(list(self.crash_loops.values()))

    async def _start(self, worker_id: int) -> trio.Process | None:
        """Start worker ``worker_id``; None if the operating system refused (counts as a crash)."""
        fd = self._listener.fileno()
        command = [*self._command, "--worker-id", str(worker_id), "--listen-fd", str(fd)]
        try:
            process = await trio.lowlevel.open_process(
                command,
                env=self._env,
                stdin=subprocess.PIPE,  # never written: end-of-file tells the worker we are gone
                pass_fds=(fd,),
                start_new_session=True,  # the terminal's Ctrl-C is ours to forward
            )
        except OSError as exc:
            log.error("cannot start worker %d: %s", worker_id, exc)
            return None
        self.processes[worker_id] = process
        log.info("worker %d started (pid %d)", worker_id, process.pid)
        if self._stopping.is_set():  # stop came while it was being started: it missed SIGTERM
            process.send_signal(signal.SIGTERM)
        return process


async def _release(process: trio.Process) -> None:
    """Close our end of its stdin; if we were cancelled first, kill it: none outlives us."""
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            process.kill()
            with trio.move_on_after(KILL_WAIT):
                await process.wait()
        if process.stdin is not None:
            await process.stdin.aclose()


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


# -- the worker side --------------------------------------------------------------------------


def run_worker(settings: Settings) -> int:
    """One worker process (``serve --worker-id I --listen-fd FD``): serve until told to stop."""
    worker_id = settings.worker_id
    if worker_id is None or settings.worker_listen_fd is None:
        raise ConfigError("--worker-id and --listen-fd are set by the supervisor, together.")
    logging.basicConfig(
        level=settings.log_level,
        format=f"%(asctime)s %(levelname)s [worker {worker_id}] %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    try:
        trio.run(_serve_worker, settings)
    except BaseException as exc:
        error = lone_error(exc)
        if isinstance(error, ServiceUnavailable):
            log.error("cannot start: %s", error.message)
            return EXIT_TEMPFAIL
        if isinstance(error, DramaverseError):  # say why in one line; a crash all the same
            log.error("cannot start: %s", error.message)
            return 1
        if error is exc:
            raise
        raise error from None
    return 0


async def _serve_worker(settings: Settings) -> None:
    from dramaverse import runtime

    async with trio.open_nursery() as nursery:

        async def serve(task_status: trio.TaskStatus[runtime.ServerHandle]) -> None:
            try:
                await runtime.serve(
                    settings, handle_signals=True, tune_collector=True, task_status=task_status
                )
            finally:
                nursery.cancel_scope.cancel()  # the supervisor watch has nothing left to stop

        handle = await nursery.start(serve)
        nursery.start_soon(partial(_stop_when_orphaned, handle))


async def _stop_when_orphaned(handle: ServerHandle) -> None:
    """Shut down when the supervisor's end of our stdin pipe closes (it exited or died)."""
    try:
        watched = stat.S_ISFIFO(os.fstat(0).st_mode)
    except OSError:  # no standard input at all
        watched = False
    if not watched:
        return  # started by hand, not by a supervisor: nothing to watch
    async with trio.lowlevel.FdStream(os.dup(0)) as pipe:
        while await pipe.receive_some(1024):
            pass
    log.warning("the supervisor is gone: shutting down")
    handle.stop()
