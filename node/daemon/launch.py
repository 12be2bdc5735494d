"""`compute-node start`: the first execution process starts before the daemon's own imports.

The daemon's imports (libp2p's ~1,000 modules are most of them) and the execution
process's (llama.cpp, numpy, the workflow engine) each take about a second of CPU;
importing this module costs a few milliseconds, so the launcher spawns the child
first and imports the server (and with it libp2p) while the child imports. The pool
then configures the child (model load, startup benchmark) as its first process.
"""

from __future__ import annotations

import asyncio

from config.settings import ConfigError, Settings
from node.daemon.processes.early import EarlyProcess
from node.daemon.stop_signals import STOP_SIGNALS, EarlyStops
from node.ops.open_files import LOW as LOW_OPEN_FILES
from node.ops.open_files import raise_open_files_limit


def launch_node(settings: Settings) -> int:
    """Run a node until stopped; returns the process exit code."""
    import uvloop

    return uvloop.run(_launch(settings))


def check_models(settings: Settings) -> None:
    """ConfigError naming any model of `models` the registry (with the operator's entries) does not know:
    a typo would otherwise cost a process start and leave the node serving the other models only."""
    from models.registry import Registry, RegistryError

    try:
        registry = Registry.builtin().with_overrides(settings.registry)
    except RegistryError as exc:
        raise ConfigError(f"invalid setting 'registry': {exc}") from None
    if unknown := [name for name in settings.models if name not in registry]:
        raise ConfigError(
            f"invalid setting 'models': unknown model {', '.join(map(repr, unknown))}; "
            f"known models: {', '.join(registry.names())} (add one with `registry`)"
        )


def check_tool_secrets(settings: Settings) -> None:
    """ConfigError naming a `tool_secrets` key that could send its headers other than over https to one host:
    the engine's own rule (workflows.options.secret_target), checked before any process starts."""
    if not settings.tool_secrets:
        return  # the engine's import is spared (before the first execution process starts)
    from workflows.options import secret_target

    for key in settings.tool_secrets:
        try:
            secret_target(key)
        except ValueError as exc:
            raise ConfigError(f"invalid setting 'tool_secrets': {exc}") from None


async def _launch(settings: Settings) -> int:
    # A stop asked for before the server's own handlers exist (its imports take a second or more) is kept for it:
    # by default SIGTERM would end the process at once (exit -15, the child with it), without its log lines.
    stops = EarlyStops()
    for sig in STOP_SIGNALS:
        asyncio.get_running_loop().add_signal_handler(sig, stops, sig)
    check_models(settings)
    check_tool_secrets(settings)
    if (open_files := raise_open_files_limit()) < LOW_OPEN_FILES:
        import structlog

        structlog.get_logger(__name__).warning(
            "few open files allowed: connections may run the node out of descriptors",
            limit=open_files,
            fix=f"raise the hard limit (ulimit -Hn, LimitNOFILE=) to {LOW_OPEN_FILES} or more",
        )
    try:
        early = await EarlyProcess.spawn(settings)
    except OSError as exc:  # a read-only or full data dir: the server's start says so in one line, or starts
        import structlog

        structlog.get_logger(__name__).warning("first execution process not spawned early", error=str(exc))
        early = EarlyProcess(None)
    try:
        from node.daemon.server import serve_node  # the daemon's imports, beside the child's

        return await serve_node(settings, early, stops)
    finally:
        await early.close()  # a no-op once the pool took it
