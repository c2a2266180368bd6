"""What the HTTP layer needs from the rest of the server, handed over once at app creation."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import cast

import trio
from quart import current_app

from dramaverse.actors.catalog import CatalogKeeper
from dramaverse.actors.hub import SessionHub
from dramaverse.actors.room_cluster import RoomCluster
from dramaverse.actors.room_registry import RoomRegistry
from dramaverse.actors.room_snapshots import SnapshotWriter
from dramaverse.broker.base import Broker
from dramaverse.config import Settings
from dramaverse.http.auth import PasswordHasher, TokenService
from dramaverse.http.cookies import CookieAuth
from dramaverse.http.live_sockets import LiveSockets
from dramaverse.http.login_limits import PasswordLimits
from dramaverse.http.perimeter import Perimeter
from dramaverse.http.revocation_sync import Revoker
from dramaverse.http.revocations import RevocationList
from dramaverse.http.security import CorsPolicy, RateLimiter, SharedRateLimiter
from dramaverse.http.session_activity import SessionActivity
from dramaverse.realtime.engineio_server import EngineServer
from dramaverse.storage.base import Storage


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


RoomHostLookup = Callable[[str, int], Awaitable[bool]]


async def no_room_hosts(room_code: str, user_id: int) -> bool:
    """The default host lookup: nobody hosts anything until the room registry says so."""
    return False


@dataclass
class AppState:
    settings: Settings
    storage: Storage
    catalog: CatalogKeeper
    broker: Broker
    hub: SessionHub
    shutdown: trio.Event
    tokens: TokenService
    passwords: PasswordHasher
    cors: CorsPolicy
    auth_limiter: SharedRateLimiter | None
    user_limiter: RateLimiter | None
    # Sign-in sessions (docs/auth.md): the sockets of this process by user and session, the
    # revocation core that refuses ended sessions' tokens and closes their sockets, and the
    # batched last-seen times. runtime.serve starts ``revoker.run`` and ``activity.run``.
    sockets: LiveSockets
    revoker: Revoker
    activity: SessionActivity
    clock_ms: Callable[[], int] = field(default=wall_clock_ms)
    # Failed passwords per account (RATE_LIMIT_LOGIN_ACCOUNT), counted in the broker; None
    # when off (http/login_limits.py, routes/password_guard.py).
    password_limits: PasswordLimits | None = None
    # Per-user limit of /api/player/status (PLAYER_STATUS_RATE), apart from user_limiter.
    player_limiter: RateLimiter | None = None
    # Whether a user hosts a room, for /api/player/status's ``isHost`` (never the client's
    # word). The room registry installs its own: ``(room_code as posted, user id) -> bool``;
    # it must answer False for codes it does not know and must not block for long.
    room_host_lookup: RoomHostLookup = field(default=no_room_hosts)
    # The watch-party rooms of this process and their snapshot writer (runtime.serve sets
    # them; None where no registry runs, and the room verbs then answer 503).
    rooms: RoomRegistry | None = None
    room_snapshots: SnapshotWriter | None = None
    # Ownership and relaying of rooms across processes (the room verbs go through it).
    room_cluster: RoomCluster | None = None
    # The Socket.IO endpoint's Engine.IO sessions (socketio.install sets it).
    engine: EngineServer | None = None

    @cached_property
    def perimeter(self) -> Perimeter:
        """Origin, token, rate limit and body size, as every door checks them."""
        return Perimeter(
            self.settings,
            self.cors,
            self.tokens,
            self.auth_limiter,
            self.user_limiter,
            self.activity,
        )

    @cached_property
    def cookie_auth(self) -> CookieAuth:
        """Cookie authentication and its CSRF rules (http/cookies.py, http/csrf.py)."""
        return CookieAuth.from_settings(self.settings, self.cors)

    @classmethod
    def build(
        cls,
        settings: Settings,
        storage: Storage,
        catalog: CatalogKeeper,
        broker: Broker,
        hub: SessionHub,
        shutdown: trio.Event,
    ) -> AppState:
        assert settings.jwt_secret is not None, "resolve the secret first (Settings.with_secret)"
        revocations = RevocationList(settings.jwt_ttl_seconds)
        sockets = LiveSockets()
        return cls(
            settings=settings,
            storage=storage,
            catalog=catalog,
            broker=broker,
            hub=hub,
            shutdown=shutdown,
            tokens=TokenService(
                settings.jwt_secret, settings.jwt_ttl_seconds, revocations=revocations
            ),
            sockets=sockets,
            revoker=Revoker(
                revocations, sockets, storage, broker, settings.revocation_refresh_seconds
            ),
            activity=SessionActivity(),
            passwords=PasswordHasher(settings.bcrypt_rounds),
            cors=CorsPolicy(settings.cors_allowed_origins),
            auth_limiter=SharedRateLimiter(settings.rate_limit_auth, broker, "auth")
            if settings.rate_limit_auth
            else None,
            user_limiter=RateLimiter(settings.rate_limit_user)
            if settings.rate_limit_user
            else None,
            password_limits=PasswordLimits(settings.rate_limit_login_account, broker)
            if settings.rate_limit_login_account
            else None,
            player_limiter=RateLimiter(settings.player_status_rate)
            if settings.player_status_rate
            else None,
        )


def app_state() -> AppState:
    return cast(AppState, current_app.extensions["dramaverse"])
