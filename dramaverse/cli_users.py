"""``dramaverse user ...``: accounts from the command line (docs/auth.md, roles).

::

    dramaverse user create NAME [--admin]    password from a prompt, typed twice, or from the
                                             first line of stdin when stdin is no terminal
    dramaverse user promote|demote|ban|unban|reset-password NAME
    dramaverse user list [--search TEXT] [--json]

A password is never taken from the arguments (they show in ``ps`` and shell histories). Names
and passwords follow registration's rules. The steps are the admin API's
(``http/moderation.py``), on the database the settings name, so a ban or reset is the same
everywhere: it is committed, then announced on the broker. With ``REDIS_URL`` set, running
servers hear it at once (tokens refused, sockets closed); without Redis they pick it up at their
next reload from the database, within ``REVOCATION_REFRESH_SECONDS``. The command says which.

Exit codes: 0 done, 1 with one line on stderr for a refusal (unknown user, the last admin, a bad
name or password, a name taken, the database unreachable), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Final, TextIO

import trio
import trio_asyncio

from dramaverse.broker import Broker, open_broker
from dramaverse.config import Settings
from dramaverse.errors import BadRequest, UsernameTaken, lone_error
from dramaverse.http.auth import (
    BCRYPT_MAX_BYTES,
    MIN_PASSWORD_LENGTH,
    PASSWORD_TOO_LONG,
    USERNAME_RE,
    PasswordHasher,
    js_length,
    parse_registration,
)
from dramaverse.http.live_sockets import LiveSockets
from dramaverse.http.moderation import Moderation
from dramaverse.http.revocation_sync import Revoker
from dramaverse.http.revocations import RevocationList
from dramaverse.storage import Storage, open_storage
from dramaverse.storage.accounts import MAX_PAGE_SIZE, MAX_SEARCH_LENGTH, UserSummary

ACTIONS: Final = ("promote", "demote", "ban", "unban", "reset-password")
INVALID_NAME: Final = "Invalid username: 3 to 20 letters, digits, _, . or -."
SHORT_PASSWORD: Final = f"Password must be at least {MIN_PASSWORD_LENGTH} characters."
MISMATCH: Final = "The passwords do not match; nothing was changed."
NO_PASSWORD: Final = "No password given; nothing was changed."
MAX_STDIN_LINE: Final = 1024  # characters read from stdin; anything this long is refused anyway
FLUSH_SECONDS: Final = 5.0  # how long a revocation may take to leave for Redis

Prompt = Callable[[str], str]


def add_user_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    user = commands.add_parser(
        "user",
        help="create, list and moderate accounts",
        description=(
            "Manage accounts in the configured database. Bans and password resets reach "
            "running servers at once through Redis when REDIS_URL is set, otherwise at their "
            "next reload (REVOCATION_REFRESH_SECONDS)."
        ),
    )
    actions = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create",
        help="create an account",
        description=(
            "Create an account. The password is asked twice on a terminal, or read from the "
            "first line of stdin when stdin is not a terminal; never from the arguments."
        ),
    )
    create.add_argument("name", help="3 to 20 letters, digits, _, . or -")
    create.add_argument("--admin", action="store_true", help="make the account an admin")
    helps = {
        "promote": "make an account an admin",
        "demote": "take the admin role away (never from the last admin)",
        "ban": "ban an account: it cannot log in, and is signed out everywhere",
        "unban": "lift a ban",
        "reset-password": "set a generated password (printed once) and sign out everywhere",
    }
    for action in ACTIONS:
        parser = actions.add_parser(action, help=helps[action], description=helps[action] + ".")
        parser.add_argument("name", help="the account's username")
    listing = actions.add_parser("list", help="list accounts", description="List accounts by id.")
    listing.add_argument("--search", default="", help="only names containing this text")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")


def read_new_password(stdin: TextIO, prompt: Prompt = getpass.getpass) -> str:
    """The new password: typed twice on a terminal, else the first line of ``stdin``."""
    if not stdin.isatty():
        return stdin.readline(MAX_STDIN_LINE + 1).rstrip("\r\n")
    try:
        first = prompt("Password: ")
        second = prompt("Repeat password: ")
    except EOFError:
        raise BadRequest(NO_PASSWORD) from None
    if first != second:
        raise BadRequest(MISMATCH)
    return first


def check_password(password: str) -> None:
    """Registration's password rules, with the command line's wording."""
    if js_length(password) < MIN_PASSWORD_LENGTH:
        raise BadRequest(SHORT_PASSWORD)
    if len(password.encode("utf-8")) > BCRYPT_MAX_BYTES:
        raise BadRequest(PASSWORD_TOO_LONG)


def run_user_command(
    settings: Settings,
    args: argparse.Namespace,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    prompt: Prompt = getpass.getpass,
) -> int:
    """Run one ``user`` command; 0, or a DramaverseError for main() to report (exit 1)."""
    command = UserCommand(settings, stdin or sys.stdin, stdout or sys.stdout, prompt)
    if args.user_command == "create":
        if not USERNAME_RE.fullmatch(args.name):
            raise BadRequest(INVALID_NAME)
        return _run(command.create, args.name, args.admin)
    if args.user_command == "list":
        if len(args.search) > MAX_SEARCH_LENGTH or "\x00" in args.search:
            raise BadRequest(f"--search must be at most {MAX_SEARCH_LENGTH} characters.")
        return _run(command.list, args.search, args.json)
    return _run(command.moderate, args.user_command, args.name)


def _run(main: Callable[..., Awaitable[int]], *args: object) -> int:
    """``trio.run``, with an error raised through the nurseries (trio-asyncio's loop) handed
    on as the error it is, for main() to report in one line."""
    try:
        return trio.run(main, *args)
    except BaseExceptionGroup as group:
        error = lone_error(group)
        if error is group:
            raise
        raise error from None


class UserCommand:
    def __init__(self, settings: Settings, stdin: TextIO, stdout: TextIO, prompt: Prompt) -> None:
        self.settings = settings
        self.stdin = stdin
        self.stdout = stdout
        self.prompt = prompt
        self.passwords = PasswordHasher(settings.bcrypt_rounds)

    def say(self, line: str) -> None:
        print(line, file=self.stdout)

    async def create(self, name: str, admin: bool) -> int:
        async with trio_asyncio.open_loop(), open_storage(self.settings) as storage:
            if await storage.get_user_by_username(name) is not None:
                raise UsernameTaken("Username already exists")
            password = await trio.to_thread.run_sync(read_new_password, self.stdin, self.prompt)
            check_password(password)
            parse_registration({"username": name, "password": password})  # the same rules
            password_hash = await self.passwords.hash(password)
            user_id = await storage.create_user(name, password_hash)
            if admin:
                await storage.set_admin(user_id, True)
        self.say(f"created {'admin' if admin else 'user'} {name} (id {user_id})")
        return 0

    async def list(self, search: str, as_json: bool) -> int:
        async with trio_asyncio.open_loop(), open_storage(self.settings) as storage:
            users = await all_users(storage, search)
        if as_json:
            self.say(json.dumps([user.to_json() for user in users], indent=2))
        else:
            self.say(user_table(users))
        return 0

    async def moderate(self, action: str, name: str) -> int:
        async with (
            trio_asyncio.open_loop(),
            open_storage(self.settings) as storage,
            open_broker(self.settings) as broker,
        ):
            revoker = Revoker(
                RevocationList(self.settings.jwt_ttl_seconds),
                LiveSockets(),  # none here: the servers close theirs when they hear of it
                storage,
                broker,
                self.settings.revocation_refresh_seconds,
            )
            steps = Moderation(storage, revoker, self.passwords, wall_clock_ms)
            user = await steps.user_named(name)
            if action in ("promote", "demote"):
                await steps.set_admin(user.id, action == "promote")
                self.say(f"{name} is {'an admin' if action == 'promote' else 'no longer an admin'}")
                return 0
            if action == "unban":
                await steps.unban(user.id)
                self.say(f"{name} is no longer banned")
                return 0
            if action == "ban":
                await steps.ban(user.id)
                self.say(f"{name} is banned and signed out everywhere")
            else:
                password = await steps.reset_password(user.id)
                self.say(f"new password for {name} (shown once): {password}")
                self.say(f"{name} is signed out everywhere")
            self.say(await self._reach(broker))
        return 0

    async def _reach(self, broker: Broker) -> str:
        """How running servers learn of the revocation just published."""
        refresh = f"{self.settings.revocation_refresh_seconds:g}"
        with trio.move_on_after(FLUSH_SECONDS):
            await broker.flush()
        if self.settings.redis_url:
            health = broker.health()
            if health.get("status") == "ok" and health.get("dropped") == 0:
                return "running servers were told through Redis"
            return (
                "Redis is unreachable: running servers apply this at their next reload from "
                f"the database (within REVOCATION_REFRESH_SECONDS, {refresh} s)"
            )
        return (
            "no REDIS_URL: running servers apply this at their next reload from the database "
            f"(within REVOCATION_REFRESH_SECONDS, {refresh} s)"
        )


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


async def all_users(storage: Storage, search: str) -> list[UserSummary]:
    """Every user whose name contains ``search``, by id, a page of the largest size at a time."""
    found: list[UserSummary] = []
    page = 1
    while True:
        batch = await storage.list_users(search, page, MAX_PAGE_SIZE)
        found.extend(batch.users)
        if len(batch.users) < MAX_PAGE_SIZE or len(found) >= batch.total:
            return found
        page += 1


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def user_table(users: list[UserSummary]) -> str:
    """A plain text table, one user per line (UTC times; ``-`` where there is none)."""
    header = ("ID", "USERNAME", "ADMIN", "BANNED", "CREATED", "LAST SEEN", "FAV", "STATUS", "REV")
    rows = [
        (
            str(u.id),
            u.username,
            "yes" if u.is_admin else "-",
            "yes" if u.is_banned else "-",
            _when(u.created_at),
            _when(u.last_seen_at),
            str(u.favorites),
            str(u.statuses),
            str(u.episode_reviews),
        )
        for u in users
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    lines.append(f"{len(users)} user(s)")
    return "\n".join(line.rstrip() for line in lines)
