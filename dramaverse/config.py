"""Settings from the environment and an optional ``.env`` file, validated once at start.

Names follow the original Node server (PORT, JWT_SECRET, CORS_ALLOWED_ORIGINS, SOCKET_IO_PATH,
REDIS_URL) plus our own. Real environment variables win over ``.env``. Any invalid value raises
:class:`~dramaverse.errors.ConfigError` with one line that names the variable.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dotenv import dotenv_values

from dramaverse.errors import ConfigError

PLACEHOLDER_SECRET = "replace-this-with-a-very-long-and-random-string"
MIN_SECRET_LENGTH = 32
DEFAULT_ORIGINS = ("http://localhost:5173", "http://127.0.0.1:5173")
SECRET_FILE_NAME = "jwt_secret"
ENVIRONMENTS = ("development", "production", "test")
MAX_WORKERS = 64


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``limit`` requests per ``window`` seconds per client address."""

    limit: int
    window: float

    @property
    def policy(self) -> str:
        return f"{self.limit};w={int(self.window)}"


@dataclass(frozen=True, slots=True)
class Settings:
    env: str = "development"
    host: str = "0.0.0.0"
    port: int = 3001
    data_dir: Path = Path("data")
    database_url: str = ""
    database_pool_size: int = 10
    jwt_secret: str | None = None
    jwt_ttl_seconds: int = 24 * 3600
    cors_allowed_origins: tuple[str, ...] = DEFAULT_ORIGINS
    socket_io_path: str = "/socket.io/"
    redis_url: str | None = None
    redis_prefix: str = "dramaverse:"
    redis_reconnect_max_seconds: float = 10.0
    trust_proxy: int = 0
    rate_limit_auth: RateLimit | None = RateLimit(10, 30 * 60)
    rate_limit_user: RateLimit | None = RateLimit(200, 15 * 60)
    max_body_bytes: int = 100 * 1024
    bcrypt_rounds: int = 12
    catalog_poll_seconds: float = 2.0
    shutdown_grace_seconds: float = 10.0
    log_level: str = "INFO"
    access_log: bool = False
    ws_heartbeat_interval: float = 25.0
    ws_heartbeat_timeout: float = 10.0
    ws_auth_timeout: float = 10.0
    ws_outbox_size: int = 256
    ws_max_message_bytes: int = 64 * 1024
    ws_max_errors: int = 20
    ws_direct: bool = True
    session_grace_seconds: float = 5.0
    event_retention_count: int = 1000
    event_retention_seconds: int = 7 * 86400
    event_prune_seconds: float = 300.0
    # Socket.IO compatibility (docs/socketio.md)
    socket_io_ping_interval: float = 25.0
    socket_io_ping_timeout: float = 20.0
    socket_io_max_payload: int = 64 * 1024
    socket_io_connect_timeout: float = 10.0
    socket_io_recovery_seconds: int = 24 * 3600
    # Watch parties (docs/watch-parties.md explains every default)
    watch_lead_min_seconds: float = 0.3
    watch_lead_max_seconds: float = 3.0
    watch_drift_nudge_seconds: float = 0.04
    watch_drift_seek_seconds: float = 0.5
    watch_drift_max_nudge: float = 0.08
    watch_barrier_seconds: float = 8.0
    watch_host_grace_seconds: float = 15.0
    watch_reconnect_grace_seconds: float = 60.0
    watch_empty_room_seconds: float = 30.0
    watch_chat_max_length: int = 500
    watch_chat_rate: RateLimit = RateLimit(10, 10)
    watch_history_size: int = 50
    watch_max_members: int = 50
    watch_report_seconds: float = 2.0
    watch_report_relaxed_seconds: float = 6.0
    # Watch parties across processes (docs/watch-parties.md, "Several processes")
    watch_lease_seconds: float = 6.0
    watch_relay_beat_seconds: float = 1.0
    watch_relay_silence_seconds: float = 3.0
    watch_relay_timeout_seconds: float = 5.0
    # /api/player/status and room snapshots (docs/player-status.md)
    player_status_ttl_seconds: int = 60
    player_status_keep: int = 5
    player_status_rate: RateLimit | None = RateLimit(120, 60)
    room_snapshot_retention_seconds: int = 86400
    room_snapshot_delay_seconds: float = 1.0
    # Worker processes (docs/scaling.md): WORKERS and WORKER_SOCKET_DIR come from the
    # environment; worker_id and worker_listen_fd are set by the supervisor for each worker.
    workers: int = 1
    worker_socket_dir: Path | None = None
    worker_id: int | None = None
    worker_listen_fd: int | None = None

    @property
    def worker_socket_path(self) -> Path:
        """The private Unix socket of worker ``worker_id`` (``<dir>/<id>.sock``)."""
        directory = self.worker_socket_dir or self.data_dir / "workers"
        return directory / f"{self.worker_id}.sock"

    @property
    def sqlite_path(self) -> Path:
        """The SQLite file named by ``database_url``."""
        return sqlite_path_from_url(self.database_url)

    @property
    def secret_file(self) -> Path:
        return self.data_dir / SECRET_FILE_NAME

    def with_secret(self) -> Settings:
        """Return settings with a JWT secret, creating the development one if needed.

        In development without JWT_SECRET a random secret is generated once and kept in the data
        directory (mode 0600), so tokens survive restarts. Production never gets here without one.
        """
        if self.jwt_secret is not None:
            return self
        if self.env == "production":
            raise ConfigError("JWT_SECRET is required when DRAMAVERSE_ENV=production.")
        path = self.secret_file
        if path.exists():
            secret = path.read_text(encoding="utf-8").strip()
            _check_secret(secret, f"the secret in {path}")
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            secret = secrets.token_hex(32)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(secret + "\n")
        return dataclasses.replace(self, jwt_secret=secret)


def load_settings(
    environ: Mapping[str, str] | None = None, *, dotenv_path: Path | None = Path(".env")
) -> Settings:
    """Read and validate settings; raise ConfigError on the first invalid value."""
    env: dict[str, str] = {}
    if dotenv_path is not None and dotenv_path.is_file():
        env.update({k: v for k, v in dotenv_values(dotenv_path).items() if v is not None})
    env.update(os.environ if environ is None else environ)

    def get(name: str) -> str | None:
        value = env.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    mode = get("DRAMAVERSE_ENV") or "development"
    if mode not in ENVIRONMENTS:
        raise ConfigError(f"DRAMAVERSE_ENV must be one of {', '.join(ENVIRONMENTS)}, not {mode!r}.")
    data_dir = Path(get("DRAMAVERSE_DATA_DIR") or "data")
    database_url = get("DATABASE_URL") or f"sqlite:///{data_dir / 'dramaverse.db'}"
    _check_database_url(database_url)

    secret = get("JWT_SECRET")
    if secret is not None:
        _check_secret(secret, "JWT_SECRET")
    elif mode == "production":
        raise ConfigError("JWT_SECRET is required when DRAMAVERSE_ENV=production.")

    origins: tuple[str, ...] = DEFAULT_ORIGINS
    raw_origins = get("CORS_ALLOWED_ORIGINS")
    if raw_origins is not None:
        origins = tuple(o.strip() for o in raw_origins.split(",") if o.strip())
        for origin in origins:
            _check_origin(origin)

    socket_io_path = get("SOCKET_IO_PATH") or "/socket.io/"
    if (
        not (socket_io_path.startswith("/") and socket_io_path.endswith("/"))
        or len(socket_io_path) < 3
    ):
        raise ConfigError(
            "SOCKET_IO_PATH must start and end with '/', like /socket.io/ "
            f"(got {socket_io_path!r})."
        )

    redis_url = get("REDIS_URL")
    if redis_url is not None and urlsplit(redis_url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"REDIS_URL must be a redis://, rediss:// or unix:// URL (got {redis_url!r})."
        )
    if redis_url is not None:
        _check_redis_url(redis_url)
    redis_prefix = get("REDIS_PREFIX") or "dramaverse:"
    if len(redis_prefix) > 64 or not re.fullmatch(r"[A-Za-z0-9_.:{}-]+", redis_prefix):
        raise ConfigError(
            "REDIS_PREFIX must be 1 to 64 letters, digits or _.:{}- like dramaverse: "
            f"(got {redis_prefix!r})."
        )

    log_level = (get("LOG_LEVEL") or "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(
            f"LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL (got {log_level!r})."
        )

    return Settings(
        env=mode,
        host=get("HOST") or "0.0.0.0",
        port=_int(get("PORT"), "PORT", 3001, 0, 65535),
        data_dir=data_dir,
        database_url=database_url,
        database_pool_size=_int(get("DATABASE_POOL_SIZE"), "DATABASE_POOL_SIZE", 10, 1, 100),
        jwt_secret=secret,
        jwt_ttl_seconds=_int(get("JWT_TTL_SECONDS"), "JWT_TTL_SECONDS", 24 * 3600, 60, 366 * 86400),
        cors_allowed_origins=origins,
        socket_io_path=socket_io_path,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        redis_reconnect_max_seconds=_float(
            get("REDIS_RECONNECT_MAX_SECONDS"), "REDIS_RECONNECT_MAX_SECONDS", 10.0, 0.1, 600
        ),
        trust_proxy=_trust_proxy(get("TRUST_PROXY")),
        rate_limit_auth=_rate_limit(get("RATE_LIMIT_AUTH"), "RATE_LIMIT_AUTH", RateLimit(10, 1800)),
        rate_limit_user=_rate_limit(get("RATE_LIMIT_USER"), "RATE_LIMIT_USER", RateLimit(200, 900)),
        max_body_bytes=_int(get("MAX_BODY_BYTES"), "MAX_BODY_BYTES", 100 * 1024, 1024, 16 << 20),
        bcrypt_rounds=_int(get("BCRYPT_ROUNDS"), "BCRYPT_ROUNDS", 12, 4, 16),
        catalog_poll_seconds=_float(
            get("CATALOG_POLL_SECONDS"), "CATALOG_POLL_SECONDS", 2.0, 0.05, 3600
        ),
        shutdown_grace_seconds=_float(
            get("SHUTDOWN_GRACE_SECONDS"), "SHUTDOWN_GRACE_SECONDS", 10.0, 0.0, 600
        ),
        log_level=log_level,
        access_log=_bool(get("ACCESS_LOG"), "ACCESS_LOG", False),
        ws_direct=_bool(get("WS_DIRECT"), "WS_DIRECT", True),
        ws_heartbeat_interval=_float(
            get("WS_HEARTBEAT_INTERVAL"), "WS_HEARTBEAT_INTERVAL", 25.0, 0.05, 3600
        ),
        ws_heartbeat_timeout=_float(
            get("WS_HEARTBEAT_TIMEOUT"), "WS_HEARTBEAT_TIMEOUT", 10.0, 0.05, 3600
        ),
        ws_auth_timeout=_float(get("WS_AUTH_TIMEOUT"), "WS_AUTH_TIMEOUT", 10.0, 0.05, 600),
        ws_outbox_size=_int(get("WS_OUTBOX_SIZE"), "WS_OUTBOX_SIZE", 256, 1, 100_000),
        ws_max_message_bytes=_int(
            get("WS_MAX_MESSAGE_BYTES"), "WS_MAX_MESSAGE_BYTES", 64 * 1024, 1024, 16 << 20
        ),
        ws_max_errors=_int(get("WS_MAX_ERRORS"), "WS_MAX_ERRORS", 20, 1, 100_000),
        session_grace_seconds=_float(
            get("SESSION_GRACE_SECONDS"), "SESSION_GRACE_SECONDS", 5.0, 0.0, 3600
        ),
        event_retention_count=_int(
            get("EVENT_RETENTION_COUNT"), "EVENT_RETENTION_COUNT", 1000, 1, 10_000_000
        ),
        event_retention_seconds=_int(
            get("EVENT_RETENTION_SECONDS"),
            "EVENT_RETENTION_SECONDS",
            7 * 86400,
            1,
            10 * 365 * 86400,
        ),
        event_prune_seconds=_float(
            get("EVENT_PRUNE_SECONDS"), "EVENT_PRUNE_SECONDS", 300.0, 0.05, 86400
        ),
        # Socket.IO compatibility (docs/socketio.md)
        socket_io_ping_interval=_float(
            get("SOCKET_IO_PING_INTERVAL"), "SOCKET_IO_PING_INTERVAL", 25.0, 0.05, 3600
        ),
        socket_io_ping_timeout=_float(
            get("SOCKET_IO_PING_TIMEOUT"), "SOCKET_IO_PING_TIMEOUT", 20.0, 0.05, 3600
        ),
        socket_io_max_payload=_int(
            get("SOCKET_IO_MAX_PAYLOAD"), "SOCKET_IO_MAX_PAYLOAD", 64 * 1024, 1024, 16 << 20
        ),
        socket_io_connect_timeout=_float(
            get("SOCKET_IO_CONNECT_TIMEOUT"), "SOCKET_IO_CONNECT_TIMEOUT", 10.0, 0.05, 600
        ),
        socket_io_recovery_seconds=_int(
            get("SOCKET_IO_RECOVERY_SECONDS"),
            "SOCKET_IO_RECOVERY_SECONDS",
            24 * 3600,
            0,
            366 * 86400,
        ),
        **_watch_party(get),
        **_player_status(get),
        workers=_int(get("WORKERS"), "WORKERS", 1, 1, MAX_WORKERS),
        worker_socket_dir=_path(get("WORKER_SOCKET_DIR")),
    )


def _watch_party(get: Callable[[str], str | None]) -> dict[str, Any]:
    """The WATCH_* settings (docs/watch-parties.md)."""
    chat_rate = _rate_limit(get("WATCH_CHAT_RATE"), "WATCH_CHAT_RATE", RateLimit(10, 10))
    if chat_rate is None:
        raise ConfigError("WATCH_CHAT_RATE must be COUNT/SECONDS like 10/10; it cannot be off.")
    values: dict[str, Any] = {
        "watch_lead_min_seconds": _float(
            get("WATCH_LEAD_MIN_SECONDS"), "WATCH_LEAD_MIN_SECONDS", 0.3, 0.0, 10
        ),
        "watch_lead_max_seconds": _float(
            get("WATCH_LEAD_MAX_SECONDS"), "WATCH_LEAD_MAX_SECONDS", 3.0, 0.0, 30
        ),
        "watch_drift_nudge_seconds": _float(
            get("WATCH_DRIFT_NUDGE_SECONDS"), "WATCH_DRIFT_NUDGE_SECONDS", 0.04, 0.001, 10
        ),
        "watch_drift_seek_seconds": _float(
            get("WATCH_DRIFT_SEEK_SECONDS"), "WATCH_DRIFT_SEEK_SECONDS", 0.5, 0.01, 600
        ),
        "watch_drift_max_nudge": _float(
            get("WATCH_DRIFT_MAX_NUDGE"), "WATCH_DRIFT_MAX_NUDGE", 0.08, 0.001, 0.5
        ),
        "watch_barrier_seconds": _float(
            get("WATCH_BARRIER_SECONDS"), "WATCH_BARRIER_SECONDS", 8.0, 0.1, 600
        ),
        "watch_host_grace_seconds": _float(
            get("WATCH_HOST_GRACE_SECONDS"), "WATCH_HOST_GRACE_SECONDS", 15.0, 0.0, 3600
        ),
        "watch_reconnect_grace_seconds": _float(
            get("WATCH_RECONNECT_GRACE_SECONDS"), "WATCH_RECONNECT_GRACE_SECONDS", 60.0, 0.0, 86400
        ),
        "watch_empty_room_seconds": _float(
            get("WATCH_EMPTY_ROOM_SECONDS"), "WATCH_EMPTY_ROOM_SECONDS", 30.0, 0.0, 86400
        ),
        "watch_chat_max_length": _int(
            get("WATCH_CHAT_MAX_LENGTH"), "WATCH_CHAT_MAX_LENGTH", 500, 1, 10_000
        ),
        "watch_chat_rate": chat_rate,
        "watch_history_size": _int(get("WATCH_HISTORY_SIZE"), "WATCH_HISTORY_SIZE", 50, 0, 1000),
        "watch_max_members": _int(get("WATCH_MAX_MEMBERS"), "WATCH_MAX_MEMBERS", 50, 1, 1000),
        "watch_report_seconds": _float(
            get("WATCH_REPORT_SECONDS"), "WATCH_REPORT_SECONDS", 2.0, 0.1, 60
        ),
        "watch_report_relaxed_seconds": _float(
            get("WATCH_REPORT_RELAXED_SECONDS"), "WATCH_REPORT_RELAXED_SECONDS", 6.0, 0.0, 300
        ),
        "watch_lease_seconds": _float(
            get("WATCH_LEASE_SECONDS"), "WATCH_LEASE_SECONDS", 6.0, 0.5, 120
        ),
        "watch_relay_beat_seconds": _float(
            get("WATCH_RELAY_BEAT_SECONDS"), "WATCH_RELAY_BEAT_SECONDS", 1.0, 0.05, 30
        ),
        "watch_relay_silence_seconds": _float(
            get("WATCH_RELAY_SILENCE_SECONDS"), "WATCH_RELAY_SILENCE_SECONDS", 3.0, 0.1, 120
        ),
        "watch_relay_timeout_seconds": _float(
            get("WATCH_RELAY_TIMEOUT_SECONDS"), "WATCH_RELAY_TIMEOUT_SECONDS", 5.0, 0.1, 300
        ),
    }
    if values["watch_lead_max_seconds"] < values["watch_lead_min_seconds"]:
        raise ConfigError("WATCH_LEAD_MAX_SECONDS must not be less than WATCH_LEAD_MIN_SECONDS.")
    if values["watch_drift_seek_seconds"] <= values["watch_drift_nudge_seconds"]:
        raise ConfigError("WATCH_DRIFT_SEEK_SECONDS must be more than WATCH_DRIFT_NUDGE_SECONDS.")
    relaxed = values["watch_report_relaxed_seconds"]
    if relaxed and relaxed < values["watch_report_seconds"]:
        raise ConfigError(
            "WATCH_REPORT_RELAXED_SECONDS must be 0 (never relax) or at least WATCH_REPORT_SECONDS."
        )
    if values["watch_relay_silence_seconds"] < 2 * values["watch_relay_beat_seconds"]:
        raise ConfigError(
            "WATCH_RELAY_SILENCE_SECONDS must be at least twice WATCH_RELAY_BEAT_SECONDS "
            "(one lost heartbeat must not look like a dead owner)."
        )
    if values["watch_lease_seconds"] <= values["watch_relay_silence_seconds"]:
        raise ConfigError(
            "WATCH_LEASE_SECONDS must be more than WATCH_RELAY_SILENCE_SECONDS "
            "(an owner must be presumed silent before its lease can expire)."
        )
    return values


def _player_status(get: Callable[[str], str | None]) -> dict[str, Any]:
    """The PLAYER_STATUS_* and ROOM_SNAPSHOT_* settings (docs/player-status.md)."""
    return {
        "player_status_ttl_seconds": _int(
            get("PLAYER_STATUS_TTL_SECONDS"), "PLAYER_STATUS_TTL_SECONDS", 60, 1, 86400
        ),
        "player_status_keep": _int(get("PLAYER_STATUS_KEEP"), "PLAYER_STATUS_KEEP", 5, 1, 100),
        "player_status_rate": _rate_limit(
            get("PLAYER_STATUS_RATE"), "PLAYER_STATUS_RATE", RateLimit(120, 60)
        ),
        "room_snapshot_retention_seconds": _int(
            get("ROOM_SNAPSHOT_RETENTION_SECONDS"),
            "ROOM_SNAPSHOT_RETENTION_SECONDS",
            86400,
            60,
            366 * 86400,
        ),
        "room_snapshot_delay_seconds": _float(
            get("ROOM_SNAPSHOT_DELAY_SECONDS"), "ROOM_SNAPSHOT_DELAY_SECONDS", 1.0, 0.0, 60
        ),
    }


def sqlite_path_from_url(url: str) -> Path:
    """``sqlite:///relative.db`` or ``sqlite:////absolute.db`` -> a path."""
    if not url.startswith("sqlite:///"):
        raise ConfigError(f"DATABASE_URL is not a sqlite:/// URL: {url!r}.")
    return Path(url.removeprefix("sqlite:///"))


def _check_database_url(url: str) -> None:
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        if not url.startswith("sqlite:///") or url == "sqlite:///":
            raise ConfigError(
                "DATABASE_URL for SQLite must look like sqlite:///relative/path.db or "
                f"sqlite:////absolute/path.db (got {url!r})."
            )
    elif scheme in ("postgres", "postgresql"):
        try:
            urlsplit(url).port  # noqa: B018 - parsing the port is the check
        except ValueError:
            raise ConfigError(
                "DATABASE_URL for PostgreSQL must look like "
                "postgresql://user:password@host:5432/dbname (its port is not a number)."
            ) from None
    else:
        raise ConfigError(
            f"DATABASE_URL must be a sqlite:/// or postgresql:// URL (got scheme {scheme!r})."
        )


def _check_redis_url(url: str) -> None:
    from redis.connection import parse_url

    try:
        parts = parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:  # the URL may hold a password: do not echo it
        raise ConfigError(f"REDIS_URL is not a valid Redis URL: {exc}") from None
    if url.startswith("unix:") and not parts.get("path"):
        raise ConfigError("REDIS_URL=unix://... must name a socket, like unix:///run/redis.sock.")


def _check_secret(secret: str, where: str) -> None:
    if secret == PLACEHOLDER_SECRET:
        raise ConfigError(f"{where} is the placeholder from the example .env; set a random secret.")
    if len(secret) < MIN_SECRET_LENGTH:
        raise ConfigError(
            f"{where} is too short: use at least {MIN_SECRET_LENGTH} random characters "
            "(for example: python -c 'import secrets; print(secrets.token_hex(32))')."
        )


_ORIGIN_RE = re.compile(r"^https?://[^/\s?#]+$")


def _check_origin(origin: str) -> None:
    if not _ORIGIN_RE.match(origin):
        raise ConfigError(
            "CORS_ALLOWED_ORIGINS entries must be origins like https://app.example.com "
            f"(scheme and host, no path): {origin!r}."
        )


def _int(raw: str | None, name: str, default: int, low: int, high: int) -> int:
    if raw is None:
        return default
    if not re.fullmatch(r"[0-9]+", raw) or not low <= int(raw) <= high:
        raise ConfigError(f"{name} must be an integer from {low} to {high} (got {raw!r}).")
    return int(raw)


def _float(raw: str | None, name: str, default: float, low: float, high: float) -> float:
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        raise ConfigError(f"{name} must be a number from {low:g} to {high:g} (got {raw!r}).")
    return value


def _path(raw: str | None) -> Path | None:
    return None if raw is None else Path(raw)


def _bool(raw: str | None, name: str, default: bool) -> bool:
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false (got {raw!r}).")


def _trust_proxy(raw: str | None) -> int:
    """Number of proxy hops whose X-Forwarded-For entries are trusted (0 = none)."""
    if raw is None:
        return 0
    lowered = raw.lower()
    if lowered in ("true", "yes", "on"):
        return 1
    if lowered in ("false", "no", "off"):
        return 0
    return _int(raw, "TRUST_PROXY", 0, 0, 32)


def _rate_limit(raw: str | None, name: str, default: RateLimit) -> RateLimit | None:
    if raw is None:
        return default
    if raw.lower() in ("off", "0", "none", "false"):
        return None
    match = re.fullmatch(r"([0-9]+)\s*/\s*([0-9]+)", raw)
    if not match or int(match[1]) < 1 or int(match[2]) < 1:
        raise ConfigError(f"{name} must be COUNT/SECONDS like 200/900, or off (got {raw!r}).")
    return RateLimit(int(match[1]), float(match[2]))
