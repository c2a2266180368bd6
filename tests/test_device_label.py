"""The device label of a session and the bounds of what a client says about itself."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dramaverse.domain.sessions import (
    MAX_DEVICE_LENGTH,
    bounded,
    device_label,
    is_session_id,
    new_session_id,
)


@pytest.mark.parametrize(
    ("user_agent", "label"),
    [
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0",
            "Firefox on Windows",
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/126.0.0.0 Safari/537.36",
            "Chrome on Windows",
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/126.0.0.0 Safari/537.36 Edg/126.0.2592.87",
            "Edge on Windows",
        ),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like "
            "Gecko) Version/17.5 Safari/605.1.15",
            "Safari on macOS",
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
            "like Gecko) CriOS/126.0.6478.54 Mobile/15E148 Safari/604.1",
            "Chrome on iOS",
        ),
        (
            "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
            "Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
            "Safari on iPadOS",
        ),
        (
            "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/126.0.6478.71 Mobile Safari/537.36",
            "Chrome on Android",
        ),
        (
            "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
            "SamsungBrowser/25.0 Chrome/121.0.0.0 Mobile Safari/537.36",
            "Samsung Internet on Android",
        ),
        (
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/126.0.0.0 Safari/537.36 OPR/111.0.0.0",
            "Opera on Linux",
        ),
        ("Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) Chrome/126.0.0.0", "Chrome on ChromeOS"),
        ("Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:127.0) Firefox/127.0", "Firefox on Linux"),
        ("curl/8.5.0", "curl"),
        ("python-httpx/0.27.0", "Python"),
        ("node", "Node.js"),
        ("Mozilla/5.0 (Windows NT 10.0)", "Windows"),
        ("", "Unknown device"),
        (None, "Unknown device"),
        ("\x00\x01\x02", "Unknown device"),
        ("TotallyNewBrowser/1.0", "Unknown device"),
    ],
)
def test_device_labels(user_agent: str | None, label: str) -> None:
    assert device_label(user_agent) == label


@given(st.text(max_size=2000))
def test_any_user_agent_gets_a_short_label(user_agent: str) -> None:
    label = device_label(user_agent)
    assert 0 < len(label) <= MAX_DEVICE_LENGTH
    assert label == label.strip()


def test_bounded_strips_control_characters_and_cuts() -> None:
    assert bounded(None, 10) == ""
    assert bounded("a\x00b\nc\x7fd", 10) == "a b c d"
    assert bounded("x" * 100, 10) == "x" * 10
    assert len(bounded("\x01" * 10_000 + "tail", 512)) <= 512


def test_session_ids_are_random_and_have_one_shape() -> None:
    ids = {new_session_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(is_session_id(sid) and len(sid) == 32 for sid in ids)
    for bad in ("", "short", "x" * 65, "a" * 15 + "/", "é" * 20, None, 123, "a" * 20 + "\n"):
        assert not is_session_id(bad)
