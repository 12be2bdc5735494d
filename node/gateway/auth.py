"""Who is calling, and whether they may call now: bearer API keys and per-key rate limits.

A key is known by its id (a short SHA-256 of the key) in the task database and
in logs; the key itself is only compared, in constant time. With no keys
configured every caller is the one local key `local` (the gateway then only
listens on loopback, see GatewaySettings), and rate limits count per client
address instead: a token costs nothing to change. The bucket table is bounded.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Callable

from workflows.allowance import Allowance

LOCAL_KEY_ID = "local"
MAX_BUCKETS = 10_000


class AuthError(Exception):
    """The request has no API key or an unknown one."""


def key_id(key: str) -> str:
    """The name a key is stored and logged under."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


class ApiKeys:
    """The configured bearer keys."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [(key.encode("utf-8"), key_id(key)) for key in keys]

    @property
    def required(self) -> bool:
        """Whether requests need an API key (some are configured)."""
        return bool(self._keys)

    def identify(self, token: str | None) -> str:
        """The id of the key `token`; AuthError if it is missing or unknown (when keys are configured)."""
        if not self._keys:
            return LOCAL_KEY_ID
        if not token:
            raise AuthError("missing API key: send 'Authorization: Bearer <key>'")
        given = token.encode("utf-8")
        found = None
        for key, ident in self._keys:  # compare against every key: timing does not tell which matched
            if hmac.compare_digest(given, key):
                found = ident
        if found is None:
            raise AuthError("unknown API key")
        return found

    def limit_key(self, ident: str, client_host: str | None) -> str:
        """What a caller's rate limit counts by: its key, or without keys its address."""
        return ident if self._keys else f"address {client_host or 'unknown'}"


class RateLimiter:
    """A token bucket (workflows/allowance.py) per key: `burst` requests at once, refilled at `per_minute` a minute.

    At most `max_buckets` are kept: past it the least recently used goes (it is
    the one most likely refilled to a full bucket, the same as no bucket).
    """

    def __init__(
        self,
        per_minute: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_buckets: int = MAX_BUCKETS,
    ) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._clock = clock
        self._max_buckets = max_buckets
        self._buckets: OrderedDict[str, Allowance] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        """Spend one request of `key`: 0.0 if allowed, else the seconds until it would be."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = Allowance(self._rate, self._burst, self._clock)
            while len(self._buckets) > self._max_buckets:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        left = bucket.left()
        if left >= 1.0:
            bucket.take(1.0)
            return 0.0
        return (1.0 - left) / self._rate
