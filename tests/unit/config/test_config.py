"""Settings precedence (defaults < TOML < environment < CLI) and clear errors."""

import re
from pathlib import Path

import pytest

from config.settings import ConfigError, Settings
from node.cli.main import _settings_from, build_parser
from node.gateway.settings import GatewaySettings


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
    monkeypatch.setenv(
        "COMPUTE_NODE_BOOTSTRAP",
        "/ip4/127.0.0.1/tcp/1/p2p/16Uiu2HAmSoBigzQ1Sv4wPG4aic3zZFbSpPYnbPAEsFFJmuJ8qetK, /ip4/127.0.0.1/tcp/2/p2p/16Uiu2HAm7SvMVwCBgMPp2u8oUn6xxCyNB4pEF5AotTbRQ6bWUQPE",
    )
    monkeypatch.setenv("COMPUTE_NODE_MODELS", '["m1", "m2"]')
    settings = Settings.load()
    assert settings.bootstrap == [
        "/ip4/127.0.0.1/tcp/1/p2p/16Uiu2HAmSoBigzQ1Sv4wPG4aic3zZFbSpPYnbPAEsFFJmuJ8qetK",
        "/ip4/127.0.0.1/tcp/2/p2p/16Uiu2HAm7SvMVwCBgMPp2u8oUn6xxCyNB4pEF5AotTbRQ6bWUQPE",
    ]
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
        ({"n_ctx": 10**9}, "n_ctx"),  # failed late, in llama.cpp
        ({"parallel": 10**6}, "parallel"),
        ({"max_queue": 10**9}, "max_queue"),  # would lift the journal's bound on live tasks
        ({"drain_timeout": "inf"}, "drain_timeout"),  # would wait forever
        ({"heartbeat_interval": "nan"}, "heartbeat_interval"),
        ({"bootstrap": ["/ip4/127.0.0.1/tcp/4001"]}, "bootstrap"),  # no /p2p/: re-dialled forever, any key answering
        ({"secret_key": "xyz"}, "secret_key"),  # was found only at start, after the first process spawned
    ],
)
def test_invalid_value_names_the_setting(overrides: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=f"invalid setting '{named}'"):
        Settings.load(**overrides)


def test_an_invalid_value_says_which_layer_gave_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "node.toml"
    config.write_text("max_queue = -1\n")
    with pytest.raises(ConfigError, match=rf"'max_queue' in the config file {config} \(also COMPUTE_NODE_MAX_QUEUE"):
        Settings.load(config)
    monkeypatch.setenv("compute_node_max_queue", "-2")  # the variable's name is read in any case
    with pytest.raises(ConfigError, match=r"'max_queue' in the environment \(COMPUTE_NODE_MAX_QUEUE\): "):
        Settings.load(config)
    with pytest.raises(ConfigError, match=r"'max_queue' on the command line \(--max-queue\): "):
        Settings.load(config, max_queue="-3")


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
    with pytest.raises(ConfigError, match=f"config file {tmp_path} is a directory"):  # was: "not found"
        Settings.load(tmp_path)
    marked = tmp_path / "marked.toml"
    marked.write_bytes(b"\xef\xbb\xbfmax_queue = 1\n")  # as some Windows editors save it
    with pytest.raises(ConfigError, match="marked.toml.*starts with a UTF-8 byte-order mark"):
        Settings.load(marked)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("max_queeu = 1")
    with pytest.raises(ConfigError, match="max_queeu"):
        Settings.load(unknown)


def test_an_unreadable_config_file_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "node.toml"
    config.write_text("max_queue = 1")

    def refuse(*_: object, **__: object) -> None:
        raise PermissionError(13, "Permission denied", str(config))

    # What opening a file the process may not read gives (a chmod does not stop root, who runs the tests).
    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(ConfigError, match="Permission denied"):
        Settings.load(config)


def test_a_mistyped_variable_is_named_with_the_setting_it_was_meant_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPUTE_NODE_N_THREAD", "4")
    monkeypatch.setenv("COMPUTE_NODE_GATEWAY_PORT", "8080")  # the gateway's: not the node's to judge
    monkeypatch.setenv("COMPUTE_NODE_TEST_EXEC_WRAPPER", "x")
    assert Settings.unknown_env() == [
        "COMPUTE_NODE_N_THREAD is not a setting and is ignored; did you mean COMPUTE_NODE_N_THREADS?"
    ]


def test_a_typo_in_the_gateways_prefix_is_named_and_the_nodes_variables_are_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    environ = {
        "COMPUTE_NODE_GATWAY_PORT": "8080",  # was ignored in silence
        "COMPUTE_NODE_GATEWAY_HOST": "0.0.0.0",
        "COMPUTE_NODE_DATA_DIR": "/srv/node",  # a node's, in an environment file both share
        "COMPUTE_NODE_LOG_LEVEL": "debug",
        "COMPUTE_NODE_HTTP_PORT": "9090",
        "COMPUTER_NAME": "x",
    }
    assert GatewaySettings.unknown_env(environ) == [
        "COMPUTE_NODE_GATWAY_PORT is not a setting and is ignored; did you mean COMPUTE_NODE_GATEWAY_PORT?"
    ]


def test_a_home_that_cannot_be_found_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setattr("pwd.getpwuid", lambda _: (_ for _ in ()).throw(KeyError("uid not in passwd")))
    with pytest.raises(ConfigError, match="set HOME"):
        Settings.load()


def test_cli_flags_cover_every_setting(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        [
            "start",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--listen",
            "/ip4/127.0.0.1/tcp/5001",
            "--bootstrap",
            "/ip4/127.0.0.1/tcp/4001/p2p/16Uiu2HAmSoBigzQ1Sv4wPG4aic3zZFbSpPYnbPAEsFFJmuJ8qetK",
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
    assert settings.bootstrap == ["/ip4/127.0.0.1/tcp/4001/p2p/16Uiu2HAmSoBigzQ1Sv4wPG4aic3zZFbSpPYnbPAEsFFJmuJ8qetK"]
    assert settings.data_dir == tmp_path
    assert settings.http_enabled is False
    assert settings.max_queue == 2


def test_example_config_loads() -> None:
    example = Path(__file__).resolve().parents[3] / "config" / "example.toml"
    settings = Settings.load(example)
    assert settings.data_dir == Path("/var/lib/compute-node")
    assert settings.listen == ["/ip4/0.0.0.0/tcp/4001"] and settings.max_queue == 8


def test_the_example_config_loads_with_every_commented_setting_and_table_uncommented(tmp_path: Path) -> None:
    # An operator uncommenting the registry example got "registry entry 'my-model:7b' is invalid: drain_timeout:
    # Extra inputs are not permitted": the top-level keys after it fell into its TOML table (a user's find).
    example = (Path(__file__).resolve().parents[3] / "config" / "example.toml").read_text()
    setting = re.compile(r"^# (\[[^\]]+\]|[A-Za-z_][A-Za-z0-9_]* = )")
    uncommented = "\n".join(line[2:] if setting.match(line) else line for line in example.splitlines())
    assert uncommented.count("[registry.") == 3 and "[tool_secrets." in uncommented
    (tmp_path / "mine.gguf").write_bytes(b"")
    key = tmp_path / "node.key"
    key.write_text("11" * 32)
    key.chmod(0o600)
    here = {"/srv/models/my-model-7b.Q4_K_M.gguf": str(tmp_path / "mine.gguf"), "/etc/compute-node/node.key": str(key)}
    for there, mine in here.items():
        uncommented = uncommented.replace(there, mine)
    path = tmp_path / "all.toml"
    path.write_text(uncommented)
    settings = Settings.load(path)
    assert settings.drain_timeout == 30 and settings.http_port == 9090 and settings.search_url is not None
    assert set(settings.registry) == {"my-model:7b", "qwen2.5:0.5b-instruct-q4_K_M", "llama3.1:8b-instruct-fp16"}
    assert list(settings.tool_secrets) == ["api.example.com"]


def test_an_unknown_model_stops_the_start_naming_it(tmp_path: Path) -> None:
    """A typo cost a process start and left the node serving its other models only."""
    from node.daemon.launch import check_models

    with pytest.raises(
        ConfigError, match=r"invalid setting 'models': unknown model 'smollm2:135'; known models: .*smollm2:135m"
    ):
        check_models(Settings.load(models=["smollm2:135m", "smollm2:135"]))
    mine = {"mine": {"path": str(tmp_path / "mine.gguf")}, "alias:1b": {"alias": "smollm2:135m"}}
    check_models(Settings.load(models=["smollm2:135m", "mine", "alias:1b"], registry=mine))


def test_a_dict_setting_given_higher_replaces_the_files_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # pydantic-settings merges dicts across sources: a secret in the file could not be revoked from the environment
    config = tmp_path / "node.toml"
    config.write_text('[tool_secrets."api.example.com"]\nAuthorization = "Bearer old"\n')
    assert Settings.load(config).tool_secrets == {"api.example.com": {"Authorization": "Bearer old"}}
    monkeypatch.setenv("COMPUTE_NODE_TOOL_SECRETS", "{}")
    assert Settings.load(config).tool_secrets == {}
    rotated = {"api.example.com": {"Authorization": "Bearer new"}}
    assert Settings.load(config, tool_secrets=rotated).tool_secrets == rotated


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"search_provider": "searxng"}, "searxng needs search_url"),  # its queries went to Serper's API
        ({"search_provider": "serper"}, "serper needs search_api_key"),
        ({"search_provider": "searxng", "search_url": "searx.local"}, r"is not an http\(s\) URL"),
        ({"data_dir": ""}, "is empty"),  # an unset variable: the working directory held the key and journal
        ({"data_dir": "/tmp/a\0b"}, "NUL"),
    ],
)
def test_settings_that_would_misdirect_the_node_are_refused(overrides: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.load(**overrides)


def test_a_variable_named_in_lower_case_is_read_and_not_called_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPUTE_NODE_n_ctx", "4096")
    assert Settings.load().n_ctx == 4096
    assert Settings.unknown_env() == []  # it warned "not a setting and is ignored" while applying it


def test_an_unknown_key_of_the_file_says_which_it_may_be(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("n_thread = 4\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'n_thread' in the config file; did you mean 'n_threads'\?"):
        Settings.load(config)


@pytest.mark.parametrize(
    ("field", "addr", "named"),
    [
        ("announce", "/ip4/x/tcp/y", "base address 'x' is not IPv4"),  # was advertised as it was
        ("bootstrap", "/ip4/127.0.0.1/tcp/1/p2p/notapeerid", "Invalid CID"),  # was re-dialled for ever
        ("listen", "/ip4/127.0.0.1/tcp/99999", "not in range"),
    ],
)
def test_a_multiaddr_the_host_cannot_read_is_named(field: str, addr: str, named: str) -> None:
    with pytest.raises(ConfigError, match=rf"invalid setting '{field}'.*is not a valid multiaddr: .*{named}"):
        Settings.load(**{field: [addr]})


@pytest.mark.parametrize(
    ("field", "addr", "named"),
    [
        ("listen", "/ip4/0.0.0.0/tcp/4001/ws", "runs ws over TCP"),
        ("announce", "/ip4/10.0.0.1/tcp/443/wss", "runs wss over TCP"),
        (
            "bootstrap",
            "/dns4/boot.example/tcp/443/tls/sni/boot.example/ws/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA",
            "runs tls/sni/ws over TCP",
        ),
    ],
)
def test_a_websocket_or_tls_address_is_refused_naming_the_layer(field: str, addr: str, named: str) -> None:
    # The node has no WebSocket or TLS transport (node/p2p/lean_libp2p.py). Before, a /ws node reached only
    # other /ws nodes (a node on plain TCP cannot dial it), and /tls was quietly plain TCP.
    with pytest.raises(ConfigError, match=rf"invalid setting '{field}'.*{named}: the network speaks plain TCP"):
        Settings.load(**{field: [addr]})


@pytest.mark.parametrize(
    "addr", ["/dns4/node.example/tcp/4001", "/dns6/node.example/tcp/4001", "/dns/node.example/tcp/4001"]
)
def test_an_announce_address_given_by_name_is_refused_asking_for_an_ip(addr: str) -> None:
    # Publishers dial heartbeat addrs by IP only (a name in anyone's heartbeat would be resolved by them, to
    # whatever its owner likes): a node announcing a name got no direct delivery, with no word why.
    with pytest.raises(ConfigError, match=r"invalid setting 'announce' on the command line \(--announce\): .*/ip4/"):
        Settings.load(announce=[addr])
    assert Settings.load(announce=["/ip4/203.0.113.7/tcp/4001", "/ip6/2001:db8::7/tcp/4001"]).announce


@pytest.mark.parametrize("field", ["n_threads", "exec_address_space_mb", "exec_max_rss_mb"])
def test_a_number_past_any_machine_is_named_not_an_overflow_in_the_child(field: str) -> None:
    with pytest.raises(ConfigError, match=rf"invalid setting '{field}'.*less than or equal"):
        Settings.load(**{field: 10**11})  # was OverflowError in the execution process: "no usable model"
