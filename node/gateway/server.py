"""A running gateway: the publisher service, its HTTP API and the purge of its database, started and stopped together."""

from __future__ import annotations

import asyncio
import signal
import socket

import structlog

from node.gateway.app import create_gateway_app
from node.gateway.database import purge_loop
from node.gateway.dria_sdk.service import SdkService
from node.gateway.dria_sdk.store import SdkStore
from node.gateway.service import GatewayService, PendingCaps
from node.gateway.settings import GatewaySettings
from node.gateway.store import TaskStore
from node.ops.data_lock import DataDirLock
from node.ops.http_api import HttpServer
from node.ops.systemd import SocketActivationError, inherited_listener
from node.publisher.client import Client
from node.publisher.reputation_records import ReputationSettings
from node.wire.identity import Identity, warn_if_shared

log = structlog.get_logger(__name__)

# HTTP connections open at once (past it a new one closes the oldest the server owes nothing: http_limits.py):
# well above what max_pending_total's long polls and streams hold, well below the open-files limit.
MAX_CONNECTIONS = 4096


class Gateway:
    """`compute-node gateway` in one object: `await start()`, `.url`, `await stop()`."""

    def __init__(self, settings: GatewaySettings, listener: socket.socket | None = None) -> None:
        """`listener`: a listening socket to serve HTTP on instead of settings.host:port (systemd's, or one
        a caller keeps across restarts so that no connection is refused in between)."""
        self.settings = settings
        self._listener = listener
        # One gateway per data directory (its key, task database and reputation): held until `stop`.
        self._lock = DataDirLock(settings.data_dir, "gateway")
        self._lock.acquire()
        try:
            self._build(settings)
        except BaseException:
            self._lock.release()
            raise

    def _build(self, settings: GatewaySettings) -> None:
        if settings.secret_key_file is not None:  # read into secret_key when the settings loaded
            warn_if_shared(settings.secret_key_file)
        identity = Identity.from_secret_or_file(settings.secret_key, settings.identity_path)
        client = Client(
            peers=settings.peers,
            secret_key=identity.secret,
            listen=settings.listen,
            connect_timeout=settings.connect_timeout,
            max_retries=settings.max_retries,
            delivery=settings.delivery,
            reputation_path=settings.reputation_path,
            reputation_settings=ReputationSettings(
                half_life_s=settings.reputation_half_life, verify_ban_seconds=settings.verify_ban_seconds
            ),
        )
        max_bytes = settings.max_stored_mb * 1024 * 1024
        self.service = GatewayService(client, TaskStore(settings.database_path, settings.retention, max_bytes))
        # A Dria SDK row lives at most the horizon past its deadline or result: the SDK polls every few seconds.
        sdk_store = SdkStore(settings.database_path, min(settings.retention, settings.deadline_horizon), max_bytes)
        caps = PendingCaps.of(settings)  # one count over /v1/tasks, OpenAI's routes and the SDK's
        self.sdk = SdkService(client, sdk_store, caps, settings.deadline_horizon)
        client.on_message = self.sdk.observe
        self.http = HttpServer(
            create_gateway_app(self.service, settings, self.sdk, caps),
            head_timeout_s=settings.request_timeout,
            max_connections=MAX_CONNECTIONS,
        )
        self._purger: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        """The gateway's publisher address (tasks are signed with its key)."""
        return self.service.client.identity.address

    @property
    def url(self) -> str:
        """The base URL the gateway listens on (once started)."""
        assert self.http.port is not None, "gateway not started"
        host = f"[{self.http.host}]" if ":" in (self.http.host or "") else self.http.host
        return f"http://{host}:{self.http.port}"

    async def start(self) -> None:
        """Listen for HTTP (HttpServerError if the port is taken), then join the network.

        Listening first keeps a restart's gap short: the SDK's poll loop gives up for good after
        about 2 s of refused connections. Only a listener kept across the restart closes the gap.
        """
        try:
            await self.http.start(self.settings.host, self.settings.port, self._listener)
            await self.service.start()
        except BaseException:
            await self.http.stop()
            await self.service.close()
            await self.sdk.close()
            self._close_stores()
            self._lock.release()
            raise
        self._purger = asyncio.create_task(purge_loop([self.service.store, self.sdk.store]), name="gateway-purge")
        log.info("gateway listening", url=self.url, address=self.address, auth=bool(self.settings.api_keys))

    async def stop(self) -> None:
        """Stop the HTTP API (in-flight requests finish), then the publisher; pending tasks stay stored."""
        await self.http.stop()
        if self._purger is not None:
            self._purger.cancel()
            await asyncio.gather(self._purger, return_exceptions=True)
        await self.service.close()
        await self.sdk.close()
        self._close_stores()
        self._lock.release()

    def _close_stores(self) -> None:
        self.service.store.close()
        self.sdk.store.close()


async def serve(settings: GatewaySettings) -> None:
    """Run a gateway until SIGINT or SIGTERM (one during startup stops it once started); on the
    socket systemd passed, if it passed one."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    listener = inherited_listener()
    if listener is not None:
        host, port = listener.getsockname()[:2]
        if problem := settings.public_without_keys(host):  # the rule `host` is checked by
            listener.close()
            raise SocketActivationError(f"the socket systemd passed: {problem}")
        log.info("http socket from systemd", host=host, port=port, ignored=f"{settings.host}:{settings.port}")
    gateway = Gateway(settings, listener)
    await gateway.start()
    try:
        await stop.wait()
    finally:
        log.info("gateway stopping")
        await gateway.stop()
