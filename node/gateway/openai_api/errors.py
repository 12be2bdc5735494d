"""Errors of the OpenAI routes: one exception type, OpenAI's status codes and error body.

400 invalid_request_error  a request the network cannot run (incl. a node's `Invalid prompt: ...`)
401 authentication_error   no or unknown API key
404 invalid_request_error  model_not_found: no live node serves the model (or embeddings at all); unknown_url
408 invalid_request_error  the body did not arrive in time
413 invalid_request_error  request_too_large: the task it makes (or the body) is larger than allowed
421 invalid_request_error  a Host header that is not loopback, on a gateway without api_keys
429 rate_limit_exceeded    the key's rate or pending limit, or every node busy
502 api_error              a node failed the task
503 api_error              no_nodes: no node of the network is reachable (the gateway lost it)
504 timeout                no result before the timeout
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

from node.gateway.limits import plain_error
from node.gateway.openai_api.schemas import ErrorDetail, ErrorResponse
from node.gateway.service import RETRY_AFTER
from node.publisher.client import (
    ClientError,
    NoNodeError,
    TaskFailedError,
    TaskNotEncodableError,
    TaskTimeoutError,
    TaskTooLargeError,
)
from node.wire.error_kinds import ErrorKind, ErrorLimit

# The OpenAI paths: errors there have OpenAI's shape, even those answered before a route runs.
PATHS = ("/v1/chat/completions", "/v1/models", "/v1/embeddings", "/v1/completions", "/v1/responses")
MODEL_PATH = "/v1/models/"  # GET /v1/models/{model}: OpenAI's models.retrieve

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    421: "invalid_request_error",
    429: "rate_limit_exceeded",
    502: "api_error",
    503: "api_error",
    504: "timeout",
}
_CODES = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded", 504: "timeout"}


class OpenAIError(Exception):
    """A request that ends in an OpenAI error body with `status`."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None, retry_after: int = 0
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code if code is not None else _CODES.get(status)
        self.retry_after = retry_after

    @property
    def body(self) -> ErrorResponse:
        """The error as OpenAI's error body."""
        kind = _TYPES.get(self.status, "api_error")
        return ErrorResponse(error=ErrorDetail(message=self.message, type=kind, param=self.param, code=self.code))

    def response(self) -> JSONResponse:
        """The error as a JSON response, with Retry-After when set."""
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after else None
        return JSONResponse(self.body.model_dump(), status_code=self.status, headers=headers)


def is_openai_path(path: str) -> bool:
    """Whether `path` is one of the OpenAI routes (with a trailing slash too: no route, but OpenAI's client)."""
    path = path.rstrip("/") or path
    return path in PATHS or path.startswith(MODEL_PATH)


def error_body(path: str, status: int, detail: str) -> bytes:
    """The body of an error answered before the app (a too-large body, a rebound Host): OpenAI's shape on the
    OpenAI paths, the gateway's `{"detail": ...}` elsewhere."""
    if not is_openai_path(path):
        return plain_error(path, status, detail)
    code = "request_too_large" if status == 413 else None
    return OpenAIError(status, detail, code=code).body.model_dump_json().encode("utf-8")


def from_client_error(exc: ClientError) -> OpenAIError:
    """The OpenAI error for a task the network did not complete."""
    if isinstance(exc, NoNodeError):
        if not exc.known:  # no node at all: the gateway lost the network, not the model
            return OpenAIError(503, f"no node of the network is reachable now: {exc}", code="no_nodes")
        if not exc.serving:  # none hosts it now (they did when the request was checked): not a busy network
            return OpenAIError(404, str(exc), "model", code="model_not_found")
        return OpenAIError(
            429, f"every node serving the model is busy: {exc}", code="nodes_busy", retry_after=RETRY_AFTER
        )
    if isinstance(exc, TaskTooLargeError):
        return OpenAIError(413, str(exc), "messages", code="request_too_large")
    if isinstance(exc, TaskNotEncodableError):
        return OpenAIError(400, str(exc), "messages")
    if isinstance(exc, TaskTimeoutError):
        return OpenAIError(504, str(exc))
    if isinstance(exc, TaskFailedError):
        # Cut at the request's max_tokens, the same on every node (`Invalid prompt: ` from nodes that say so), and
        # the caller's to change: not a server error for clients to retry.
        if exc.limit is ErrorLimit.MAX_TOKENS:
            return OpenAIError(400, exc.reason, "max_tokens", code="max_tokens_too_small")
        if exc.kind is ErrorKind.INVALID_PROMPT:
            if exc.limit is ErrorLimit.CONTEXT:
                return OpenAIError(400, exc.reason, "messages", code="context_length_exceeded")
            return OpenAIError(400, exc.reason, code="invalid_prompt")
        if exc.kind is ErrorKind.BUSY:
            return OpenAIError(
                429, f"every node serving the model is busy ({exc.reason})", code="nodes_busy", retry_after=RETRY_AFTER
            )
        return OpenAIError(502, f"node {exc.node} failed the task: {exc.reason}", code="node_error")
    return OpenAIError(502, str(exc), code="node_error")
