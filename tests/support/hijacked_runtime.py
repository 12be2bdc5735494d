"""A taken-over execution process, for the sandbox's tests (COMPUTE_NODE_TEST_EXEC_WRAPPER=
tests.support.hijacked_runtime:hijacked): every generation tries what a hostile workflow that took the
process over would try against the daemon, and answers with what it managed, as JSON.

HIJACK_DATA_DIR_ENV names the node's data dir. Each probe is harmless if it succeeds: a file opened
read-only, or to append and closed unwritten, a new one written in the data dir, one made and removed in a
temporary folder, signal 0 (a permission check), /proc files opened and closed. One file is left in the
process's scratch folder (SCRATCH_FILE), for the test to see it removed.
"""

from __future__ import annotations

import ctypes
import hashlib
import http.client
import json
import os
import resource
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from models.requests import Generation, GenerationRequest, TextSink

_CLONE_NEWUSER = 0x10000000  # linux/sched.h
HIJACK_DATA_DIR_ENV = "COMPUTE_NODE_TEST_HIJACK_DATA_DIR"
HIJACK_HTTP_PORT_ENV = "COMPUTE_NODE_TEST_HIJACK_HTTP_PORT"  # the daemon's loopback HTTP port, where set
HIJACK_DEVICE_ENV = "COMPUTE_NODE_TEST_HIJACK_DEVICE"  # a device of the machine's (a disk), where one is set
# Values to look for in the process's own memory, as JSON {probe name: [prefix, sha256 of the whole value]}: the
# value itself never reaches the process this way (its hash does), so a value found there came from the node.
HIJACK_SECRETS_ENV = "COMPUTE_NODE_TEST_HIJACK_LOOK_FOR"
SECRET_BYTES = 48  # each value looked for: its prefix and random characters up to this length
_PROJECT_ROOT = Path(__file__).resolve().parents[2]
SCRATCH_FILE = "left-behind"
TEMPORARY_FOLDERS = ("/tmp", "/var/tmp", "/dev/shm")


def attempt(action: Callable[[], object]) -> str:
    """'allowed' or the name of the error that stopped `action`."""
    try:
        action()
    except OSError as exc:
        return type(exc).__name__
    return "allowed"


def probes(data_dir: Path) -> dict[str, str]:
    """What a taken-over process can do to the daemon (the parent process) and its data dir."""
    daemon = os.getppid()
    results = {
        "read identity key": attempt(lambda: (data_dir / "identity.key").read_bytes()),
        "read the control token": attempt(lambda: (data_dir / "control.token").read_bytes()),
        "read journal": attempt(lambda: (data_dir / "journal.sqlite3").read_bytes()),
        "list data dir": attempt(lambda: os.listdir(data_dir)),
        "create file in data dir": attempt(lambda: (data_dir / "planted.key").write_text("x")),
        "signal the daemon": attempt(lambda: os.kill(daemon, 0)),
        "read the daemon's environment": attempt(lambda: Path(f"/proc/{daemon}/environ").read_bytes()),
        "open the daemon's memory": attempt(lambda: open(f"/proc/{daemon}/mem", "rb").close()),
        # the node's own code, which the next start would run: opened to append, nothing written
        "open the node's code to write": attempt(lambda: open(_PROJECT_ROOT / "node" / "__init__.py", "a").close()),
        # a process of its own would outlive this one, holding its socket to the daemon
        "fork a process": attempt(_fork_and_reap),
        # with SO_REUSEPORT (py-libp2p's listener sets it) a listener on the node's port takes its connections
        "listen on a TCP port": attempt(_listen),
        # a user namespace hands back every capability inside it
        "enter a new user namespace": attempt(_unshare_user_namespace),
        # its one writable folder, the daemon's to bound and remove
        "write its scratch folder": attempt(lambda: _write_scratch(data_dir)),
        "write a file past exec_scratch_mb": attempt(_write_past_the_file_size_limit),
        "allocate blocks past exec_scratch_mb": attempt(_allocate_past_the_file_size_limit),
        # Landlock governs no attribute change: the key made readable to all (here: set to the mode it has)
        "change the identity key's mode": attempt(lambda: os.chmod(data_dir / "identity.key", 0o600)),
        # a watch on its scratch folder sees the daemon's walk begin
        "watch a folder (inotify)": attempt(_inotify),
        # where credentials live: a cloud CLI's, .netrc, the hub's token
        "read a credential file in its home folder": attempt(
            lambda: Path(os.environ.get("HOME", "/nonexistent"), ".aws", "credentials").read_bytes()
        ),
    }
    for folder in TEMPORARY_FOLDERS:  # what is left there outlives the process; on tmpfs it holds memory
        if os.path.isdir(folder):
            results[f"create a file in {folder}"] = attempt(lambda folder=folder: _create_and_remove(folder))
    if device := os.environ.get(HIJACK_DEVICE_ENV):  # a disk holds the data dir: a root node's process could read it
        results["open a disk device"] = attempt(lambda: os.close(os.open(device, os.O_RDONLY | os.O_NONBLOCK)))
    if port := os.environ.get(HIJACK_HTTP_PORT_ENV):  # a loopback service: the daemon's own HTTP port
        results["pause the node over its HTTP port"] = _post_status(int(port), "/pause")
    # the cloud's metadata service, the host's loopback services, its LAN: a tool's requests go through the daemon
    results["open an internet socket"] = attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close())
    results["open an IPv6 socket"] = attempt(lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close())
    for name, (prefix, digest) in json.loads(os.environ.get(HIJACK_SECRETS_ENV, "{}")).items():
        results[name] = _in_own_memory(prefix.encode(), digest)
    in_thread: dict[str, str] = {}  # a thread started now (as a tool or the decode loop would be)
    thread = threading.Thread(
        target=lambda: in_thread.update(key=attempt(lambda: (data_dir / "identity.key").read_bytes()))
    )
    thread.start()
    thread.join()
    results["read identity key from a new thread"] = in_thread["key"]
    return results


def _in_own_memory(prefix: bytes, digest: str) -> str:
    """'found' if a value of SECRET_BYTES that starts with `prefix` and hashes to `digest` is in this process's
    writable memory (its heap, where settings it was sent would be), else 'not found'."""
    found = False
    with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", buffering=0) as memory:
        for line in maps:
            span, mode = line.split()[:2]
            start, end = (int(part, 16) for part in span.split("-"))
            if not mode.startswith("rw") or end - start > 1 << 30:
                continue
            try:
                memory.seek(start)
                chunk = memory.read(end - start)
            except OSError:
                continue
            at = chunk.find(prefix)
            while at >= 0 and not found:
                found = hashlib.sha256(chunk[at : at + SECRET_BYTES]).hexdigest() == digest
                at = chunk.find(prefix, at + 1)
            if found:
                break
    return "found" if found else "not found"


def _fork_and_reap() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def _write_scratch(data_dir: Path) -> None:
    scratch = Path(tempfile.gettempdir())
    if scratch.parent != data_dir / "scratch":
        raise OSError(f"TMPDIR is {scratch}, not a folder of {data_dir / 'scratch'}")
    (scratch / SCRATCH_FILE).write_text("x")


def _write_past_the_file_size_limit() -> None:
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    with tempfile.TemporaryFile() as file:
        os.pwrite(file.fileno(), b"x", limit if limit != resource.RLIM_INFINITY else 1 << 30)


def _allocate_past_the_file_size_limit() -> None:
    """fallocate(FALLOC_FL_KEEP_SIZE) allocates blocks without growing the file: RLIMIT_FSIZE never sees them."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    with tempfile.TemporaryFile() as file:
        if libc.fallocate(file.fileno(), 1, 0, min(limit, 1 << 30) + (1 << 20)) != 0:
            number = ctypes.get_errno()
            raise OSError(number, os.strerror(number))


def _inotify() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if (fd := libc.inotify_init1(0)) < 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))
    os.close(fd)


def _create_and_remove(folder: str) -> None:
    path = os.path.join(folder, f"compute-node-probe-{os.getpid()}")
    with open(path, "x"):
        pass
    os.unlink(path)


def _unshare_user_namespace() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWUSER) != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))


def _listen() -> None:
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()


def _post_status(port: int, path: str) -> str:
    """'allowed' if the daemon did what the POST asked, else 'HTTP <status>' or the error's name."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", path, headers={"Host": f"127.0.0.1:{port}"})
        status = connection.getresponse().status
    except OSError as exc:
        return type(exc).__name__
    finally:
        connection.close()
    return "allowed" if status == 200 else f"HTTP {status}"


class Hijacked:
    """The real model for everything but generation, which reports the probes instead."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.name = model.name
        self.parallel = model.parallel

    def progress(self) -> Any:
        return self._model.progress()

    async def generate(self, request: GenerationRequest, on_text: TextSink | None = None) -> Generation:
        text = json.dumps(probes(Path(os.environ[HIJACK_DATA_DIR_ENV])))
        return Generation(text=text, finish_reason="stop", prompt_tokens=1, completion_tokens=1)

    async def close(self) -> None:
        await self._model.close()


def hijacked(model: Any) -> Hijacked:
    return Hijacked(model)
