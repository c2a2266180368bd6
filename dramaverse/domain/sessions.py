"""Sign-in sessions, as data: ids, bounds and the device label a session is shown with.

A session is one login or registration (docs/auth.md). Its id is random and unguessable (it is
also a capability: whoever knows it may not do anything with it alone, but it names the session
in tokens and in ``DELETE /api/user/sessions/<id>``), so it comes from :mod:`secrets`. What the
client tells us about itself (the User-Agent, the address it came from) is stored bounded and
without control characters, and shown as a short label such as "Firefox on Windows".
"""

from __future__ import annotations

import re
import secrets
from typing import Final

SESSION_ID_BYTES: Final = 24  # 192 random bits, 32 URL-safe characters
SESSION_ID_RULE: Final = "a session id is 16 to 64 letters, digits, - or _"
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
MAX_USER_AGENT_LENGTH: Final = 512
MAX_ADDRESS_LENGTH: Final = 64
MAX_DEVICE_LENGTH: Final = 64
UNKNOWN_DEVICE: Final = "Unknown device"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def new_session_id() -> str:
    return secrets.token_urlsafe(SESSION_ID_BYTES)


def is_session_id(value: object) -> bool:
    """Whether ``value`` has the shape of a session id (not whether one exists)."""
    return isinstance(value, str) and _SESSION_ID.fullmatch(value) is not None


def bounded(text: str | None, limit: int) -> str:
    """``text`` without control characters, cut to ``limit`` characters ('' for None)."""
    if not text:
        return ""
    return _CONTROL.sub(" ", text[: limit * 2])[:limit].strip()


# (marker, name) in the order they must be tried: Edge and Opera also say "Chrome", Chrome also
# says "Safari", Android also says "Linux", iOS browsers say "Mac OS X".
_BROWSERS: Final = (
    (("Edg/", "Edge/", "EdgA/", "EdgiOS/"), "Edge"),
    (("OPR/", "Opera"), "Opera"),
    (("SamsungBrowser/",), "Samsung Internet"),
    (("Firefox/", "FxiOS/"), "Firefox"),
    (("Chrome/", "CriOS/", "Chromium/"), "Chrome"),
    (("Safari/",), "Safari"),
    (("curl/",), "curl"),
    (("node", "undici"), "Node.js"),
    (("python-", "aiohttp", "httpx"), "Python"),
)
_SYSTEMS: Final = (
    (("Windows",), "Windows"),
    (("Android",), "Android"),
    (("iPad",), "iPadOS"),
    (("iPhone", "iPod"), "iOS"),
    (("CrOS",), "ChromeOS"),
    (("Macintosh", "Mac OS X"), "macOS"),
    (("Linux", "X11"), "Linux"),
)


def _first(user_agent: str, table: tuple[tuple[tuple[str, ...], str], ...]) -> str | None:
    for markers, name in table:
        if any(marker in user_agent for marker in markers):
            return name
    return None


def device_label(user_agent: str | None) -> str:
    """A short human label for a User-Agent: "Firefox on Windows", "Safari on iOS", "curl",
    or "Unknown device". Pure and total: any text gives a label of at most
    ``MAX_DEVICE_LENGTH`` characters."""
    text = bounded(user_agent, MAX_USER_AGENT_LENGTH)
    browser = _first(text, _BROWSERS)
    system = _first(text, _SYSTEMS)
    if browser and system:
        return f"{browser} on {system}"
    return browser or system or UNKNOWN_DEVICE
