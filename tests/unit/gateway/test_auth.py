"""API keys and the per-key rate limiter of the gateway."""

from __future__ import annotations

import pytest

from node.gateway.auth import LOCAL_KEY_ID, ApiKeys, AuthError, RateLimiter, key_id

KEY = "test-key-0123456789abcdef"


async def test_rate_limiter_refills_and_keys_are_compared_exactly() -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=60, burst=2, clock=lambda: now[0])
    assert [limiter.take("k"), limiter.take("k")] == [0.0, 0.0]
    assert limiter.take("k") == pytest.approx(1.0)
    assert limiter.take("other") == 0.0  # buckets are per key
    now[0] += 1.0
    assert limiter.take("k") == 0.0
    keys = ApiKeys([KEY])
    assert keys.identify(KEY) == key_id(KEY) != KEY
    for token in (None, "", KEY[:-1], KEY + "x"):
        with pytest.raises(AuthError):
            keys.identify(token)
    assert ApiKeys([]).identify(None) == LOCAL_KEY_ID
