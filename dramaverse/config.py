"""Settings from the environment and an optional ``.env`` file, validated once at start.

Names follow the original Node server (PORT, JWT_SECRET, CORS_ALLOWED_ORIGINS, SOCKET_IO_PATH,
REDIS_URL) plus our own. Real environment variables win over ``.env``. Any invalid value raises
:class:`~dramaverse.errors.ConfigError` with one line that names the variable.

Each setting is declared once, as a field of :class:`Settings` built by one of the declaration
helpers below (``integer``, ``number``, ``flag``, ``rate``, ``text``): the environment
variable's name, the default, the bounds, how a value is checked, and one line saying what it
sets. :func:`load_settings` reads every declared field in order, then checks the few rules that
span several settings. :func:`declared_settings` lists the declarations; ``tests/test_config.py``
checks the settings tables of README.md and docs/*.md against it, so the docs cannot drift.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
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
class Setting:
    """One environment variable: name, kind, default, bounds and meaning.

    ``parse`` turns a non-blank value into the setting's value or raises ConfigError naming the
    variable; an unset or blank variable is the default. ``shown`` is the default as the docs
    write it when the value alone does not say it (``unset``, ``<data dir>/workers``).
    """

    name: str
    kind: str
    default: Any
    doc: str
    parse: Callable[[str], Any]
    low: float | None = None
    high: float | None = None
    shown: str | None = None

    def read(self, raw: str | None) -> Any:
        return self.default if raw is None else self.parse(raw)

    @property
    def documented_default(self) -> str:
        """The default as the settings tables of README.md and docs/*.md write it."""
        if self.shown is not None:
            return self.shown
        value = self.default
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, RateLimit):
            return f"{value.limit}/{int(value.window)}"
        if isinstance(value, float):
            return f"{value:g}"
        if isinstance(value, tuple):
            return ",".join(value)
        return str(value)


_SETTING = "dramaverse.setting"


def _declare(setting: Setting) -> Any:
    return field(default=setting.default, metadata={_SETTING: setting})


def integer(name: str, default: int, low: int, high: int, doc: str, *, shown: str = "") -> Any:
    """A whole number from ``low`` to ``high``."""
    return _declare(
        Setting(
            name,
            "integer",
            default,
            doc,
            lambda raw: _int(raw, name, default, low, high),
            low,
            high,
            shown or None,
        )
    )


def number(name: str, default: float, low: float, high: float, doc: str) -> Any:
    """A number from ``low`` to ``high`` (seconds, unless ``doc`` says otherwise)."""
    return _declare(
        Setting(
            name,
            "number",
            default,
            doc,
            lambda raw: _float(raw, name, default, low, high),
            low,
            high,
        )
    )


def flag(name: str, default: bool, doc: str) -> Any:
    """true/yes/on/1 or false/no/off/0."""
    return _declare(Setting(name, "flag", default, doc, lambda raw: _bool(raw, name, default)))


def rate(name: str, default: RateLimit, doc: str, *, can_be_off: bool = True) -> Any:
    """COUNT/SECONDS, or ``off`` (None) when ``can_be_off``."""

    def parse(raw: str) -> RateLimit | None:
        value = _rate_limit(raw, name, default)
        if value is None and not can_be_off:
            raise ConfigError(f"{name} must be COUNT/SECONDS like 10/10; it cannot be off.")
        return value

    return _declare(Setting(name, "rate", default, doc, parse))


def text(
    name: str, default: Any, doc: str, *, parse: Callable[[str], Any] = str, shown: str = ""
) -> Any:
    """Anything else: a string, a path, a list; ``parse`` checks it."""
    return _declare(Setting(name, "text", default, doc, parse, shown=shown or None))


def declared_settings() -> tuple[Setting, ...]:
    """Every environment variable :func:`load_settings` reads, in the order it reads them."""
    return tuple(
        f.metadata[_SETTING] for f in dataclasses.fields(Settings) if _SETTING in f.metadata
    )


def _environment(raw: str) -> str:
    if raw not in ENVIRONMENTS:
        raise ConfigError(f"DRAMAVERSE_ENV must be one of {', '.join(ENVIRONMENTS)}, not {raw!r}.")
    return raw


def _database_url(raw: str) -> str:
    _check_database_url(raw)
    return raw


def _jwt_secret(raw: str) -> str:
    _check_secret(raw, "JWT_SECRET")
    return raw


def _origins(raw: str) -> tuple[str, ...]:
    origins = tuple(o.strip() for o in raw.split(",") if o.strip())
    for origin in origins:
        _check_origin(origin)
    return origins


def _socket_io_path(raw: str) -> str:
    if not (raw.startswith("/") and raw.endswith("/")) or len(raw) < 3:
        raise ConfigError(
            f"SOCKET_IO_PATH must start and end with '/', like /socket.io/ (got {raw!r})."
        )
    return raw


def _redis_url(raw: str) -> str:
    if urlsplit(raw).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"REDIS_URL must be a redis://, rediss:// or unix:// URL (got {raw!r}).")
    _check_redis_url(raw)
    return raw


def _redis_prefix(raw: str) -> str:
    if len(raw) > 64 or not re.fullmatch(r"[A-Za-z0-9_.:{}-]+", raw):
        raise ConfigError(
            "REDIS_PREFIX must be 1 to 64 letters, digits or _.:{}- like dramaverse: "
            f"(got {raw!r})."
        )
    return raw


def _log_level(raw: str) -> str:
    level = raw.upper()
    if level not in LOG_LEVELS:
        raise ConfigError(
            f"LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL (got {level!r})."
        )
    return level


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of a process; fields declared with a helper are read from the environment."""

    env: str = text(
        "DRAMAVERSE_ENV", "development", "development, production or test", parse=_environment
    )
    host: str = text("HOST", "0.0.0.0", "listening address")
    port: int = integer("PORT", 3001, 0, 65535, "listening port")
    data_dir: Path = text(
        "DRAMAVERSE_DATA_DIR",
        Path("data"),
        "where the SQLite file and the development secret live",
        parse=Path,
        shown="./data",
    )
    # Empty until load_settings derives it from data_dir.
    database_url: str = text(
        "DATABASE_URL",
        "",
        "sqlite:/// or postgresql:// URL of the database",
        parse=_database_url,
        shown="sqlite:///<data dir>/dramaverse.db",
    )
    database_pool_size: int = integer(
        "DATABASE_POOL_SIZE", 10, 1, 100, "PostgreSQL connections per process"
    )
    jwt_secret: str | None = text(
        "JWT_SECRET",
        None,
        "HS256 signing secret, at least 32 characters",
        parse=_jwt_secret,
        shown="generated in development",
    )
    jwt_ttl_seconds: int = integer("JWT_TTL_SECONDS", 24 * 3600, 60, 366 * 86400, "token lifetime")
    # Sign-in sessions and revocation (docs/auth.md)
    session_touch_seconds: float = number(
        "SESSION_TOUCH_SECONDS", 60.0, 0.05, 3600, "how often sessions' last-seen times are written"
    )
    revocation_refresh_seconds: float = number(
        "REVOCATION_REFRESH_SECONDS", 30.0, 0.05, 3600, "how often revocations are reloaded"
    )
    session_retention_seconds: int = integer(
        "SESSION_RETENTION_SECONDS",
        30 * 86400,
        3600,
        10 * 365 * 86400,
        "ended or expired sessions are kept this long",
    )
    cors_allowed_origins: tuple[str, ...] = text(
        "CORS_ALLOWED_ORIGINS",
        DEFAULT_ORIGINS,
        "comma-separated origins allowed to call the API",
        parse=_origins,
    )
    socket_io_path: str = text(
        "SOCKET_IO_PATH", "/socket.io/", "path of the Socket.IO endpoint", parse=_socket_io_path
    )
    redis_url: str | None = text(
        "REDIS_URL", None, "Redis for fan-out and leases", parse=_redis_url, shown="unset"
    )
    redis_prefix: str = text(
        "REDIS_PREFIX", "dramaverse:", "prefix of every Redis channel and key", parse=_redis_prefix
    )
    redis_reconnect_max_seconds: float = number(
        "REDIS_RECONNECT_MAX_SECONDS", 10.0, 0.1, 600, "longest wait between reconnections"
    )
    trust_proxy: int = text(
        "TRUST_PROXY",
        0,
        "proxy hops whose X-Forwarded-For is trusted",
        parse=lambda raw: _trust_proxy(raw),  # a lambda: _trust_proxy is defined below
        shown="off",
    )
    rate_limit_auth: RateLimit | None = rate(
        "RATE_LIMIT_AUTH", RateLimit(10, 30 * 60), "/api/auth/* requests per window per address"
    )
    rate_limit_login_account: RateLimit | None = rate(
        "RATE_LIMIT_LOGIN_ACCOUNT",
        RateLimit(10, 15 * 60),
        "failed password attempts per window per account, all addresses together",
    )
    rate_limit_user: RateLimit | None = rate(
        "RATE_LIMIT_USER", RateLimit(200, 15 * 60), "/api/user/* requests per window per address"
    )
    max_body_bytes: int = integer(
        "MAX_BODY_BYTES", 100 * 1024, 1024, 16 << 20, "request body limit (413 above it)"
    )
    bcrypt_rounds: int = integer("BCRYPT_ROUNDS", 12, 4, 16, "bcrypt cost for new passwords")
    catalog_poll_seconds: float = number(
        "CATALOG_POLL_SECONDS", 2.0, 0.05, 3600, "how often to look for a newly seeded catalog"
    )
    shutdown_grace_seconds: float = number(
        "SHUTDOWN_GRACE_SECONDS", 10.0, 0.0, 600, "how long requests in flight may finish"
    )
    log_level: str = text("LOG_LEVEL", "INFO", "logging level", parse=_log_level)
    access_log: bool = flag("ACCESS_LOG", False, "log every request")
    # The native WebSocket protocol (docs/protocol.md, "Settings")
    ws_direct: bool = flag("WS_DIRECT", True, "serve WebSockets on our own WebSocket layer")
    ws_heartbeat_interval: float = number(
        "WS_HEARTBEAT_INTERVAL", 25.0, 0.05, 3600, "seconds between server pings"
    )
    ws_heartbeat_timeout: float = number(
        "WS_HEARTBEAT_TIMEOUT", 10.0, 0.05, 3600, "seconds a client may stay silent after a ping"
    )
    ws_auth_timeout: float = number("WS_AUTH_TIMEOUT", 10.0, 0.05, 600, "seconds to send hello")
    ws_outbox_size: int = integer(
        "WS_OUTBOX_SIZE", 256, 1, 100_000, "frames queued per device before it is evicted"
    )
    ws_max_message_bytes: int = integer(
        "WS_MAX_MESSAGE_BYTES", 64 * 1024, 1024, 16 << 20, "largest frame accepted"
    )
    ws_max_errors: int = integer(
        "WS_MAX_ERRORS", 20, 1, 100_000, "invalid frames tolerated per 10 s"
    )
    session_grace_seconds: float = number(
        "SESSION_GRACE_SECONDS", 5.0, 0.0, 3600, "how long a session outlives its last connection"
    )
    event_retention_count: int = integer(
        "EVENT_RETENTION_COUNT", 1000, 1, 10_000_000, "library events kept per user for resume"
    )
    event_retention_seconds: int = integer(
        "EVENT_RETENTION_SECONDS", 7 * 86400, 1, 10 * 365 * 86400, "older events are pruned"
    )
    event_prune_seconds: float = number(
        "EVENT_PRUNE_SECONDS", 300.0, 0.05, 86400, "how often pruning runs"
    )
    # Socket.IO compatibility (docs/socketio.md)
    socket_io_ping_interval: float = number(
        "SOCKET_IO_PING_INTERVAL", 25.0, 0.05, 3600, "seconds between server pings"
    )
    socket_io_ping_timeout: float = number(
        "SOCKET_IO_PING_TIMEOUT", 20.0, 0.05, 3600, "seconds a pong may take"
    )
    socket_io_max_payload: int = integer(
        "SOCKET_IO_MAX_PAYLOAD", 64 * 1024, 1024, 16 << 20, "largest POST body or message, bytes"
    )
    socket_io_connect_timeout: float = number(
        "SOCKET_IO_CONNECT_TIMEOUT", 10.0, 0.05, 600, "seconds without a connected socket"
    )
    socket_io_recovery_seconds: int = integer(
        "SOCKET_IO_RECOVERY_SECONDS", 24 * 3600, 0, 366 * 86400, "lifetime of a recovery pid"
    )
    # Watch parties (docs/watch-parties.md explains every default)
    watch_lead_min_seconds: float = number(
        "WATCH_LEAD_MIN_SECONDS", 0.3, 0.0, 10, "shortest lead of a scheduled start"
    )
    watch_lead_max_seconds: float = number(
        "WATCH_LEAD_MAX_SECONDS", 3.0, 0.0, 30, "longest lead of a scheduled start"
    )
    watch_drift_nudge_seconds: float = number(
        "WATCH_DRIFT_NUDGE_SECONDS", 0.04, 0.001, 10, "drift corrected by a rate nudge"
    )
    watch_drift_seek_seconds: float = number(
        "WATCH_DRIFT_SEEK_SECONDS", 0.5, 0.01, 600, "drift corrected by a seek"
    )
    watch_drift_max_nudge: float = number(
        "WATCH_DRIFT_MAX_NUDGE", 0.08, 0.001, 0.5, "largest rate change of a nudge (fraction)"
    )
    watch_barrier_seconds: float = number(
        "WATCH_BARRIER_SECONDS", 8.0, 0.1, 600, "how long a room waits for a stalled member"
    )
    watch_host_grace_seconds: float = number(
        "WATCH_HOST_GRACE_SECONDS", 15.0, 0.0, 3600, "how long an absent host keeps the role"
    )
    watch_reconnect_grace_seconds: float = number(
        "WATCH_RECONNECT_GRACE_SECONDS", 60.0, 0.0, 86400, "how long a member keeps its place"
    )
    watch_empty_room_seconds: float = number(
        "WATCH_EMPTY_ROOM_SECONDS", 30.0, 0.0, 86400, "how long an empty room lives"
    )
    watch_chat_max_length: int = integer(
        "WATCH_CHAT_MAX_LENGTH", 500, 1, 10_000, "longest chat line, characters"
    )
    watch_chat_rate: RateLimit = rate(
        "WATCH_CHAT_RATE", RateLimit(10, 10), "chat lines or reactions per window", can_be_off=False
    )
    watch_history_size: int = integer(
        "WATCH_HISTORY_SIZE", 50, 0, 1000, "chat lines a joiner receives"
    )
    watch_max_members: int = integer("WATCH_MAX_MEMBERS", 50, 1, 1000, "members per room")
    watch_report_seconds: float = number(
        "WATCH_REPORT_SECONDS", 2.0, 0.1, 60, "how often members report their position"
    )
    watch_report_relaxed_seconds: float = number(
        "WATCH_REPORT_RELAXED_SECONDS", 6.0, 0.0, 300, "the report pace of a steady member"
    )
    # Watch parties across processes (docs/watch-parties.md, "Several processes")
    watch_lease_seconds: float = number(
        "WATCH_LEASE_SECONDS", 6.0, 0.5, 120, "how long a dead owner's rooms stay put"
    )
    watch_relay_beat_seconds: float = number(
        "WATCH_RELAY_BEAT_SECONDS", 1.0, 0.05, 30, "heartbeat of a relayed route"
    )
    watch_relay_silence_seconds: float = number(
        "WATCH_RELAY_SILENCE_SECONDS", 3.0, 0.1, 120, "silence after which an owner may be dead"
    )
    watch_relay_timeout_seconds: float = number(
        "WATCH_RELAY_TIMEOUT_SECONDS", 5.0, 0.1, 300, "when an unvouched relayed member is dropped"
    )
    # /api/player/status and room snapshots (docs/player-status.md)
    player_status_ttl_seconds: int = integer(
        "PLAYER_STATUS_TTL_SECONDS", 60, 1, 86400, "statuses older than this are not returned"
    )
    player_status_keep: int = integer(
        "PLAYER_STATUS_KEEP", 5, 1, 100, "statuses kept per user and room"
    )
    player_status_rate: RateLimit | None = rate(
        "PLAYER_STATUS_RATE", RateLimit(120, 60), "requests per window per user and endpoint"
    )
    room_snapshot_retention_seconds: int = integer(
        "ROOM_SNAPSHOT_RETENTION_SECONDS", 86400, 60, 366 * 86400, "unsaved snapshots pruned after"
    )
    room_snapshot_delay_seconds: float = number(
        "ROOM_SNAPSHOT_DELAY_SECONDS", 1.0, 0.0, 60, "delay of a snapshot after a change"
    )
    # Worker processes (docs/scaling.md). worker_id and worker_listen_fd are not read from the
    # environment: the supervisor sets them for each worker.
    workers: int = integer("WORKERS", 1, 1, MAX_WORKERS, "worker processes for serve")
    worker_socket_dir: Path | None = text(
        "WORKER_SOCKET_DIR",
        None,
        "where each worker's private unix socket lives",
        parse=Path,
        shown="<data dir>/workers",
    )
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

    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        if _SETTING in f.metadata:
            values[f.name] = f.metadata[_SETTING].read(get(f.metadata[_SETTING].name))
    if not values["database_url"]:
        values["database_url"] = f"sqlite:///{values['data_dir'] / 'dramaverse.db'}"
    if values["jwt_secret"] is None and values["env"] == "production":
        raise ConfigError("JWT_SECRET is required when DRAMAVERSE_ENV=production.")
    _check_watch_party(values)
    return Settings(**values)


def _check_watch_party(values: Mapping[str, Any]) -> None:
    """The rules between WATCH_* settings (docs/watch-parties.md)."""
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
