"""An execution process is given no secret it has no use for (node/daemon/processes/child_inputs.py): not the
tools' (the daemon makes their requests), not the API keys of remote engines another process serves."""

from __future__ import annotations

import json
from pathlib import Path

from config.settings import Settings
from node.daemon.processes.child_inputs import KEY_HELD_BY_THE_DAEMON, child_environment, child_settings
from node.daemon.processes.tool_settings import tool_settings, without_secrets

REMOTE = {"backend": "openai", "base_url": "https://engine.example/v1", "model": "m"}


def _settings(tmp_path: Path) -> Settings:
    return Settings.load(
        None,
        data_dir=str(tmp_path),
        models=["local-model", "remote-a", "remote-b"],
        registry={
            "remote-a": {**REMOTE, "api_key": "key-of-engine-a"},
            "remote-b": {**REMOTE, "api_key_env": "ENGINE_B_KEY"},
            "remote-c": {**REMOTE, "api_key_env": "ENGINE_C_KEY"},
        },
        search_provider="serper",
        search_api_key="search-key-of-the-operator",
        tool_secrets={"api.example.com": {"Authorization": "tool-secret-of-the-operator"}},
    )


def test_no_process_gets_the_tools_secrets_and_each_only_its_own_engines_key(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    for model in ("local-model", "remote-a", "remote-b"):
        sent = json.dumps(child_settings(settings, model))
        assert "search-key-of-the-operator" not in sent and "tool-secret-of-the-operator" not in sent
        assert ("key-of-engine-a" in sent) == (model == "remote-a")
        assert ('"ENGINE_B_KEY"' in sent) == (model == "remote-b")
        Settings.model_validate(json.loads(sent))  # what the process builds its settings from still holds
    assert child_settings(settings, "local-model")["search_api_key"] == KEY_HELD_BY_THE_DAEMON


def test_a_process_starts_without_the_variables_of_others_keys(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    environ = {
        "ENGINE_B_KEY": "b",
        "ENGINE_C_KEY": "c",
        "COMPUTE_NODE_SEARCH_API_KEY": "s",
        "COMPUTE_NODE_TOOL_SECRETS": "{}",
        "COMPUTE_NODE_GATEWAY_API_KEYS": "k",
        "HF_TOKEN": "hf",
        "AWS_SECRET_ACCESS_KEY": "aws",
        "OPENAI_API_KEY": "o",
        "db_password": "p",
        "GITHUB_TOKEN": "g",
        "PATH": "/bin",
        "COMPUTE_NODE_N_CTX": "512",
        "TOKENIZERS_PARALLELISM": "false",  # words, not substrings: kept
        "CUDA_VISIBLE_DEVICES": "0",
    }
    kept = {"PATH": "/bin", "COMPUTE_NODE_N_CTX": "512", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": "0"}
    assert child_environment(environ, settings, "local-model") == kept
    # a served engine's own variable, named as it is: ENGINE_B_KEY holds none of the words
    assert child_environment(environ, settings, "remote-b") == {"ENGINE_B_KEY": "b", **kept}
    named_as_credentials = Settings.load(
        None, data_dir=str(tmp_path), registry={"remote-o": {**REMOTE, "api_key_env": "OPENAI_API_KEY"}}
    )
    unnamed = {"ENGINE_B_KEY": "b", "ENGINE_C_KEY": "c"}  # no entry of this registry names them, nor do their words
    assert child_environment(environ, named_as_credentials, "remote-o") == {"OPENAI_API_KEY": "o", **unnamed, **kept}
    assert child_environment(environ, named_as_credentials, "local-model") == {**unnamed, **kept}


def test_the_tools_the_process_is_told_of_carry_no_secret(tmp_path: Path) -> None:
    tools = tool_settings(_settings(tmp_path))
    told = without_secrets(tools)
    assert tools.secrets and tools.search is not None and tools.search.api_key is not None  # the daemon's copy
    assert told.secrets == {} and told.search is not None and told.search.api_key is None
    assert told.search.url == tools.search.url and told.max_response_bytes == tools.max_response_bytes
    assert "operator" not in told.model_dump_json()
