"""An execution process is given no secret it has no use for (node/daemon/processes/child_inputs.py): not the
tools' (the daemon makes their requests), not the API keys of remote engines another process serves."""

from __future__ import annotations

import json
from pathlib import Path

from config.settings import Settings
from node.daemon.processes.child_inputs import (
    KEY_HELD_BY_THE_DAEMON,
    PASSED_NAMES,
    child_environment,
    child_settings,
    names_a_credential,
)
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
        "HF_TOKEN": "hf",  # a prefix that passes (HF_HOME), a name that does not
        "AWS_SECRET_ACCESS_KEY": "aws",
        "OPENAI_API_KEY": "o",
        "db_password": "p",
        "GITHUB_TOKEN": "g",
        "PATH": "/bin",
        "COMPUTE_NODE_N_CTX": "512",  # the process's settings come in `configure`, never from here
        "CUDA_VISIBLE_DEVICES": "0",
        "LLAMA_ENGINE_KEY": "l",  # a passing prefix, no credential word: another engine's api_key_env all the same
    }
    settings = settings.model_copy(
        update={"registry": {**settings.registry, "remote-l": {**REMOTE, "api_key_env": "LLAMA_ENGINE_KEY"}}}
    )
    kept = {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0"}
    assert child_environment(environ, settings, "local-model") == kept
    # a served engine's own variable, whatever it is named
    assert child_environment(environ, settings, "remote-b") == {"ENGINE_B_KEY": "b", **kept}
    named_as_credentials = Settings.load(
        None, data_dir=str(tmp_path), registry={"remote-o": {**REMOTE, "api_key_env": "OPENAI_API_KEY"}}
    )
    del environ["LLAMA_ENGINE_KEY"]  # no entry of this registry names it
    assert child_environment(environ, named_as_credentials, "remote-o") == {"OPENAI_API_KEY": "o", **kept}
    assert child_environment(environ, named_as_credentials, "local-model") == kept


def test_a_process_gets_only_the_variables_it_may_use(tmp_path: Path) -> None:
    """Whatever the daemon's environment holds under a name of no known kind stays there: the class, not the words."""
    environ = {
        # the system's, Python's, the hub cache's, the runtimes' and the tests' hooks: they pass
        **{"HOME": "/h", "LANG": "C.UTF-8", "LC_ALL": "C", "TZ": "UTC", "SSL_CERT_FILE": "/ca.pem"},
        **{"PYTHONHASHSEED": "0", "HF_HOME": "/hf", "XDG_CACHE_HOME": "/c", "LLAMA_CPP_LIB_PATH": "/lib"},
        **{"HF_ENDPOINT": "https://user:pw@mirror.example"},  # the process never downloads: not passed
        **{"GGML_CUDA_NO_PINNED": "1", "OMP_WAIT_POLICY": "PASSIVE", "HSA_OVERRIDE_GFX_VERSION": "11.0.0"},
        **{"MALLOC_ARENA_MAX": "2", "COMPUTE_NODE_TEST_EXEC_WRAPPER": "w"},
        # what a shell, a unit or a container may hold under any name: none passes
        **{"DATABASE_URL": "postgres://u:pw@db/x", "STRIPE_KEY": "sk", "MY_SERVICE_AUTH": "a", "GPG_KEY": "g"},
        **{"NOTIFY_SOCKET": "/run/systemd/notify", "SSH_AUTH_SOCK": "/run/ssh", "KUBECONFIG": "/k"},
        **{"HTTPS_PROXY": "http://user:pw@proxy:3128", "no_proxy": "localhost"},
        **{"COMPUTE_NODE_SECRET_KEY_FILE": "/key", "COMPUTE_NODE_LISTEN": "/ip4/0.0.0.0/tcp/4001"},
    }
    passing = [
        name for name in environ if name.startswith(("HOME", "LANG", "LC_", "TZ", "SSL", "PYTHON", "HF_HOME", "XDG"))
    ]
    passing += ["LLAMA_CPP_LIB_PATH", "GGML_CUDA_NO_PINNED", "OMP_WAIT_POLICY", "HSA_OVERRIDE_GFX_VERSION"]
    passing += ["MALLOC_ARENA_MAX", "COMPUTE_NODE_TEST_EXEC_WRAPPER"]
    local = Settings.load(None, data_dir=str(tmp_path))
    assert child_environment(environ, local, "smollm2:135m") == {name: environ[name] for name in passing}
    # the proxies only where a remote engine serves: a local model's process opens no socket
    remote = Settings.load(None, data_dir=str(tmp_path), models=["remote-a"], registry={"remote-a": REMOTE})
    proxies = {"HTTPS_PROXY": environ["HTTPS_PROXY"], "no_proxy": "localhost"}
    assert child_environment(environ, remote, "remote-a") == {**{name: environ[name] for name in passing}, **proxies}
    # the operator adds names and prefixes, credentials among them if it says so, never the node's own secrets
    listed = local.model_copy(update={"exec_env_pass": ["database_url", "MY_*", "COMPUTE_NODE_SECRET_KEY_FILE"]})
    added = {"DATABASE_URL": environ["DATABASE_URL"], "MY_SERVICE_AUTH": "a"}
    assert child_environment(environ, listed, "smollm2:135m") == {**{name: environ[name] for name in passing}, **added}
    # even "*" passes neither another engine's key nor the node's own secrets
    engines = {"remote-a": {**REMOTE, "api_key_env": "VLLM_KEY_A"}, "remote-b": {**REMOTE, "api_key_env": "VLLM_KEY_B"}}
    everything = Settings.load(None, data_dir=str(tmp_path), registry=engines, exec_env_pass=["*"])
    got = child_environment({**environ, "VLLM_KEY_A": "a", "VLLM_KEY_B": "b"}, everything, "remote-a")
    assert got["VLLM_KEY_A"] == "a" and "VLLM_KEY_B" not in got and "COMPUTE_NODE_SECRET_KEY_FILE" not in got
    assert got["DATABASE_URL"] == environ["DATABASE_URL"]  # the rest: the operator said so


def test_the_tools_the_process_is_told_of_carry_no_secret(tmp_path: Path) -> None:
    tools = tool_settings(_settings(tmp_path))
    told = without_secrets(tools)
    assert tools.secrets and tools.search is not None and tools.search.api_key is not None  # the daemon's copy
    assert told.secrets == {} and told.search is not None and told.search.api_key is None
    assert told.search.url == tools.search.url and told.max_response_bytes == tools.max_response_bytes
    assert "operator" not in told.model_dump_json()


def test_names_of_credentials_under_a_passing_prefix_do_not_pass(tmp_path: Path) -> None:
    """The allow-list's prefixes take names nobody listed one by one: a credential among them is still withheld,
    as a word (GPU_PASS) or anywhere in the name (HF_HUB_ACCESSTOKEN); no name the list passes looks like one."""
    environ = {
        "GPU_PASS": "p",
        "HF_HUB_ACCESSTOKEN": "t",
        "LLAMA_ARG_API_KEY": "k",
        "OPENSSL_PWD": "w",
        "AMD_AUTH": "a",
        "CUDA_SECRETFILE": "s",
        "GGML_CUDA_NO_PINNED": "1",
    }
    assert child_environment(environ, Settings.load(None, data_dir=str(tmp_path)), "smollm2:135m") == {
        "GGML_CUDA_NO_PINNED": "1"
    }
    assert not [name for name in PASSED_NAMES if names_a_credential(name)]
