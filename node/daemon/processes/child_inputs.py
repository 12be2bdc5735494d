"""What an execution process is given: the node's settings and environment, less the node's identity key."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from config.settings import Settings


def child_settings(settings: Settings) -> dict[str, Any]:
    """The settings an execution process gets in `configure`: all but the node's identity key (and its file)."""
    return settings.model_dump(mode="json", exclude={"secret_key", "secret_key_file"})


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment an execution process starts with: the daemon's, less the identity key.

    Settings reach the child in `configure` (child_settings, without the key); a key given as
    COMPUTE_NODE_SECRET_KEY must not reach the process that runs workflows and llama.cpp either
    (nor COMPUTE_NODE_SECRET_KEY_FILE, the path to it).
    """
    drop = {Settings.env_var("secret_key"), Settings.env_var("secret_key_file")}
    return {name: value for name, value in environ.items() if name.upper() not in drop}
