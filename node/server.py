"""The daemon's lifecycle: startup, serve until a signal, graceful shutdown.

startup:  identity -> models -> P2P host (listen, subscribe) -> bootstrap dials
          -> background loops (intake, heartbeat, re-dial)
serve:    wait for SIGINT/SIGTERM
shutdown: stop admitting (heartbeat capacity 0), let running tasks finish up to
          `drain_timeout`, error the rest, stop the network, close the models.
          A second signal skips the wait.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time

import structlog

from config.settings import Settings
from node.connector import Connector
from node.executor import BusyError, Executor, Job
from node.heartbeat import Heartbeat
from node.identity import Identity
from node.inbound import HEARTBEAT_TOPIC, RESULTS_TOPIC, TASK_TOPIC, GossipGate, InboundError, decode
from node.intake import Ignore, Intake
from node.model_setup import load_models
from node.p2p import GossipMessage, P2PHost
from node.results import ResultPublisher
from node.worker import TaskRunner
from node.workflow_setup import engine_options, tool_settings

log = structlog.get_logger(__name__)


class NodeServer:
    """One compute node. `await serve()` runs it until a signal (or `request_exit`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.identity: Identity | None = None
        self.host: P2PHost | None = None
        self.executor: Executor | None = None
        self.listen_addrs: list[str] = []
        self.started = asyncio.Event()
        self._exit = asyncio.Event()
        self._force_exit = False
        self._models: dict = {}
        self._loops: list[asyncio.Task[None]] = []
        self._side_tasks: set[asyncio.Task[None]] = set()

    async def serve(self) -> None:
        """Start, run until asked to stop, shut down."""
        self._install_signal_handlers()
        try:
            await self.startup()
            await self._exit.wait()
        finally:
            await self.shutdown()

    def request_exit(self) -> None:
        """Begin a graceful shutdown (what the first SIGINT/SIGTERM does)."""
        if self._exit.is_set():
            self._force_exit = True
            log.warning("second stop request: exiting without waiting for tasks")
        self._exit.set()

    async def startup(self) -> None:
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.identity = (
            Identity.from_hex(settings.secret_key)
            if settings.secret_key
            else Identity.load_or_create(settings.identity_path)
        )
        self._models = await load_models(settings)
        names = list(self._models)
        host = P2PHost(self.identity.secret, settings.listen)
        self.host = host
        await host.start()

        runner = TaskRunner(self._models, ResultPublisher(self.identity, host), tool_settings(settings), engine_options(settings))
        self._runner = runner
        self.executor = Executor(runner.run, runner.abandon, names, settings.max_concurrent, settings.max_queue)
        self._intake = Intake(self.identity.address, names, settings.publishers or None)

        gate = GossipGate()
        queues = {topic: await host.subscribe(topic, gate.validate) for topic in (TASK_TOPIC, RESULTS_TOPIC, HEARTBEAT_TOPIC)}
        connector = Connector(host, settings.bootstrap, max_backoff=settings.redial_max_backoff)
        await connector.dial_all()
        heartbeat = Heartbeat(
            self.identity,
            host,
            names,
            capacity=self.executor.capacity,
            pending=lambda: self.executor.pending if self.executor else 0,
            tps=dict,
            interval=settings.heartbeat_interval,
        )
        self._loops = [
            asyncio.create_task(self._consume_tasks(queues[TASK_TOPIC]), name="intake"),
            asyncio.create_task(self._consume_others(queues[RESULTS_TOPIC]), name="results"),
            asyncio.create_task(self._consume_others(queues[HEARTBEAT_TOPIC]), name="heartbeats"),
            asyncio.create_task(heartbeat.run(), name="heartbeat"),
            asyncio.create_task(connector.run(), name="connector"),
        ]
        self.listen_addrs = host.listen_addrs
        log.info(
            "node started",
            address=self.identity.address,
            peer_id=host.peer_id,
            listen=self.listen_addrs,
            models=names,
        )
        for addr in self.listen_addrs:
            print(f"listening on {addr}", flush=True)
        self.started.set()

    async def shutdown(self) -> None:
        log.info("shutting down")
        if self.executor is not None:
            timeout = 0.0 if self._force_exit else self.settings.drain_timeout
            drain = asyncio.create_task(self.executor.drain(timeout))
            while not drain.done():
                # A second signal during the drain cuts it short.
                await asyncio.wait({drain}, timeout=0.2)
                if self._force_exit and not drain.done():
                    self.executor.accepting = False
                    await self.executor.drain(0.0)
            cancelled = drain.result()
            if cancelled:
                log.warning("tasks cancelled at shutdown", count=cancelled)
        for task in [*self._loops, *self._side_tasks]:
            task.cancel()
        await asyncio.gather(*self._loops, *self._side_tasks, return_exceptions=True)
        if self.host is not None:
            await self.host.stop()
        for model in self._models.values():
            await model.close()
        log.info("stopped")

    async def _consume_tasks(self, queue: asyncio.Queue[GossipMessage]) -> None:
        assert self.executor is not None
        while True:
            message = await queue.get()
            now = time.time_ns()
            try:
                inbound = decode(TASK_TOPIC, message.data, now)
            except InboundError:
                continue  # already rejected and logged by the gossip validator
            task = inbound.body
            task_log = log.bind(task_id=task.task_id)
            decision = self._intake.decide(inbound.sender, task, now)
            if isinstance(decision, Ignore):
                task_log.debug("task not taken", reason=decision.reason)
                continue
            job = Job(task=task, publisher=inbound.sender, model=decision.model, received_at_ns=now, log=task_log)
            task_log.info("task taken", model=decision.model, publisher=inbound.sender)
            try:
                self.executor.submit(job)
            except BusyError as exc:
                task_log.warning("task refused", reason=str(exc))
                self._spawn(self._runner.refuse(job, str(exc)))

    async def _consume_others(self, queue: asyncio.Queue[GossipMessage]) -> None:
        while True:
            await queue.get()

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
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
    return 0
