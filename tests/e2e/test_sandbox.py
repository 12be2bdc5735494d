"""A taken-over execution process cannot reach the daemon: a real node at default settings (no publisher
allow-list, `sandbox = "auto"`) runs a task on an execution process whose runtime is replaced by
tests/support/hijacked_runtime.py, which tries, from inside the process, what a hostile workflow that took
it over would try; the result is what it managed. With `sandbox = "off"` the same probes read the key:
the test tells the two apart.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
from pathlib import Path

import pytest
import structlog
from py_landlock import LandlockError, get_abi_version

from node.daemon.processes.sandbox_policy import prepare_sandbox
from node.execution.process import TEST_WRAPPER_ENV
from node.execution.sandbox import SIGNAL_SCOPE_ABI
from node.publisher.client import Client, Task
from tests.support.cluster import dialable, node_settings, running_node
from tests.support.hijacked_runtime import (
    HIJACK_DATA_DIR_ENV,
    HIJACK_DEVICE_ENV,
    HIJACK_HTTP_PORT_ENV,
    HIJACK_SECRETS_ENV,
    SECRET_BYTES,
)
from tests.support.nodeproc import free_port
from workflows import Simple

pytestmark = pytest.mark.slow

MODEL = "smollm2:135m"


def _landlock_abi() -> int:
    try:
        return int(get_abi_version())
    except LandlockError:
        return 0


def _a_disk_this_process_opens() -> str | None:
    """A block device the test process itself may open (as root: a loop device, a disk), or None."""
    for entry in sorted(os.scandir("/dev"), key=lambda entry: entry.name):
        try:
            if stat.S_ISBLK(entry.stat(follow_symlinks=False).st_mode):
                os.close(os.open(entry.path, os.O_RDONLY | os.O_NONBLOCK))
                return entry.path
        except OSError:
            continue
    return None


# What a taken-over process looks for in its own memory: the operator's secrets (the daemon keeps them) and, to
# show the search finds what is there, a setting it is sent.
SECRET_PROBES = {
    "find the search provider's key in its memory": "cn-probe-search-key-",
    "find a tool secret in its memory": "cn-probe-tool-secret-",
    "find its tool_allow entry in its memory": "cn-probe-allowed-host-",
}


# And in its environment, which it starts with: a variable of the daemon's named as no credential is (what a
# shell or a unit may hold) does not reach it; a runtime's does, to show the search finds what is there.
ENV_PROBES = {
    "find an unnamed variable of the daemon's environment in its memory": ("CN_PROBE_DATABASE_URL", "cn-probe-env-"),
    "find a runtime's variable in its memory": ("LLAMA_CN_PROBE", "cn-probe-llama-"),
}


def _secret(prefix: str) -> str:
    return prefix + secrets.token_hex(SECRET_BYTES)[: SECRET_BYTES - len(prefix)]


async def _probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox: str) -> tuple[dict[str, str], list[str]]:
    """What the probes found, and the events the node logged (its execution process's relayed among them)."""
    data_dir = tmp_path / "node"
    home = tmp_path / "home"  # the daemon's home folder, with a cloud CLI's credentials in it
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "credentials").write_text("[default]\naws_secret_access_key = probe\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv(TEST_WRAPPER_ENV, "tests.support.hijacked_runtime:hijacked")
    monkeypatch.setenv(HIJACK_DATA_DIR_ENV, str(data_dir))
    port = free_port()
    monkeypatch.setenv(HIJACK_HTTP_PORT_ENV, str(port))
    if (disk := _a_disk_this_process_opens()) is not None:
        monkeypatch.setenv(HIJACK_DEVICE_ENV, disk)
    values = {name: _secret(prefix) for name, prefix in SECRET_PROBES.items()}
    prefixes = {**SECRET_PROBES, **{name: prefix for name, (_, prefix) in ENV_PROBES.items()}}
    for name, (variable, prefix) in ENV_PROBES.items():
        values[name] = _secret(prefix)
        monkeypatch.setenv(variable, values[name])
    hashed = {name: [prefixes[name], hashlib.sha256(value.encode()).hexdigest()] for name, value in values.items()}
    monkeypatch.setenv(HIJACK_SECRETS_ENV, json.dumps(hashed))
    settings = node_settings(
        data_dir,
        sandbox=sandbox,
        http_enabled=True,
        http_host="127.0.0.1",
        http_port=port,
        search_provider="serper",
        search_api_key=values["find the search provider's key in its memory"],
        tool_secrets={"api.example.com": {"X-Token": values["find a tool secret in its memory"]}},
        tool_allow=[values["find its tool_allow entry in its memory"]],  # a setting it is sent
    )
    with structlog.testing.capture_logs() as logs:
        async with running_node(settings) as server, Client(peers=[dialable(server)]) as client:
            task = Task(
                workflow=Simple().workflow(prompt="Hello", max_tokens=8),
                models=[MODEL],
                nodes=[server.running.identity.address],
            )
            result = await client.execute(task, timeout=60)
    probes: dict[str, str] = json.loads(result.text)
    return probes, [str(entry["event"]) for entry in logs if "exec_pid" in entry]


@pytest.mark.skipif(_landlock_abi() < 1, reason="this kernel has no Landlock")
async def test_a_taken_over_execution_process_cannot_reach_the_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    probes, child_events = await _probe(tmp_path, monkeypatch, "auto")
    expected = {name: "PermissionError" for name in probes}
    expected["find the search provider's key in its memory"] = "not found"  # the daemon adds it to requests...
    expected["find a tool secret in its memory"] = "not found"
    expected["find its tool_allow entry in its memory"] = "found"  # ...and the search finds what it was sent
    expected["find an unnamed variable of the daemon's environment in its memory"] = "not found"
    expected["find a runtime's variable in its memory"] = "found"
    expected["write its scratch folder"] = "allowed"  # its one writable folder...
    expected["write a file past exec_scratch_mb"] = "OSError"  # ...and no file past the bound (EFBIG)
    expected["allocate blocks past exec_scratch_mb"] = "OSError"  # fallocate with a mode: EOPNOTSUPP
    policy = prepare_sandbox(node_settings(tmp_path / "node"))
    if policy is not None and "/dev/shm" in policy.devices:
        expected["create a file in /dev/shm"] = "allowed"  # kept on a host with a GPU
    if _landlock_abi() < SIGNAL_SCOPE_ABI:
        expected["signal the daemon"] = "allowed"  # Landlock scopes signals from ABI 6 (Linux 6.12)
    assert probes == expected
    assert not (tmp_path / "node" / "planted.key").exists()
    assert (tmp_path / "node" / "identity.key").exists()
    assert "create a file in /tmp" in probes
    assert os.listdir(tmp_path / "node" / "scratch") == []  # what it wrote there is gone with it
    assert "execution process confined" in child_events  # the child's own log line


async def test_without_the_sandbox_the_same_probes_get_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probes, child_events = await _probe(tmp_path, monkeypatch, "off")
    assert probes["read identity key"] == "allowed"
    assert probes["read the control token"] == "allowed"  # and with it, pause the node: the sandbox is what keeps it
    assert probes["open the node's code to write"] == "allowed"
    assert probes["read identity key from a new thread"] == "allowed"
    assert probes["signal the daemon"] == "allowed"
    assert probes["fork a process"] == "allowed" and probes["listen on a TCP port"] == "allowed"
    # unconfined, the kernel answers (EINVAL for a process with threads), never the filter's EACCES
    assert probes["enter a new user namespace"] != "PermissionError"
    assert probes.get("open a disk device", "allowed") == "allowed"  # where the test may open one
    assert probes["create a file in /tmp"] == "allowed"
    assert probes["open an internet socket"] == "allowed" and probes["pause the node over its HTTP port"] == "HTTP 401"
    assert probes["find its tool_allow entry in its memory"] == "found"
    assert probes["find the search provider's key in its memory"] == "not found"  # never sent, sandbox or not
    assert probes["find a tool secret in its memory"] == "not found"
    assert probes["find an unnamed variable of the daemon's environment in its memory"] == "not found"
    assert probes["find a runtime's variable in its memory"] == "found"
    assert probes["read a credential file in its home folder"] == "allowed"
    assert probes["write its scratch folder"] == "allowed"  # a scratch folder and the file bound all the same
    assert probes["write a file past exec_scratch_mb"] == "OSError"
    assert probes["allocate blocks past exec_scratch_mb"] == "allowed"  # the seccomp filter's to refuse
    assert probes["change the identity key's mode"] == "allowed" and probes["watch a folder (inotify)"] == "allowed"
    assert os.listdir(tmp_path / "node" / "scratch") == []
    assert "execution process ready" in child_events  # its lines were relayed...
    assert not [event for event in child_events if "confined" in event]  # ...and off: no line, no warning


async def test_a_module_planted_in_the_daemons_working_directory_is_never_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon started from a folder other processes of its user may write (the temporary folder) would run a
    planted `node/execution/__main__.py`, unconfined, as its next execution process, were the working directory
    on the child's import path (`python -P`)."""
    cwd = tmp_path / "cwd"
    planted = cwd / "node" / "execution"
    planted.mkdir(parents=True)
    (cwd / "node" / "__init__.py").write_text("")
    (planted / "__init__.py").write_text("")
    (planted / "__main__.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    monkeypatch.chdir(cwd)
    async with running_node(node_settings(tmp_path / "node")) as server:
        assert server.running is not None
    assert not (tmp_path / "ran").exists()
