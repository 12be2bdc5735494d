"""The daemon's parts, built from the settings and wired to each other.

`NodeServer.startup` opens the resources one at a time (identity, journal,
execution processes, remote engines' health, P2P host: each is closed at
shutdown even when a later step fails), then `build_parts` makes the parts
that work with them. Nothing here starts a loop or touches the network.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from config.settings import ConfigError, Settings
from node.daemon.acceptance import Acceptance, SeenTasks
from node.daemon.admission import Admission
from node.daemon.clock_watch import ClockWatch
from node.daemon.direct import DirectIntake
from node.daemon.heartbeat import Heartbeat
from node.daemon.intake import TaskIntake
from node.daemon.journal import Journal
from node.daemon.ledger import Ledger
from node.daemon.monitor import NodeMonitor
from node.daemon.outbox import ResultOutbox
from node.daemon.pause import PauseState
from node.daemon.processes.pool import ExecutionPool
from node.daemon.remote_health import RemoteHealth, remote_models
from node.daemon.routes import DirectRoutes
from node.daemon.runner import TaskRunner
from node.ops.activity import NodeActivity
from node.ops.metrics import NodeMetrics
from node.ops.systemd import SystemdNotifier
from node.p2p.announce import advertised_addrs
from node.p2p.connector import Connector
from node.p2p.host import P2PHost
from node.p2p.inbound_gate import InboundLimits
from node.p2p.streams import StreamLimits
from node.wire.identity import Identity, warn_if_shared
from node.wire.inbound import GossipGate

log = structlog.get_logger(__name__)

# Settings of the journal's former byte quotas, kept so that old config files still load.
DEPRECATED_JOURNAL_SETTINGS = frozenset({"journal_retention", "journal_publisher_max_bytes"})


@dataclass(frozen=True)
class NodeParts:
    """The working parts of a running node (the resources they use are the NodeServer's)."""

    outbox: ResultOutbox
    runner: TaskRunner
    admission: Admission
    intake: TaskIntake
    monitor: NodeMonitor
    heartbeat: Heartbeat
    connector: Connector
    gate: GossipGate
    direct: DirectIntake


def open_identity(settings: Settings) -> Identity:
    """The node's key; makes the data directory (key, journal: the operator's only) first."""
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if settings.secret_key_file is not None:  # read into secret_key when the settings loaded
        warn_if_shared(settings.secret_key_file)
    return Identity.from_secret_or_file(settings.secret_key, settings.identity_path)


def open_journal(settings: Settings) -> Journal:
    """The journal, without the entries past their deadline plus the result grace."""
    for name in DEPRECATED_JOURNAL_SETTINGS & settings.model_fields_set:
        log.warning("setting deprecated and ignored", setting=name, why=Settings.model_fields[name].description)
    journal = Journal.open(settings.journal_path, settings.journal_max_bytes, settings.journal_max_records)
    journal.prune(time.time_ns() - int(settings.result_grace * 1e9))
    return journal


def open_ledger(settings: Settings) -> Ledger:
    """The ledger of finished tasks, pruned to its kept days and rows."""
    return Ledger.open(settings.ledger_path, settings.ledger_days, settings.ledger_max_rows)


def check_embedding_model(settings: Settings) -> None:
    """The embedding model, when set, must be one of the hosted models."""
    if settings.embedding_model and settings.embedding_model not in settings.models:
        raise ConfigError(
            f"invalid setting 'embedding_model': {settings.embedding_model} is not a hosted model ({settings.models})"
        )


def stream_limits(settings: Settings) -> StreamLimits:
    """Bounds of the node's direct-delivery streams; one lives at most as long as a task may."""
    return StreamLimits(
        max_streams=settings.direct_streams_max,
        max_streams_per_peer=settings.direct_streams_per_peer,
        first_frame_timeout_s=settings.direct_first_frame_timeout,
        max_lifetime_s=settings.deadline_horizon + settings.result_grace + 60.0,
        log_window_s=settings.reject_log_window,
    )


def inbound_limits(settings: Settings) -> InboundLimits:
    """How many inbound connections one remote host may hold and open per minute."""
    return InboundLimits(
        max_per_host=settings.inbound_connections_per_ip,
        new_per_host_per_minute=settings.inbound_connections_per_ip_per_minute,
    )


def free_places(admission: Admission, journal: Journal, models: list[str]) -> tuple[int, int]:
    """(free, max) task places for the heartbeat: none free while the journal fails, as intake then refuses
    every task (`journal_error`); publishers choose other nodes until it has worked for a while again."""
    free, total = admission.capacity(models)
    return (0, total) if journal.failing() is not None else (free, total)


def free_places_by_model(admission: Admission, journal: Journal, models: list[str]) -> dict[str, tuple[int, int]]:
    """`free_places` per model (the heartbeat's `modelCapacity`): each model's own running and queue places."""
    places = admission.capacity_by_model(models)
    if journal.failing() is not None:
        return {model: (0, total) for model, (_, total) in places.items()}
    return places


def build_parts(
    settings: Settings,
    metrics: NodeMetrics,
    notifier: SystemdNotifier,
    identity: Identity,
    journal: Journal,
    pool: ExecutionPool,
    remote: RemoteHealth,
    host: P2PHost,
    on_reject: Callable[[str, str], None],
    pause: PauseState,
    ledger: Ledger | None = None,
    clock: ClockWatch | None = None,
) -> NodeParts:
    """Make the parts and wire them to each other and to the open resources."""
    names = list(pool.hosted)
    remote_names = remote_models(settings, names)
    routes = DirectRoutes()
    outbox = ResultOutbox(identity, host, journal, grace_s=settings.result_grace, routes=routes)
    activity = NodeActivity()
    runner = TaskRunner(
        pool,
        outbox,
        metrics,
        settings.max_time_cap,
        settings.exec_cancel_grace,
        ledger=ledger,
        activity=activity,
    )
    # A remote engine's model runs its own entry's max_concurrent (the engine's capacity, not this machine's).
    concurrency = {
        name: pool.parallel[name] if name in remote_names else settings.max_concurrent or pool.parallel[name]
        for name in names
    }
    admission = Admission(
        runner.run,
        runner.abandon,
        concurrency,
        settings.max_queue,
        paused=lambda: pause.paused,
        kept_peers=host.kept_peers,  # a publisher's connection is not trimmed while its task is here
    )

    def serving() -> list[str]:
        """The models to take tasks for: hosted, not crash-looping, engine up."""
        return remote.advertised(pool.available())

    def advertised() -> list[str]:
        """The models to advertise: serving, and their process up and not stalling (a restart queues tasks)."""
        return remote.advertised(pool.advertised())

    acceptance = Acceptance(
        identity.address,
        names,
        settings.publishers or None,
        seen=SeenTasks(settings.journal_max_records),
        horizon_s=settings.deadline_horizon,
        serving=serving,
        local_models=[name for name in names if name not in remote_names],
        has_room=admission.would_admit,
    )
    now = time.time_ns()
    for task_id, deadline in journal.known_ids(now):  # a replay after a restart is still a duplicate
        acceptance.seen.add(task_id, deadline, now)
    intake = TaskIntake(acceptance, admission, journal, runner, metrics, settings.reject_log_window)
    monitor = NodeMonitor(
        identity,
        host,
        admission,
        journal,
        metrics,
        notifier,
        advertised,
        capacity=lambda: free_places(admission, journal, advertised()),
        activity=activity,
        held=lambda: len(outbox.unjournalled),
        clock=clock,
        startup_grace_s=settings.startup_grace,
    )
    addrs = advertised_addrs(host.listen_addrs, host.peer_id, settings.announce) if settings.direct else []
    heartbeat = Heartbeat(
        identity,
        host,
        advertised,
        capacity=lambda: free_places(admission, journal, advertised()),
        model_capacity=lambda models: free_places_by_model(admission, journal, models),
        pending=lambda: admission.pending,
        tps=lambda: remote.advertised_tps(pool.available_tps()),
        interval=settings.heartbeat_interval,
        addrs=lambda: addrs,
    )
    connector = Connector(host, settings.bootstrap, max_backoff=settings.redial_max_backoff)
    heard = clock.heard if clock is not None else None
    gate = GossipGate(on_reject=on_reject, log_window_s=settings.reject_log_window, on_valid=heard)
    direct = DirectIntake(intake, routes, on_reject, log_window_s=settings.reject_log_window, on_valid=heard)
    return NodeParts(outbox, runner, admission, intake, monitor, heartbeat, connector, gate, direct)
