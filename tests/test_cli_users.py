"""``dramaverse user ...`` end to end: real processes on a real SQLite file, passwords on stdin.

The prompt path (a terminal) is tested in-process with a stand-in for ``getpass``, the one
outside service here. The last test runs a server on the same file: a ban from the command line
closes the banned user's socket at the server's next reload (no Redis here; with Redis the
broker carries it at once: ``test_admin_revocations.py``).
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import trio

from dramaverse.cli_users import MISMATCH, NO_PASSWORD, read_new_password
from dramaverse.errors import BadRequest
from tests.conftest import TEST_SECRET, make_settings, running_server
from tests.test_http_sessions import closed_with, live_socket


def run_cli(tmp_path: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DRAMAVERSE_DATA_DIR": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'test.db'}",
        "JWT_SECRET": TEST_SECRET,
        "BCRYPT_ROUNDS": "4",
        "LOG_LEVEL": "WARNING",
    }
    env.pop("REDIS_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "dramaverse", "user", *args],
        env=env,
        cwd=tmp_path,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 1, result.stdout
    assert result.stderr == f"dramaverse: error: {message}\n"


def rows(tmp_path: Path) -> dict[str, tuple[int, int, int]]:
    """username -> (is_admin, is_banned, tokens_valid_after)."""
    with sqlite3.connect(tmp_path / "test.db") as conn:
        found = conn.execute(
            "SELECT username, is_admin, is_banned, tokens_valid_after FROM users"
        ).fetchall()
    return {name: (admin, banned, cutoff) for name, admin, banned, cutoff in found}


def listed(tmp_path: Path) -> list[dict[str, Any]]:
    users: list[dict[str, Any]] = json.loads(ok(run_cli(tmp_path, "list", "--json")))
    return users


def test_create_promote_demote_ban_unban_and_list(tmp_path: Path) -> None:
    created = ok(run_cli(tmp_path, "create", "alice", "--admin", stdin="secret-pw\n"))
    assert created == "created admin alice (id 1)\n"
    assert ok(run_cli(tmp_path, "create", "bob", stdin="secret-pw")) == "created user bob (id 2)\n"
    assert rows(tmp_path) == {"alice": (1, 0, 0), "bob": (0, 0, 0)}
    assert ok(run_cli(tmp_path, "promote", "bob")) == "bob is an admin\n"
    assert ok(run_cli(tmp_path, "demote", "alice")) == "alice is no longer an admin\n"
    banned = ok(run_cli(tmp_path, "ban", "alice")).splitlines()
    assert banned[0] == "alice is banned and signed out everywhere"
    assert banned[1].startswith("no REDIS_URL: running servers apply this at their next reload")
    assert "REVOCATION_REFRESH_SECONDS" in banned[1]
    alice = rows(tmp_path)["alice"]
    assert alice[:2] == (0, 1)
    assert alice[2] > 0  # the cut-off moved
    table = ok(run_cli(tmp_path, "list")).splitlines()
    assert table[0].split() == [
        "ID", "USERNAME", "ADMIN", "BANNED", "CREATED", "LAST", "SEEN", "FAV", "STATUS", "REV",
    ]  # fmt: skip
    assert table[1].split()[:4] == ["1", "alice", "-", "yes"]
    assert table[2].split()[:4] == ["2", "bob", "yes", "-"]
    assert table[-1] == "2 user(s)"
    assert ok(run_cli(tmp_path, "unban", "alice")) == "alice is no longer banned\n"
    users = listed(tmp_path)
    assert [(u["username"], u["isAdmin"], u["isBanned"]) for u in users] == [
        ("alice", False, False),
        ("bob", True, False),
    ]
    assert users[0]["library"] == {"favorites": 0, "statuses": 0, "episodeReviews": 0}
    only_bob = json.loads(ok(run_cli(tmp_path, "list", "--json", "--search", "OB")))
    assert [u["username"] for u in only_bob] == ["bob"]


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("create", "b d"), "secret-pw\n", "Invalid username: 3 to 20 letters, digits, _, . or -."),
        (("create", "ab"), "secret-pw\n", "Invalid username: 3 to 20 letters, digits, _, . or -."),
        (("create", "carol"), "short\n", "Password must be at least 6 characters."),
        (("create", "carol"), "", "Password must be at least 6 characters."),
        (
            ("create", "carol"),
            "é" * 40 + "\n",
            "Invalid input: Password must be at most 72 bytes in UTF-8.",
        ),
        (
            ("create", "carol"),
            "x" * 5000,
            "Invalid input: Password must be at most 72 bytes in UTF-8.",
        ),
        (("create", "alice"), "secret-pw\n", "Username already exists"),
        (("promote", "nobody"), "", "User not found: nobody"),
        (("ban", "nobody"), "", "User not found: nobody"),
        (("reset-password", "nobody"), "", "User not found: nobody"),
        (("demote", "alice"), "", "The last admin cannot be demoted, banned or deleted."),
        (("ban", "alice"), "", "The last admin cannot be demoted, banned or deleted."),
        (("list", "--search", "x" * 65), "", "--search must be at most 64 characters."),
    ],
)
def test_refusals_exit_1_with_one_line(
    tmp_path: Path, args: tuple[str, ...], stdin: str, message: str
) -> None:
    ok(run_cli(tmp_path, "create", "alice", "--admin", stdin="secret-pw\n"))
    refused(run_cli(tmp_path, *args, stdin=stdin), message)
    assert rows(tmp_path) == {"alice": (1, 0, 0)}  # nothing changed


def test_a_password_is_never_an_argument(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "create", "alice", "--password", "secret-pw")
    assert result.returncode == 2  # a usage error: there is no such option
    assert "unrecognized arguments" in result.stderr
    assert not (tmp_path / "test.db").exists() or rows(tmp_path) == {}


def test_the_prompt_asks_twice_and_refuses_a_mismatch() -> None:
    terminal = io.StringIO()
    terminal.isatty = lambda: True  # type: ignore[method-assign]
    answers = iter(["secret-pw", "secret-pw"])
    prompts: list[str] = []

    def prompt(text: str) -> str:
        prompts.append(text)
        return next(answers)

    assert read_new_password(terminal, prompt) == "secret-pw"
    assert prompts == ["Password: ", "Repeat password: "]
    answers = iter(["secret-pw", "secret-pX"])
    with pytest.raises(BadRequest, match=MISMATCH):
        read_new_password(terminal, prompt)

    def closed(text: str) -> str:
        raise EOFError

    with pytest.raises(BadRequest, match=NO_PASSWORD):
        read_new_password(terminal, closed)
    # Not a terminal: the first line, without its line ending, and never a prompt.
    piped = io.StringIO("first line\r\nsecond\n")
    assert read_new_password(piped, closed) == "first line"


async def test_a_reset_password_logs_in_and_a_ban_reaches_a_running_server(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, revocation_refresh_seconds=0.2)

    async def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return await trio.to_thread.run_sync(lambda: run_cli(tmp_path, *args, stdin=stdin))

    async with running_server(settings) as server:
        token = await server.register("bob")
        ok(await cli("create", "alice", "--admin", stdin="secret-pw\n"))
        reset = ok(await cli("reset-password", "bob")).splitlines()
        assert reset[0].startswith("new password for bob (shown once): ")
        password = reset[0].rsplit(" ", 1)[1]
        assert len(password) == 16
        assert reset[1] == "bob is signed out everywhere"
        old = await server.client.post(
            "/api/auth/login", json={"username": "bob", "password": "secret-pw"}
        )
        assert old.status_code == 401
        new = await server.client.post(
            "/api/auth/login", json={"username": "bob", "password": password}
        )
        assert new.status_code == 200, new.text
        fresh = new.json()["token"]
        # The registration's token is signed out by the reset from the server's next reload
        # on (reloading here just makes the check deterministic).
        await server.handle.state.revoker.refresh()
        assert (await server.get_as(token, "/api/user/data")).status_code == 401
        async with AsyncExitStack() as stack:
            socket = await live_socket(stack, server, fresh)
            ok(await cli("ban", "bob"))
            assert await closed_with(socket) == (4100, "Invalid or expired token")
        assert (await server.get_as(fresh, "/api/user/data")).status_code == 401
        login = await server.client.post(
            "/api/auth/login", json={"username": "bob", "password": password}
        )
        assert (login.status_code, login.json()) == (
            403,
            {"message": "This account has been banned."},
        )
