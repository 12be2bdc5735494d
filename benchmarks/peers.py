"""Peers in their own processes on 127.0.0.1: a real compute node (`python -m node.cli
start`) or the bare P2P echo peer, both READY when they print `listening on <multiaddr>`.

For the node, READY comes after its models are loaded and its P2P host listens.
Memory and CPU time come from /proc/<pid>; which model class serves requests
comes from the node's own `model loaded` log line (its logger name).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from benchmarks.stats import BenchmarkError
from node.wire.identity import Identity

READY_TIMEOUT_S = 90.0
BENCHMARK_TIMEOUT_S = 60.0  # READY -> the first start's tokens/s measured and cached (`model speed cached`)
BENCHMARK_CACHE_FILE = "speeds.json"  # in the data dir (Settings.benchmark_cache_path)
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_MODEL_CLASSES = {"models.batching": "BatchedLlamaModel (models.batching)"}


def node_process(
    threads: int,
    *,
    n_ctx: int = 2048,
    max_concurrent: int = 1,
    max_queue: int = 8,
    extra_args: list[str] | None = None,
    benchmark_cache: bytes | None = None,
) -> PeerProcess:
    """A compute node with a fresh identity and data dir, default log level (info, JSON).

    `benchmark_cache`: a `speeds.json` for the data dir (a restart's cached startup
    tokens/s benchmark); without it the node measures its model after READY, and `start` waits for that.
    """
    identity = Identity.generate()
    workdir = tempfile.TemporaryDirectory(prefix="bench-node-")
    data_dir = Path(workdir.name)
    identity.save(data_dir / "identity.key")
    if benchmark_cache is not None:
        (data_dir / BENCHMARK_CACHE_FILE).write_bytes(benchmark_cache)
    args = [
        sys.executable,
        "-m",
        "node.cli",
        "start",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--data-dir",
        str(data_dir),
        "--no-http-enabled",
        "--n-threads",
        str(threads),
        "--n-ctx",
        str(n_ctx),
        "--max-concurrent",
        str(max_concurrent),
        "--max-queue",
        str(max_queue),
        "--heartbeat-interval",
        "30",
        "--log-format",
        "json",
        # every peer of a benchmark dials from 127.0.0.1: one host to the per-IP connection limits
        "--inbound-connections-per-ip",
        "100000",
        "--inbound-connections-per-ip-per-minute",
        "100000",
        *(extra_args or []),
    ]
    return PeerProcess(args, workdir, identity)


class PeerProcess:
    """Start with `with process:`; `multiaddr` (and for a node `address`) to reach it."""

    def __init__(
        self, args: list[str], workdir: tempfile.TemporaryDirectory[str], identity: Identity | None = None
    ) -> None:
        self.args = args
        self.identity = identity
        self._workdir = workdir
        self._stderr_path = Path(workdir.name) / "stderr.log"
        self._proc: subprocess.Popen[str] | None = None
        self._ready = threading.Event()
        self.multiaddr = ""
        self.startup_seconds = 0.0
        self._ready_at = 0.0
        self.ready_timeout = READY_TIMEOUT_S  # seconds to READY before start() gives up

    @property
    def address(self) -> str:
        """The node's address (what `Task.nodes` picks)."""
        if self.identity is None:
            raise BenchmarkError("this peer has no node identity")
        return self.identity.address

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise BenchmarkError(f"{self.args[2]} is not running")
        return self._proc.pid

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Spawn the process and wait for READY; BenchmarkError with its log tail if it never gets there."""
        if self.identity is not None and _quieter_than_info(self.args) and "--no-startup-benchmark" not in self.args:
            raise BenchmarkError(
                "a node measured after READY is waited for by its info log lines: run it at --log-level info "
                "(or with --no-startup-benchmark)"
            )
        env = {k: v for k, v in os.environ.items() if not k.startswith("COMPUTE_NODE_")}
        with open(self._stderr_path, "w") as stderr:
            started = time.perf_counter()
            self._proc = subprocess.Popen(
                self.args, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=_repo_root()
            )
        threading.Thread(target=self._read_stdout, name="bench-node-stdout", daemon=True).start()
        deadline = started + self.ready_timeout
        while not self._ready.wait(0.01):
            if self._proc.poll() is not None or time.perf_counter() > deadline:
                code, tail = self._proc.poll(), self.log_tail()
                self.stop()
                why = (
                    f"not READY within {self.ready_timeout:g} s"
                    if code is None
                    else f"exited with code {code} before READY"
                )
                raise BenchmarkError(f"{self.args[2]} {why}: {tail}")
        self.startup_seconds = self._ready_at - started
        if self._events("execution process started", benchmark_later=True):
            self._wait_for_benchmark(deadline=time.perf_counter() + BENCHMARK_TIMEOUT_S)

    def _wait_for_benchmark(self, deadline: float) -> None:
        """Until a node that said it measures its model after READY (its first start, in idle time) did: a
        measurement still to come would run beside what a benchmark measures next (a baseline's turn included)."""
        # The daemon's own lines: the child's "model measured after ready" may be relayed before the daemon has
        # written the figure it reported (two channels), and footprint.py reads the file next.
        ended = ("model speed cached", "model benchmark not cached", "model not benchmarked")
        while not any(self._events(event) for event in ended):
            if self._proc is None or self._proc.poll() is not None or time.perf_counter() > deadline:
                tail = self.log_tail()
                self.stop()
                raise BenchmarkError(f"the node did not measure its model within {BENCHMARK_TIMEOUT_S:g} s: {tail}")
            time.sleep(0.02)

    def _events(self, event: str, **fields: object) -> list[dict[str, object]]:
        """The node's JSON log lines of `event` with these field values (the benchmarks run it at info, JSON)."""
        found = []
        for line in self._log_lines():
            if event not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") == event and all(entry.get(k) == v for k, v in fields.items()):
                found.append(entry)
        return found

    def _read_stdout(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.startswith("listening on ") and "/ip4/127.0.0.1/" in line and not self._ready.is_set():
                self._ready_at = time.perf_counter()
                self.multiaddr = line.removeprefix("listening on ").strip()
                self._ready.set()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if the process has not exited within 30 s."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None
        self._workdir.cleanup()

    # ------------------------------------------------------------ measuring
    def rss_bytes(self) -> int:
        """RSS of the peer's own (daemon) process; see `child_pids` for its execution processes."""
        return rss_bytes(self.pid)

    def child_pids(self) -> list[int]:
        """The processes the peer started (a node's execution processes, one per model)."""
        return child_pids(self.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU time so far of the node process and its live execution processes."""
        total = 0.0
        for pid in (self.pid, *self.child_pids()):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # a child that just ended
            total += (int(fields[11]) + int(fields[12])) / _CLK_TCK
        return total

    def benchmark_cache(self) -> bytes | None:
        """The node's cached startup benchmark (`speeds.json` in its data dir), if it wrote one."""
        try:
            return (Path(self._workdir.name) / BENCHMARK_CACHE_FILE).read_bytes()
        except FileNotFoundError:
            return None

    def cpu_split(self) -> tuple[float, float, float]:
        """User + system CPU seconds so far: (the main thread, which runs the event loop; the process's
        other threads, the P2P host's Trio thread first; its live execution processes)."""
        main = _cpu_of(Path(f"/proc/{self.pid}/task/{self.pid}/stat"))
        process = _cpu_of(Path(f"/proc/{self.pid}/stat"))
        children = sum(_cpu_of(Path(f"/proc/{pid}/stat")) for pid in self.child_pids())
        return main, process - main, children

    def model_class(self) -> str:
        """Which model class the node loaded, from its `model loaded` log line."""
        for line in self._log_lines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") == "model loaded":
                # The execution process's lines reach the daemon's log under its logger, naming their own.
                logger = str(entry.get("exec_logger") or entry.get("logger", ""))
                name = _MODEL_CLASSES.get(logger, f"model class of logger {logger!r}")
                return f"{name}, parallel {entry['parallel']}" if "parallel" in entry else name
        return "unknown (no model_loaded log line)"

    def log_tail(self, chars: int = 1500) -> str:
        return "\n".join(self._log_lines())[-chars:]

    def _log_lines(self) -> list[str]:
        try:
            return self._stderr_path.read_text(errors="replace").splitlines()
        except OSError:
            return []


def rss_bytes(pid: int) -> int:
    """Resident memory of a process now."""
    return _status_kib(pid, "VmRSS") * 1024


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc/<pid>/task/*/children."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return children


def tree_rss_bytes(pid: int) -> tuple[int, int]:
    """(RSS of `pid`, summed RSS of its children) now."""
    own = rss_bytes(pid)
    children = 0
    for child in child_pids(pid):
        try:
            children += rss_bytes(child)
        except (OSError, BenchmarkError):
            continue
    return own, children


def pss_bytes(pid: int) -> int:
    """Proportional set size of a process now (/proc/<pid>/smaps_rollup): a page it shares with n
    processes counts 1/n, so the PSS of processes sharing pages adds up to what they hold together."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    raise BenchmarkError(f"/proc/{pid}/smaps_rollup has no Pss")


def tree_pss_bytes(pid: int) -> tuple[int, int]:
    """(PSS of `pid`, summed PSS of its children) now."""
    own = pss_bytes(pid)
    children = 0
    for child in child_pids(pid):
        try:
            children += pss_bytes(child)
        except (OSError, BenchmarkError):
            continue
    return own, children


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise BenchmarkError(f"/proc/{pid}/status has no {key}")


def _quieter_than_info(args: list[str]) -> bool:
    """The last --log-level given is above info (its last value wins, as the node's flags do)."""
    levels = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "--log-level"]
    return bool(levels) and levels[-1].lower() not in ("debug", "info")


def _repo_root() -> str:
    return str(Path(__file__).resolve().parent.parent)


def _cpu_of(stat: Path) -> float:
    """User + system CPU seconds from a /proc stat file (0 for a process or thread that just ended)."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK
