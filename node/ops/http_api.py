"""The node's local HTTP endpoint: the status page ``/``, ``/metrics``, ``/healthz``, ``/status``, ``POST /pause`` and ``/resume``.

``create_app`` builds the ASGI app from callables the daemon provides: a few
routes, so a plain ASGI callable rather than FastAPI, which the daemon (the
process that faces the network) does not import (~30 MiB, ~1 s). ``HttpServer``
runs any ASGI app (this one, or the gateway's FastAPI app) with uvicorn as a task
inside the caller's own asyncio loop, its clients bounded in time and in connections
(node/ops/http_limits.py). The handlers run on the loop thread and may
read daemon state without locks. uvicorn installs no signal handlers here (the
daemon owns SIGTERM/SIGINT) and logs only warnings. The POST endpoints change
the node: they answer only requests that carry the node's control token (401
otherwise; node/ops/control_token.py), from clients on a loopback address (403
otherwise), whatever host the endpoint listens on, and no request a browser makes for a web page (one that
carries `Origin` or `Sec-Fetch-Site`): a page of any site could otherwise pause the
node through its operator's browser. Listening on a loopback address, the endpoint also
answers only requests whose `Host` is a loopback name (421 otherwise): a page whose own
name was rebound to 127.0.0.1 could otherwise read `/status` and `/metrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import re
import socket
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import structlog
import uvicorn
from pydantic import BaseModel

from node.ops.control_token import CONTROL_HEADER, CONTROL_TOKEN_FILE, carries_token
from node.ops.http_limits import bounded_protocol, connection_cap
from node.ops.metrics import NodeMetrics

log = structlog.get_logger(__name__)

METRICS_PATH = "/metrics"
HEALTH_PATH = "/healthz"
STATUS_PATH = "/status"
PAUSE_PATH = "/pause"
RESUME_PATH = "/resume"
PAGE_PATH = "/"
PATHS = (PAGE_PATH, METRICS_PATH, HEALTH_PATH, STATUS_PATH)  # every GET route the app serves
# The page loads nothing from elsewhere and runs only its own inline script, which may read /status only.
PAGE_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_PAGE_HEADERS = [(b"content-security-policy", PAGE_POLICY.encode()), (b"cache-control", b"no-cache")]


@dataclass(frozen=True)
class PauseControls:
    """What POST /pause and /resume call (each returns the new pause state), and the control token a
    request must carry (node/ops/control_token.py)."""

    pause: Callable[[], dict[str, Any]]
    resume: Callable[[], dict[str, Any]]
    token: str


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


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def create_app(
    metrics: NodeMetrics,
    health: Callable[[], HealthReport],
    status: Callable[[], dict[str, Any]],
    controls: PauseControls | None = None,
    loopback_hosts_only: bool = False,
) -> AsgiApp:
    """The ASGI app serving metrics, health and status of one node (and pause/resume, loopback only);
    `loopback_hosts_only`: answer only requests whose `Host` header is a loopback name (DNS rebinding)."""

    def get_metrics() -> tuple[int, bytes, str]:
        body, content_type = metrics.render()
        return 200, body, content_type

    def get_health() -> tuple[int, bytes, str]:
        try:
            report = health()
        except Exception as exc:  # a broken probe is itself a health problem
            report = HealthReport(ok=False, reason=f"health check raised {exc!r}")
        if report.ok:
            return 200, HealthBody(status="ok").model_dump_json(exclude_none=True).encode(), _JSON
        body = HealthBody(status="unhealthy", reason=report.reason or "unhealthy")
        return 503, body.model_dump_json().encode(), _JSON

    def get_status() -> tuple[int, bytes, str]:
        return 200, json.dumps(status(), separators=(",", ":")).encode(), _JSON

    page = status_page().encode("utf-8")

    def get_page() -> tuple[int, bytes, str]:
        return 200, page, "text/html; charset=utf-8"

    routes: dict[str, Callable[[], tuple[int, bytes, str]]] = {
        PAGE_PATH: get_page,
        METRICS_PATH: get_metrics,
        HEALTH_PATH: get_health,
        STATUS_PATH: get_status,
    }

    actions: dict[str, Callable[[], dict[str, Any]]] = (
        {PAUSE_PATH: controls.pause, RESUME_PATH: controls.resume} if controls is not None else {}
    )
    token = controls.token if controls is not None else ""  # no controls: no action to answer

    def post(path: str, client: tuple[str, int] | None, headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes, str]:
        host = client[0] if client else ""
        if not _is_loopback(host):
            error = {"error": f"{path} answers only loopback clients, not {host or 'unknown'}"}
            return 403, json.dumps(error).encode(), _JSON
        if _from_web_page(headers):
            error = {"error": f"{path} answers no request a browser makes for a web page (Origin, Sec-Fetch-Site)"}
            return 403, json.dumps(error).encode(), _JSON
        if not carries_token(token, headers):
            error = {
                "error": f"{path} needs the node's control token ({CONTROL_HEADER} header): `compute-node "
                f"{path.strip('/')}` run as the node's user reads it from the data directory ({CONTROL_TOKEN_FILE})"
            }
            return 401, json.dumps(error).encode(), _JSON
        try:
            return 200, json.dumps(actions[path]()).encode(), _JSON
        except OSError as exc:  # the kept state cannot be written (a full disk): the node stays as it was
            return 503, json.dumps({"error": str(exc)}).encode(), _JSON

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; websockets are not served
        path, method = scope["path"], scope["method"]
        route = routes.get(path)
        if loopback_hosts_only and not is_loopback_host(scope.get("headers", [])):
            error = {"error": "listening on loopback, this endpoint answers only Host 127.0.0.1, localhost or [::1]"}
            code, body, content_type = 421, json.dumps(error).encode(), _JSON
        elif path in actions and method == "POST":
            code, body, content_type = post(path, scope.get("client"), scope.get("headers", []))
        elif route is None and path not in actions:
            code, body, content_type = 404, b'{"detail":"Not Found"}', _JSON
        elif route is None or method not in ("GET", "HEAD"):
            code, body, content_type = 405, b'{"detail":"Method Not Allowed"}', _JSON
        else:
            code, body, content_type = route()
        headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
        if path == PAGE_PATH and code == 200:
            headers += _PAGE_HEADERS
        await send({"type": "http.response.start", "status": code, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    return app


_JSON = "application/json"


LOOPBACK_HOST = re.compile(r"^(?:127\.0\.0\.1|localhost|\[::1\])(?::[0-9]{1,5})?$", re.IGNORECASE)


def is_loopback_host(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request names one `Host`, a loopback name (any port)."""
    hosts = [value for name, value in headers if name.lower() == b"host"]
    return len(hosts) == 1 and LOOPBACK_HOST.match(hosts[0].decode("latin-1")) is not None


def _from_web_page(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a browser sends this request for a page: a page of any site may post to a loopback port
    through the operator's browser (a form, fetch in no-cors mode, a DNS-rebound name), and the client is
    then loopback. Browsers send `Origin` with every POST, and `Sec-Fetch-Site` other than `none` for a
    request a page made; the CLI (httpx) sends neither."""
    for name, value in headers:
        if name.lower() == b"origin" or (name.lower() == b"sec-fetch-site" and value.strip().lower() != b"none"):
            return True
    return False


def is_loopback_address(host: str) -> bool:
    """Whether an address to listen on (an IP or `localhost`) is loopback only."""
    return host.strip("[]").lower() == "localhost" or _is_loopback(host.strip("[]"))


def _is_loopback(host: str) -> bool:
    """Whether a client address is loopback (IPv4-mapped IPv6 loopback counts)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


# What one server's clients may hold (node/ops/http_limits.py): a node's endpoint serves an operator, a scraper
# and a status page, each a request now and then; the gateway sets its own.
HEAD_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 64
FIRST_REQUEST_WAIT_S = 2.0  # at most, for connections accepted just before a stop to send their request


class _SignalFreeServer(uvicorn.Server):
    """uvicorn.Server that leaves the process's signal handlers alone and drops no request it accepted."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop accepting; let connections that have not sent their first request yet send it (for at
        most FIRST_REQUEST_WAIT_S); then shut down as uvicorn does (requests in progress finish, idle
        connections close).

        uvicorn alone closes at once a connection whose request it has not read: a client that
        connected a moment before the stop would see its request dropped unanswered, where the next
        server on the same socket (socket activation) would have answered it.
        """
        for server in self.servers:
            server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FIRST_REQUEST_WAIT_S
        while any(map(_awaits_first_request, self.server_state.connections)) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        await super().shutdown(sockets)


def _awaits_first_request(connection: object) -> bool:
    """Whether uvicorn's h11 connection has received no request yet (h11 learns the client's HTTP
    version from its first request). Other protocol classes: False, uvicorn's own behaviour."""
    parser = getattr(connection, "conn", None)
    return parser is not None and getattr(parser, "their_http_version", b"") is None


class HttpServer:
    """Runs an ASGI app with uvicorn as a task on the current event loop, its clients bounded (http_limits.py)."""

    def __init__(
        self,
        app: AsgiApp,
        *,
        shutdown_timeout: int = 5,
        head_timeout_s: float = HEAD_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        """`head_timeout_s`: what a client has to send a request's head, and to take some of its response;
        `max_connections`: open at once (at most a quarter of the open-files limit)."""
        self._app = app
        self._shutdown_timeout = shutdown_timeout
        self._protocol = bounded_protocol(head_timeout_s, connection_cap(max_connections))
        self._server: _SignalFreeServer | None = None
        self._task: asyncio.Task[None] | None = None
        self.host: str | None = None
        self.port: int | None = None

    async def start(self, host: str, port: int, listener: socket.socket | None = None) -> None:
        """Bind ``host:port`` (0 = any free port, see ``.port``) and serve; returns once listening.

        `listener`: serve on this listening socket instead (host and port are its own). It stays
        open after `stop()`, so a server started on it next takes the connections that waited.
        """
        if self._task is not None:
            raise HttpServerError("HTTP server already started")
        if listener is not None:
            sock = listener.dup()  # uvicorn closes what it serves on; the listener itself keeps listening
            host, port = sock.getsockname()[:2]
        else:
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
            http=self._protocol,
            ws="none",  # nothing here serves WebSockets: uvicorn would load wsproto for them at start
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


def check_can_listen(host: str, port: int) -> None:
    """HttpServerError now if ``host:port`` cannot be bound (taken, privileged, no such address), so that a
    node finds out before it loads its models rather than after; port 0 always can."""
    if port != 0:
        _bind(host, port).close()


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
