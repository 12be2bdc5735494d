"""The first model's execution process, spawned before the daemon's own imports.

`compute-node start` spawns it first thing (node/daemon/launch.py): the child's
interpreter start and its imports (llama.cpp, numpy, pydantic, the workflow engine)
run beside the daemon's imports (libp2p's are most of them). The pool adopts it as
that model's first process and configures it then, so its model load and startup
benchmark run after the daemon's imports, as before (a benchmark measured beside
them would be cached too low). One never adopted (startup failed first) is closed
by the launcher. `execution_process` makes every process, this one and the pool's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import structlog

from config.settings import Settings
from models.benchmark import CacheFile, SpeedStore
from node.daemon.processes.child_inputs import child_environment, child_settings
from node.daemon.processes.handle import ExecutionProcess
from node.daemon.processes.sandbox_policy import network_for, prepare_sandbox
from node.daemon.processes.tool_settings import tool_settings
from node.execution.protocol import SandboxPolicy
from workflows.options import ToolSettings

log = structlog.get_logger(__name__)

CLOSE_TIMEOUT_S = 5.0


def execution_process(
    settings: Settings,
    model: str,
    policy: SandboxPolicy | None,
    speeds: SpeedStore,
    tools: ToolSettings,
    on_exit: Callable[[ExecutionProcess], None] = lambda _: None,
) -> ExecutionProcess:
    """A process for `model` (not spawned yet), given what child_inputs.py lets it have: its settings and
    environment less the secrets it has no use for, its sandbox (`policy`, with internet sockets only for a
    remote engine), and the tools' settings its requests are made with here."""
    environment = child_environment(os.environ, settings, model)
    if withheld := sorted(set(os.environ) - set(environment)):  # names only: an operator's check of what passes
        log.debug("environment withheld from the execution process", model=model, names=withheld)
    return ExecutionProcess(
        model,
        child_settings(settings, model),
        on_exit,
        network_for(policy, settings, model),
        speeds,
        settings.scratch_dir,
        tools,
        environment,
    )


class EarlyProcess:
    """An execution process spawned for the first configured model, until the pool takes it."""

    def __init__(self, process: ExecutionProcess | None) -> None:
        self._process = process

    @classmethod
    async def spawn(cls, settings: Settings) -> EarlyProcess:
        """Spawn the first configured model's process (none without a model)."""
        models = list(dict.fromkeys(settings.models))
        if not models:
            return cls(None)
        policy, tools = prepare_sandbox(settings), tool_settings(settings)
        process = execution_process(settings, models[0], policy, CacheFile(settings.benchmark_cache_path), tools)
        await process.spawn()
        return cls(process)

    @property
    def scratch(self) -> Path | None:
        """The process's scratch folder, while nobody took it."""
        return self._process.scratch.path if self._process is not None and self._process.scratch else None

    def take(self, model: str) -> ExecutionProcess | None:
        """The process, once, if it was spawned for `model`."""
        process = self._process
        if process is None or process.model != model:
            return None
        self._process = None
        return process

    async def close(self) -> None:
        """Stop the process if nobody took it."""
        process, self._process = self._process, None
        if process is not None:
            await process.close(CLOSE_TIMEOUT_S)
