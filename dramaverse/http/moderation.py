"""What an administrator does to an account: roles, bans, password resets, deletion.

The admin API (``routes/admin.py``) and the command line (``cli_users.py``) share these steps,
so a ban from either is the same ban. Each step commits to storage first, then announces what it
revoked through a :class:`~dramaverse.http.revocation_sync.Revoker`: in a server, the process's
own (applied here at once, sent to every other process on the broker, which closes the user's
sockets everywhere); on the command line, one of its own on the configured broker (with Redis it
reaches running servers at once; without, they reload revocations from storage every
``REVOCATION_REFRESH_SECONDS``). Promoting and demoting revoke nothing: the admin guard reads
the role from storage on every request (``routes/guards.py``), so a demotion counts at once.

A login racing a ban or a reset: login reads the user, verifies the password (bcrypt, tens to
hundreds of milliseconds), then stores a session. A ban committed in between ends the sessions
that existed, not the one about to be stored, and the new token's ``iat`` is not before the
cut-off (it is whole seconds). Two steps close the gap: login reads the user again once its
session is stored and refuses if it is banned or its password changed (``routes/accounts.py``),
and a ban or reset here ends the user's sessions a second time after its own commit. Either the
login's second read sees the change, or its session was stored before the second sweep, which
ends it.

Error handling: an unknown user is :class:`NotFound` (404, exit 1 on the command line); demoting,
banning or deleting the last admin who is not banned is storage's :class:`LastAdmin` (409).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from dramaverse.errors import NotFound
from dramaverse.http.auth import PasswordHasher
from dramaverse.http.revocation_sync import Revoker
from dramaverse.storage.accounts import cutoff_at
from dramaverse.storage.base import Storage, UserRecord

USER_NOT_FOUND: Final = "User not found"  # storage's wording for the same case
GENERATED_PASSWORD_BYTES: Final = 12  # 16 URL-safe characters: 96 random bits, under 72 bytes


def generate_password() -> str:
    return secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)


@dataclass(frozen=True, slots=True)
class Moderation:
    storage: Storage
    revoker: Revoker
    passwords: PasswordHasher
    clock_ms: Callable[[], int]

    async def user(self, user_id: int) -> UserRecord:
        """The user as stored now; NotFound when there is none."""
        user = await self.storage.get_user(user_id)
        if user is None:
            raise NotFound(USER_NOT_FOUND)
        return user

    async def user_named(self, username: str) -> UserRecord:
        user = await self.storage.get_user_by_username(username)
        if user is None:
            raise NotFound(f"{USER_NOT_FOUND}: {username}")
        return user

    async def set_admin(self, user_id: int, is_admin: bool) -> UserRecord:
        """Promote or demote (LastAdmin for the last admin); the user as it is now."""
        await self.storage.set_admin(user_id, is_admin)
        return await self.user(user_id)

    async def ban(self, user_id: int) -> UserRecord:
        """Ban: the cut-off moves to now and every session ends, in storage and then on every
        process (tokens refused, sockets closed)."""
        now = self.clock_ms()
        ended = await self.storage.set_banned(user_id, True, now)
        ended += await self.storage.end_all_sessions(user_id, now)  # a racing login's
        await self._revoke_all(user_id, ended, now)
        return await self.user(user_id)

    async def unban(self, user_id: int) -> UserRecord:
        """Lift a ban; the user logs in again (nothing else changes)."""
        await self.storage.set_banned(user_id, False, self.clock_ms())
        return await self.user(user_id)

    async def reset_password(self, user_id: int) -> str:
        """Store a generated password, sign the user out everywhere; the password, to be
        shown once (only its hash is kept)."""
        await self.user(user_id)  # NotFound before spending a hash on nobody
        password = generate_password()
        password_hash = await self.passwords.hash(password)
        now = self.clock_ms()
        ended = await self.storage.set_password_hash(user_id, password_hash, now)
        ended += await self.storage.end_all_sessions(user_id, now)  # a racing login's
        await self._revoke_all(user_id, ended, now)
        return password

    async def delete(self, user_id: int) -> None:
        """Remove the user and everything stored about them; their tokens are refused and
        their sockets closed everywhere."""
        if not await self.storage.delete_user(user_id):
            raise NotFound(USER_NOT_FOUND)
        await self.revoker.user_removed(user_id, self.clock_ms())

    async def _revoke_all(self, user_id: int, ended: list[str], now: int) -> None:
        await self.revoker.cut_off(user_id, cutoff_at(now))
        await self.revoker.end_sessions(user_id, sorted(set(ended)), now)
