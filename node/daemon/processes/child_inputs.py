"""What an execution process is given: the node's settings and environment, less the secrets it has no use for.

The node's identity key; the operator's tool secrets (`tool_secrets`, `search_api_key`: the daemon makes the
processes' tool requests and adds those itself, tool_egress.py); and the API keys of remote engines the process
does not serve (a registry entry's `api_key`, or the variable its `api_key_env` names). A workflow that took a
process over finds none of them there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from config.settings import Settings
from models.registry import Registry
from models.requests import ModelError

# What a process reads in place of the search provider's key, which it needs only to know one is configured.
KEY_HELD_BY_THE_DAEMON = "held-by-the-daemon"
# The words, and pairs of words, of the names credentials go by in an environment (HF_TOKEN, GITHUB_TOKEN,
# AWS_SECRET_ACCESS_KEY, OPENAI_API_KEY, a gateway's COMPUTE_NODE_GATEWAY_API_KEYS...), a name read as words
# between underscores (TOKENIZERS_PARALLELISM holds none): no process's to read, but a served engine's
# `api_key_env`.
CREDENTIAL_WORDS = frozenset(
    {"TOKEN", "TOKENS", "SECRET", "SECRETS", "PASSWORD", "PASSWD", "CREDENTIAL", "CREDENTIALS"}
)
CREDENTIAL_PAIRS = frozenset({"API_KEY", "API_KEYS", "APIKEY", "ACCESS_KEY", "PRIVATE_KEY", "AUTH_KEY"})


def child_settings(settings: Settings, model: str) -> dict[str, Any]:
    """The settings `model`'s execution process gets in `configure`: all but the node's identity key (and its
    file), the tools' secrets and the keys of registry entries it does not serve."""
    dumped = settings.model_dump(mode="json", exclude={"secret_key", "secret_key_file"})
    dumped["tool_secrets"] = {}
    if dumped.get("search_api_key") is not None:
        dumped["search_api_key"] = KEY_HELD_BY_THE_DAEMON
    served = _served(settings, model)
    dumped["registry"] = {
        name: entry if name in served else {k: v for k, v in entry.items() if k not in ("api_key", "api_key_env")}
        for name, entry in dumped.get("registry", {}).items()
    }
    return dumped


def child_environment(environ: Mapping[str, str], settings: Settings | None = None, model: str = "") -> dict[str, str]:
    """The environment `model`'s execution process starts with: the daemon's, less every secret setting, every
    remote engine's `api_key_env` and every variable named as credentials are (`names_a_credential`), but the
    `api_key_env` of an engine it serves (with `settings`).

    Settings reach the child in `configure` (child_settings, without the secrets); one given in the environment
    (COMPUTE_NODE_SECRET_KEY, COMPUTE_NODE_SEARCH_API_KEY, COMPUTE_NODE_TOOL_SECRETS, or the path to the key's
    file) must not reach the process that runs workflows and llama.cpp either.
    """
    secrets = [*Settings.secret_settings, *(file for file in Settings.secret_settings.values() if file)]
    drop = {Settings.env_var(name).upper() for name in secrets}
    keep: set[str] = set()
    if settings is not None:
        every, keep = _key_variables(settings, model)
        drop |= every - keep
    return {
        name: value
        for name, value in environ.items()
        if name.upper() in keep or not (name.upper() in drop or names_a_credential(name))
    }


def names_a_credential(name: str) -> bool:
    """Whether an environment variable's name is one credentials go by (CREDENTIAL_WORDS, CREDENTIAL_PAIRS)."""
    words = name.upper().split("_")
    pairs = {f"{first}_{second}" for first, second in zip(words, words[1:], strict=False)}
    return not CREDENTIAL_WORDS.isdisjoint(words) or not CREDENTIAL_PAIRS.isdisjoint({*pairs, *words})


def _served(settings: Settings, model: str) -> set[str]:
    """The models `model`'s process serves: it, and the embedding model."""
    return {model, *([settings.embedding_model] if settings.embedding_model else [])}


def _key_variables(settings: Settings, model: str) -> tuple[set[str], set[str]]:
    """The `api_key_env` variables of every registry entry, and of those `model`'s process serves (upper-cased)."""
    try:
        registry = Registry.builtin().with_overrides(settings.registry)
        variables = {name: registry.get(name).api_key_env for name in registry.names()}
    except ModelError:  # an invalid entry: check_models names it, and no process loads it
        return set(), set()
    every = {variable.upper() for variable in variables.values() if variable}
    served = {variable.upper() for name in _served(settings, model) if (variable := variables.get(name))}
    return every, served
