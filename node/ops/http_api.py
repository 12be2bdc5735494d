"""The node's local HTTP endpoint: the status page at ``/``, ``/metrics``, ``/healthz``, ``/status``,
``POST /pause`` and ``/resume``.

``create_app`` builds the FastAPI app from three callables the daemon provides;
``HttpServer`` runs it with uvicorn as a task inside the daemon's own asyncio
loop. The handlers are ``async def`` so they run on the loop thread and may read
daemon state without locks. uvicorn installs no signal handlers here (the
daemon owns SIGTERM/SIGINT) and logs only warnings. The POST endpoints change
the node: they answer only clients on a loopback address (403 otherwise), whatever
host the endpoint listens on.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

import structlog
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel

from node.ops.metrics import NodeMetrics

log = structlog.get_logger(__name__)

METRICS_PATH = "/metrics"
HEALTH_PATH = "/healthz"
STATUS_PATH = "/status"
PAUSE_PATH = "/pause"
RESUME_PATH = "/resume"
PAGE_PATH = "/"
# The page loads nothing from elsewhere and runs only its own inline script, which may read /status only.
PAGE_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class PauseControls:
    """What POST /pause and /resume call; each returns the new pause state."""

    pause: Callable[[], dict[str, Any]]
    resume: Callable[[], dict[str, Any]]


def status_page() -> str:
    """The self-contained status page (HTML with inline CSS and JS) shipped as package data."""
    return resources.files("node.ops").joinpath("status_page.html").read_text(encoding="utf-8")


class HealthReport(BaseModel):
    """What the daemon says about its own health."""

    ok: bool
    reason: str | None = None


class HealthBody(BaseModel):
    """The JSON body of ``GET /healthz``."""

    status: str  # "ok" or "unhealthy"
    reason: str | None = None


class HttpServerError(Exception):
    """The HTTP endpoint could not start (e.g. its port is taken)."""


def create_app(
    metrics: NodeMetrics,
    health: Callable[[], HealthReport],
    status: Callable[[], dict[str, Any]],
    controls: PauseControls | None = None,
) -> FastAPI:
    """The FastAPI app serving metrics, health and status of one node (and pause/resume, loopback only)."""
    app = FastAPI(title="compute-node", docs_url=None, redoc_url=None, openapi_url=None)
    page = status_page()

    @app.get(PAGE_PATH)
    async def get_page() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-cache"})

    @app.get(METRICS_PATH)
    async def get_metrics() -> Response:
        body, content_type = metrics.render()
        return Response(content=body, media_type=content_type)

    @app.get(HEALTH_PATH, response_model=HealthBody)
    async def get_health() -> JSONResponse:
        try:
            report = health()
        except Exception as exc:  # a broken probe is itself a health problem
            report = HealthReport(ok=False, reason=f"health check raised {exc!r}")
        if report.ok:
            return JSONResponse(HealthBody(status="ok").model_dump(exclude_none=True))
        body = HealthBody(status="unhealthy", reason=report.reason or "unhealthy")
        return JSONResponse(body.model_dump(), status_code=503)

    @app.get(STATUS_PATH)
    async def get_status() -> JSONResponse:
        return JSONResponse(status())

    if controls is not None:

        @app.post(PAUSE_PATH)
        async def post_pause(request: Request) -> JSONResponse:
            return _loopback_only(request) or JSONResponse(controls.pause())

        @app.post(RESUME_PATH)
        async def post_resume(request: Request) -> JSONResponse:
            return _loopback_only(request) or JSONResponse(controls.resume())

    return app


def _loopback_only(request: Request) -> JSONResponse | None:
    """A 403 for a client not on a loopback address, else None."""
    host = request.client.host if request.client else ""
    try:
        address = ipaddress.ip_address(host)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        loopback = address.is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return None
    return JSONResponse({"error": f"{request.url.path} answers only loopback clients, not {host or 'unknown'}"}, 403)


class _SignalFreeServer(uvicorn.Server):
    """uvicorn.Server that leaves the process's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """Runs an ASGI app with uvicorn as a task on the current event loop."""

    def __init__(self, app: FastAPI, *, shutdown_timeout: int = 5) -> None:
        self._app = app
        self._shutdown_timeout = shutdown_timeout
        self._server: _SignalFreeServer | None = None
        self._task: asyncio.Task[None] | None = None
        self.host: str | None = None
        self.port: int | None = None

    async def start(self, host: str, port: int) -> None:
        """Bind ``host:port`` (0 = any free port, see ``.port``) and serve; returns once listening."""
        if self._task is not None:
            raise HttpServerError("HTTP server already started")
        sock = _bind(host, port)
        self.host, self.port = host, sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            log_config=None,  # keep the daemon's logging setup
            log_level="warning",
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=self._shutdown_timeout,
        )
        self._server = _SignalFreeServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="http-server")
        while not self._server.started:
            if self._task.done():
                sock.close()
                exc = self._task.exception()
                raise HttpServerError(f"HTTP server on {host}:{port} failed to start: {exc!r}")
            await asyncio.sleep(0.005)
        log.info("http endpoint listening", host=host, port=self.port)

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), and return."""
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self._shutdown_timeout + 1)
        except TimeoutError:
            self._server.force_exit = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._server = None
        self._task = None


def _bind(host: str, port: int) -> socket.socket:
    """A bound TCP socket for ``host:port``; HttpServerError naming both if not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise HttpServerError(f"cannot listen on {host}:{port}: {exc}") from exc
    try:
        # Lets a restarted node rebind at once; Linux still refuses a port in use.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise HttpServerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock
