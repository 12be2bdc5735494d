"""The tools' settings: the operator's, in full, for the requests the daemon makes (tool_egress.py), and what an
execution process is told of them, without the secrets the daemon adds to those requests."""

from __future__ import annotations

from pydantic import SecretStr, ValidationError

from config.settings import ConfigError, Settings
from workflows.options import SearchProvider, ToolSettings

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


def without_secrets(tools: ToolSettings) -> ToolSettings:
    """What an execution process is told of the tools (in `configure`): all but the operator's secrets, which
    the daemon adds to the requests it makes."""
    search = None if tools.search is None else tools.search.model_copy(update={"api_key": None})
    return ToolSettings.model_validate({**tools.model_dump(exclude={"search", "secrets"}), "search": search})
