"""The gateway's HTTP API (FastAPI): tasks in, results out, nodes listed.

    POST /v1/tasks             one task          -> 202 {"id", "status": "pending"}
    POST /v1/tasks:batch       {"tasks": [...]}  -> 202 {"tasks": [{"id", "status"}...]}
    GET  /v1/tasks/{id}?wait=  one task's state (long polls up to `wait` s while pending)
    GET  /v1/tasks?ids=a,b&wait=  several at once
    GET  /v1/nodes             the nodes seen by heartbeat, with what the gateway measured of each
    GET  /v1/reputation        the nodes measured (reputation table), live or not, at most 1,000
    GET  /healthz              no auth; GET /openapi.json and /docs: the schema
    GET /health, GET /rpc/*, POST /rpc/task: Dria's Python SDK (node/gateway/dria_sdk/)
    POST /v1/chat/completions, GET /v1/models, POST /v1/embeddings: OpenAI's API (node/gateway/openai_api/)

Every error is `{"detail": "..."}`; a 422 names the field at fault (the OpenAI routes: OpenAI's error shape).
"""

# No `from __future__ import annotations`: FastAPI must evaluate the route signatures,
# whose Annotated metadata refers to local names (`caller`, `bearer`).
import math
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import structlog
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from node.gateway.auth import ApiKeys, AuthError, RateLimiter
from node.gateway.database import DatabaseError
from node.gateway.dria_sdk.routes import add_sdk_routes
from node.gateway.dria_sdk.service import SdkService
from node.gateway.host_check import LoopbackHostMiddleware
from node.gateway.limits import BodyLimitMiddleware
from node.gateway.openai_api.errors import error_body
from node.gateway.openai_api.routes import add_openai_routes
from node.gateway.openai_api.service import OpenAIService
from node.gateway.schemas import (
    Accepted,
    BatchAccepted,
    BatchRequest,
    Capacity,
    ErrorBody,
    Health,
    NodeList,
    NodeView,
    ReputationList,
    TaskList,
    TaskRequest,
    TaskView,
)
from node.gateway.service import MAX_LISTED_NODES, RETRY_AFTER, GatewayService, PendingCaps, TooManyPendingError
from node.gateway.settings import GatewaySettings
from node.gateway.store import TaskRecord
from node.gateway.validation import first_error
from node.publisher.errors import TaskNotEncodableError, TaskTooLargeError
from node.publisher.node_table import KnownNode
from workflows import WorkflowValidationError, parse_workflow
from workflows.key_sources import KeySources

log = structlog.get_logger(__name__)

_ERRORS = {code: {"model": ErrorBody} for code in (401, 408, 413, 422, 429)}
_POST_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 503)
}  # a body that cannot be parsed; no store


def create_gateway_app(
    service: GatewayService, settings: GatewaySettings, sdk: SdkService | None = None, caps: PendingCaps | None = None
) -> FastAPI:
    """The FastAPI app of one gateway, with the keys and limits of `settings`; with `sdk`, Dria's SDK routes too
    (`caps`: the pending caps the SDK counts against; None: made from `settings`)."""
    app = FastAPI(
        title="compute-node gateway",
        version="1",
        description="Publish LLM workflow tasks to the compute-node network over HTTP.",
        responses=_ERRORS,  # type: ignore[arg-type]
    )
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        timeout_s=settings.request_timeout,
        error_body=error_body,
    )
    if not settings.api_keys:  # loopback only, no auth: refuse rebound names (added last: runs first)
        app.add_middleware(LoopbackHostMiddleware, error_body=error_body)
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(TooManyPendingError, _too_many_pending)  # type: ignore[arg-type]
    keys = ApiKeys(settings.api_keys)
    limiter = RateLimiter(settings.rate_limit, settings.rate_burst)
    caps = caps if caps is not None else PendingCaps.of(settings)
    caps.add_source(service.store.pending_count)
    bearer = HTTPBearer(auto_error=False, description="An API key from the gateway's api_keys")

    async def caller(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
    ) -> str:
        """The calling key's id, after authentication and rate limiting."""
        try:
            ident = keys.identify(credentials.credentials if credentials else None)
        except AuthError as exc:
            raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
        wait = limiter.take(keys.limit_key(ident, request.client.host if request.client else None))
        if wait > 0:
            raise HTTPException(
                429,
                f"rate limit of {settings.rate_limit:g} requests per minute exceeded",
                headers={"Retry-After": str(math.ceil(wait))},
            )
        return ident

    def accept(key: str, requests: list[TaskRequest], field: str) -> list[str]:
        timeouts = [_checked(request, settings, field.format(i), service) for i, request in enumerate(requests)]
        try:
            return service.submit(key, requests, timeouts, caps)
        except DatabaseError as exc:
            log.error("task not stored", error=str(exc))
            raise HTTPException(
                503, "the gateway cannot store tasks right now", headers={"Retry-After": str(RETRY_AFTER)}
            ) from None

    @app.post("/v1/tasks", status_code=202, response_model=Accepted, responses=_POST_ERRORS, tags=["tasks"])
    async def create_task(request: TaskRequest, key: Annotated[str, Depends(caller)]) -> Accepted:
        """Validate the workflow, choose a node by measured reputation, sign and send the task."""
        [task_id] = accept(key, [request], "")
        return Accepted(id=task_id)

    @app.post("/v1/tasks:batch", status_code=202, response_model=BatchAccepted, responses=_POST_ERRORS, tags=["tasks"])
    async def create_tasks(batch: BatchRequest, key: Annotated[str, Depends(caller)]) -> BatchAccepted:
        """Several tasks at once (at most `max_batch`); all are accepted or none."""
        if len(batch.tasks) > settings.max_batch:
            raise HTTPException(422, f"tasks: at most {settings.max_batch} tasks per batch, got {len(batch.tasks)}")
        return BatchAccepted(tasks=[Accepted(id=i) for i in accept(key, batch.tasks, "tasks[{}].")])

    @app.get(
        "/v1/tasks/{task_id}",
        response_model=TaskView,
        response_model_exclude_none=True,
        responses={404: {"model": ErrorBody}},
        tags=["tasks"],
    )
    async def get_task(
        task_id: str,
        key: Annotated[str, Depends(caller)],
        wait: Annotated[float, Query(ge=0, description="Seconds to wait while pending (capped by max_wait)")] = 0,
    ) -> TaskView:
        """A task's state; with `wait`, returns as soon as it finishes."""
        record = service.get(task_id, key)
        if record is None:
            raise HTTPException(404, f"no task {task_id!r}")
        if record.status == "pending" and wait > 0:
            await service.wait([task_id], min(wait, settings.max_wait))
            record = service.get(task_id, key) or record
        return _view(record)

    @app.get("/v1/tasks", response_model=TaskList, response_model_exclude_none=True, tags=["tasks"])
    async def get_tasks(
        ids: Annotated[list[str], Query(description="Task ids, comma-separated or repeated")],
        key: Annotated[str, Depends(caller)],
        wait: Annotated[
            float, Query(ge=0, description="Seconds to wait while any is pending (capped by max_wait)")
        ] = 0,
    ) -> TaskList:
        """Several tasks' states; with `wait`, returns as soon as all have finished."""
        wanted = list(dict.fromkeys(i for item in ids for i in item.split(",") if i))
        if len(wanted) > settings.max_batch:
            raise HTTPException(422, f"ids: at most {settings.max_batch} ids per request, got {len(wanted)}")
        found = service.get_many(wanted, key)
        pending = [i for i, record in found.items() if record.status == "pending"]
        if pending and wait > 0:
            await service.wait(pending, min(wait, settings.max_wait))
            found = service.get_many(wanted, key)
        return TaskList(
            tasks=[_view(found[i]) for i in wanted if i in found], missing=[i for i in wanted if i not in found]
        )

    @app.get("/v1/nodes", response_model=NodeList, tags=["network"])
    async def get_nodes(key: Annotated[str, Depends(caller)]) -> NodeList:
        """The live nodes the gateway knows from their heartbeats (at most 1,000: measured ones first)."""
        return NodeList(
            nodes=[
                NodeView(
                    address=node.address,
                    peer_id=node.peer_id,
                    models=node.models,
                    capacity=Capacity(free=max(node.free, 0), max=node.max),
                    model_capacity=_model_places(node),
                    tps=node.tps,
                    last_heartbeat=node.last_seen,
                    reputation=service.client.reputation.view(node.address),
                )
                for node in service.nodes()
            ],
            total=service.client.nodes.live_count(),
        )

    @app.get("/v1/reputation", response_model=ReputationList, tags=["network"])
    async def get_reputation(key: Annotated[str, Depends(caller)]) -> ReputationList:
        """What the gateway measured of the nodes it remembers (at most 1,000: those that answered first;
        `compute-node nodes` reads them all)."""
        reputation = service.client.reputation
        return ReputationList(nodes=reputation.views(limit=MAX_LISTED_NODES), total=len(reputation))

    @app.get("/healthz", response_model=Health, tags=["operations"])
    async def health() -> Health:
        """Liveness, without authentication."""
        return Health(nodes=service.client.nodes.live_count())

    add_openai_routes(app, OpenAIService(service, settings, caps), caller)
    if sdk is not None:
        add_sdk_routes(app, sdk, keys, limiter)
    return app


def _checked(request: TaskRequest, settings: GatewaySettings, prefix: str, service: GatewayService) -> float:
    """The task's timeout, after checking what pydantic cannot: the workflow (as nodes do), the bounds,
    and its size sealed (413: no node could be sent it)."""
    try:
        workflow = parse_workflow(request.workflow)
    except WorkflowValidationError as exc:
        message = str(exc)
        path = message if message.startswith("workflow") else f"workflow.{message}"
        raise HTTPException(422, f"{prefix}{path}") from None
    # A return value no run can fill fails on every node ("Invalid prompt"), after the whole run: refuse it now.
    sources = KeySources.of(workflow, request.prompt)
    inputs = workflow.return_value.input
    for i, value in enumerate(inputs if isinstance(inputs, list) else [inputs]):
        if value.type != "get_all" and sources.never_filled(value):  # an empty get_all is an empty list
            where = f"workflow.return_value.input[{i}]" if isinstance(inputs, list) else "workflow.return_value.input"
            what = "the task has no prompt" if value.type == "input" else "no step and no external_memory fills it"
            named = value.type if value.type in ("input", "search") else f"{value.type} {value.key!r}"
            raise HTTPException(422, f"{prefix}{where}: {named} can never hold a value ({what})")
    timeout = settings.default_timeout if request.timeout is None else request.timeout
    if timeout > settings.max_timeout:
        raise HTTPException(422, f"{prefix}timeout: must be at most {settings.max_timeout:g} seconds")
    try:
        service.check_size(request, timeout)
    except TaskTooLargeError as exc:
        raise HTTPException(413, f"{prefix.rstrip('.')}: {exc}" if prefix else str(exc)) from None
    except TaskNotEncodableError as exc:
        raise HTTPException(422, f"{prefix.rstrip('.')}: {exc}" if prefix else str(exc)) from None
    return timeout


def _model_places(node: KnownNode) -> dict[str, Capacity] | None:
    """A node's places per model as the publisher keeps them (clamped, our tasks counted off); None when its
    heartbeat said none for the models it lists."""
    if not node.model_free:
        return None
    return {
        model: Capacity(free=max(free, 0), max=node.model_max.get(model, 0)) for model, free in node.model_free.items()
    }


def _view(record: TaskRecord) -> TaskView:
    return TaskView.model_validate(record.model_dump(include=set(TaskView.model_fields)))


async def _too_many_pending(request: Request, exc: TooManyPendingError) -> Response:
    """429 with Retry-After on every API (`/v1`, `/rpc`, OpenAI's), shaped by the HTTP error handler of its path."""
    http_handler: Callable[[Request, StarletteHTTPException], Awaitable[Response]]
    http_handler = request.app.exception_handlers[StarletteHTTPException]  # async: FastAPI's or the OpenAI routes'

    return await http_handler(request, HTTPException(429, str(exc), headers={"Retry-After": str(RETRY_AFTER)}))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with one line naming the field, as for an invalid workflow."""
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":  # FastAPI's loc is ("body", <character offset>): no field to name
        return JSONResponse({"detail": f"body: not valid JSON (at character {first['loc'][-1]})"}, status_code=422)
    if first.get("type") == "model_attributes_type" and tuple(first.get("loc", ())) == ("body",):
        return JSONResponse(
            {"detail": "body: must be a JSON object sent with Content-Type: application/json"}, status_code=422
        )
    path, message = first_error(exc)
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return JSONResponse({"detail": f"{path or exc.errors()[0]['loc'][0]}: {message}{more}"}, status_code=422)
