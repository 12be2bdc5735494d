"""uvicorn's log lines any HTTP client can cause: each kind at most once a window, saying how many were not logged.

uvicorn (its h11 protocol, the one `HttpServer` runs) logs a warning on its `uvicorn.error` logger for each
request it cannot parse ("Invalid HTTP request received.": garbage, a TLS hello, an HTTP/2 preface, a bad
header, a bad body framing, a head past h11's 16 KiB) and two for each upgrade it does not serve ("Unsupported
upgrade request." and "No supported WebSocket library detected. ..."; nothing here serves WebSockets). Any
client can send those at line rate: each request a line to the log's disk and its CPU. `ClientNoiseFilter`
lets the first of each kind through a window and drops the rest, counting them; the next one through says how
many it stands for. Every other record of the logger (an app's exception, a failed start) passes untouched.
"""

from __future__ import annotations

import logging
import time

UVICORN_LOGGER = "uvicorn.error"
CLIENT_NOISE_WINDOW_S = 10.0
# The start of each message of uvicorn's that a client alone decides to cause (uvicorn 0.3x, h11_impl.py).
CLIENT_NOISE = (
    "Invalid HTTP request received.",
    "Unsupported upgrade request.",
    "No supported WebSocket library detected.",
)


class ClientNoiseFilter(logging.Filter):
    """At most one record of each of CLIENT_NOISE's kinds a `window_s`, each saying how many were held back."""

    def __init__(self, window_s: float = CLIENT_NOISE_WINDOW_S) -> None:
        super().__init__()
        self.window_s = window_s
        self._last: dict[str, float] = {}
        self._held_back: dict[str, int] = {}
        self._seen: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """Pass any record but CLIENT_NOISE's; of those, one a window per kind, with its counts."""
        kind = next((kind for kind in CLIENT_NOISE if str(record.msg).startswith(kind)), None)
        if kind is None:
            return True
        self._seen[kind] = seen = self._seen.get(kind, 0) + 1
        now = time.monotonic()
        if now - self._last.get(kind, -self.window_s) < self.window_s:
            self._held_back[kind] = self._held_back.get(kind, 0) + 1
            return False
        self._last[kind] = now
        held_back = self._held_back.pop(kind, 0)
        record.msg = f"{kind} ({held_back} more like it not logged since the last; {seen} since the start)"
        record.args = ()
        return True


def limit_client_noise() -> ClientNoiseFilter:
    """Put a `ClientNoiseFilter` on uvicorn's logger, once per process; the one there."""
    logger = logging.getLogger(UVICORN_LOGGER)
    for existing in logger.filters:
        if isinstance(existing, ClientNoiseFilter):
            return existing
    installed = ClientNoiseFilter()
    logger.addFilter(installed)
    return installed
