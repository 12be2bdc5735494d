"""The daemon's lifecycle: startup, serve until a signal, graceful shutdown.

startup:  identity and journal -> execution processes (one per model: load,
          benchmark, health probe; see node/daemon/execution/) -> remote engines'
          health -> P2P host -> the parts, wired (build.py) -> subscribe -> bootstrap
          dials -> journal recovery -> background loops (intake, heartbeat, re-dial,
          outbox, monitor) -> HTTP endpoint -> READY=1
serve:    wait for SIGINT/SIGTERM
shutdown: STOPPING=1, stop admitting (a `leaving` heartbeat, capacity 0), drain: let running tasks
          finish up to `drain_timeout`, error the rest, flush results, stop the
          network and the execution processes, close the journal. A second signal skips the wait.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

import structlog

from config.settings import Settings
from node.daemon.admission import Admission
from node.daemon.build import (
    NodeParts,
    build_parts,
    check_embedding_model,
    open_identity,
    open_journal,
    open_ledger,
    stream_limits,
)
from node.daemon.execution.pool import ExecutionPool
from node.daemon.idle import IdleWatch
from node.daemon.journal import Journal
from node.daemon.ledger import Ledger
from node.daemon.pause import PauseState
from node.daemon.recovery import recover_interrupted
from node.daemon.remote_health import RemoteHealth, remote_models
from node.daemon.runner import RERUN_MIN_TIME_LEFT_S
from node.daemon.supervisor import Supervisor, thread_alive
from node.ops.http_api import HttpServer, PauseControls, create_app
from node.ops.metrics import NodeMetrics
from node.ops.systemd import SystemdNotifier
from node.p2p.frame_stream import FrameStream
from node.p2p.host import GossipMessage, P2PHost
from node.wire.identity import Identity
from node.wire.topics import HEARTBEAT_TOPIC, RESULTS_TOPIC, TASK_TOPIC

log = structlog.get_logger(__name__)


class NodeServer:
    """One compute node. `await serve()` runs it until a signal (or `request_exit()`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = NodeMetrics()
        self.notifier = SystemdNotifier.from_env()
        self.supervisor = Supervisor(self._on_fatal_loop)
        # Resources, opened in this order by `startup` and closed by `shutdown` (None: not opened).
        self.identity: Identity | None = None
        self.journal: Journal | None = None
        self.ledger: Ledger | None = None
        self.pause = PauseState(settings.data_dir)
        self.pool: ExecutionPool | None = None
        self.remote_health: RemoteHealth | None = None
        self.host: P2PHost | None = None
        self.http: HttpServer | None = None
        self.parts: NodeParts | None = None  # built once the resources above are open
        self.listen_addrs: list[str] = []
        self.exit_code = 0
        self._loops: list[asyncio.Task[None]] = []
        self._exit = asyncio.Event()
        self._force_exit = False

    async def serve(self) -> None:
        """Start, run until asked to stop, shut down."""
        self._install_signal_handlers()
        try:
            await self.startup()
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
        settings = self.settings
        self.identity = identity = open_identity(settings)
        self.journal = journal = open_journal(settings)
        self.ledger = ledger = open_ledger(settings)
        # The execution processes (model load, cached benchmark) and the P2P host start together:
        # neither needs the other, and the host's start no longer waits behind the model load.
        try:
            async with asyncio.TaskGroup() as starting:
                pool_started = starting.create_task(self._start_execution_processes())
                host_started = starting.create_task(self._start_p2p_host(identity))
        except BaseExceptionGroup as failed:  # the first failure, as the steps in order raised it
            raise failed.exceptions[0]  # noqa: B904 - the group adds nothing but nesting
        pool, host = pool_started.result(), host_started.result()
        remote = await self._open_remote_health(pool)
        self.parts = parts = build_parts(
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
        )
        queues = await self._subscribe(host, parts)
        await parts.connector.dial_all()
        await recover_interrupted(
            journal,
            parts.outbox,
            parts.admission,
            rerun=settings.rerun_interrupted,
            min_time_left_s=RERUN_MIN_TIME_LEFT_S,  # as for a task whose execution process died
        )
        self._start_loops(parts, host, remote, queues)
        await self._start_http(parts)
        self._announce_ready(identity, host, pool.hosted)
        self._loops.append(self.supervisor.start("monitor", parts.monitor.run))  # watchdog pings after READY

    async def _start_execution_processes(self) -> ExecutionPool:
        """One execution process per model, each READY once probed."""
        check_embedding_model(self.settings)
        self.pool = pool = ExecutionPool(self.settings, self.metrics)
        await pool.start()
        return pool

    async def _open_remote_health(self, pool: ExecutionPool) -> RemoteHealth:
        """Remote engines (registry backend "openai"): checked periodically; a down one leaves the heartbeat."""
        names = remote_models(self.settings, list(pool.hosted))
        self.remote_health = remote = await RemoteHealth.open(self.settings, names, self.metrics, pool.tps)
        return remote

    async def _start_p2p_host(self, identity: Identity) -> P2PHost:
        self.host = host = P2PHost(
            identity.secret,
            self.settings.listen,
            stream_limits=stream_limits(self.settings),
            on_inbound_stream=self._on_stream if self.settings.direct else None,
        )
        await host.start()
        return host

    def _on_stream(self, stream: FrameStream, first: bytes) -> None:
        """A direct-delivery stream: the parts answer it (before they are built, it is reset)."""
        if self.parts is None:
            asyncio.ensure_future(stream.close(graceful=False))
            return
        self.parts.direct.on_stream(stream, first)

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
        return {TASK_TOPIC: await host.subscribe(TASK_TOPIC, gate.validate)}

    def _start_loops(
        self, parts: NodeParts, host: P2PHost, remote: RemoteHealth, queues: dict[str, asyncio.Queue[GossipMessage]]
    ) -> None:
        """The background loops, each restarted with backoff by the supervisor."""
        loops = self.supervisor
        monitor = parts.monitor
        self._loops = [
            loops.start("intake", lambda: parts.intake.run(queues[TASK_TOPIC])),
            loops.start("heartbeat", parts.heartbeat.run),
            loops.start("connector", parts.connector.run),
            loops.start("outbox", parts.outbox.run),
            loops.start("remote-health", remote.run),
            *self._operator_loops(),
            loops.watch_thread("p2p-thread", lambda: thread_alive(host.thread_name)),
        ]
        monitor.watch_loops(loops.failed)

    def _operator_loops(self) -> list[asyncio.Task[None]]:
        """The ledger's writer, and with idle_only the watch on the machine's load."""
        loops = []
        if self.ledger is not None:
            loops.append(self.supervisor.start("ledger", self.ledger.run))
        if self.settings.idle_only:
            watch = IdleWatch(self.pause, self.settings)
            loops.append(self.supervisor.start("idle-watch", watch.run))
        return loops

    async def _start_http(self, parts: NodeParts) -> None:
        settings = self.settings
        if not settings.http_enabled:
            return
        controls = PauseControls(
            pause=lambda: self.pause.pause().model_dump(), resume=lambda: self.pause.resume().model_dump()
        )
        self.http = HttpServer(create_app(self.metrics, parts.monitor.health, self._status, controls))
        await self.http.start(settings.http_host, settings.http_port)
        log.info(
            "http endpoint",
            url=f"http://{settings.http_host}:{self.http.port}",
            paths=["/", "/metrics", "/healthz", "/status", "/pause", "/resume"],
        )

    def _announce_ready(self, identity: Identity, host: P2PHost, models: list[str]) -> None:
        self.listen_addrs = host.listen_addrs
        log.info(
            "node started", address=identity.address, peer_id=host.peer_id, listen=self.listen_addrs, models=models
        )
        for addr in self.listen_addrs:
            print(f"listening on {addr}", flush=True)
        self.notifier.ready()
        self.notifier.status(f"serving {', '.join(models)} as {identity.address}")

    def _status(self) -> dict[str, Any]:
        assert self.parts is not None and self.pool is not None
        return {
            **self.parts.monitor.status(),
            "execution": self.pool.stats(),
            "paused": self.pause.view().model_dump(),
            "ledger": self._ledger_status(),
        }

    def _ledger_status(self) -> dict[str, Any]:
        ledger = self.ledger
        if ledger is None:
            return {"recent": [], "per_minute": [], "dropped": 0}
        return {
            "recent": [entry.model_dump() for entry in ledger.recent()],
            "per_minute": [count.model_dump() for count in ledger.per_minute()],
            "dropped": ledger.dropped,
        }

    async def shutdown(self) -> None:
        log.info("shutting down")
        self.notifier.stopping()
        parts = self.parts
        if parts is not None:
            parts.admission.accepting = False
            await self._announce_draining(parts)
            await self._drain(parts.admission)
            await self._flush_results(parts)
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if parts is not None:
            await parts.intake.close()
            await parts.direct.close()
        if self.http is not None:
            await self.http.stop()
        if self.host is not None:
            await self.host.stop()
        if self.pool is not None:
            await self.pool.close()
        if self.remote_health is not None:
            await self.remote_health.close()
        if self.journal is not None:
            self.journal.close()
        if self.ledger is not None:
            self.ledger.close()
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
            await asyncio.wait_for(parts.heartbeat.announce_leaving(), timeout=2)
        except Exception as exc:  # noqa: BLE001 - best effort while stopping
            log.warning("draining heartbeat not published", error=str(exc))

    @staticmethod
    async def _flush_results(parts: NodeParts) -> None:
        try:
            await asyncio.wait_for(parts.outbox.flush(), timeout=5)
        except Exception as exc:  # noqa: BLE001 - what is left stays in the journal for the next start
            log.warning("results left in the journal", error=str(exc))

    def _on_fatal_loop(self, name: str, reason: str) -> None:
        """A loop that cannot continue: exit non-zero so systemd or Docker restarts the node."""
        log.error("node exiting: a background loop cannot continue", loop=name, error=reason)
        self.exit_code = 1
        self.request_exit()

    def _on_reject(self, topic: str, reason: str) -> None:
        if topic == TASK_TOPIC:
            self.metrics.reject(reason)

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (NotImplementedError, RuntimeError):  # not the main thread (tests)
                return

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("signal received", signal=sig.name)
        self.request_exit()


def run_node(settings: Settings) -> int:
    """Run a node until stopped; returns the process exit code."""
    import uvloop

    server = NodeServer(settings)
    try:
        uvloop.run(server.serve())
    except Exception as exc:  # noqa: BLE001 - startup failures end the process with one clear line
        log.error("node failed", error=str(exc), error_type=type(exc).__name__)
        print(f"compute-node: {exc}", file=sys.stderr)
        return 1
    if server.supervisor.fatal is not None:
        print(f"compute-node: background loop failed: {server.supervisor.fatal}", file=sys.stderr)
    return server.exit_code
