"""The nodes of a loopback cluster: a bootstrap node, N serving nodes and idle observers,
each a `compute-node start` process of its own (benchmarks.peers.node_process: own
identity, data dir and port), and what each one costs, read from /proc.

Serving nodes host `smollm2:135m`, the model every task asks for. The bootstrap node
and the observers host the same GGUF under another name (`idle-model`, a registry
alias) that no task asks for: they are never picked, so everything they spend beyond
an idle baseline is traffic that is not for them. Each node dials the bootstrap node
and up to two nodes started before it, so gossip forms a mesh, not a star.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydantic import BaseModel

from benchmarks.peers import PeerProcess, node_process
from benchmarks.stats import BenchmarkError
from benchmarks.workloads import MODEL_NAME

IDLE_MODEL = "idle-model"
_REGISTRY = json.dumps({IDLE_MODEL: {"alias": MODEL_NAME}})
_CLK_TCK = os.sysconf("SC_CLK_TCK")
START_GROUP = 4  # nodes started at once (8 at a time missed READY on a loaded 2-core machine)
READY_TIMEOUT_S = 300.0
_PID = re.compile(r"pid=(\d+),")
_RECEIVED = re.compile(r"\bbytes_received:(\d+)")
_SENT = re.compile(r"\bbytes_sent:(\d+)")


class NodeConfig(BaseModel):
    """How every node of the cluster is started."""

    heartbeat_interval: float = 5.0
    threads: int = 1
    n_ctx: int = 512
    parallel: int = 1
    max_concurrent: int = 4
    max_queue: int = 64
    drain_timeout: float = 10.0
    extra_args: list[str] = []


class Usage(BaseModel):
    """Cumulative CPU seconds (process and its execution processes) and TCP payload bytes
    received/sent on its sockets, closed ones included (see SocketLedger)."""

    cpu: float = 0.0
    received: int = 0
    sent: int = 0

    def __sub__(self, other: Usage) -> Usage:
        return Usage(cpu=self.cpu - other.cpu, received=self.received - other.received, sent=self.sent - other.sent)


def socket_bytes() -> dict[tuple[int, str], tuple[int, int]]:
    """(pid, socket) -> (bytes received, bytes sent) of every open TCP socket, from `ss -tinpH`.

    The counters are the kernel's tcp_info bytes_received / bytes_sent: TCP payload (libp2p's
    Noise and yamux framing included, TCP/IP headers not). A socket is named by its addresses
    and file descriptor, so one closed and another opened on the same ports are told apart
    as long as both are seen.
    """
    out = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True, timeout=30).stdout
    sockets: dict[tuple[int, str], tuple[int, int]] = {}
    key: tuple[int, str] | None = None
    for line in out.splitlines():
        if not line.startswith((" ", "\t")):
            match = _PID.search(line)
            fields = line.split()
            key = (int(match.group(1)), " ".join(fields[3:5]) + line[match.end() :]) if match else None
            continue
        if key is not None:
            received = sum(int(v) for v in _RECEIVED.findall(line))
            sent = sum(int(v) for v in _SENT.findall(line))
            old_r, old_s = sockets.get(key, (0, 0))
            sockets[key] = (old_r + received, old_s + sent)
    return sockets


class SocketLedger:
    """Per-process TCP bytes that survive closed connections: `ss` read every `interval` s, and
    each socket's growth since the last reading added to its process's total.

    `ss` sees open sockets only; reading often and keeping the sum is what counts a connection
    that closed (a killed peer, a publisher that left) up to its last reading: at most
    `interval` s of its traffic is missed. A socket first seen after the first reading opened
    since, so all its bytes count.
    """

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self._last: dict[tuple[int, str], tuple[int, int]] = {}
        self._totals: dict[int, tuple[int, int]] = {}
        self._first = True
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="socket-ledger", daemon=True)

    def start(self) -> None:
        self.poll()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except (OSError, subprocess.SubprocessError):
                continue  # the next reading catches up (only a closing socket's last bytes are lost)

    def poll(self) -> dict[int, tuple[int, int]]:
        """Read `ss` now; pid -> (bytes received, bytes sent) so far."""
        with self._lock:
            now = socket_bytes()
            for key, (received, sent) in now.items():
                last_r, last_s = self._last.get(key, (received, sent) if self._first else (0, 0))
                total_r, total_s = self._totals.get(key[0], (0, 0))
                self._totals[key[0]] = (total_r + max(received - last_r, 0), total_s + max(sent - last_s, 0))
            self._last = now
            self._first = False
            return dict(self._totals)


class ClusterNode:
    """One node process with its role ('bootstrap', 'serving' or 'observer')."""

    def __init__(self, role: str, index: int, process: PeerProcess, ledger: SocketLedger) -> None:
        self.role = role
        self.ledger = ledger
        self.index = index
        self.process = process
        self.alive = True
        self._last = Usage()

    @property
    def name(self) -> str:
        return f"{self.role}-{self.index}"

    @property
    def address(self) -> str:
        return self.process.address

    def usage(self, sockets: dict[int, tuple[int, int]]) -> Usage:
        """Usage so far from the ledger's totals; the last reading for a dead node."""
        if not self.alive:
            return self._last
        try:
            pid = self.process.pid
            children = self.process.child_pids()
        except (OSError, BenchmarkError):
            return self._last
        received, sent = sockets.get(pid, (0, 0))
        total = Usage(received=received, sent=sent)
        for each in (pid, *children):
            total = _add_cpu(total, each)
        self._last = total
        return total

    def signal(self, sig: signal.Signals) -> None:
        if sig == signal.SIGKILL:
            self.usage(self.ledger.poll())  # its last reading: a dead process has no sockets to read
        os.kill(self.process.pid, sig)
        if sig == signal.SIGKILL:
            self.alive = False


def _add_cpu(total: Usage, pid: int) -> Usage:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return total  # a child that just ended
    cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK
    return total.model_copy(update={"cpu": total.cpu + cpu})


class Cluster:
    """Start with `with Cluster(...) as cluster:`; every process is stopped on exit."""

    def __init__(self, serving: int, observers: int, config: NodeConfig, seed: int = 0) -> None:
        if not 1 <= serving <= 24:
            raise BenchmarkError(f"serving nodes must be 1 to 24, got {serving}")
        self.config = config
        self._plan = [("serving", i) for i in range(serving)] + [("observer", i) for i in range(observers)]
        self._rng = random.Random(seed)
        self.bootstrap: ClusterNode | None = None
        self.nodes: list[ClusterNode] = []
        self.ledger = SocketLedger()

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """The bootstrap node first, then the others START_GROUP at a time (each waits for READY)."""
        self.ledger.start()
        self.bootstrap = ClusterNode("bootstrap", 0, self._process(IDLE_MODEL, []), self.ledger)
        self.bootstrap.process.start()
        ready: list[str] = [self.bootstrap.process.multiaddr]
        for first in range(0, len(self._plan), START_GROUP):
            batch = []
            for role, index in self._plan[first : first + START_GROUP]:
                earlier = self._rng.sample(ready[1:], min(2, len(ready) - 1))
                model = MODEL_NAME if role == "serving" else IDLE_MODEL
                batch.append(ClusterNode(role, index, self._process(model, [ready[0], *earlier]), self.ledger))
            with ThreadPoolExecutor(len(batch)) as pool:
                list(pool.map(lambda n: n.process.start(), batch))
            self.nodes += batch
            ready += [n.process.multiaddr for n in batch]

    def _process(self, model: str, bootstrap: list[str]) -> PeerProcess:
        c = self.config
        args = [
            "--model", model, "--registry", _REGISTRY, "--parallel", str(c.parallel),
            "--heartbeat-interval", f"{c.heartbeat_interval:g}", "--drain-timeout", f"{c.drain_timeout:g}",
            "--no-startup-benchmark", "--log-level", "warning",
        ]  # fmt: skip
        for peer in bootstrap:
            args += ["--bootstrap", peer]
        process = node_process(
            c.threads,
            n_ctx=c.n_ctx,
            max_concurrent=c.max_concurrent,
            max_queue=c.max_queue,
            extra_args=args + c.extra_args,
        )
        process.ready_timeout = READY_TIMEOUT_S  # a node started among 20 others on two cores is slow
        return process

    def stop(self) -> None:
        """SIGCONT (a frozen node cannot exit), then stop every process, in parallel."""
        everyone = [n for n in [self.bootstrap, *self.nodes] if n is not None]
        for node in everyone:
            if node.alive:
                try:
                    node.signal(signal.SIGCONT)
                except (OSError, BenchmarkError):
                    pass
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda n: n.process.stop(), everyone))
        self.ledger.stop()

    @property
    def serving(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.role == "serving"]

    @property
    def observers(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.role == "observer"]

    def peers_for_publisher(self, index: int) -> list[str]:
        """The bootstrap node and two serving nodes, different for each publisher."""
        assert self.bootstrap is not None
        serving = [n.process.multiaddr for n in self.serving if n.alive]
        rng = random.Random(index)
        return [self.bootstrap.process.multiaddr, *rng.sample(serving, min(2, len(serving)))]

    def usage(self) -> dict[str, Usage]:
        """Usage of every node by name, the bootstrap node included."""
        sockets = self.ledger.poll()
        return {n.name: n.usage(sockets) for n in [self.bootstrap, *self.nodes] if n is not None}

    def by_address(self) -> dict[str, ClusterNode]:
        return {n.address: n for n in self.nodes}
