"""Maps the operator's settings onto the workflow engine's tool and model options."""

from __future__ import annotations

from pydantic import SecretStr, ValidationError

from config.settings import ConfigError, Settings
from workflows import EngineOptions, ToolSettings
from workflows.options import SearchProvider

_SETTING = {"secrets": "tool_secrets", "egress_allow": "tool_allow"}


def tool_settings(settings: Settings) -> ToolSettings:
    """The tools' settings (search, egress, secrets, limits) of the settings; ConfigError if one is invalid."""
    search = None
    if settings.search_provider is not None:
        key = settings.search_api_key
        search = SearchProvider(kind=settings.search_provider, api_key=None if key is None else SecretStr(key))
        if settings.search_url:
            search = search.model_copy(update={"url": settings.search_url})
    try:
        return ToolSettings(
            search=search,
            reader_enabled=True,
            egress_allow=settings.tool_allow,
            secrets={
                target: {name: SecretStr(value) for name, value in headers.items()}
                for target, headers in settings.tool_secrets.items()
            },
            http_timeout_s=settings.tool_timeout,
            max_response_bytes=settings.tool_max_bytes,
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "tool settings"
        raise ConfigError(f"invalid setting {_SETTING.get(field, field)!r}: {error['msg']}") from None


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
