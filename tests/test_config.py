"""Configuration: defaults, .env, validation errors, the development secret."""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dramaverse.config import (
    DEFAULT_ORIGINS,
    PLACEHOLDER_SECRET,
    RateLimit,
    Settings,
    declared_settings,
    load_settings,
)
from dramaverse.errors import ConfigError

GOOD_SECRET = "s" * 40


def test_defaults() -> None:
    settings = load_settings({}, dotenv_path=None)
    assert settings.port == 3001
    assert settings.env == "development"
    assert settings.cors_allowed_origins == DEFAULT_ORIGINS
    assert settings.socket_io_path == "/socket.io/"
    assert settings.database_url == "sqlite:///data/dramaverse.db"
    assert settings.rate_limit_auth == RateLimit(10, 1800)
    assert settings.rate_limit_user == RateLimit(200, 900)
    assert settings.trust_proxy == 0
    assert settings.jwt_secret is None


def test_environment_values() -> None:
    settings = load_settings(
        {
            "PORT": "8080",
            "JWT_SECRET": GOOD_SECRET,
            "CORS_ALLOWED_ORIGINS": "https://a.example, https://b.example:8443",
            "SOCKET_IO_PATH": "/dramaverse/socket.io/",
            "DRAMAVERSE_DATA_DIR": "/tmp/dv",
            "TRUST_PROXY": "true",
            "RATE_LIMIT_USER": "off",
            "RATE_LIMIT_AUTH": "5/60",
        },
        dotenv_path=None,
    )
    assert settings.port == 8080
    assert settings.cors_allowed_origins == ("https://a.example", "https://b.example:8443")
    assert settings.socket_io_path == "/dramaverse/socket.io/"
    assert settings.database_url == "sqlite:////tmp/dv/dramaverse.db"
    assert settings.trust_proxy == 1
    assert settings.rate_limit_user is None
    assert settings.rate_limit_auth == RateLimit(5, 60)


def test_dotenv_file_is_read_and_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(f'PORT=4000\nJWT_SECRET="{GOOD_SECRET}"\nLOG_LEVEL=debug\n')
    settings = load_settings({"PORT": "5000"}, dotenv_path=env_file)
    assert settings.port == 5000
    assert settings.jwt_secret == GOOD_SECRET
    assert settings.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({"JWT_SECRET": PLACEHOLDER_SECRET}, "placeholder"),
        ({"JWT_SECRET": "short"}, "too short"),
        ({"DRAMAVERSE_ENV": "production"}, "JWT_SECRET is required"),
        ({"DRAMAVERSE_ENV": "staging"}, "DRAMAVERSE_ENV"),
        ({"PORT": "http"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"CORS_ALLOWED_ORIGINS": "localhost:5173"}, "CORS_ALLOWED_ORIGINS"),
        ({"CORS_ALLOWED_ORIGINS": "https://a.example/path"}, "CORS_ALLOWED_ORIGINS"),
        ({"SOCKET_IO_PATH": "socket.io"}, "SOCKET_IO_PATH"),
        ({"REDIS_URL": "http://localhost"}, "REDIS_URL"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"DATABASE_URL": "sqlite:///"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://localhost:port/db"}, "DATABASE_URL"),
        ({"DATABASE_POOL_SIZE": "0"}, "DATABASE_POOL_SIZE"),
        ({"DATABASE_POOL_SIZE": "101"}, "DATABASE_POOL_SIZE"),
        ({"DATABASE_POOL_SIZE": "ten"}, "DATABASE_POOL_SIZE"),
        ({"RATE_LIMIT_AUTH": "ten"}, "RATE_LIMIT_AUTH"),
        ({"RATE_LIMIT_USER": "0/10"}, "RATE_LIMIT_USER"),
        ({"TRUST_PROXY": "maybe"}, "TRUST_PROXY"),
        ({"BCRYPT_ROUNDS": "3"}, "BCRYPT_ROUNDS"),
        ({"MAX_BODY_BYTES": "-1"}, "MAX_BODY_BYTES"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ({"ACCESS_LOG": "sometimes"}, "ACCESS_LOG"),
        ({"CATALOG_POLL_SECONDS": "nan"}, "CATALOG_POLL_SECONDS"),
        ({"WATCH_REPORT_RELAXED_SECONDS": "1"}, "WATCH_REPORT_RELAXED_SECONDS"),
        ({"WATCH_REPORT_RELAXED_SECONDS": "-1"}, "WATCH_REPORT_RELAXED_SECONDS"),
        ({"WATCH_REPORT_RELAXED_SECONDS": "soon"}, "WATCH_REPORT_RELAXED_SECONDS"),
        ({"ROOM_SNAPSHOT_DELAY_SECONDS": "61"}, "ROOM_SNAPSHOT_DELAY_SECONDS"),
        ({"ROOM_SNAPSHOT_DELAY_SECONDS": "-0.5"}, "ROOM_SNAPSHOT_DELAY_SECONDS"),
    ],
)
def test_invalid_configuration_is_one_clear_error(environ: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ, dotenv_path=None)
    assert fragment in info.value.message
    assert "\n" not in info.value.message


def test_development_secret_is_generated_once_and_private(tmp_path: Path) -> None:
    settings = load_settings({"DRAMAVERSE_DATA_DIR": str(tmp_path)}, dotenv_path=None)
    first = settings.with_secret()
    assert first.jwt_secret is not None
    assert len(first.jwt_secret) >= 32
    mode = stat.S_IMODE(os.stat(settings.secret_file).st_mode)
    assert mode == 0o600
    second = load_settings({"DRAMAVERSE_DATA_DIR": str(tmp_path)}, dotenv_path=None).with_secret()
    assert second.jwt_secret == first.jwt_secret


def test_explicit_secret_is_used_as_is(tmp_path: Path) -> None:
    settings = load_settings(
        {"DRAMAVERSE_DATA_DIR": str(tmp_path), "JWT_SECRET": GOOD_SECRET}, dotenv_path=None
    ).with_secret()
    assert settings.jwt_secret == GOOD_SECRET
    assert not settings.secret_file.exists()


def test_cli_reports_invalid_configuration_on_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "JWT_SECRET": PLACEHOLDER_SECRET, "DRAMAVERSE_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "dramaverse", "migrate"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("dramaverse: error: JWT_SECRET")


ROOT = Path(__file__).resolve().parent.parent
SETTINGS_DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def settings_table_rows() -> list[tuple[str, list[str], str]]:
    """(file, variable names, default cell) of every row of a `| variable | default |` table."""
    rows = []
    for path in SETTINGS_DOCS:
        in_table = False
        for line in path.read_text(encoding="utf-8").splitlines():
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            if len(cells) < 2:
                in_table = False
            elif cells[:2] == ["variable", "default"]:
                in_table = True
            elif in_table and not set(cells[0]) <= set("-: "):
                names = re.findall(r"`([A-Z][A-Z0-9_]*)`", cells[0])
                assert names, f"{path.name}: a settings row without a variable: {line}"
                rows.append((path.name, names, cells[1].replace("`", "").strip()))
    return rows


def test_every_documented_setting_is_declared() -> None:
    declared = {s.name for s in declared_settings()}
    rows = settings_table_rows()
    assert len(rows) > 60
    undeclared = [(doc, name) for doc, names, _ in rows for name in names if name not in declared]
    assert undeclared == []


def test_every_declared_setting_is_documented_with_its_default() -> None:
    documented: dict[str, list[tuple[str, str]]] = {}
    for doc, names, default in settings_table_rows():
        if len(names) == 1:  # a row naming several variables points to where they are documented
            documented.setdefault(names[0], []).append((doc, default))
    missing = [s.name for s in declared_settings() if s.name not in documented]
    assert missing == []
    wrong = [
        (s.name, doc, default, s.documented_default)
        for s in declared_settings()
        for doc, default in documented[s.name]
        if default != s.documented_default and not default.startswith(s.documented_default + " (")
    ]
    assert wrong == []


def test_each_setting_is_read_from_its_variable_once() -> None:
    declared = declared_settings()
    assert len({s.name for s in declared}) == len(declared)
    for setting in declared:
        if setting.kind in ("integer", "number"):
            with pytest.raises(ConfigError) as info:
                load_settings({setting.name: "many"}, dotenv_path=None)
            assert info.value.message.startswith(f"{setting.name} must be")
            assert setting.high is not None
            with pytest.raises(ConfigError, match=setting.name):
                load_settings({setting.name: str(setting.high * 2 + 1)}, dotenv_path=None)
    defaults = load_settings({}, dotenv_path=None)
    assert dataclasses.replace(defaults, database_url="") == Settings()
