"""The bridge between the event loop and the Trio thread that runs a `P2PService`.

py-libp2p is Trio-only. `TrioThread` runs the service under `trio.run` in a thread of
its own and is driven from the asyncio loop that started it: asyncio -> Trio,
`trio_token.run_sync_soon` spawns `fn(*args)` in the service's nursery (`call`);
Trio -> asyncio, `loop.call_soon_threadsafe` (`call_soon`) settles a future or hands
something over. The Trio side never waits on asyncio.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
import trio

from node.p2p.errors import (
    NoMeshPeersError,
    P2PError,
    StreamRefusedError,
    StreamRefusedServiceError,
    StreamTimeoutError,
    first_service_error,
)
from node.p2p.service import NoMeshPeersServiceError, P2PService, P2PServiceError, StreamTimeoutServiceError

log = structlog.get_logger(__name__)
T = TypeVar("T")

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


class TrioThread:
    """`service` run under Trio in the thread `name`; `where` names its addresses in errors."""

    def __init__(self, service: P2PService, name: str, where: str) -> None:
        self._service = service
        self._name = name
        self._where = where
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.token: trio.lowlevel.TrioToken | None = None  # set once the service runs
        self._ready: asyncio.Future[None] | None = None
        self._exited: asyncio.Event | None = None
        self._stopping = False

    async def start(self) -> None:
        """Start the thread and wait until the service listens; P2PError naming the addresses on failure."""
        if self._thread is not None:
            raise P2PError("p2p host already started")
        self._loop = asyncio.get_running_loop()
        self._ready = self._loop.create_future()
        self._exited = asyncio.Event()
        self._thread = threading.Thread(target=self._thread_main, name=self._name, daemon=True)
        self._thread.start()
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), START_TIMEOUT_S)
        except TimeoutError:
            await self.stop()
            raise P2PError(f"p2p host did not start listening on {self._where} within {START_TIMEOUT_S:g} s") from None

    async def stop(self) -> None:
        """Stop the service and join the thread. Idempotent; bounded (~STOP_TIMEOUT_S)."""
        if self._thread is None or self._exited is None:
            return
        if not self._stopping:
            self._stopping = True
            self._request_stop()  # before ready there is no token yet: _set_ready asks then
        try:
            await asyncio.wait_for(self._exited.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            log.error("p2p host did not stop in time", timeout_s=STOP_TIMEOUT_S)
            return
        self._thread.join(timeout=1.0)  # it has already left trio.run: returns at once

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run the service coroutine `fn(*args)` on the Trio thread and await its result."""
        if self.token is None or self._stopping or self._loop is None:
            raise P2PError("p2p host is not running")
        future: asyncio.Future[T] = self._loop.create_future()

        def spawn() -> None:  # on the Trio thread
            try:
                self._service.spawn(self._run_on_trio, fn, args, future)
            except (P2PServiceError, RuntimeError) as exc:
                self._settle(future, None, P2PError(str(exc)))

        try:
            self.token.run_sync_soon(spawn)
        except trio.RunFinishedError:
            raise P2PError("p2p host is not running") from None
        return await future

    def call_soon(self, callback: Callable[..., None], *args: Any) -> None:
        """Run `callback(*args)` on the event loop (callable from the Trio thread)."""
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            pass  # the event loop is closed: nobody is waiting any more

    async def _run_on_trio(self, fn: Callable[..., Any], args: tuple[Any, ...], future: asyncio.Future[Any]) -> None:
        try:
            result = await fn(*args)
        except NoMeshPeersServiceError as exc:
            self._settle(future, None, NoMeshPeersError(str(exc)))
        except StreamTimeoutServiceError as exc:
            self._settle(future, None, StreamTimeoutError(str(exc)))
        except StreamRefusedServiceError as exc:
            self._settle(future, None, StreamRefusedError(str(exc)))
        except P2PServiceError as exc:
            self._settle(future, None, P2PError(str(exc)))
        except Exception as exc:  # noqa: BLE001 - any failure goes back to the awaiting caller
            self._settle(future, None, P2PError(f"p2p {fn.__name__} failed: {exc!r}"))
        except BaseException:
            self._settle(future, None, P2PError("p2p host stopped"))
            raise
        else:
            self._settle(future, result, None)

    def _settle(self, future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
        """Complete `future` on the asyncio thread (callable from the Trio thread)."""

        def settle() -> None:
            if future.done():
                return  # the awaiting side was cancelled
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        self.call_soon(settle)

    def _thread_main(self) -> None:
        error: BaseException | None = None
        try:
            trio.run(self._service.run, self._on_trio_ready)
        except BaseException as exc:  # noqa: BLE001 - reported to the asyncio side below
            error = exc
        self.call_soon(self._on_thread_exit, error)

    def _on_trio_ready(self) -> None:  # on the Trio thread
        self.token = trio.lowlevel.current_trio_token()
        self.call_soon(self._set_ready)

    def _set_ready(self) -> None:
        if self._stopping:
            self._request_stop()  # stop() was called while starting
        elif self._ready is not None and not self._ready.done():
            self._ready.set_result(None)

    def _request_stop(self) -> None:
        if self.token is None:
            return
        try:
            self.token.run_sync_soon(self._service.request_stop)
        except trio.RunFinishedError:
            pass

    def _on_thread_exit(self, error: BaseException | None) -> None:
        if self._ready is not None and not self._ready.done():
            service_error = first_service_error(error)
            if service_error is not None:
                message = str(service_error)
            elif error is None:
                message = f"p2p host on {self._where} was stopped while starting"
            else:
                message = f"p2p host failed to start on {self._where}: {error!r}"
            self._ready.set_exception(P2PError(message))
            if self._stopping:  # stop() while starting: the start() that awaited it may have been cancelled
                self._ready.exception()  # so read here, or asyncio logs "Future exception was never retrieved"
        elif error is not None:
            if self._stopping:
                log.warning("p2p host stopped with an error", error=repr(error))
            else:
                log.error("p2p host crashed", error=repr(error))
        self._stopping = True
        if self._exited is not None:
            self._exited.set()
