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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydantic import BaseModel

from benchmarks.peers import PeerProcess, node_process
from benchmarks.stats import BenchmarkError
from benchmarks.workloads import MODEL_NAME

IDLE_MODEL = "idle-model"
_REGISTRY = json.dumps({IDLE_MODEL: {"alias": MODEL_NAME}})
_CLK_TCK = os.sysconf("SC_CLK_TCK")
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
    """Cumulative CPU seconds (process and its execution processes) and TCP bytes received/sent
    on the sockets it has open now (from `ss`: loopback traffic is on no interface's counters)."""

    cpu: float = 0.0
    received: int = 0
    sent: int = 0

    def __sub__(self, other: Usage) -> Usage:
        return Usage(
            cpu=self.cpu - other.cpu,
            # a closed connection takes its counters with it: never below zero
            received=max(self.received - other.received, 0),
            sent=max(self.sent - other.sent, 0),
        )


def socket_bytes() -> dict[int, tuple[int, int]]:
    """pid -> (bytes received, bytes sent) over its open TCP sockets, from `ss -tinpH`."""
    out = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True, timeout=30).stdout
    totals: dict[int, tuple[int, int]] = {}
    pid: int | None = None
    for line in out.splitlines():
        if not line.startswith((" ", "\t")):
            match = _PID.search(line)
            pid = int(match.group(1)) if match else None
            continue
        if pid is not None:
            received = sum(int(v) for v in _RECEIVED.findall(line))
            sent = sum(int(v) for v in _SENT.findall(line))
            r, s = totals.get(pid, (0, 0))
            totals[pid] = (r + received, s + sent)
    return totals


class ClusterNode:
    """One node process with its role ('bootstrap', 'serving' or 'observer')."""

    def __init__(self, role: str, index: int, process: PeerProcess) -> None:
        self.role = role
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
        """Usage so far; the last reading for a dead node (its CPU is counted until it died)."""
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
        os.kill(self.process.pid, sig)
        if sig == signal.SIGKILL:
            self.usage(socket_bytes())
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
        """The bootstrap node first, then the others eight at a time (each waits for READY)."""
        self.bootstrap = ClusterNode("bootstrap", 0, self._process(IDLE_MODEL, []))
        self.bootstrap.process.start()
        ready: list[str] = [self.bootstrap.process.multiaddr]
        for first in range(0, len(self._plan), 8):
            batch = []
            for role, index in self._plan[first : first + 8]:
                earlier = self._rng.sample(ready[1:], min(2, len(ready) - 1))
                model = MODEL_NAME if role == "serving" else IDLE_MODEL
                batch.append(ClusterNode(role, index, self._process(model, [ready[0], *earlier])))
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
        return node_process(
            c.threads,
            n_ctx=c.n_ctx,
            max_concurrent=c.max_concurrent,
            max_queue=c.max_queue,
            extra_args=args + c.extra_args,
        )

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
        sockets = socket_bytes()
        return {n.name: n.usage(sockets) for n in [self.bootstrap, *self.nodes] if n is not None}

    def by_address(self) -> dict[str, ClusterNode]:
        return {n.address: n for n in self.nodes}
