"""The vLLM deployment example (deploy/vllm/) agrees with itself and with the node's settings and registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.registry import Registry


def test_the_vllm_deploy_files_agree_with_each_other_and_with_the_node(monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    from config.settings import Settings

    deploy = Path(__file__).resolve().parents[2] / "deploy" / "vllm"
    monkeypatch.delenv("VLLM_KEY", raising=False)
    settings = Settings.load(deploy / "node.toml")
    registry = Registry.builtin().with_overrides(settings.registry)
    spec = registry.get(settings.models[0])
    compose = yaml.safe_load((deploy / "compose.yaml").read_text())
    vllm = compose["services"]["vllm"]["command"]
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in vllm)
    assert spec.is_remote and spec.base_url == "http://vllm:8000/v1"
    assert spec.model == flags["served-model-name"]
    assert spec.max_concurrent == int(flags["max-num-seqs"]) and spec.n_ctx == int(flags["max-model-len"])
    assert spec.api_key_env in compose["services"]["node"]["environment"]
