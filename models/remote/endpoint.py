"""One OpenAI-compatible engine: its pooled HTTP client, its API key, and calls with retries.

The API key comes from the registry entry (`api_key`, a SecretStr) or the
environment variable it names (`api_key_env`). It is set as a header of this
endpoint's own client only, whose base URL is the configured one: requests go
to that host over that scheme, redirects are not followed, and the key never
appears in a log line or an error text.

429 and 5xx answers and transport errors (connection refused or reset) are
retried with exponential backoff (honouring `Retry-After`) for at most
`retry_seconds`; then the call fails with EngineUnavailableError, a transient
error. Other 4xx answers fail at once with EngineRequestError. Cancelling the
awaiting task closes the HTTP request (httpx drops the connection).

Whatever the engine sends is bounded: an answer is read as a stream and dropped
at `max_response_bytes` (decoded; EngineResponseTooLargeError), and one exchange,
connect to last byte, gets `request_timeout` seconds of wall clock in all (the
health check HEALTH_TIMEOUT): an engine trickling bytes cannot hold a request
or the health loop longer than that.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog

from models.registry import ModelSpec
from models.requests import ModelError, ModelLoadError

if TYPE_CHECKING:
    import httpx

log = structlog.get_logger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
FIRST_BACKOFF = 0.25
MAX_BACKOFF = 8.0
HEALTH_TIMEOUT = 5.0
# A chat answer of the largest max_tokens is tens of KiB, a hosted service's /models a few MiB.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
ERROR_DETAIL_BYTES = 300


class EngineUnavailableError(ModelError):
    """The engine is down or overloaded (transport error, 429 or 5xx) after retrying; transient."""


class EngineRequestError(ModelError):
    """The engine refused the request (a 4xx other than 429) or answered something unreadable."""


class EngineResponseTooLargeError(EngineRequestError):
    """The engine's answer passed `max_response_bytes`; reading stopped there."""


class _TooLarge(Exception):
    """Internal: the body passed the cap (turned into a named error by the caller)."""


def resolve_api_key(spec: ModelSpec, environ: dict[str, str] | None = None) -> str | None:
    """The entry's API key: its own `api_key`, else the variable `api_key_env` names."""
    if spec.api_key is not None:
        return spec.api_key.get_secret_value()
    if spec.api_key_env is None:
        return None
    value = (os.environ if environ is None else environ).get(spec.api_key_env)
    if not value:
        raise ModelLoadError(f"model {spec.name}: environment variable {spec.api_key_env} (its api_key_env) is not set")
    return value


class Endpoint:
    """The HTTP side of one remote model: pooled keep-alive connections to `base_url`."""

    def __init__(
        self,
        spec: ModelSpec,
        api_key: str | None,
        max_connections: int,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        assert spec.base_url is not None
        self.model_name = spec.name
        self.base_url = spec.base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        self.host = parts.netloc  # for log lines: scheme + host, never the key
        self._log_fields = {"model": spec.name, "engine": self.host}
        self.retry_seconds = spec.retry_seconds
        self.request_timeout = spec.request_timeout
        self.max_response_bytes = max_response_bytes
        if api_key and parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            log.warning(
                "remote engine key sent over plain http",
                **self._log_fields,
                hint="use https:// unless the network between node and engine is private",
            )
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # httpx loads with the first endpoint: an execution process serving a local model never needs it.
        import httpx

        self._client = httpx.AsyncClient(
            base_url=self.base_url + "/",
            headers=headers,
            follow_redirects=False,
            timeout=httpx.Timeout(spec.request_timeout, connect=min(10.0, spec.request_timeout)),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections, keepalive_expiry=60.0
            ),
            trust_env=False,  # no proxy from the environment sees the key
        )

    async def post(self, path: str, payload: dict[str, Any], deadline: float | None = None) -> dict[str, Any]:
        """POST `payload` to `path` (relative to base_url) and return the JSON answer, retrying transient failures.

        `deadline` (a time.monotonic() value) bounds the retries as well.
        """
        started = time.monotonic()
        budget_end = started + self.retry_seconds
        if deadline is not None:
            budget_end = min(budget_end, deadline)
        attempt = 0
        while True:
            attempt += 1
            problem, retry_after = await self._attempt(path, payload, deadline)
            if isinstance(problem, dict):
                return problem
            backoff = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
            if retry_after is not None:
                backoff = max(backoff, min(retry_after, MAX_BACKOFF))
            if time.monotonic() + backoff > budget_end:
                elapsed = time.monotonic() - started
                log.warning(
                    "remote engine unavailable",
                    **self._log_fields,
                    problem=problem,
                    attempts=attempt,
                    seconds=round(elapsed, 2),
                )
                raise EngineUnavailableError(
                    f"the engine serving {self.model_name} is unavailable ({problem}; "
                    f"{attempt} attempt{'s' if attempt > 1 else ''} in {elapsed:.1f} s)"
                )
            log.info(
                "remote engine retry", **self._log_fields, problem=problem, attempt=attempt, backoff=round(backoff, 2)
            )
            await asyncio.sleep(backoff)

    async def _attempt(
        self, path: str, payload: dict[str, Any], deadline: float | None
    ) -> tuple[dict[str, Any] | str, float | None]:
        """The JSON answer, or (a transient problem's description, Retry-After seconds)."""
        import httpx  # loaded by __init__ already: a lookup

        seconds = self.request_timeout
        if deadline is not None:
            seconds = max(0.0, min(seconds, deadline - time.monotonic()))
        try:
            async with asyncio.timeout(seconds):
                status, body, retry_after = await self._exchange("POST", path, json=payload)
        except TimeoutError:
            return f"no complete answer within {seconds:g} s", None
        except httpx.TimeoutException:
            return f"no answer within {self._client.timeout.read:g} s", None
        except httpx.TransportError as exc:
            return f"connection failed: {type(exc).__name__}", None
        except _TooLarge:
            raise self._too_large(f"POST {path}") from None
        if status in RETRY_STATUSES:
            return f"HTTP {status}", retry_after
        if status >= 400:
            # The engine's own message may quote the prompt: only a debug log gets it, the error text never.
            log.warning("remote engine refused the request", **self._log_fields, status=status)
            log.debug("remote engine's refusal", **self._log_fields, detail=body[:4096].decode("utf-8", "replace"))
            raise EngineRequestError(f"the engine serving {self.model_name} refused the request (HTTP {status})")
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise EngineRequestError(
                f"the engine serving {self.model_name} answered something other than a JSON object"
            )
        return answer, None

    async def get_json(self, path: str, timeout: float = HEALTH_TIMEOUT) -> Any:
        """GET `path` once (no retries), all of it within `timeout` s and `max_response_bytes`;
        raises EngineUnavailableError on any failure (EngineResponseTooLargeError past the cap)."""
        import httpx  # loaded by __init__ already: a lookup

        try:
            async with asyncio.timeout(timeout):
                status, body, _ = await self._exchange("GET", path, timeout=timeout)
            if status >= 400:
                raise EngineUnavailableError(
                    f"the engine serving {self.model_name} did not answer GET {path}: HTTP {status}"
                )
            return json.loads(body)
        except _TooLarge:
            raise self._too_large(f"GET {path}") from None
        except TimeoutError:
            raise EngineUnavailableError(
                f"the engine serving {self.model_name} did not answer GET {path} within {timeout:g} s"
            ) from None
        except (httpx.HTTPError, ValueError) as exc:
            raise EngineUnavailableError(
                f"the engine serving {self.model_name} did not answer GET {path}: {type(exc).__name__}"
            ) from None

    async def _exchange(self, method: str, path: str, **request: Any) -> tuple[int, bytes, float | None]:
        """(status, body, Retry-After) with the body read as a stream: raises _TooLarge past the cap.

        An error answer's body is read only as far as a log line needs.
        """
        async with self._client.stream(method, path, **request) as response:
            limit = self.max_response_bytes if response.status_code < 400 else ERROR_DETAIL_BYTES
            declared = response.headers.get("content-length", "")
            if response.status_code < 400 and declared.isdigit() and int(declared) > limit:
                raise _TooLarge
            body = bytearray()
            async for chunk in response.aiter_bytes():  # decoded: a compressed bomb counts as what it inflates to
                body += chunk
                if len(body) > limit:
                    if response.status_code < 400:
                        raise _TooLarge
                    del body[limit:]
                    break
            return response.status_code, bytes(body), _retry_after(response)

    def _too_large(self, request: str) -> EngineResponseTooLargeError:
        log.warning(
            "remote engine answer too large", **self._log_fields, request=request, limit=self.max_response_bytes
        )
        return EngineResponseTooLargeError(
            f"the engine serving {self.model_name} answered {request} with more than {self.max_response_bytes} bytes"
        )

    async def close(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
