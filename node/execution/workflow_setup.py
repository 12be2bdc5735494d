"""Maps the operator's settings onto the workflow engine's options (its tools' come from the daemon, in `configure`)."""

from __future__ import annotations

from config.settings import Settings
from workflows import EngineOptions


def engine_options(settings: Settings) -> EngineOptions:
    """The workflow engine's options and caps of the settings."""
    return EngineOptions(
        temperature=settings.temperature,
        max_tokens_cap=settings.max_tokens_cap,
        max_time_cap=settings.max_time_cap,
        max_steps_cap=settings.max_steps_cap,
        max_task_tokens=settings.max_task_tokens,
        max_memory_bytes=settings.max_memory_bytes,
        max_result_bytes=settings.max_result_bytes,
        tool_arg_max_length=settings.tool_arg_max_length,
    )
