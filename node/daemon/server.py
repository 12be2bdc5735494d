"""The daemon's lifecycle: startup, serve until a signal, graceful shutdown.

startup:  identity -> journal -> execution processes (one per model: load,
          benchmark, health probe; see node/daemon/execution/) -> P2P host (listen, subscribe) ->
          bootstrap dials -> journal recovery -> background loops (intake,
          heartbeat, re-dial, outbox, monitor) -> HTTP endpoint -> READY=1
serve:    wait for SIGINT/SIGTERM
shutdown: STOPPING=1, stop admitting (heartbeat capacity 0), let running tasks
          finish up to `drain_timeout`, error the rest, flush results, stop the
          network and the execution processes, close the journal. A second signal skips the wait.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Coroutine
from typing import Any

import structlog

from config.settings import ConfigError, Settings
from node.daemon.admission import BusyError, Executor, Job
from node.daemon.execution.pool import ExecutionPool
from node.daemon.heartbeat import Heartbeat
from node.daemon.intake import Ignore, Intake
from node.daemon.journal import Journal, JournalError, JournalQuotaError
from node.daemon.monitor import NodeMonitor
from node.daemon.outbox import ResultOutbox
from node.daemon.recovery import recover_interrupted
from node.daemon.remote_health import RemoteHealth, remote_models
from node.daemon.runner import TaskRunner
from node.daemon.supervisor import Supervisor, thread_alive
from node.daemon.workflow_setup import engine_options
from node.ops.http_api import HttpServer, create_app
from node.ops.metrics import NodeMetrics
from node.ops.systemd import SystemdNotifier
from node.p2p.connector import Connector
from node.p2p.host import GossipMessage, P2PHost
from node.wire.identity import Identity
from node.wire.inbound import GossipGate, InboundError, LogWindow, decode
from node.wire.messages import TaskBody, encode_body
from node.wire.topics import HEARTBEAT_TOPIC, RESULTS_TOPIC, TASK_TOPIC

log = structlog.get_logger(__name__)


class NodeServer:
    """One compute node. `await serve()` runs it until a signal (or `request_exit()`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = NodeMetrics()
        self.notifier = SystemdNotifier.from_env()
        self.identity: Identity | None = None
        self.host: P2PHost | None = None
        self.executor: Executor | None = None
        self.journal: Journal | None = None
        self.monitor: NodeMonitor | None = None
        self.http: HttpServer | None = None
        self.listen_addrs: list[str] = []
        self._outbox: ResultOutbox | None = None
        self._heartbeat: Heartbeat | None = None
        self.remote_health: RemoteHealth | None = None
        self._exit = asyncio.Event()
        self._force_exit = False
        self.pool: ExecutionPool | None = None
        self._loops: list[asyncio.Task[None]] = []
        self.exit_code = 0
        self.supervisor = Supervisor(self._on_fatal_loop)
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._journal_log = LogWindow(settings.reject_log_window)  # a full disk fails every task: log it once a window

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
        settings = self.settings
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # key, journal: the operator's only
        self.identity = (
            Identity.from_hex(settings.secret_key)
            if settings.secret_key
            else Identity.load_or_create(settings.identity_path)
        )
        self.journal = journal = Journal.open(
            settings.journal_path, settings.journal_max_bytes, settings.journal_publisher_max_bytes
        )
        journal.prune(time.time_ns() - int(settings.journal_retention * 1e9))
        if settings.embedding_model and settings.embedding_model not in settings.models:
            raise ConfigError(
                f"invalid setting 'embedding_model': {settings.embedding_model} is not a hosted model ({settings.models})"
            )
        self.pool = pool = ExecutionPool(settings, self.metrics)  # one execution process per model, READY = probed
        await pool.start()
        names = list(pool.hosted)
        remote_names = remote_models(settings, names)
        self.host = host = P2PHost(self.identity.secret, settings.listen)
        await host.start()

        outbox = ResultOutbox(
            self.identity, host, journal, grace_s=settings.result_grace, retention_s=settings.journal_retention
        )
        runner = TaskRunner(pool, outbox, journal, self.metrics, engine_options(settings), settings.exec_cancel_grace)
        self._runner = runner
        # A remote engine's model runs its own entry's max_concurrent (the engine's capacity, not this machine's).
        concurrency = {
            name: pool.parallel[name] if name in remote_names else settings.max_concurrent or pool.parallel[name]
            for name in names
        }
        self.executor = Executor(runner.run, runner.abandon, concurrency, settings.max_queue)
        self._intake = Intake(
            self.identity.address, names, settings.publishers or None, horizon_s=settings.deadline_horizon
        )
        now = time.time_ns()
        for task_id, deadline in journal.known_ids(now):  # a replay after a restart is still a duplicate
            self._intake.seen.add(task_id, deadline, now)
        self.monitor = NodeMonitor(
            self.identity,
            host,
            self.executor,
            journal,
            self.metrics,
            self.notifier,
            pool.available,
            startup_grace_s=settings.startup_grace,
        )

        gate = GossipGate(on_reject=self._on_reject, log_window_s=settings.reject_log_window)
        queues = {
            topic: await host.subscribe(topic, gate.validate) for topic in (TASK_TOPIC, RESULTS_TOPIC, HEARTBEAT_TOPIC)
        }
        connector = Connector(host, settings.bootstrap, max_backoff=settings.redial_max_backoff)
        await connector.dial_all()
        await recover_interrupted(
            journal, outbox, self.executor, rerun=settings.rerun_interrupted, min_time_left_s=10.0
        )
        self._outbox = outbox
        # Remote engines (registry backend "openai"): checked periodically; a down one leaves the heartbeat.
        remote = await RemoteHealth.open(settings, remote_names, self.metrics, pool.tps)
        self.remote_health = remote
        self._heartbeat = heartbeat = Heartbeat(
            self.identity,
            host,
            lambda: remote.advertised(pool.available()),
            capacity=self.executor.capacity,
            pending=lambda: self.executor.pending,
            tps=lambda: remote.advertised_tps(pool.available_tps()),
            interval=settings.heartbeat_interval,
        )
        loops = self.supervisor
        self._loops = [
            loops.start("intake", lambda: self._consume_tasks(queues[TASK_TOPIC])),
            loops.start("results", lambda: self._drain_queue(queues[RESULTS_TOPIC])),
            loops.start("heartbeats", lambda: self._consume_heartbeats(queues[HEARTBEAT_TOPIC])),
            loops.start("heartbeat", heartbeat.run),
            loops.start("connector", connector.run),
            loops.start("outbox", outbox.run),
            loops.start("remote-health", remote.run),
            loops.watch_thread("p2p-thread", lambda: thread_alive(host.thread_name)),
        ]
        self.monitor.watch_loops(loops.failed)
        if settings.http_enabled:
            self.http = HttpServer(create_app(self.metrics, self.monitor.health, self._status))
            await self.http.start(settings.http_host, settings.http_port)
            log.info(
                "http endpoint",
                url=f"http://{settings.http_host}:{self.http.port}",
                paths=["/metrics", "/healthz", "/status"],
            )
        self.listen_addrs = host.listen_addrs
        log.info(
            "node started", address=self.identity.address, peer_id=host.peer_id, listen=self.listen_addrs, models=names
        )
        for addr in self.listen_addrs:
            print(f"listening on {addr}", flush=True)
        self.notifier.ready()
        self.notifier.status(f"serving {', '.join(names)} as {self.identity.address}")
        self._loops.append(loops.start("monitor", self.monitor.run))  # watchdog pings after READY

    def _status(self) -> dict[str, Any]:
        assert self.monitor is not None and self.pool is not None
        return {**self.monitor.status(), "execution": self.pool.stats()}

    async def shutdown(self) -> None:
        log.info("shutting down")
        self.notifier.stopping()
        if self.executor is not None:
            self.executor.accepting = False
            await self._announce_draining()
            await self._drain(self.executor)
            await self._flush_results()
        for task in [*self._loops, *self._side_tasks]:
            task.cancel()
        await asyncio.gather(*self._loops, *self._side_tasks, return_exceptions=True)
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
        log.info("stopped")

    async def _drain(self, executor: Executor) -> None:
        timeout = 0.0 if self._force_exit else self.settings.drain_timeout
        drain = asyncio.create_task(executor.drain(timeout))
        while not drain.done():
            await asyncio.wait({drain}, timeout=0.2)
            if self._force_exit and not drain.done():
                await executor.drain(0.0)  # a second signal during the drain cuts it short
        if cancelled := drain.result():
            log.warning("tasks cancelled at shutdown", count=cancelled)

    async def _announce_draining(self) -> None:
        """Publishers see capacity 0 at once instead of at the next heartbeat."""
        if self._heartbeat is None:
            return
        try:
            await asyncio.wait_for(self._heartbeat.publish_once(), timeout=2)
        except Exception as exc:  # noqa: BLE001 - best effort while stopping
            log.warning("draining heartbeat not published", error=str(exc))

    async def _flush_results(self) -> None:
        if self._outbox is None:
            return
        try:
            await asyncio.wait_for(self._outbox.flush(), timeout=5)
        except Exception as exc:  # noqa: BLE001 - what is left stays in the journal for the next start
            log.warning("results left in the journal", error=str(exc))

    async def _consume_tasks(self, queue: asyncio.Queue[GossipMessage]) -> None:
        assert self.executor is not None and self.journal is not None
        while True:
            message = await queue.get()
            try:
                self._take_task(message)
            except Exception:  # noqa: BLE001 - one message must never stop the intake
                self.metrics.ignore("internal_error")
                log.exception("task intake failed; the next task is taken as usual")

    def _take_task(self, message: GossipMessage) -> None:
        assert self.executor is not None and self.journal is not None
        now = time.time_ns()
        # Decoded a second time: the validator's verdict runs on the libp2p thread and
        # gives back only accept/reject. ~55 us, against ~1.5 ms of P2P work per message.
        try:
            inbound = decode(TASK_TOPIC, message.data, now)
        except InboundError:
            return  # already rejected and logged by the gossip validator
        task = inbound.body
        assert isinstance(task, TaskBody)
        self.metrics.tasks_received.inc()
        task_log = log.bind(task_id=task.task_id)
        task_log.debug("task received", publisher=inbound.sender)
        decision = self._intake.decide(inbound.sender, task, now)
        if isinstance(decision, Ignore):
            self.metrics.ignore(decision.reason)
            task_log.debug("task not taken", reason=decision.reason, detail=decision.detail)
            return
        # Only a task that will run is journalled with its body; a refused one (busy) keeps
        # just its row, so that its error result still goes through the outbox.
        runs = self.executor.admits(decision.model)
        try:
            journalled = self.journal.record_accepted(
                task.task_id, inbound.sender, task.deadline, decision.model, encode_body(task) if runs else b"", now
            )
        except JournalError as exc:
            self._intake.seen.discard(task.task_id)
            reason = "journal_full" if isinstance(exc, JournalQuotaError) else "journal_error"
            self.metrics.ignore(reason)
            if (not_logged := self._journal_log.admit(reason)) is not None:
                task_log.error("task not taken", reason=reason, detail=str(exc), not_logged_since=not_logged)
            return
        if not journalled:
            self.metrics.ignore("duplicate")
            task_log.debug("task not taken", reason="duplicate", detail="already in the journal")
            return
        self.metrics.tasks_taken.inc()
        job = Job(task=task, publisher=inbound.sender, model=decision.model, received_at_ns=now, log=task_log)
        task_log.info("task taken", model=decision.model, publisher=inbound.sender)
        try:
            self.executor.submit(job)
        except BusyError as exc:
            task_log.warning("task refused", reason=str(exc))
            self._spawn(self._runner.abandon(job, str(exc)))

    async def _consume_heartbeats(self, queue: asyncio.Queue[GossipMessage]) -> None:
        while True:
            await queue.get()
            if self.monitor is not None:
                self.monitor.heartbeat_seen()

    @staticmethod
    async def _drain_queue(queue: asyncio.Queue[GossipMessage]) -> None:
        while True:
            await queue.get()

    def _on_fatal_loop(self, name: str, reason: str) -> None:
        """A loop that cannot continue: exit non-zero so systemd or Docker restarts the node."""
        log.error("node exiting: a background loop cannot continue", loop=name, error=reason)
        self.exit_code = 1
        self.request_exit()

    def _on_reject(self, topic: str, reason: str) -> None:
        if topic == TASK_TOPIC:
            self.metrics.reject(reason)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

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
