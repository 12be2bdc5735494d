"""The OpenAI routes on the gateway app, authenticated like `/v1/tasks` (Authorization: Bearer).

    POST /v1/chat/completions  OpenAI's chat completion (or, with `stream`, its server-sent chunks)
    GET  /v1/models            the models live nodes advertise, with node counts
    POST /v1/embeddings        404: no node serves an embedding model

Every error of these paths, the key check's and the body validation's included, is OpenAI's
`{"error": {"message", "type", "param", "code"}}`.
"""

# No `from __future__ import annotations`: FastAPI evaluates the route signatures.
import inspect
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import structlog
from fastapi import Depends, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from node.gateway.openai_api.errors import OpenAIError, is_openai_path
from node.gateway.openai_api.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    EmbeddingRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
)
from node.gateway.openai_api.service import OpenAIService, usage_of
from node.gateway.openai_api.stream import ChatStream, ClientGoneError, finish_reason, unless_gone
from node.gateway.openai_api.translate import assistant_message
from node.gateway.validation import first_error

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (400, 401, 404, 429, 502, 504)}
Handler = Callable[[Request, Any], Response | Awaitable[Response]]  # Starlette takes both kinds
log = structlog.get_logger(__name__)


def add_openai_routes(app: FastAPI, service: OpenAIService, caller: Callable[..., Awaitable[str]]) -> None:
    """Add the OpenAI routes; `caller` is the app's key check and rate limit (a FastAPI dependency)."""
    _route_errors(app)

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        responses={**_ERRORS, 200: {"content": {"text/event-stream": {}}}},
        tags=["openai"],
    )
    async def chat_completions(
        request: ChatCompletionRequest, key: Annotated[str, Depends(caller)], http: Request
    ) -> ChatCompletion | Response:
        """A chat completion, run as a one-step workflow task by a node of the network."""
        prepared = await service.prepare(request, key)
        try:
            if request.stream:
                include_usage = request.stream_options is not None and request.stream_options.include_usage
                return await ChatStream(service, key, prepared, request.model, include_usage).response(http)
            result = await unless_gone(http, service.run(key, prepared))
        except ClientGoneError:
            log.info("chat completion abandoned: the caller disconnected", key_id=key)
            return Response(status_code=499)  # nobody reads it: nginx's "client closed request"
        usage = usage_of(result, prepared.max_tokens)
        return ChatCompletion(
            id=f"chatcmpl-{secrets.token_urlsafe(16)}",
            created=int(time.time()),
            model=result.model,
            choices=[
                Choice(
                    message=assistant_message(result.text, prepared.tools),
                    finish_reason=finish_reason(
                        bool(prepared.tools), usage.completion_tokens, prepared.max_tokens, result.finish_reason
                    ),
                )
            ],
            usage=usage,
            system_fingerprint=result.node,
        )

    @app.get("/v1/models", response_model=ModelList, responses=_ERRORS, tags=["openai"])
    async def models(key: Annotated[str, Depends(caller)]) -> ModelList:
        """The models live nodes advertise (`nodes`: how many serve each)."""
        return service.models()

    @app.get("/v1/models/{model:path}", response_model=ModelCard, responses=_ERRORS, tags=["openai"])
    async def model(model: str, key: Annotated[str, Depends(caller)]) -> ModelCard:
        """One model of `GET /v1/models`; 404 if no live node serves it."""
        return service.model(model)

    @app.post("/v1/completions", responses=_ERRORS, tags=["openai"])
    @app.post("/v1/responses", responses=_ERRORS, tags=["openai"])
    async def unserved(http: Request, key: Annotated[str, Depends(caller)]) -> Response:
        """OpenAI APIs the gateway does not serve: a 404 that says which one it does."""
        raise OpenAIError(404, f"{http.url.path} is not served: use POST /v1/chat/completions", code="unknown_url")

    @app.post("/v1/embeddings", responses=_ERRORS, tags=["openai"])
    async def embeddings(request: EmbeddingRequest, key: Annotated[str, Depends(caller)]) -> Response:
        """Not served: nodes run chat models only (their embedder is internal to workflows)."""
        raise OpenAIError(
            404,
            f"embeddings are not served: no node of this network offers an embedding model ({request.model!r})",
            "model",
        )


async def _handled(handler: Handler, request: Request, exc: Exception) -> Response:
    """What an exception handler of the app answers, whether it is a coroutine function or not."""
    response = handler(request, exc)
    return await response if inspect.isawaitable(response) else response


def _first_part(path: str) -> str:
    """The first part of a /v1 path: "tasks" of /v1/tasks/{id} and of /v1/tasks:batch."""
    return re.split(r"[/:]", path[len("/v1/") :], maxsplit=1)[0]


def _route_errors(app: FastAPI) -> None:
    """OpenAI's error shape on the OpenAI paths; the app's own handlers elsewhere."""
    http_handler: Handler = app.exception_handlers.get(HTTPException) or http_exception_handler
    validation_handler: Handler | None = app.exception_handlers.get(RequestValidationError)

    async def on_openai_error(request: Request, exc: OpenAIError) -> Response:
        return exc.response()

    def is_openai(request: Request) -> bool:
        return is_openai_path(request.url.path)

    def own(path: str) -> bool:  # under a /v1 route of the gateway's own API (the app's routes by then: all)
        routes = (r.path for r in app.routes if isinstance(r, APIRoute) and not is_openai_path(r.path))
        return _first_part(path) in {_first_part(route) for route in routes if route.startswith("/v1/")}

    async def on_http(request: Request, exc: HTTPException) -> Response:
        path = request.url.path
        unrouted = exc.status_code == 404 and "endpoint" not in request.scope
        if unrouted and path.startswith("/v1/") and (is_openai(request) or not own(path)):
            # No route at all, and none of the gateway's own API's (/v1/tasks...: its own 404s come from a route):
            # an OpenAI client's call of an endpoint the gateway does not have gets an error it can read.
            message = f"unknown request URL: {request.method} {path}"
            return OpenAIError(404, message, code="unknown_url").response()
        if not is_openai(request):
            return await _handled(http_handler, request, exc)
        error = OpenAIError(exc.status_code, str(exc.detail))
        response = error.response()
        response.headers.update(exc.headers or {})
        return response

    async def on_validation(request: Request, exc: RequestValidationError) -> Response:
        if not is_openai(request):
            if validation_handler is None:
                return JSONResponse({"detail": exc.errors()}, status_code=422)
            return await _handled(validation_handler, request, exc)
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":  # FastAPI's loc is ("body", <offset>): no field to name
            return OpenAIError(400, f"the body is not valid JSON (at character {first['loc'][-1]})").response()
        if first.get("type") == "model_attributes_type" and first.get("loc") == ("body",):
            return OpenAIError(
                400, "the body must be a JSON object sent with Content-Type: application/json"
            ).response()
        param, message = first_error(exc)
        return OpenAIError(400, f"{param}: {message}" if param else message, param or None).response()

    app.add_exception_handler(OpenAIError, on_openai_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, on_http)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, on_validation)  # type: ignore[arg-type]
