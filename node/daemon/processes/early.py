"""The first model's execution process, spawned before the daemon's own imports.

`compute-node start` spawns it first thing (node/daemon/launch.py): the child's
interpreter start and its imports (llama.cpp, numpy, pydantic, the workflow engine)
run beside the daemon's imports (libp2p's are most of them). The pool adopts it as
that model's first process and configures it then, so its model load and startup
benchmark run after the daemon's imports, as before (a benchmark measured beside
them would be cached too low). One never adopted (startup failed first) is closed
by the launcher.
"""

from __future__ import annotations

import os
from pathlib import Path

from config.settings import Settings
from models.benchmark import CacheFile
from node.daemon.processes.child_inputs import child_environment, child_settings
from node.daemon.processes.handle import ExecutionProcess
from node.daemon.processes.sandbox_policy import network_for, prepare_sandbox
from node.daemon.processes.tool_egress import tool_settings

CLOSE_TIMEOUT_S = 5.0


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
        process = ExecutionProcess(
            models[0],
            child_settings(settings, models[0]),
            lambda _: None,
            network_for(prepare_sandbox(settings), settings, models[0]),
            CacheFile(settings.benchmark_cache_path),
            settings.scratch_dir,
            tool_settings(settings),
            child_environment(os.environ, settings, models[0]),
        )
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
