"""http/perimeter.py: the checks every door makes, with the wording the contract pins."""

from __future__ import annotations

from pathlib import Path

import pytest

from dramaverse.config import RateLimit
from dramaverse.errors import Forbidden, PayloadTooLarge, TooManyRequests, Unauthorized
from dramaverse.http.auth import TokenService
from dramaverse.http.perimeter import Perimeter
from dramaverse.http.security import CorsPolicy, RateLimiter
from tests.conftest import TEST_SECRET, make_settings


def perimeter(tmp_path: Path, *, limit: int = 2, trust_proxy: int = 0) -> Perimeter:
    settings = make_settings(tmp_path, max_body_bytes=100, trust_proxy=trust_proxy)
    return Perimeter(
        settings,
        CorsPolicy(["http://good.example"]),
        TokenService(TEST_SECRET, 60),
        None,
        RateLimiter(RateLimit(limit, 900), clock=lambda: 0.0),
    )


def test_origin(tmp_path: Path) -> None:
    checks = perimeter(tmp_path)
    checks.check_origin(None)  # not a browser
    checks.check_origin("http://good.example")
    with pytest.raises(Forbidden, match=r"^Origin http://evil\.example is not allowed by CORS"):
        checks.check_origin("http://evil.example")


def test_token(tmp_path: Path) -> None:
    checks = perimeter(tmp_path)
    token = checks.tokens.issue(7, "alice")
    assert checks.user_from_header(f"Bearer {token}").id == 7
    assert checks.user_from_token(token).username == "alice"
    for header in (None, "", "Basic x", "Bearer nonsense"):
        with pytest.raises(Unauthorized):
            checks.user_from_header(header)


def test_rate_limit_counts_per_address(tmp_path: Path) -> None:
    checks = perimeter(tmp_path, limit=2)
    message = checks.user_limit_message()
    assert message == "Too many requests, please try again after 15 minutes."
    for _ in range(2):
        checks.refuse_over_limit(checks.spend_user_limit("1.2.3.4"), message)
    with pytest.raises(TooManyRequests, match="15 minutes"):
        checks.refuse_over_limit(checks.spend_user_limit("1.2.3.4"), message)
    checks.refuse_over_limit(checks.spend_user_limit("5.6.7.8"), message)  # its own bucket


def test_forwarded_for_only_behind_a_trusted_proxy(tmp_path: Path) -> None:
    assert perimeter(tmp_path).address("10.0.0.1", "9.9.9.9") == "10.0.0.1"
    assert perimeter(tmp_path, trust_proxy=1).address("10.0.0.1", "9.9.9.9") == "9.9.9.9"


def test_body_size(tmp_path: Path) -> None:
    checks = perimeter(tmp_path)
    checks.check_declared_length("100")
    checks.check_declared_length("not a number")  # h11 refuses those before us
    checks.check_received(100)
    with pytest.raises(PayloadTooLarge, match=r"^Request body too large \(limit 100 bytes\)\.$"):
        checks.check_declared_length("101")
    with pytest.raises(PayloadTooLarge):
        checks.check_received(101)
