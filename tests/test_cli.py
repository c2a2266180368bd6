"""The command line: seed (idempotent, all-or-nothing), migrate, --help, live catalog reload."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conftest import TEST_SECRET, make_settings, running_server, sample_records


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DRAMAVERSE_DATA_DIR": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'test.db'}",
        "JWT_SECRET": TEST_SECRET,
    }
    return subprocess.run(
        [sys.executable, "-m", "dramaverse", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def count_dramas(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "test.db") as conn:
        return int(conn.execute("SELECT count(*) FROM dramas").fetchone()[0])


def write_catalog(tmp_path: Path, records: Any, name: str = "catalog.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(records) if not isinstance(records, str) else records)
    return path


@pytest.mark.parametrize("command", [[], ["serve"], ["migrate"], ["seed"]])
def test_help_everywhere(tmp_path: Path, command: list[str]) -> None:
    result = run_cli(tmp_path, *command, "--help")
    assert result.returncode == 0
    assert "usage: dramaverse" in result.stdout


def test_migrate_then_up_to_date(tmp_path: Path) -> None:
    first = run_cli(tmp_path, "migrate")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("applied")
    second = run_cli(tmp_path, "migrate")
    assert second.stdout.strip() == "up to date"


def test_seed_is_idempotent(tmp_path: Path) -> None:
    path = write_catalog(tmp_path, sample_records())
    first = run_cli(tmp_path, "seed", str(path))
    assert first.returncode == 0, first.stderr
    assert "14 new, 0 updated, 0 unchanged" in first.stdout
    second = run_cli(tmp_path, "seed", str(path))
    assert "0 new, 0 updated, 14 unchanged" in second.stdout
    assert count_dramas(tmp_path) == 14


def test_seed_sample_if_empty(tmp_path: Path) -> None:
    first = run_cli(tmp_path, "seed", "--sample", "--if-empty")
    assert "14 new" in first.stdout
    second = run_cli(tmp_path, "seed", "--sample", "--if-empty")
    assert "nothing imported" in second.stdout


def test_seed_needs_exactly_one_source(tmp_path: Path) -> None:
    assert run_cli(tmp_path, "seed").returncode == 2
    path = write_catalog(tmp_path, sample_records())
    assert run_cli(tmp_path, "seed", str(path), "--sample").returncode == 2


def _bad_record(index: int, **changes: Any) -> list[dict[str, Any]]:
    records = sample_records()
    records[index] = {**records[index], **changes}
    return records


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        ("{not json", ["not valid JSON"]),
        ({"url": "x"}, ["JSON array"]),
        (_bad_record(5, rating="9.1"), ["record 5", "rating"]),
        (_bad_record(2, genres="Drama"), ["record 2", "genres"]),
        (_bad_record(13, url=""), ["record 13", "url"]),
        (_bad_record(0, cast=[{"character_name": "x"}]), ["record 0", "actor_name"]),
        ([*sample_records(), sample_records()[4]], ["record 14", "duplicate url", "record 4"]),
        ([*sample_records()[:3], 7], ["record 3"]),
    ],
)
def test_malformed_catalog_is_rejected_and_nothing_written(
    tmp_path: Path, content: Any, fragments: list[str]
) -> None:
    run_cli(tmp_path, "seed", str(write_catalog(tmp_path, sample_records()[:2], "first.json")))
    result = run_cli(tmp_path, "seed", str(write_catalog(tmp_path, content)))
    assert result.returncode == 2
    for fragment in fragments:
        assert fragment in result.stderr
    assert "nothing was written" in result.stderr
    assert count_dramas(tmp_path) == 2


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "seed", str(tmp_path / "absent.json"))
    assert result.returncode == 2
    assert "cannot read" in result.stderr


async def test_running_server_picks_up_a_new_catalog(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    async with running_server(settings, records=sample_records()[:3]) as server:
        assert (await server.client.get("/api/dramas")).json()["totalItems"] == 3
        path = write_catalog(tmp_path, sample_records())
        result = await trio.to_thread.run_sync(lambda: run_cli(tmp_path, "seed", str(path)))
        assert result.returncode == 0, result.stderr
        # The keeper polls on its own; refreshing here just makes the check deterministic.
        await server.handle.state.catalog.refresh()
        assert (await server.client.get("/api/dramas")).json()["totalItems"] == 14
