"""Operator-side configuration of the engine: tools, egress policy, model defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr


class SearchProvider(BaseModel):
    """A web-search endpoint the operator runs or pays for."""

    kind: Literal["searxng", "serper"]
    # searxng: the instance's base URL; serper: defaults to the public API.
    url: str = "https://google.serper.dev/search"
    api_key: SecretStr | None = None


class ToolSettings(BaseModel):
    """What tools this node offers and how tool HTTP may leave the machine."""

    search: SearchProvider | None = None
    reader_enabled: bool = False
    # Hosts ("api.example.com", "127.0.0.2", "127.0.0.1:8080") and CIDRs
    # ("10.1.0.0/16") tool requests may reach even though they are not public.
    egress_allow: list[str] = Field(default_factory=list)
    # host (or host:port) -> headers attached only to requests to that host.
    secrets: dict[str, dict[str, SecretStr]] = Field(default_factory=dict)
    http_timeout_s: float = Field(default=10.0, gt=0)
    max_response_bytes: int = Field(default=1_000_000, gt=0)
    max_redirects: int = Field(default=5, ge=0)


class EngineOptions(BaseModel):
    """Model defaults and the limits the operator allows a workflow to ask for."""

    temperature: float = Field(default=0.0, ge=0.0, le=5.0)
    seed: int | None = None
    max_tokens: int = Field(default=250, ge=1)  # when the workflow names none
    max_tokens_cap: int | None = Field(default=None, ge=1)
    max_steps_cap: int | None = Field(default=None, ge=1)
    max_time_cap: float | None = Field(default=None, gt=0)
    # maxLength put on every string a tool call may contain (small models loop).
    tool_arg_max_length: int = Field(default=200, ge=1)
