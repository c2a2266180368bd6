"""What the HTTP layer needs from the rest of the server, handed over once at app creation."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import trio
from quart import current_app

from dramaverse.actors.catalog import CatalogKeeper
from dramaverse.actors.hub import SessionHub
from dramaverse.broker.base import Broker
from dramaverse.config import Settings
from dramaverse.http.auth import PasswordHasher, TokenService
from dramaverse.http.security import CorsPolicy, RateLimiter
from dramaverse.storage.base import Storage


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


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
    auth_limiter: RateLimiter | None
    user_limiter: RateLimiter | None
    clock_ms: Callable[[], int] = field(default=wall_clock_ms)

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
        return cls(
            settings=settings,
            storage=storage,
            catalog=catalog,
            broker=broker,
            hub=hub,
            shutdown=shutdown,
            tokens=TokenService(settings.jwt_secret, settings.jwt_ttl_seconds),
            passwords=PasswordHasher(settings.bcrypt_rounds),
            cors=CorsPolicy(settings.cors_allowed_origins),
            auth_limiter=RateLimiter(settings.rate_limit_auth)
            if settings.rate_limit_auth
            else None,
            user_limiter=RateLimiter(settings.rate_limit_user)
            if settings.rate_limit_user
            else None,
        )


def app_state() -> AppState:
    return cast(AppState, current_app.extensions["dramaverse"])
