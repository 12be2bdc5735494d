"""The gateway's settings: defaults < TOML file < environment (COMPUTE_NODE_GATEWAY_*) < CLI flags.

Same style as config/settings.py: one flat field per setting, so the TOML key
`rate_limit`, the variable `COMPUTE_NODE_GATEWAY_RATE_LIMIT` and the flag
`--rate-limit` name the same thing. Lists accept a JSON array or a
comma-separated string in the environment.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from config.layered import ConfigError, LayeredSettings, MultiaddrList, Seconds, StrList, UserPath

__all__ = ["ConfigError", "GatewaySettings", "is_loopback"]

ENV_PREFIX = "COMPUTE_NODE_GATEWAY_"


class GatewaySettings(LayeredSettings):
    """Everything a gateway operator can set."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True, allow_inf_nan=False)
    singular_flags: ClassVar[dict[str, str]] = {"peers": "peer", "api_keys": "api-key"}
    label: ClassVar[str] = "gateway settings"
    secret_settings: ClassVar[dict[str, str | None]] = {"secret_key": "secret_key_file", "api_keys": None}

    # Identity and storage
    data_dir: UserPath = Field(
        default=Path("~/.compute-node/gateway"), description="Key, task database and node reputation live here"
    )
    secret_key: str | None = Field(
        default=None, description="Publisher secret key (hex); default: <data_dir>/identity.key"
    )
    secret_key_file: UserPath | None = Field(
        default=None, description="File holding the publisher secret key (hex), read at start (never created)"
    )

    # Network
    peers: MultiaddrList = Field(
        default=[],
        min_length=1,
        description="Nodes to join the network through (/ip4/../tcp/../p2p/.., or /dns4/<name>/...)",
    )
    listen: MultiaddrList = Field(
        default=["/ip4/127.0.0.1/tcp/0"], min_length=1, description="libp2p listen multiaddrs"
    )
    connect_timeout: Seconds = Field(default=15.0, gt=0, description="Seconds to join the task mesh at start")
    max_retries: int = Field(default=2, ge=0, description="Busy/failed nodes retried on another node, per task")
    delivery: Literal["direct", "gossip"] = Field(
        default="direct", description="direct: tasks on a stream to the chosen node (protocol 0.4); gossip: 0.3"
    )

    # HTTP API
    host: str = Field(default="127.0.0.1", description="HTTP listen host (non-loopback needs api_keys)")
    port: int = Field(default=8080, ge=0, le=65535, description="HTTP listen port")
    api_keys: StrList = Field(default=[], description="Bearer API keys; none: local-only, no auth")
    rate_limit: float = Field(default=600.0, gt=0, description="Requests per minute per key")
    rate_burst: int = Field(default=60, ge=1, description="Requests a key may make at once before rate limiting")
    max_pending: int = Field(
        default=100, ge=1, description="Unfinished tasks per key (without api_keys: per Dria SDK token)"
    )
    max_pending_total: int = Field(
        default=1000, ge=1, description="Unfinished tasks over all keys and tokens; past it new tasks get 429"
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="Largest request body")
    request_timeout: Seconds = Field(
        default=30.0,
        gt=0,
        description="Seconds a client has to send a request's head, and again its body (past it: closed, or 408)",
    )
    max_batch: int = Field(default=100, ge=1, description="Most tasks per batch request (and ids per list request)")
    default_timeout: Seconds = Field(default=60.0, gt=0, description="Task timeout (s) when a request gives none")
    max_timeout: Seconds = Field(default=600.0, gt=0, description="Largest task timeout (s) a request may ask for")
    max_wait: Seconds = Field(default=60.0, ge=0, description="Longest long poll (?wait=) in seconds")
    deadline_horizon: Seconds = Field(
        default=3600.0, gt=0, description="Seconds ahead a Dria SDK task's deadline may lie (nodes' default too)"
    )
    retention: Seconds = Field(
        default=86400.0,
        gt=0,
        description="Seconds a finished task is kept (Dria SDK tasks: at most deadline_horizon past deadline or result)",
    )
    max_stored_mb: int = Field(
        default=1024,
        ge=1,
        le=1 << 30,
        description="MB of tasks each table of the task database keeps; past it the finished ones that would "
        "expire first are deleted early",
    )
    reputation_half_life: Seconds = Field(
        default=3600.0, gt=0, description="Seconds for a measurement of a node's service to count half"
    )
    verify_ban_seconds: Seconds = Field(
        default=7 * 86400.0, ge=0, description="Seconds a node whose result failed verification is not chosen"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Log level")
    log_format: Literal["auto", "json", "console"] = Field(default="auto", description="auto: console on a tty")

    @field_validator("api_keys")
    @classmethod
    def _long_keys(cls, value: list[str]) -> list[str]:
        for key in value:
            if len(key) < 16:
                raise ValueError("an API key must be at least 16 characters")
        return value

    @model_validator(mode="after")
    def _key_file(self) -> GatewaySettings:
        self._secret_key_from_file()
        return self

    @model_validator(mode="after")
    def _public_needs_keys(self) -> GatewaySettings:
        if problem := self.public_without_keys(self.host):
            raise ValueError(f"host {problem}")
        if self.default_timeout > self.max_timeout:
            raise ValueError(f"default_timeout {self.default_timeout:g} exceeds max_timeout {self.max_timeout:g}")
        return self

    def public_without_keys(self, host: str) -> str | None:
        """Why serving HTTP on `host` is refused (a public address without api_keys), or None."""
        if self.api_keys or is_loopback(host):
            return None
        return (
            f"{host!r} is not a loopback address and no api_keys are set; set api_keys "
            f"({GatewaySettings.env_var('api_keys')} / {GatewaySettings.flag('api_keys')}) to listen on a public address"
        )

    @property
    def identity_path(self) -> Path:
        """The gateway's secret key file in data_dir."""
        return self.data_dir / "identity.key"

    @property
    def database_path(self) -> Path:
        """The gateway's SQLite database in data_dir."""
        return self.data_dir / "gateway.sqlite3"

    @property
    def reputation_path(self) -> Path:
        """The measured service of nodes (`compute-node nodes --data-dir <data_dir>` prints it)."""
        return self.data_dir / "reputation.sqlite3"


def is_loopback(host: str) -> bool:
    """Whether `host` (an IP or `localhost`) only listens on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
