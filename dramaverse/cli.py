"""``dramaverse serve | migrate | seed | user``: the command line (``user``: ``cli_users.py``)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import trio

from dramaverse.cli_users import add_user_commands, run_user_command
from dramaverse.config import Settings, load_settings
from dramaverse.domain.records import RecordError, validate_record
from dramaverse.errors import ConfigError, DramaverseError, lone_error
from dramaverse.storage import open_storage

log = logging.getLogger("dramaverse")
MAX_REPORTED_ERRORS = 20


class SeedRejected(DramaverseError):
    """The catalog file is malformed; nothing was written."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dramaverse",
        description="Dramaverse: a real-time backend for drama and movie communities.",
        epilog="Configuration comes from the environment and an optional .env file (see README).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="run the server", description="Migrate the database and serve the API."
    )
    serve.add_argument("--host", help="address to listen on (default: HOST or 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port to listen on (default: PORT or 3001)")
    serve.add_argument(
        "--workers",
        type=int,
        help="worker processes sharing the port (default: WORKERS or 1); more than one needs "
        "PostgreSQL and Redis (docs/scaling.md)",
    )
    serve.add_argument("--worker-id", type=int, help=argparse.SUPPRESS)  # set by the supervisor
    serve.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)  # set by the supervisor

    commands.add_parser(
        "migrate", help="apply pending database migrations", description="Apply pending migrations."
    )

    seed = commands.add_parser(
        "seed",
        help="import a dramas.json catalog file",
        description=(
            "Upsert every record of a dramas.json file in one transaction. A malformed file or "
            "record is rejected with its index and reason and nothing is written. Users' data is "
            "never touched. A running server picks up the new catalog by itself."
        ),
    )
    seed.add_argument("file", nargs="?", type=Path, help="the JSON file (an array of dramas)")
    seed.add_argument(
        "--sample", action="store_true", help="import the bundled 14-record sample catalog"
    )
    seed.add_argument(
        "--if-empty", action="store_true", help="only import when the catalog has no dramas yet"
    )
    add_user_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        _configure_logging(settings.log_level)
        if args.command == "serve":
            return _serve(settings, args)
        if args.command == "migrate":
            return trio.run(_migrate, settings)
        if args.command == "seed":
            if (args.file is None) == (not args.sample):
                parser.error("seed takes a FILE or --sample (exactly one)")
            return trio.run(_seed, settings, args.file, args.if_empty)
        if args.command == "user":
            return run_user_command(settings, args)
    except (ConfigError, SeedRejected) as exc:
        print(f"dramaverse: error: {exc.message}", file=sys.stderr)
        return 2
    except DramaverseError as exc:
        print(f"dramaverse: error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from dataclasses import replace

    from dramaverse import runtime, supervisor

    host: str | None = args.host
    port: int | None = args.port
    if host is not None:
        settings = replace(settings, host=host)
    if port is not None:
        if not 0 <= port <= 65535:
            raise ConfigError(f"--port must be from 0 to 65535 (got {port}).")
        settings = replace(settings, port=port)
    if args.workers is not None:
        settings = replace(settings, workers=supervisor.check_worker_count(args.workers))
    if args.worker_id is not None or args.listen_fd is not None:
        worker = replace(settings, worker_id=args.worker_id, worker_listen_fd=args.listen_fd)
        return supervisor.run_worker(worker)
    if settings.workers > 1:
        return supervisor.serve_workers(settings)
    try:
        trio.run(lambda: runtime.serve(settings, handle_signals=True, tune_collector=True))
    except BaseExceptionGroup as group:  # a start-up error raised through the nurseries
        error = lone_error(group)
        if error is group:
            raise
        raise error from None
    return 0


async def _migrate(settings: Settings) -> int:
    async with open_storage(settings, migrate=False) as storage:
        applied = await storage.migrate()
    print(f"applied {len(applied)} migration(s): {', '.join(applied)}" if applied else "up to date")
    return 0


def load_catalog_file(path: Path | None, progress: TextIO | None = None) -> list[dict[str, Any]]:
    """Read and validate a catalog file; raise SeedRejected naming each bad record."""
    if path is None:
        text = resources.files("dramaverse.data").joinpath("dramas.json").read_text("utf-8")
        where = "the bundled sample"
    else:
        try:
            text = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SeedRejected(f"cannot read {path}: {exc}; nothing was written") from None
        where = str(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SeedRejected(f"{where} is not valid JSON ({exc}); nothing was written") from None
    if not isinstance(data, list):
        kind = type(data).__name__
        raise SeedRejected(
            f"{where} must hold a JSON array of dramas, not {kind}; nothing was written"
        )
    records: list[dict[str, Any]] = []
    errors: list[str] = []
    seen: dict[str, int] = {}
    bar = _ProgressBar("validating", len(data), progress)
    for index, raw in enumerate(data):
        try:
            record = validate_record(raw)
        except RecordError as exc:
            errors.append(f"record {index}: {exc}")
        else:
            first = seen.setdefault(record["url"], index)
            if first != index:
                errors.append(f"record {index}: duplicate url, already used by record {first}")
            records.append(record)
        bar.update(index + 1)
    bar.finish()
    if errors:
        shown = "; ".join(errors[:MAX_REPORTED_ERRORS])
        more = len(errors) - MAX_REPORTED_ERRORS
        suffix = f"; and {more} more" if more > 0 else ""
        raise SeedRejected(
            f"{where} rejected, nothing was written ({len(errors)} bad record(s)): {shown}{suffix}"
        )
    return records


async def _seed(settings: Settings, path: Path | None, if_empty: bool) -> int:
    progress = sys.stderr if sys.stderr.isatty() else None
    async with open_storage(settings) as storage:
        if if_empty and await storage.count_dramas() > 0:
            print("catalog already has dramas; nothing imported (--if-empty)")
            return 0
        records = load_catalog_file(path, progress)
        bar = _ProgressBar("importing", len(records), progress)
        result = await storage.import_dramas(
            records, progress=lambda done, _total: bar.update(done)
        )
        bar.finish()
    print(
        f"imported {len(records)} dramas: {result.inserted} new, {result.updated} updated, "
        f"{result.unchanged} unchanged (catalog revision {result.revision})"
    )
    return 0


class _ProgressBar:
    """A one-line bar on a terminal; silent when output is not a terminal."""

    WIDTH = 30

    def __init__(self, label: str, total: int, stream: TextIO | None) -> None:
        self.label, self.total, self.stream = label, total, stream
        self._shown = -1

    def update(self, done: int) -> None:
        if self.stream is None or self.total == 0:
            return
        percent = done * 100 // self.total
        if percent == self._shown:
            return
        self._shown = percent
        filled = self.WIDTH * done // self.total
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        self.stream.write(f"\r{self.label:<10} [{bar}] {percent:3d}% ({done}/{self.total})")
        self.stream.flush()

    def finish(self) -> None:
        if self.stream is not None and self._shown >= 0:
            self.stream.write("\n")
            self.stream.flush()
