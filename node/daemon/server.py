"""The daemon's lifecycle: startup, serve until a signal, graceful shutdown.

startup:  identity, journal and ledger -> execution processes (one per model: load,
          benchmark, health probe; see node/daemon/processes/) and the P2P host, started
          together -> remote engines' health -> the parts, wired (build.py) -> subscribe -> bootstrap
          dials -> journal recovery -> background loops (intake, heartbeat, re-dial, outbox,
          remote health, ledger, idle watch) -> HTTP endpoint -> READY=1 -> the monitor (watchdog)
serve:    wait for SIGINT/SIGTERM
shutdown: STOPPING=1, stop admitting (a `leaving` heartbeat, capacity 0), drain: let running tasks
          finish up to `drain_timeout`, error the rest, flush results; then what startup opened
          is closed in reverse order (one AsyncExitStack): the HTTP endpoint, the loops, the
          intake, remote engines' health, the network, the execution processes, the ledger and
          the journal. A second signal skips the wait.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import structlog

from config.layered import ConfigError
from config.settings import Settings
from node.daemon.admission import CANCELLED_WAIT_S, Admission
from node.daemon.build import (
    NodeParts,
    build_parts,
    check_embedding_model,
    inbound_limits,
    open_identity,
    open_journal,
    open_ledger,
    stream_limits,
)
from node.daemon.clock_watch import ClockWatch
from node.daemon.idle import IdleWatch
from node.daemon.journal import Journal
from node.daemon.journal_file import JournalError
from node.daemon.ledger import Ledger, LedgerError
from node.daemon.ledger_restore import restore_lost_rows
from node.daemon.pause import PauseState
from node.daemon.processes.early import EarlyProcess
from node.daemon.processes.pool import CLOSE_TIMEOUT_S, ExecutionPool, NoUsableModelError
from node.daemon.recovery import recover_interrupted
from node.daemon.remote_health import RemoteHealth, remote_models
from node.daemon.runner import RERUN_MIN_TIME_LEFT_S
from node.daemon.stop_signals import STOP_SIGNALS, EarlyStops
from node.daemon.supervisor import Supervisor, thread_alive
from node.ops.control_token import write_control_token
from node.ops.data_lock import DataDirLock, DataDirLockedError
from node.ops.http_api import (
    HttpServer,
    HttpServerError,
    PauseControls,
    check_can_listen,
    create_app,
    is_loopback_address,
)
from node.ops.metrics import NodeMetrics
from node.ops.systemd import SocketActivationError, SystemdNotifier
from node.p2p.errors import P2PError
from node.p2p.frame_stream import FrameStream
from node.p2p.handoff import GossipMessage
from node.p2p.host import P2PHost
from node.wire.identity import Identity, IdentityError
from node.wire.topics import HEARTBEAT_TOPIC, RESULTS_TOPIC, TASK_TOPIC

log = structlog.get_logger(__name__)

ANNOUNCE_LEAVING_S = 2.0  # at shutdown, the `leaving` heartbeat's publish
FLUSH_AT_STOP_S = 5.0  # at shutdown, publishing the results still waiting (the rest stay journalled)
START_MARGIN_S = 30.0  # at startup, beyond each model's exec_start_timeout: spawning, the probe, the P2P host


def stop_time_bound_s(drain_timeout: float) -> float:
    """The longest a graceful stop takes; systemd's TimeoutStopSec and Docker's --stop-timeout must exceed it."""
    return ANNOUNCE_LEAVING_S + drain_timeout + CANCELLED_WAIT_S + FLUSH_AT_STOP_S + CLOSE_TIMEOUT_S


# Startup failures that name what the operator must mend: a setting, a file or folder, a key, a port, a model.
OPERATOR_ERRORS = (
    ConfigError,
    OSError,
    DataDirLockedError,
    IdentityError,
    JournalError,
    LedgerError,
    NoUsableModelError,
    HttpServerError,
    SocketActivationError,
    P2PError,
)


class NodeNotRunningError(Exception):
    """The node's parts were asked for before `startup` built them."""


@dataclass
class RunningNode:
    """What `startup` opened and built; each is closed by `shutdown` through the exit stack."""

    identity: Identity
    journal: Journal
    ledger: Ledger
    pool: ExecutionPool
    remote_health: RemoteHealth
    host: P2PHost
    parts: NodeParts
    http: HttpServer | None = None  # started last, with `http_enabled`


class NodeServer:
    """One compute node. `await serve()` runs it until a signal (or `request_exit()`)."""

    def __init__(self, settings: Settings, early: EarlyProcess | None = None) -> None:
        self.settings = settings
        self._early = early  # the first model's execution process, spawned before this module was imported
        self.metrics = NodeMetrics()
        self.clock = ClockWatch()  # messages rejected for their time, against those accepted
        self.notifier = SystemdNotifier.from_env()
        self.supervisor = Supervisor(self._on_fatal_loop)
        self.pause = PauseState(settings.data_dir)
        self.exit_code = 0
        self._running: RunningNode | None = None
        self._opened = AsyncExitStack()  # what startup opened, closed in reverse order by shutdown
        self._exit = asyncio.Event()
        self._force_exit = False

    @property
    def running(self) -> RunningNode:
        """The node's open resources and parts, once `startup` built them."""
        if self._running is None:
            raise NodeNotRunningError("the node has not started (or failed to start)")
        return self._running

    async def serve(self, early_stops: EarlyStops | None = None) -> None:
        """Start, run until asked to stop, shut down. A stop asked for during startup (a model may take
        minutes to load), or before this was called (`early_stops`, the launcher's), cuts it short: what it
        opened is closed, and the node never says READY."""
        self._install_signal_handlers()
        if early_stops is not None:
            early_stops.hand_to(self._on_signal)
        try:
            starting = asyncio.ensure_future(self.startup())
            stop = asyncio.ensure_future(self._exit.wait())
            try:
                await asyncio.wait([starting, stop], return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
            if not starting.done():
                log.info("stop asked for during startup")
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
                return
            starting.result()
            await self._exit.wait()
        finally:
            await self.shutdown()

    def request_exit(self) -> None:
        """Begin a graceful shutdown; a second call skips waiting for running tasks."""
        if self._exit.is_set():
            self._force_exit = True
            log.warning("second stop request: exiting without waiting for tasks")
        self._exit.set()

    async def startup(self) -> None:
        """Each step in order; what a step opened is closed by `shutdown` even when a later one fails."""
        self._running = running = await self._open()
        parts = running.parts
        queues = await self._subscribe(running.host, parts)
        await parts.connector.dial_all()
        await recover_interrupted(
            running.journal,
            parts.outbox,
            parts.admission,
            rerun=self.settings.rerun_interrupted,
            min_time_left_s=RERUN_MIN_TIME_LEFT_S,  # as for a task whose execution process died
            ledger=running.ledger,
        )
        self._start_loops(running, queues)
        running.http = await self._start_http(parts)
        self._announce_ready(running)
        self.supervisor.start("monitor", parts.monitor.run)  # watchdog pings after READY

    async def _open(self) -> RunningNode:
        """Open the resources, each onto the exit stack as it opens, and build the parts that use them."""
        settings, opened = self.settings, self._opened
        opened.enter_context(DataDirLock(settings.data_dir, "node"))  # before anything in it is opened
        if settings.http_enabled:
            try:
                check_can_listen(settings.http_host, settings.http_port)  # bound last: a taken port is found first
            except HttpServerError as exc:  # the address alone does not say which setting it is
                raise HttpServerError(f"{exc} (http_host / http_port; http_enabled = false serves none)") from exc
        identity = open_identity(settings)
        journal = open_journal(settings)
        opened.callback(journal.close)
        ledger = open_ledger(settings)
        opened.callback(ledger.close)
        restore_lost_rows(journal, ledger)  # before the outbox's prune can forget what the journal holds
        check_embedding_model(settings)
        pool = ExecutionPool(settings, self.metrics, self._early)
        opened.push_async_callback(pool.close)
        host = P2PHost(
            identity.secret,
            settings.listen,
            stream_limits=stream_limits(settings),
            inbound_limits=inbound_limits(settings),
            on_inbound_stream=self._on_stream if settings.direct else None,
        )
        opened.push_async_callback(host.stop)  # stopped before the execution processes close
        # Each model's execution process may take exec_start_timeout to load and benchmark, one after another:
        # systemd's TimeoutStartSec must not end a start that is still within those bounds.
        models = len(dict.fromkeys(settings.models))
        self.notifier.extend_timeout(models * (settings.exec_start_timeout + START_MARGIN_S))
        await self._start_together(pool, host)
        remote = await self._open_remote_health(pool)
        parts = build_parts(
            settings,
            self.metrics,
            self.notifier,
            identity,
            journal,
            pool,
            remote,
            host,
            self._on_reject,
            self.pause,
            ledger,
            self.clock,
        )
        opened.push_async_callback(parts.direct.close)
        opened.push_async_callback(parts.intake.close)
        opened.push_async_callback(self.supervisor.stop)  # the loops, started once the node is up
        return RunningNode(identity, journal, ledger, pool, remote, host, parts)

    @staticmethod
    async def _start_together(pool: ExecutionPool, host: P2PHost) -> None:
        """The execution processes (model load, cached benchmark) and the P2P host: neither needs the other."""
        try:
            async with asyncio.TaskGroup() as starting:
                starting.create_task(pool.start())
                starting.create_task(host.start())
        except BaseExceptionGroup as failed:  # the first failure, as the steps in order raised it
            raise failed.exceptions[0]  # noqa: B904 - the group adds nothing but nesting

    async def _open_remote_health(self, pool: ExecutionPool) -> RemoteHealth:
        """Remote engines (registry backend "openai"): checked periodically; a down one leaves the heartbeat."""
        names = remote_models(self.settings, list(pool.hosted))
        remote = await RemoteHealth.open(self.settings, names, self.metrics, pool.tps)
        self._opened.push_async_callback(remote.close)
        return remote

    def _on_stream(self, stream: FrameStream, first: bytes) -> None:
        """A direct-delivery stream: the parts answer it (before they are built, it is reset)."""
        if self._running is None:
            asyncio.ensure_future(stream.close(graceful=False))
            return
        self._running.parts.direct.on_stream(stream, first)

    @staticmethod
    async def _subscribe(host: P2PHost, parts: NodeParts) -> dict[str, asyncio.Queue[GossipMessage]]:
        """Tasks are read; results and heartbeats only validated and relayed (never handed to the loop:
        a thread crossing per message of the whole network's traffic is a share of every node's CPU)."""
        gate, monitor = parts.gate, parts.monitor

        def heartbeat(topic: str, data: bytes) -> bool:
            valid = gate.validate(topic, data)
            if valid:
                monitor.heartbeat_seen()  # a float set on the Trio thread: the monitor reads it
            return valid

        await host.relay(RESULTS_TOPIC, gate.validate)
        await host.relay(HEARTBEAT_TOPIC, heartbeat)
        # `check`: a task reaches the intake decoded by the validator (its signature is recovered once).
        return {TASK_TOPIC: await host.subscribe(TASK_TOPIC, gate.check)}

    def _start_loops(self, running: RunningNode, queues: dict[str, asyncio.Queue[GossipMessage]]) -> None:
        """The background loops, each restarted with backoff by the supervisor."""
        loops, parts, host = self.supervisor, running.parts, running.host
        monitor = parts.monitor
        loops.start("intake", lambda: parts.intake.run(queues[TASK_TOPIC]))
        loops.start("heartbeat", parts.heartbeat.run)
        loops.start("connector", parts.connector.run)
        loops.start("outbox", parts.outbox.run)
        loops.start("remote-health", running.remote_health.run)
        loops.start("ledger", running.ledger.run)
        if self.settings.idle_only:
            loops.start("idle-watch", IdleWatch(self.pause, self.settings).run)
        loops.watch_thread("p2p-thread", lambda: thread_alive(host.thread_name))
        monitor.watch_loops(loops.failed)

    async def _start_http(self, parts: NodeParts) -> HttpServer | None:
        settings = self.settings
        if not settings.http_enabled:
            return None
        controls = PauseControls(
            pause=lambda: self.pause.pause().model_dump(),
            resume=lambda: self.pause.resume().model_dump(),
            token=write_control_token(settings.data_dir),  # a new one each start: `compute-node pause` reads it
        )
        loopback = is_loopback_address(settings.http_host)  # a page rebinding its name to it is refused
        http = HttpServer(create_app(self.metrics, parts.monitor.health, self._status, controls, loopback))
        self._opened.push_async_callback(http.stop)
        await http.start(settings.http_host, settings.http_port)
        log.info(
            "http endpoint",
            url=f"http://{settings.http_host}:{http.port}",
            paths=["/", "/metrics", "/healthz", "/status", "/pause", "/resume"],
        )
        return http

    def _announce_ready(self, running: RunningNode) -> None:
        identity, host, models = running.identity, running.host, running.pool.hosted
        listen = host.listen_addrs
        log.info("node started", address=identity.address, peer_id=host.peer_id, listen=listen, models=models)
        try:
            for addr in listen:
                print(f"listening on {addr}", flush=True)
        except (OSError, ValueError):  # no stdout (a closed pipe, or none at all): the log line says it
            pass
        self.notifier.ready()
        self.notifier.status(f"serving {', '.join(models)} as {identity.address}")

    def _status(self) -> dict[str, Any]:
        running = self.running
        return {
            **running.parts.monitor.status(),
            "execution": running.pool.stats(),
            "paused": self.pause.view().model_dump(),
            "ledger": {"dropped": running.ledger.dropped},  # rows lost (full disk); the last hour is `activity`
        }

    async def shutdown(self) -> None:
        """Stop taking tasks and finish (or error) the running ones, then close what startup opened."""
        log.info("shutting down")
        self.notifier.stopping()
        if self._running is not None:
            parts = self._running.parts
            parts.admission.draining = True
            await self._announce_draining(parts)
            await self._drain(parts.admission)
            await self._flush_results(parts)
        await self._opened.aclose()
        log.info("stopped")

    async def _drain(self, admission: Admission) -> None:
        timeout = 0.0 if self._force_exit else self.settings.drain_timeout
        drain = asyncio.create_task(admission.drain(timeout))
        while not drain.done():
            await asyncio.wait({drain}, timeout=0.2)
            if self._force_exit and not drain.done():
                await admission.drain(0.0)  # a second signal during the drain cuts it short
        if cancelled := drain.result():
            log.warning("tasks cancelled at shutdown", count=cancelled)

    @staticmethod
    async def _announce_draining(parts: NodeParts) -> None:
        """Publishers see the `leaving` heartbeat (capacity 0) at once instead of at the next heartbeat."""
        try:
            await asyncio.wait_for(parts.heartbeat.announce_leaving(), timeout=ANNOUNCE_LEAVING_S)
        except Exception as exc:  # noqa: BLE001 - best effort while stopping
            log.warning("draining heartbeat not published", error=str(exc))

    @staticmethod
    async def _flush_results(parts: NodeParts) -> None:
        try:
            await asyncio.wait_for(parts.outbox.flush(), timeout=FLUSH_AT_STOP_S)
        except Exception as exc:  # noqa: BLE001 - what is left stays in the journal for the next start
            log.warning("results left in the journal", error=str(exc))

    def _on_fatal_loop(self, name: str, reason: str) -> None:
        """A loop that cannot continue: exit non-zero so systemd or Docker restarts the node."""
        self.exit_code = 1
        self.request_exit()  # first: nothing that fails after it (a log write) can keep the node up
        log.error("node exiting: a background loop cannot continue", loop=name, error=reason)

    def _on_reject(self, topic: str, reason: str) -> None:
        self.clock.rejected(reason)
        if topic == TASK_TOPIC:
            self.metrics.reject(reason)

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        # SIGHUP (a closed terminal, a lost session) stops the node as SIGTERM does: drained, not killed.
        for sig in STOP_SIGNALS:
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (NotImplementedError, RuntimeError):  # not the main thread (tests)
                return

    def _on_signal(self, sig: signal.Signals) -> None:
        self.request_exit()  # first: a log write that fails (stderr a closed pipe) must not keep the node up
        log.info("signal received", signal=sig.name)


async def serve_node(
    settings: Settings, early: EarlyProcess | None = None, early_stops: EarlyStops | None = None
) -> int:
    """Run a node until stopped; returns the process exit code. (`compute-node start` runs it
    through launch.py, which spawns the first execution process before importing this module, and
    keeps the stop signals that come meanwhile: `early_stops`.)"""
    server = NodeServer(settings, early)
    try:
        await server.serve(early_stops)
    except Exception as exc:  # noqa: BLE001 - startup failures end the process with one clear line
        # What an operator can mend (a setting, a file, a port) is one line; anything else is a bug: its traceback.
        log.error("node failed", error=str(exc), error_type=type(exc).__name__, exc_info=not _operators(exc))
        if _operators(exc):  # an OSError may still be a bug: its traceback at debug
            log.debug("node failed: traceback", exc_info=True)
        print(f"compute-node: {exc}", file=sys.stderr)
        return 1
    if server.supervisor.fatal is not None:
        print(f"compute-node: background loop failed: {server.supervisor.fatal}", file=sys.stderr)
    return server.exit_code


def _operators(exc: Exception) -> bool:
    """Whether a startup failure is the operator's to mend, and names its cause in its message."""
    return isinstance(exc, OPERATOR_ERRORS)
