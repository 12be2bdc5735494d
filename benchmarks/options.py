"""Options shared by every benchmark, and the publisher helper they use to reach a node."""

from __future__ import annotations

import os
import time
from typing import Any, Self

from pydantic import BaseModel, Field

from benchmarks.peers import PeerProcess
from benchmarks.workloads import MODEL_NAME
from node.publisher.client import Client, Task, TaskResult


class BenchOptions(BaseModel):
    """How big a run is and how the node is configured."""

    quick: bool = False
    # Model threads, on the node and on every baseline alike. One core is left to the
    # publisher and the node's own threads: a llama.cpp thread pool that shares its
    # cores with them spins at barriers and collapses.
    threads: int = Field(default_factory=lambda: max(1, len(os.sched_getaffinity(0)) - 1), ge=1)
    # Extra `node.cli start` flags (e.g. a future `--parallel 8`).
    node_args: list[str] = Field(default_factory=list)
    # The concurrencies the concurrency benchmark measures (None: every one from 1 to 16; --quick: 1, 2, 4, 8, 16).
    levels: list[int] | None = None
    # Why the llama-server baseline is missing (None: built and usable); set by the setup step.
    llama_server_problem: str | None = None

    def pick(self, full: int, quick: int) -> int:
        """`quick` in --quick mode, else `full`."""
        return quick if self.quick else full


class Publisher:
    """A `node.publisher.client.Client` joined to one node process, picking that node for every task."""

    def __init__(self, node: PeerProcess) -> None:
        self.node = node
        self.client = Client(peers=[node.multiaddr])

    async def __aenter__(self) -> Self:
        await self.client.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()

    async def run(self, workflow: dict[str, Any], timeout: float = 120.0) -> tuple[TaskResult, float]:
        """Publish a task and return its verified result and the seconds from publish to result."""
        task = Task(workflow=workflow, models=[MODEL_NAME], nodes=[self.node.address])
        started = time.perf_counter()
        result = await self.client.execute(task, timeout=timeout)
        return result, time.perf_counter() - started
