"""Settings precedence (defaults < TOML < environment < CLI) and clear errors."""

from pathlib import Path

import pytest

from config.settings import ConfigError, Settings
from node.cli.main import _settings_from, build_parser


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("COMPUTE_NODE_"):
            monkeypatch.delenv(key)


def test_defaults_need_no_configuration() -> None:
    settings = Settings.load()
    assert settings.listen == ["/ip4/0.0.0.0/tcp/4001"]
    assert settings.models == ["smollm2:135m"]
    assert settings.data_dir == Path("~/.compute-node").expanduser()
    assert settings.identity_path == settings.data_dir / "identity.key"


def test_precedence_toml_then_env_then_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "node.toml"
    config.write_text('max_queue = 5\nmax_concurrent = 2\nn_ctx = 1024\nmodels = ["a", "b"]\n')
    monkeypatch.setenv("COMPUTE_NODE_MAX_CONCURRENT", "3")
    monkeypatch.setenv("COMPUTE_NODE_N_CTX", "4096")
    settings = Settings.load(config, n_ctx="512")
    assert settings.max_queue == 5  # TOML over default
    assert settings.max_concurrent == 3  # environment over TOML
    assert settings.n_ctx == 512  # CLI over environment
    assert settings.models == ["a", "b"]


def test_env_lists_accept_commas_and_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPUTE_NODE_BOOTSTRAP", "/ip4/127.0.0.1/tcp/1/p2p/x, /ip4/127.0.0.1/tcp/2/p2p/y")
    monkeypatch.setenv("COMPUTE_NODE_MODELS", '["m1", "m2"]')
    settings = Settings.load()
    assert settings.bootstrap == ["/ip4/127.0.0.1/tcp/1/p2p/x", "/ip4/127.0.0.1/tcp/2/p2p/y"]
    assert settings.models == ["m1", "m2"]


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"max_queue": "-1"}, "max_queue"),
        ({"listen": ["tcp/4001"]}, "listen"),
        ({"listen": ["/ip4/0.0.0.0/udp/4001/quic-v1"]}, "listen"),  # the network speaks TCP only
        ({"bootstrap": ["/ip4/127.0.0.1/udp/4001/quic-v1/p2p/16Uiu2HAm"]}, "bootstrap"),
        ({"publishers": ["not-an-address"]}, "publishers"),
        ({"log_level": "loud"}, "log_level"),
        ({"n_ctx": "lots"}, "n_ctx"),
    ],
)
def test_invalid_value_names_the_setting(overrides: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=f"invalid setting '{named}'"):
        Settings.load(**overrides)


def test_invalid_env_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPUTE_NODE_MAX_QUEUE", "many")
    with pytest.raises(ConfigError, match="COMPUTE_NODE_MAX_QUEUE"):
        Settings.load()


def test_bad_config_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        Settings.load(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("max_queue = = 1")
    with pytest.raises(ConfigError, match="broken.toml"):
        Settings.load(broken)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("max_queeu = 1")
    with pytest.raises(ConfigError, match="max_queeu"):
        Settings.load(unknown)


def test_cli_flags_cover_every_setting(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        [
            "start",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--listen",
            "/ip4/127.0.0.1/tcp/5001",
            "--bootstrap",
            "/ip4/127.0.0.1/tcp/4001/p2p/16Uiu2x",
            "--data-dir",
            str(tmp_path),
            "--model",
            "smollm2:135m",
            "--no-http-enabled",
            "--max-queue",
            "2",
        ]
    )
    settings = _settings_from(args)
    assert settings.listen == ["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/tcp/5001"]
    assert settings.bootstrap == ["/ip4/127.0.0.1/tcp/4001/p2p/16Uiu2x"]
    assert settings.data_dir == tmp_path
    assert settings.http_enabled is False
    assert settings.max_queue == 2


def test_example_config_loads() -> None:
    example = Path(__file__).resolve().parents[3] / "config" / "example.toml"
    settings = Settings.load(example)
    assert settings.data_dir == Path("/var/lib/compute-node")
    assert settings.listen == ["/ip4/0.0.0.0/tcp/4001"] and settings.max_queue == 8
