"""The HTTP routes Dria's Python SDK calls, authenticated by `x-api-key`.

    GET  /health               200 (401 for an unknown key)
    GET  /rpc/get_alive_peers  200 {"data": {"results": [heartbeat items]}}
    GET  /rpc/results          200 {"data": {"results": [result items]}}: each served once per key
    POST /rpc/task             {"value": {"payload": "<base64 task>"}} -> 200 {"data": {"taskId": ...}}

The SDK's poll loop dies for good on any GET answer but 200 with `data.results`
or 401, so these GETs answer nothing else: a rate-limited or failing GET gets
an empty list. With no API keys configured every token is accepted and each
token has its own result queue (rate limits then count per client address).
`POST /rpc/task` past the pending caps answers 429, like a rate-limited POST (the app's
TooManyPendingError handler; the SDK counts any answer but 401 as posted).
"""

# No `from __future__ import annotations`: FastAPI evaluates the route signatures.
import math
from typing import Annotated, Any

import structlog
from fastapi import Depends, FastAPI, HTTPException, Request, Security
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, Field

from node.gateway.auth import ApiKeys, AuthError, RateLimiter, key_id
from node.gateway.database import DatabaseError
from node.gateway.dria_sdk.service import SdkPayloadError, SdkService
from node.gateway.service import RETRY_AFTER
from node.publisher.client import ClientError

log = structlog.get_logger(__name__)


class PostedValue(BaseModel):
    """A task as the SDK posts it."""

    payload: str = Field(description="Standard base64 of the task JSON")


class PostedTask(BaseModel):
    """What the SDK posts."""

    value: PostedValue


def _results(items: list[str]) -> dict[str, Any]:
    return {"data": {"results": items}}


def add_sdk_routes(app: FastAPI, sdk: SdkService, keys: ApiKeys, limiter: RateLimiter) -> None:
    """Add the SDK's routes to the gateway app."""
    header = APIKeyHeader(name="x-api-key", auto_error=False, description="An API key (any token without api_keys)")

    async def sdk_key(token: Annotated[str | None, Security(header)]) -> str:
        """The caller's queue: its key id (with no keys configured, one queue per token)."""
        if not keys.required:
            return "local" if not token else f"local-{key_id(token)}"
        try:
            return keys.identify(token)
        except AuthError as exc:
            raise HTTPException(401, str(exc)) from None

    def limit_key(request: Request, key: str) -> str:
        """Rate limits count by key, or without keys by client address (a new token is free)."""
        return keys.limit_key(key, request.client.host if request.client else None)

    @app.get("/health", tags=["dria-sdk"])
    async def health(key: Annotated[str, Depends(sdk_key)]) -> dict[str, str]:
        """200 for a known key (the SDK's health check)."""
        return {"status": "ok"}

    @app.get("/rpc/get_alive_peers", tags=["dria-sdk"])
    async def alive_peers(request: Request, key: Annotated[str, Depends(sdk_key)]) -> dict[str, Any]:
        """The latest signed heartbeat of each live node, as the node sent it."""
        if limiter.take(limit_key(request, key)) > 0:
            return _results([])
        try:
            return _results(sdk.alive_peers(key))
        except Exception:  # any other answer would stop the SDK's poll loop for good
            log.exception("listing peers failed")
            return _results([])

    @app.get("/rpc/results", tags=["dria-sdk"])
    async def results(request: Request, key: Annotated[str, Depends(sdk_key)]) -> dict[str, Any]:
        """This key's result envelopes not served before, each signed by the node its task picked."""
        if limiter.take(limit_key(request, key)) > 0:
            return _results([])
        try:
            return _results(sdk.results(key))
        except Exception:
            log.exception("reading results failed", key_id=key)
            return _results([])

    @app.post("/rpc/task", tags=["dria-sdk"])
    async def post_task(request: Request, posted: PostedTask, key: Annotated[str, Depends(sdk_key)]) -> dict[str, Any]:
        """Publish the task to the node it picked; the same payload again is published once."""
        wait = limiter.take(limit_key(request, key))
        if wait > 0:
            raise HTTPException(429, "rate limit exceeded", headers={"Retry-After": str(math.ceil(wait))})
        try:
            task_id = await sdk.post(key, posted.value.payload)
        except SdkPayloadError as exc:
            raise HTTPException(422, f"value.payload: {exc}") from None
        except (ClientError, DatabaseError) as exc:
            log.error("sdk task not published", error=str(exc))
            raise HTTPException(
                503, "the gateway cannot publish tasks right now", headers={"Retry-After": str(RETRY_AFTER)}
            ) from None
        return {"data": {"taskId": task_id}}
