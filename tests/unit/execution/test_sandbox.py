"""The execution process's confinement (node/execution/sandbox.py): which rules the policy becomes, and,
in a real process confined by Landlock, what it can and cannot reach."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from py_landlock import AccessFs, LandlockError, LandlockNotAvailableError, get_abi_version

from node.execution import sandbox
from node.execution.protocol import SandboxPolicy
from node.execution.sandbox import SIGNAL_SCOPE_ABI, confine, rules

ROOT = Path(__file__).resolve().parents[3]


def _abi() -> int:
    try:
        return int(get_abi_version())
    except LandlockError:
        return 0


def _layout(tmp_path: Path) -> tuple[Path, SandboxPolicy]:
    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    (data / "execution").mkdir()
    (data / "identity.key").write_text("secret")
    (data / "models" / "m.gguf").write_text("weights")
    (tmp_path / "elsewhere.txt").write_text("public")
    (tmp_path / "link-to-data").symlink_to(data)
    policy = SandboxPolicy(private=[str(data)], readable=[str(data / "models")], writable=[str(data / "execution")])
    return data, policy


def test_rules_read_all_but_the_private_paths_and_grant_their_exceptions(tmp_path: Path) -> None:
    data, policy = _layout(tmp_path)
    allowed = dict(rules(policy))
    real = data.resolve()
    inside = {path for path in allowed if path == real or real in path.parents}
    assert inside == {real / "models", real / "execution"}  # no rule for the data dir, its key or its listing
    assert allowed[real / "models"] == AccessFs.EXECUTE | AccessFs.READ_FILE | AccessFs.READ_DIR
    assert allowed[real / "execution"] & AccessFs.MAKE_REG and allowed[real / "execution"] & AccessFs.REMOVE_FILE
    assert allowed[tmp_path.resolve() / "elsewhere.txt"] == AccessFs.EXECUTE | AccessFs.READ_FILE  # read only
    assert allowed[Path("/usr")] == AccessFs.EXECUTE | AccessFs.READ_FILE | AccessFs.READ_DIR
    assert tmp_path.resolve() / "link-to-data" not in allowed  # a link leads where its target's rules say
    # One rule on /proc itself (a rule on an entry in it dies with the entry); other processes' folders are
    # kept out by the tracing checks, which the probe below shows.
    assert allowed[Path("/proc")] == AccessFs.EXECUTE | AccessFs.READ_FILE | AccessFs.READ_DIR
    assert not [path for path in allowed if Path("/proc") in path.parents]


def test_code_under_a_writable_folder_stays_read_only(tmp_path: Path) -> None:
    """A checkout or a venv in /tmp: the temporary folder is writable, the code in it is not (a write there
    would run unconfined at the next start)."""
    data, policy = _layout(tmp_path)
    (tmp_path / "scratch" / "code").mkdir(parents=True)
    (tmp_path / "scratch" / "notes.txt").write_text("")
    policy = policy.model_copy(
        update={
            "writable": [*policy.writable, str(tmp_path / "scratch")],
            "readable": [str(tmp_path / "scratch" / "code")],
        }
    )
    allowed = dict(rules(policy))
    scratch = tmp_path.resolve() / "scratch"
    assert allowed[scratch / "code"] == AccessFs.EXECUTE | AccessFs.READ_FILE | AccessFs.READ_DIR
    assert allowed[scratch / "notes.txt"] & AccessFs.WRITE_FILE
    assert scratch not in allowed  # walked entry by entry: a rule on it would reach the code beneath


def test_a_readable_or_writable_path_outside_the_private_ones_changes_nothing(tmp_path: Path) -> None:
    data, policy = _layout(tmp_path)
    wider = policy.model_copy(update={"readable": [*policy.readable, str(tmp_path / "elsewhere.txt")]})
    assert dict(rules(wider)) == dict(rules(policy))  # it was allowed in full already


def test_in_a_private_dev_only_the_devices_named_are_open(tmp_path: Path) -> None:
    """/dev is private (a root node's process could open its disks); the policy's device globs are expanded
    when the process confines itself, so a device made after the daemon started is reached at the next start."""
    (tmp_path / "dev").mkdir()
    for name in ("null", "nvidia0", "nvidia-uvm", "sda"):
        (tmp_path / "dev" / name).write_text("")
    policy = SandboxPolicy(private=[str(tmp_path / "dev")], devices=[str(tmp_path / "dev" / "nvidia*")])
    allowed = {path.name for path, _ in rules(policy) if path.parent == tmp_path / "dev"}
    assert allowed == {"nvidia0", "nvidia-uvm"}
    (tmp_path / "dev" / "nvidia1").write_text("")  # a driver made it later
    assert {path.name for path, _ in rules(policy) if path.parent == tmp_path / "dev"} == allowed | {"nvidia1"}


_PROBE = """
import json, os, sys, threading
from pathlib import Path
{before}
from node.execution.protocol import SandboxPolicy
from node.execution.sandbox import confine
data = Path(sys.argv[1])
outcome = confine(SandboxPolicy.model_validate_json(sys.argv[2]))
def attempt(action):
    try:
        action()
    except OSError as exc:
        return type(exc).__name__
    return "allowed"
result = {{
    "confined": outcome.confined,
    "detail": outcome.detail,
    "read key": attempt(lambda: (data / "identity.key").read_text()),
    "read model": attempt(lambda: (data / "models" / "m.gguf").read_text()),
    "write own folder": attempt(lambda: (data / "execution" / "cache.json").write_text("{{}}")),
    "replace in own folder": attempt(lambda: os.replace(data / "execution" / "cache.json", data / "execution" / "c2")),
    "create in data dir": attempt(lambda: (data / "planted").write_text("x")),
    "unlink key": attempt(lambda: (data / "identity.key").unlink()),
    "move key out": attempt(lambda: os.rename(data / "identity.key", data / "execution" / "key")),
    "list data dir": attempt(lambda: os.listdir(data)),
    "read through the link": attempt(lambda: (data.parent / "link-to-data" / "identity.key").read_text()),
    "read elsewhere": attempt(lambda: (data.parent / "elsewhere.txt").read_text()),
    "write elsewhere": attempt(lambda: (data.parent / "elsewhere.txt").write_text("changed")),
    "open the node's code to write": attempt(lambda: open(sys.argv[3], "a").close()),
    "write the scratch folder": attempt(lambda: (Path(sys.argv[4]) / "out" / "scratch.txt").write_text("x")),
    "write /dev/null": attempt(lambda: open("/dev/null", "w").write("x")),
    "write code under the scratch folder": attempt(lambda: open(Path(sys.argv[4]) / "code" / "mod.py", "a").close()),
    "connect to a unix socket": attempt(lambda: __import__("socket").socket(1).connect(sys.argv[5])),
    "open an internet socket": attempt(lambda: __import__("socket").socket(2, 1).close()),
    "open an IPv6 socket": attempt(lambda: __import__("socket").socket(10, 2).close()),
    "open a netlink socket": attempt(lambda: __import__("socket").socket(16, 3, 0).close()),
    "make a socket pair": attempt(lambda: [end.close() for end in __import__("socket").socketpair()]),
    "make a datagram socket pair": attempt(lambda: [end.close() for end in __import__("socket").socketpair(1, 2)]),
    "open a UDP socket": attempt(lambda: __import__("socket").socket(2, 2).close()),
    "open an IPv6 TCP socket": attempt(lambda: __import__("socket").socket(10, 1 | 0o4000).close()),
    "open an MPTCP socket": attempt(lambda: __import__("socket").socket(2, 1, 262).close()),
    "open a TCP socket by its protocol number": attempt(lambda: __import__("socket").socket(2, 1, 6).close()),
    "open a vsock socket": attempt(lambda: __import__("socket").socket(40, 1).close()),
    "look up localhost": attempt(lambda: __import__("socket").getaddrinfo("localhost", 80, type=1)),
    "connect to the engine's port": attempt(lambda: __import__("socket").create_connection(("127.0.0.1", int(sys.argv[6])), 5).close()),
    "connect to another port": attempt(lambda: __import__("socket").create_connection(("127.0.0.1", int(sys.argv[7])), 5).close()),
    "signal parent": attempt(lambda: os.kill(os.getppid(), 0)),
    "parent environ": attempt(lambda: Path(f"/proc/{{os.getppid()}}/environ").read_bytes()),
    "parent memory": attempt(lambda: open(f"/proc/{{os.getppid()}}/mem", "rb").close()),
    "own status": attempt(lambda: Path("/proc/self/status").read_text()),
}}
seen = {{}}
thread = threading.Thread(target=lambda: seen.update(key=attempt(lambda: (data / "identity.key").read_text())))
thread.start(); thread.join()
result["read key from a later thread"] = seen["key"]
import llama_cpp  # the heavy imports still work, confined
print(json.dumps(result))
"""


def _run_probe(tmp_path: Path, before: str = "", remote_engine: bool = False) -> dict[str, object]:
    """What a confined process could do; with `remote_engine`, one whose policy lets it connect to an engine's
    port (the first of two listeners on loopback)."""
    data, policy = _layout(tmp_path)
    engine, other = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    scratch = tmp_path / "scratch"
    (scratch / "code").mkdir(parents=True)
    (scratch / "code" / "mod.py").write_text("")
    (scratch / "out").mkdir()  # scratch itself is walked entry by entry (code in it): new files go in a folder
    policy = policy.model_copy(
        update={
            "writable": [*policy.writable, str(scratch), "/dev"],
            "readable": [*policy.readable, str(scratch / "code")],
            "connect_ports": [engine.getsockname()[1]] if remote_engine else [],
        }
    )
    service = socket.socket(socket.AF_UNIX)  # a service of the same user (the session bus, ssh-agent...)
    service.bind(str(tmp_path / "service.sock"))
    service.listen()
    argv = [
        str(data),
        policy.model_dump_json(),
        str(ROOT / "pyproject.toml"),
        str(scratch),
        str(tmp_path / "service.sock"),
        str(engine.getsockname()[1]),
        str(other.getsockname()[1]),
    ]
    return _run_script(_PROBE.format(before=before), *argv)


def _run_script(code: str, *argv: str) -> dict[str, object]:
    """What a script printed (JSON), run in a process of its own: a confinement is for the whole process."""
    done = subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.mark.skipif(_abi() < 1, reason="this kernel has no Landlock")
def test_a_confined_process_keeps_its_own_paths_and_loses_the_daemons(tmp_path: Path) -> None:
    result = _run_probe(tmp_path)
    assert result.pop("confined") is True
    detail = str(result.pop("detail"))
    assert detail.startswith(f"Landlock ABI {_abi()}") and "no new sockets, processes or listeners" in detail
    denied = {
        "read key",
        "create in data dir",
        "unlink key",
        "move key out",
        "list data dir",
        "read through the link",
        "parent environ",
        "parent memory",
        "read key from a later thread",
        "write elsewhere",
        "open the node's code to write",
        "write code under the scratch folder",
        "connect to a unix socket",
        # a local model's process has no network: its tools' requests are the daemon's to make
        "open an internet socket",
        "open an IPv6 socket",
        "open a netlink socket",
        "open a UDP socket",
        "open an IPv6 TCP socket",
        "open an MPTCP socket",
        "open a TCP socket by its protocol number",
        "open a vsock socket",
        "connect to the engine's port",
        "connect to another port",
        "make a datagram socket pair",  # it could send to any unix socket's path (journald's)
    } | ({"signal parent"} if _abi() >= SIGNAL_SCOPE_ABI else set())
    assert {name for name, outcome in result.items() if outcome != "allowed"} == denied
    assert set(result[name] for name in denied) == {"PermissionError"}
    assert (tmp_path / "data" / "identity.key").read_text() == "secret"
    assert (tmp_path / "elsewhere.txt").read_text() == "public"


@pytest.mark.skipif(_abi() < 1, reason="this kernel has no Landlock")
def test_a_remote_engines_process_keeps_tcp_sockets_to_its_engines_ports_only(tmp_path: Path) -> None:
    result = _run_probe(tmp_path, remote_engine=True)
    assert result["confined"] is True and "no new sockets but TCP, processes or listeners" in str(result["detail"])
    assert result["open an internet socket"] == result["open an IPv6 TCP socket"] == "allowed"  # with flags too
    assert result["look up localhost"] == "allowed"
    # TCP only: UDP, vsock and netlink reach what Landlock's port rules do not govern
    assert result["open a TCP socket by its protocol number"] == "allowed"
    # MPTCP (which falls back to TCP with any peer) is no TCP to Landlock's port rules: refused, as UDP, vsock...
    others = ("open an MPTCP socket", "open an IPv6 socket", "open a UDP socket", "open a vsock socket")
    for other in (*others, "open a netlink socket"):
        assert result[other] == "PermissionError", other  # the IPv6 probe opens a datagram socket
    assert result["connect to the engine's port"] == "allowed"
    # Landlock ABI 4 (Linux 6.7) names TCP ports: the metadata service's 80, the node's HTTP port...
    assert result["connect to another port"] == ("PermissionError" if _abi() >= 4 else "allowed")
    assert result["connect to a unix socket"] == "PermissionError"
    assert result["read key"] == "PermissionError"


def test_a_process_with_threads_already_running_is_not_confined(tmp_path: Path) -> None:
    result = _run_probe(tmp_path, before="threading.Thread(target=__import__('time').sleep, args=(5,)).start()")
    assert result["confined"] is False and "threads ran before the sandbox" in str(result["detail"])
    assert result["read key"] == "allowed"  # and says so instead of pretending


def test_without_landlock_the_outcome_says_why(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def unavailable() -> int:
        raise LandlockNotAvailableError()

    monkeypatch.setattr(sandbox, "get_abi_version", unavailable)
    monkeypatch.setattr(sandbox, "thread_count", lambda: 1)  # whatever pytest runs beside
    # Not on pytest's own process: the test below applies them for real, in a process of its own.
    monkeypatch.setattr(sandbox, "drop_capabilities", lambda: "no capabilities")
    monkeypatch.setattr(
        sandbox,
        "restrict_syscalls",
        lambda network=False: "no new sockets, processes or listeners, no attribute changes or file watches",
    )
    _, policy = _layout(tmp_path)
    outcome = confine(policy.model_copy(update={"required": True}))
    assert not outcome.confined and outcome.required and "Landlock is not available" in outcome.detail
    assert outcome.detail.endswith(
        "still: no new sockets, processes or listeners, no attribute changes or file watches, no capabilities"
    )
    assert not confine(None).confined and "no sandbox policy" in confine(None).detail


_WITHOUT_LANDLOCK = """
import json, os, sys
from py_landlock import LandlockNotAvailableError
from node.execution import sandbox
from node.execution.protocol import SandboxPolicy
def unavailable():
    raise LandlockNotAvailableError()
sandbox.get_abi_version = unavailable
outcome = sandbox.confine(SandboxPolicy.model_validate_json(sys.argv[1]))
try:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    fork = "allowed"
except OSError as exc:
    fork = type(exc).__name__
print(json.dumps({"confined": outcome.confined, "detail": outcome.detail, "fork": fork}))
"""


def test_without_landlock_the_seccomp_filter_still_holds(tmp_path: Path) -> None:
    """A kernel without Landlock, or a container's seccomp profile that refuses it: the files stay open, but no
    process forked off and no listener on the node's port (the filter needs no Landlock)."""
    _, policy = _layout(tmp_path)
    result = _run_script(_WITHOUT_LANDLOCK, policy.model_dump_json())
    assert result["confined"] is False and "still: no new sockets, processes or listeners" in str(result["detail"])
    assert result["fork"] == "PermissionError"


def test_devices_are_opened_and_driven_but_nothing_is_made_among_them(tmp_path: Path) -> None:
    """A device folder (/dev/dri) is where a node run as root could otherwise leave files (devtmpfs: memory, kept
    till reboot); the scratch folder alone takes new files."""
    devices = tmp_path / "dev"
    (devices / "dri").mkdir(parents=True)
    (devices / "card0").write_text("")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    policy = SandboxPolicy(
        private=[str(devices)],
        readable=[],
        writable=[str(scratch)],
        devices=[str(devices / "dri"), str(devices / "card0")],
    )
    granted = dict(rules(policy))
    folder, device = granted[(devices / "dri").resolve()], granted[(devices / "card0").resolve()]
    assert folder & (AccessFs.READ_FILE | AccessFs.WRITE_FILE | AccessFs.IOCTL_DEV | AccessFs.READ_DIR) == (
        AccessFs.READ_FILE | AccessFs.WRITE_FILE | AccessFs.IOCTL_DEV | AccessFs.READ_DIR
    )
    made = AccessFs.MAKE_REG | AccessFs.MAKE_DIR | AccessFs.MAKE_SYM | AccessFs.MAKE_FIFO | AccessFs.REMOVE_FILE
    assert folder & made == 0 and device & made == 0 and device & AccessFs.TRUNCATE == 0
    assert granted[scratch.resolve()] & made == made
