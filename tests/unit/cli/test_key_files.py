"""Secret keys from a file (`secret_key_file`, run-task's `--key-file`): never on a command line, where `ps` shows
them to every local user. A file that cannot be read or holds no key is one line naming the file, never its text;
a key given as a flag still works, with a one-line warning pointing to the file and the environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from config.layered import read_secret_key_file
from config.settings import ConfigError, Settings
from node.cli.doctor.local import identity_check
from node.cli.doctor.report import Status
from node.daemon.processes.child_inputs import child_environment, child_settings
from node.gateway.settings import GatewaySettings
from node.wire.identity import Identity

ROOT = Path(__file__).resolve().parents[3]
KEY = Identity.generate()
HEX = KEY.secret.hex()
PEER = f"/ip4/127.0.0.1/tcp/9/p2p/{Identity.generate().peer_id}"  # nothing listens there
# Almost a key: one that an error echoing the file would show.
ALMOST = HEX[:-1] + "g"


def _cli(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # A child process: `start`, `gateway` and `run-task` configure logging for the whole process.
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("COMPUTE_NODE_")}
    return subprocess.run(
        [sys.executable, "-c", "import sys; from node.cli.main import main; sys.exit(main(sys.argv[1:]))", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**env, "HOME": str(tmp_path)},
    )


def _key_file(tmp_path: Path, content: str | bytes, name: str = "node.key") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    "content",
    [HEX, HEX + "\n", f"  {HEX}\r\n\n", f"0x{HEX}\n", HEX.upper() + "\t\n"],
    ids=["bare", "newline", "whitespace-crlf", "0x", "upper-tab"],
)
def test_a_key_file_holds_the_key_as_identity_key_does(tmp_path: Path, content: str) -> None:
    path = _key_file(tmp_path, content)
    assert Identity.from_hex(read_secret_key_file(path)) == KEY
    assert Settings.load(None, secret_key_file=str(path)).secret_key == read_secret_key_file(path)
    gateway = GatewaySettings.load(None, peers=[PEER], secret_key_file=str(path))
    assert Identity.from_hex(gateway.secret_key or "") == KEY


BAD_CONTENT = {
    "not hex": ALMOST + "\n",
    "short": HEX[:63],
    "two keys": f"{HEX}\n{HEX}\n",
    "zero": "0" * 64,  # no secp256k1 scalar
    "binary": b"\xff\xfe" + os.urandom(62),
    "empty": "",
    "huge": HEX + " " * 10_000,
}


@pytest.mark.parametrize("content", BAD_CONTENT.values(), ids=BAD_CONTENT.keys())
def test_a_file_without_a_key_is_named_and_its_text_never_shown(tmp_path: Path, content: str | bytes) -> None:
    path = _key_file(tmp_path, content)
    with pytest.raises(ValueError, match="holds no") as raised:
        read_secret_key_file(path)
    text = str(raised.value)
    assert str(path) in text and ALMOST not in text and HEX not in text and "\n" not in text
    with pytest.raises(ConfigError, match="secret_key_file") as config_error:
        Settings.load(None, secret_key_file=str(path))
    assert str(path) in str(config_error.value) and HEX not in str(config_error.value)


def test_a_missing_or_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"cannot read key file {tmp_path / 'absent'}: No such file"):
        Settings.load(None, secret_key_file=str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match=f"cannot read key file {tmp_path}: Is a directory"):
        GatewaySettings.load(None, peers=[PEER], secret_key_file=str(tmp_path))
    with pytest.raises(ConfigError, match="both set"):
        Settings.load(None, secret_key=HEX, secret_key_file=str(_key_file(tmp_path, HEX)))
    with pytest.raises(ConfigError, match="secret_key_file.*is empty"):
        Settings.load(None, secret_key_file="")


def test_the_execution_process_gets_neither_the_key_nor_its_file(tmp_path: Path) -> None:
    settings = Settings.load(None, secret_key_file=str(_key_file(tmp_path, HEX)), data_dir=str(tmp_path))
    sent = child_settings(settings, "m")
    assert "secret_key" not in sent and "secret_key_file" not in sent and HEX not in repr(sent)
    env = child_environment({"COMPUTE_NODE_SECRET_KEY_FILE": "/k", "compute_node_secret_key": HEX, "PATH": "/bin"})
    assert env == {"PATH": "/bin"}  # pydantic-settings reads the variables in any case


def test_doctor_checks_the_key_file_mode(tmp_path: Path) -> None:
    path = _key_file(tmp_path, HEX + "\n")
    settings = Settings.load(None, secret_key_file=str(path), data_dir=str(tmp_path / "data"))
    assert identity_check(settings).status is Status.OK
    path.chmod(0o644)
    check = identity_check(settings)
    assert check.status is Status.FAIL and "0644" in check.detail and check.fix == f"chmod 600 {path}"


def test_the_identity_command_reads_the_node_key_file(tmp_path: Path) -> None:
    done = _cli(
        ["identity", "--secret-key-file", str(_key_file(tmp_path, f"{HEX}\n")), "--data-dir", str(tmp_path)], tmp_path
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.splitlines()[0] == f"address {KEY.address}"
    assert not (tmp_path / "identity.key").exists()  # the default key file is neither read nor made


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stderr
    err = done.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert HEX not in err and ALMOST not in err
    return err


@pytest.mark.parametrize("command", ["start", "gateway"])
def test_start_and_gateway_name_a_bad_key_file_in_one_line(tmp_path: Path, command: str) -> None:
    base = [command, "--data-dir", str(tmp_path / "data")] + (["--peer", PEER] if command == "gateway" else [])
    missing = _one_line(_cli([*base, "--secret-key-file", str(tmp_path / "absent")], tmp_path))
    assert f"cannot read key file {tmp_path / 'absent'}: No such file or directory" in missing
    bad = _one_line(_cli([*base, "--secret-key-file", str(_key_file(tmp_path, ALMOST + "\n"))], tmp_path))
    assert f"key file {tmp_path / 'node.key'} holds no secret key" in bad


def test_a_key_given_as_a_flag_still_works_with_a_warning(tmp_path: Path) -> None:
    done = _cli(["identity", "--secret-key", HEX, "--data-dir", str(tmp_path)], tmp_path)
    assert done.returncode == 0 and done.stdout.splitlines()[0] == f"address {KEY.address}"
    assert done.stderr.splitlines() == [
        "compute-node: warning: --secret-key shows its value in `ps` to every local user; give it with "
        "--secret-key-file FILE, COMPUTE_NODE_SECRET_KEY or the config file instead"
    ]
    gateway = _cli(["gateway", "--peer", PEER, "--secret-key", ALMOST, "--host", "0.0.0.0"], tmp_path)
    lines = gateway.stderr.splitlines()
    assert gateway.returncode == 1 and len(lines) == 2 and "Traceback" not in gateway.stderr, gateway.stderr
    assert "--secret-key-file FILE, COMPUTE_NODE_GATEWAY_SECRET_KEY" in lines[0] and ALMOST not in gateway.stderr


def test_a_registry_flag_with_an_api_key_warns_that_it_shows(tmp_path: Path) -> None:
    """A command line is read by any local process, a taken-over execution process's too (a reviewer's read the
    daemon's `--registry '{"gpt": {"api_key": "sk-..."}}'` from /proc)."""
    remote = {"backend": "openai", "base_url": "https://engine.example/v1", "model": "m"}
    for entry, warned in (({**remote, "api_key": "sk-x"}, True), ({**remote, "api_key_env": "ENGINE_KEY"}, False)):
        registry = json.dumps({"gpt": entry})
        done = _cli(["identity", "--registry", registry, "--data-dir", str(tmp_path)], tmp_path)
        assert done.returncode == 0, done.stderr
        assert ("--registry holds an api_key, which shows in `ps`" in done.stderr) == warned, done.stderr
        assert "sk-x" not in done.stderr


RUN_TASK = ["run-task", "--peer", PEER, "--prompt", "hi", "--timeout", "1"]


def test_run_task_reads_its_key_file(tmp_path: Path) -> None:
    key_file = _key_file(tmp_path, f"  {HEX}\n\n")
    # An empty model is refused after the key is taken and before anything is sent: the key file was good.
    done = _cli([*RUN_TASK, "--model", "", "--key-file", str(key_file), "--data-dir", str(tmp_path)], tmp_path)
    assert _one_line(done).startswith("compute-node: --model: ")


@pytest.mark.parametrize(
    ("content", "named"),
    [
        (None, "cannot read key file {path}: No such file or directory"),
        (
            ALMOST + "\n",
            "key file {path} holds no secret key (expected 64 hex characters, with or without 0x); "
            "its content is not shown",
        ),
        ("0" * 64, "key file {path} holds no valid secp256k1 secret key; its content is not shown"),
    ],
    ids=["missing", "not-hex", "zero"],
)
def test_run_task_names_a_bad_key_file_in_one_line(tmp_path: Path, content: str | None, named: str) -> None:
    path = tmp_path / "node.key" if content is None else _key_file(tmp_path, content)
    done = _cli([*RUN_TASK, "--model", "m", "--key-file", str(path), "--data-dir", str(tmp_path)], tmp_path)
    assert _one_line(done) == f"compute-node: --key-file: {named.format(path=path)}"


def test_run_task_warns_of_a_key_flag_and_refuses_both(tmp_path: Path) -> None:
    done = _cli([*RUN_TASK, "--model", "", "--key", HEX, "--data-dir", str(tmp_path)], tmp_path)
    lines = done.stderr.splitlines()
    assert done.returncode == 1 and len(lines) == 2, done.stderr
    assert lines[0] == (
        "compute-node: warning: --key shows the key in `ps` to every local user; give it with --key-file PATH"
    )
    assert lines[1].startswith("compute-node: --model: ") and HEX not in done.stderr
    both = _cli([*RUN_TASK, "--model", "m", "--key", HEX, "--key-file", str(_key_file(tmp_path, HEX))], tmp_path)
    assert both.returncode == 2 and "not allowed with argument" in both.stderr and HEX not in both.stderr


def test_a_pipe_nobody_writes_is_an_error_not_a_hang(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key file that is a FIFO without a writer (a vault helper that died) blocked every command that loads
    the settings, doctor included, for ever; now it waits KEY_FILE_WAIT_S and names the file."""
    import time

    import config.layered

    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)
    monkeypatch.setattr(config.layered, "KEY_FILE_WAIT_S", 0.3)
    started = time.monotonic()
    with pytest.raises(ValueError, match=f"cannot read key file {fifo}") as caught:
        read_secret_key_file(fifo)
    assert time.monotonic() - started < 5
    assert "pipe" in str(caught.value)
