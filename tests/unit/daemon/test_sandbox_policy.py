"""The daemon's sandbox policy for its execution processes (node/daemon/processes/sandbox_policy.py)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest
import structlog

from config.settings import ConfigError, Settings
from node.daemon.processes import sandbox_policy
from node.daemon.processes.sandbox_policy import SandboxPolicyError, network_for, prepare_sandbox


def _settings(tmp_path: Path, **values: object) -> Settings:
    return Settings.load(**{"data_dir": tmp_path / "data", **values})


def test_the_data_dir_key_file_and_config_file_are_private_and_the_models_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    key_file = tmp_path / "keys" / "node.key"
    key_file.parent.mkdir()
    key_file.write_text("11" * 32)
    key_file.chmod(0o600)
    config = tmp_path / "node.toml"
    config.write_text('log_level = "info"\n')
    settings = Settings.load(config, data_dir=tmp_path / "data", secret_key_file=key_file)
    policy = prepare_sandbox(settings)
    assert policy is not None and not policy.required
    real = tmp_path.resolve()
    home, key, config_file = str(real / "home"), str(real / "keys" / "node.key"), str(real / "node.toml")
    assert policy.private == [str(real / "data"), "/dev", home, key, config_file]
    assert str(real / "data" / "models") in policy.readable
    assert policy.writable == []  # each process gets its own scratch folder when spawned (scratch.py)
    assert {"/dev/null", "/dev/urandom", "/dev/nvidia*"} <= set(policy.devices)  # expanded where the child starts
    assert "/dev" not in policy.writable  # private but for those: a root node's process could open its disks
    assert (tmp_path / "data").stat().st_mode & 0o077 == 0  # the first folder the node makes is private too


@pytest.mark.parametrize("home", ["/", "/opt", "/usr/local", "/var"])
def test_a_home_folder_that_is_or_holds_a_system_folder_is_not_made_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, home: str
) -> None:
    """A service user's home may be `/`; one of `/opt` holds a GPU stack's libraries: private, they would
    leave the process nothing to run with."""
    monkeypatch.setenv("HOME", home)
    policy = prepare_sandbox(_settings(tmp_path))
    assert policy is not None and home not in policy.private


def test_in_a_private_home_what_the_environment_names_stays_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Credentials live in the home folder (~/.aws, ~/.netrc, the hub's token): private. A llama.cpp built there or
    a CA bundle kept there, named by the environment the process gets, stays readable."""
    home = tmp_path / "home"
    (home / "llama.cpp" / "build").mkdir(parents=True)
    (home / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("LD_LIBRARY_PATH", f"{home / 'llama.cpp' / 'build'}:/nonexistent")
    monkeypatch.setenv("SSL_CERT_FILE", str(home / "ca.pem"))
    monkeypatch.setenv("LLAMA_CPP_LIB_PATH", str(home))  # the whole home: never made readable
    policy = prepare_sandbox(_settings(tmp_path))
    assert policy is not None and str(home.resolve()) in policy.private
    readable = set(policy.readable)
    assert {str(home.resolve() / "llama.cpp" / "build"), str(home.resolve() / "ca.pem")} <= readable
    assert str(home.resolve()) not in readable and "/nonexistent" not in readable


def test_a_registry_entrys_model_file_in_the_data_dir_stays_readable(tmp_path: Path) -> None:
    model = tmp_path / "data" / "mine.gguf"
    settings = _settings(tmp_path, models=["mine"], registry={"mine": {"path": str(model)}})
    policy = prepare_sandbox(settings)
    assert policy is not None and str(model.resolve()) in policy.readable
    assert str(model.parent.resolve()) not in policy.readable  # the data dir itself: never readable whole
    beside = tmp_path / "data" / "split" / "mine-00001-of-00002.gguf"
    settings = _settings(tmp_path, models=["mine"], registry={"mine": {"path": str(beside)}})
    policy = prepare_sandbox(settings)
    assert policy is not None and str(beside.parent.resolve()) in policy.readable  # a split file's parts


def test_the_hub_cache_folder_of_a_configured_model_stays_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The systemd unit sets HF_HOME inside the data dir, the image's HOME is the data dir: a model found in the
    hub cache lies in a private path."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "data" / "huggingface"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    settings = _settings(tmp_path, models=["mine"], registry={"mine": {"repo": "org/mine-GGUF", "file": "m.gguf"}})
    policy = prepare_sandbox(settings)
    hub = tmp_path.resolve() / "data" / "huggingface" / "hub" / "models--org--mine-GGUF"
    assert policy is not None and str(hub) in policy.readable


def test_off_makes_no_policy_and_on_requires_one(tmp_path: Path) -> None:
    assert prepare_sandbox(_settings(tmp_path, sandbox="off")) is None
    policy = prepare_sandbox(_settings(tmp_path, sandbox="on"))
    assert policy is not None and policy.required


def test_what_older_nodes_let_execution_processes_write_in_the_data_dir_is_removed(tmp_path: Path) -> None:
    """Their speed caches (in the data dir, then in its `execution/` folder): a process a workflow took over could
    have left any figure there, or anything, a link out of the data dir included (removed, never followed)."""
    data = tmp_path / "data"
    (data / "execution" / "deeper").mkdir(parents=True)
    (data / "benchmarks.json").write_text('{"k": 1}')
    (data / "execution" / "benchmarks.json").write_text('{"k": 2}')
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("kept")
    (data / "execution" / "deeper" / "link").symlink_to(outside, target_is_directory=True)
    (data / "identity.key").write_text("11" * 32)
    settings = _settings(tmp_path)
    prepare_sandbox(settings)
    assert sorted(path.name for path in data.iterdir()) == ["identity.key"]
    assert (outside / "keep.txt").read_text() == "kept"
    (data / "execution").symlink_to(outside, target_is_directory=True)  # the folder itself a link: the link goes
    prepare_sandbox(settings)
    assert not (data / "execution").exists() and (outside / "keep.txt").read_text() == "kept"


def test_code_in_the_data_dir_itself_cannot_be_confined_around(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A data dir that is also where the interpreter reads code: its listing must stay readable for imports,
    which would expose the key; `auto` runs unconfined with a warning, `on` refuses to start."""
    (tmp_path / "data").mkdir()
    monkeypatch.setattr(sys, "path", [str(tmp_path / "data"), *sys.path])
    with structlog.testing.capture_logs() as logs:
        assert prepare_sandbox(_settings(tmp_path)) is None
    assert [entry["event"] for entry in logs] == ["execution processes not confined"]
    assert "holds" in logs[0]["reason"] and str((tmp_path / "data").resolve()) in logs[0]["reason"]
    with pytest.raises(SandboxPolicyError, match="sandbox = on") as refused:
        prepare_sandbox(_settings(tmp_path, sandbox="on"))
    assert isinstance(refused.value, ConfigError)  # the CLI prints it as a configuration error


def test_code_inside_the_data_dir_stays_readable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    venv = tmp_path / "data" / "venv" / "lib"
    venv.mkdir(parents=True)
    monkeypatch.setattr(sys, "path", [str(venv), *sys.path])
    policy = prepare_sandbox(_settings(tmp_path))
    assert policy is not None and str(venv.resolve()) in policy.readable


@pytest.mark.parametrize("tmpdir", ["/tmp", "/var/tmp", "data/tmp"])
def test_no_temporary_folder_is_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmpdir: str) -> None:
    """What a process leaves in a temporary folder outlives it (and on tmpfs holds memory no limit of its counts):
    wherever the daemon's TMPDIR points, the policy makes nothing writable."""
    folder = tmp_path / tmpdir
    folder.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    policy = prepare_sandbox(_settings(tmp_path))
    assert policy is not None and policy.writable == []


@pytest.mark.parametrize(("gpu", "shared_memory"), [([], False), (["/dev/nvidia0"], True)])
def test_shared_memory_is_kept_only_on_a_host_with_a_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gpu: list[str], shared_memory: bool
) -> None:
    """/dev/shm is tmpfs: its files outlive the process and hold memory. GPU drivers may use it."""
    monkeypatch.setattr(sandbox_policy.glob, "glob", lambda pattern: gpu if pattern == "/dev/nvidia*" else [])
    policy = prepare_sandbox(_settings(tmp_path))
    assert policy is not None
    assert ("/dev/shm" in policy.writable) is shared_memory and "/dev/shm" not in policy.devices
    assert "/dev/null" in policy.devices


def test_a_temporary_folder_the_interpreter_imports_from_is_not_writable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m node.cli start` run from the temporary folder puts it first on the daemon's import path."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setattr(sys, "path", [str(scratch), *sys.path])
    policy = prepare_sandbox(_settings(tmp_path))
    assert policy is not None
    assert str(scratch.resolve()) in policy.readable and policy.writable == []


def test_only_a_remote_engines_process_may_connect_and_only_to_its_engines_ports(tmp_path: Path) -> None:
    remote = {"backend": "openai", "model": "m"}
    settings = _settings(
        tmp_path,
        models=["smollm2:135m", "tls-engine", "local-engine"],
        registry={
            "tls-engine": {**remote, "base_url": "https://engine.example/v1"},
            "local-engine": {**remote, "base_url": "http://127.0.0.1:8000/v1"},
            "embedder": {**remote, "base_url": "http://embed.example/v1"},
        },
    )
    policy = prepare_sandbox(settings)
    assert policy is not None and policy.connect_ports == []

    def ports(settings: Settings, model: str) -> list[int]:
        confined = network_for(policy, settings, model)
        assert confined is not None
        return confined.connect_ports

    assert ports(settings, "smollm2:135m") == []  # a local model: no socket at all, its tools go through the daemon
    assert ports(settings, "tls-engine") == [443]
    assert ports(settings, "local-engine") == [8000]
    with_embedder = settings.model_copy(update={"embedding_model": "embedder"})
    assert ports(with_embedder, "smollm2:135m") == [80]  # its embeddings come from a remote engine
    assert network_for(None, settings, "tls-engine") is None  # sandbox = off
