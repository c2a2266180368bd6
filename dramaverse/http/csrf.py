"""CSRF protection of cookie-authenticated requests: the Origin rule and a signed double-submit.

A browser attaches the auth cookie (``cookies.py``) to every request to this server, whichever
page starts it, so a request that the cookie alone authenticates says nothing about who made
it. Such a request that changes state (any method but GET, HEAD and OPTIONS) must show two
things, as OWASP's CSRF Prevention Cheat Sheet describes:

1. **its origin**: the ``Origin`` header or, when a browser left it out, the origin of the
   ``Referer``, is one of ``CORS_ALLOWED_ORIGINS``. Neither header: refused (a browser sends
   ``Origin`` with every cross-origin request and with same-origin writes).
2. **a double-submitted token**: the ``X-CSRF-Token`` header equals the CSRF cookie, and that
   value is signed for this very auth token: ``<nonce>.<mac>`` with ``mac`` the HMAC-SHA256 of
   the nonce and the token under a key derived from the server secret. A page on another site
   can neither read the cookie nor send the header without a CORS preflight we refuse; a
   cookie planted by a sibling subdomain (cookie tossing) carries no valid signature for the
   victim's token.

A request with an ``Authorization`` header never comes here: browsers do not add a Bearer
token by themselves, so it is its own proof.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from urllib.parse import urlsplit

from dramaverse.errors import Forbidden
from dramaverse.http.security import CorsPolicy

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "X-CSRF-Token"
NONCE_BYTES = 16
# A nonce of 16 bytes and a SHA-256 MAC, both base64url without padding.
_SHAPE = re.compile(r"[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}")
MAX_REFERER_CHARS = 8192
KEY_LABEL = b"dramaverse csrf v1"

ORIGIN_REQUIRED = (
    "Cookie-authenticated requests that change state need an Origin (or Referer) header "
    "from an allowed origin."
)
CSRF_MISSING = (
    f"CSRF token missing: send the CSRF cookie's value in the {CSRF_HEADER} header "
    "(or authenticate with an Authorization: Bearer header)."
)
CSRF_INVALID = "CSRF token invalid: log in again to get a fresh one."


class CsrfSigner:
    """Issues and checks CSRF values bound to one auth token (the JWT string)."""

    def __init__(self, secret: str) -> None:
        # Its own key: a CSRF MAC is never a valid signature of anything else we sign.
        self._key = hmac.new(secret.encode("utf-8"), KEY_LABEL, hashlib.sha256).digest()

    def issue(self, token: str) -> str:
        nonce = secrets.token_urlsafe(NONCE_BYTES)
        return f"{nonce}.{self._mac(nonce, token)}"

    def valid(self, value: str, token: str) -> bool:
        """Whether ``value`` was issued for ``token`` (any string in, never an exception)."""
        if not _SHAPE.fullmatch(value):
            return False
        nonce, _, mac = value.partition(".")
        return hmac.compare_digest(mac, self._mac(nonce, token))

    def _mac(self, nonce: str, token: str) -> str:
        message = nonce.encode("ascii") + b"." + token.encode("utf-8", "replace")
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def origin_of(origin: str | None, referer: str | None) -> str | None:
    """The request's origin: its ``Origin`` header, else its ``Referer``'s scheme and host."""
    if origin is not None:
        return origin
    if referer is None or len(referer) > MAX_REFERER_CHARS:
        return None
    try:
        parts = urlsplit(referer)
    except ValueError:  # an unbalanced IPv6 bracket, say
        return None
    host = parts.netloc.rpartition("@")[2]  # never the user-info part
    if parts.scheme not in ("http", "https") or not host:
        return None
    return f"{parts.scheme}://{host}"


def check_cookie_request(
    cors: CorsPolicy,
    signer: CsrfSigner,
    *,
    method: str,
    origin: str | None,
    referer: str | None,
    csrf_header: str | None,
    csrf_cookie: str | None,
    token: str,
) -> None:
    """Refuse (403) a state-changing request authenticated by the cookie ``token`` unless it
    passes both rules of the module docstring; safe methods pass."""
    if method in SAFE_METHODS:
        return
    source = origin_of(origin, referer)
    if source is None or not cors.allows(source):
        raise Forbidden(ORIGIN_REQUIRED)
    if not csrf_header or not csrf_cookie:
        raise Forbidden(CSRF_MISSING)
    # Equal to the cookie (compared in constant time, as bytes: the values may be anything)
    # and signed for this token.
    same = hmac.compare_digest(
        csrf_header.encode("utf-8", "replace"), csrf_cookie.encode("utf-8", "replace")
    )
    if not same or not signer.valid(csrf_header, token):
        raise Forbidden(CSRF_INVALID)
