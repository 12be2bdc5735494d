"""3. Concurrency: aggregate generated tokens/s with every number of simultaneous `Simple`
tasks from 1 to 16 on one node, next to upstream `llama-server --parallel 8` (continuous
batching) on the same model and threads, sent the same simultaneous requests, and next
to the same node running tasks one after another.

Both sides get the same number of sequence slots (8): the node runs with `--parallel 8`
(its CPU default is 4, to keep the KV cache small; see the notes) and `--max-concurrent 8`;
from 9 simultaneous tasks on, the rest wait for a slot on both sides.

Each side reports its own token counts: the node in its result stats
(`completionTokens`; an answer without one is re-tokenized), llama-server in `usage`.
A Simple workflow cannot ask for ignore_eos, so the long-story prompt keeps the node
writing (every answer ran to the 128-token limit when checked); llama-server gets
`ignore_eos`.

Three rounds in a full run: the same code moves by +-0.15 against the server from one
round to the next at the same width on 2 cores (PROFILE-generation.md), and the
verdict is the median of the per-round ratios.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from contextlib import ExitStack
from pathlib import Path
from typing import NamedTuple

import httpx
import psutil

from benchmarks import llama_server
from benchmarks.options import BenchOptions, Publisher
from benchmarks.peers import node_process
from benchmarks.report import Row, Section
from benchmarks.stats import BenchmarkError, Summary, paired_ratio, summarize
from benchmarks.workloads import (
    GENERATED_TOKENS,
    TokenCounter,
    model_path,
    simple_workflow,
    story_prompt,
)
from node.publisher.client import TaskResult

LEVELS = list(range(1, 17))  # every concurrency the issue names
QUICK_LEVELS = [1, 2, 4, 8, 16]
SEQUENTIAL_LEVELS = {1, 2, 4, 8, 16}  # the 'vs sequential' rows (a shorter table)
SLOTS = 8
CTX_PER_SLOT = 1024
SEQUENTIAL_TASKS = 4
# The node's default context, which the batched runtime gives each slot.
NODE_N_CTX = 2048


class Batch(NamedTuple):
    """One batch of simultaneous requests on one side."""

    tokens_per_second: float  # aggregate: tokens of all answers / wall time
    cpu_ms_per_token: float  # CPU of the serving processes (user + system) per generated token


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds so far of a process and its children."""
    process = psutil.Process(pid)
    total = 0.0
    for each in (process, *process.children(recursive=True)):
        try:
            times = each.cpu_times()
        except psutil.NoSuchProcess:
            continue  # a child that just ended
        total += times.user + times.system
    return total


def _tokens(counter: TokenCounter, result: TaskResult) -> int:
    """The answer's generated tokens as the node counted them, else re-tokenized."""
    return result.completion_tokens or counter.count(result.text)


async def _node_batch(publisher: Publisher, counter: TokenCounter, prompts: list[str]) -> Batch:
    """Aggregate tok/s of these prompts published all at once, and the node's CPU per token."""
    cpu = _cpu_seconds(publisher.node.pid)
    started = time.perf_counter()
    results = await asyncio.gather(*(publisher.run(simple_workflow(p), timeout=300) for p in prompts))
    elapsed = time.perf_counter() - started
    cpu = _cpu_seconds(publisher.node.pid) - cpu
    tokens = sum(_tokens(counter, r) for r, _ in results)
    return Batch(tokens / elapsed, 1000 * cpu / tokens)


async def _node_sequential(publisher: Publisher, counter: TokenCounter, prompts: list[str]) -> float:
    tokens, elapsed = 0, 0.0
    for prompt in prompts:
        result, seconds = await publisher.run(simple_workflow(prompt), timeout=300)
        tokens += _tokens(counter, result)
        elapsed += seconds
    return tokens / elapsed


async def _server_batch(http: httpx.AsyncClient, prompts: list[str], pid: int | None = None) -> Batch:
    async def one(prompt: str) -> int:
        reply = await http.post(
            "/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": GENERATED_TOKENS,
                "temperature": 0.0,
                "ignore_eos": True,
                # llama-server's default (cache_prompt on): it reuses a slot's prompt prefix as the node does.
            },
        )
        reply.raise_for_status()
        tokens = int(reply.json()["usage"]["completion_tokens"])
        if tokens != GENERATED_TOKENS:
            raise BenchmarkError(f"llama-server generated {tokens} tokens, not {GENERATED_TOKENS}, with ignore_eos")
        return tokens

    cpu = 0.0 if pid is None else _cpu_seconds(pid)
    started = time.perf_counter()
    counts = await asyncio.gather(*(one(p) for p in prompts))
    elapsed = time.perf_counter() - started
    cpu = 0.0 if pid is None else _cpu_seconds(pid) - cpu
    return Batch(sum(counts) / elapsed, 1000 * cpu / sum(counts))


def _server_pid(binary: Path) -> int:
    """The llama-server this process started (the benchmark's child running `binary`)."""
    for child in psutil.Process().children():
        try:
            if Path(child.exe()).resolve() == binary.resolve():
                return child.pid
        except psutil.Error:
            continue
    raise BenchmarkError(f"no child process runs {binary}")


async def run(options: BenchOptions) -> Section:
    rounds = options.pick(full=3, quick=1)
    levels = options.levels or (QUICK_LEVELS if options.quick else LEVELS)
    path = model_path()
    counter = TokenCounter(path)
    server_problem = options.llama_server_problem
    sequential: list[float] = []
    node: dict[int, list[Batch]] = {n: [] for n in levels}
    server: dict[int, list[Batch]] = {n: [] for n in levels}
    try:
        with ExitStack() as stack:
            peer = stack.enter_context(
                node_process(
                    options.threads,
                    n_ctx=NODE_N_CTX,
                    max_concurrent=SLOTS,
                    max_queue=2 * SLOTS,
                    extra_args=["--parallel", str(SLOTS), *options.node_args],  # a --node-arg comes last and wins
                )
            )
            url, server_pid = None, None
            if server_problem is None:
                url = stack.enter_context(llama_server.running_server(path, SLOTS, options.threads, CTX_PER_SLOT))
                server_pid = _server_pid(llama_server.binary_path())
            async with Publisher(peer) as publisher, httpx.AsyncClient(base_url=url or "", timeout=300) as http:
                await publisher.run(simple_workflow("Say hello.", 8))  # warm-up
                if url:
                    await _server_batch(http, ["Say hello."])
                topic = 0
                for index in range(rounds):
                    prompts = [story_prompt(topic + j) for j in range(SEQUENTIAL_TASKS)]
                    sequential.append(await _node_sequential(publisher, counter, prompts))
                    for n in levels:
                        prompts = [story_prompt(topic + j) for j in range(n)]
                        topic += 1
                        sides: list[tuple[list[Batch], Awaitable[Batch]]] = []
                        sides.append((node[n], _node_batch(publisher, counter, prompts)))
                        if url:
                            sides.append((server[n], _server_batch(http, prompts, server_pid)))
                        if (index + n) % 2:  # who goes first alternates, so load drift hits both sides alike
                            sides.reverse()
                        for samples, measurement in sides:
                            samples.append(await measurement)
            model_class = peer.model_class()
    finally:
        counter.close()
    return _section(options, rounds, levels, model_class, sequential, node, server, server_problem)


def _over_sequential(mine: Summary, seq: Summary) -> Summary:
    return Summary(
        **{
            **mine.model_dump(),
            "median": mine.median / seq.median,
            "low": mine.low / seq.median,
            "high": mine.high / seq.median,
            "unit": "x",
        }
    )


def _section(
    options: BenchOptions,
    rounds: int,
    levels: list[int],
    model_class: str,
    sequential: list[float],
    node: dict[int, list[Batch]],
    server: dict[int, list[Batch]],
    server_problem: str | None,
) -> Section:
    what = "concurrency"
    seq = summarize(sequential, "tok/s", what=what)
    rows = [Row(metric=f"sequential: {SEQUENTIAL_TASKS} tasks one after another", node=seq)]
    worst: tuple[float, int] | None = None
    for n in levels:
        rates = [b.tokens_per_second for b in node[n]]
        mine = summarize(rates, "tok/s", what=what)
        if n in SEQUENTIAL_LEVELS:
            rows.append(
                Row(
                    metric=f"{n} simultaneous, aggregate",
                    node=mine,
                    baseline=seq,
                    baseline_name="same node, sequential",
                    ratio=_over_sequential(mine, seq),
                )
            )
        if server_problem is None:
            server_rates = [b.tokens_per_second for b in server[n]]
            ratio = paired_ratio(rates, server_rates, what=what)
            worst = min(worst or (ratio.median, n), (ratio.median, n))
            rows.append(
                Row(
                    metric=f"{n} simultaneous, aggregate",
                    node=mine,
                    baseline=summarize(server_rates, "tok/s", what=what),
                    baseline_name=f"llama-server --parallel {SLOTS}",
                    ratio=ratio,
                )
            )
            node_cpu = [b.cpu_ms_per_token for b in node[n]]
            server_cpu = [b.cpu_ms_per_token for b in server[n]]
            rows.append(
                Row(
                    metric=f"{n} simultaneous, CPU ms per generated token (lower is better)",
                    node=summarize(node_cpu, "ms", what=what),
                    baseline=summarize(server_cpu, "ms", what=what),
                    baseline_name=f"llama-server --parallel {SLOTS}",
                    ratio=paired_ratio(node_cpu, server_cpu, what=what),
                )
            )
        else:
            rows.append(
                Row(
                    metric=f"{n} simultaneous, aggregate",
                    node=mine,
                    baseline_name=f"llama-server NOT AVAILABLE: {server_problem[:200]}",
                )
            )
    built = llama_server.build_seconds()
    notes = [
        (
            f"node model class: {model_class}; node flags: --parallel {SLOTS} --max-concurrent {SLOTS} "
            f"--max-queue {2 * SLOTS} --n-ctx {NODE_N_CTX}, {options.threads} thread(s); extra node flags: "
            f"{' '.join(options.node_args) or 'none'}. The node's CPU default is --parallel 4: 8 slots of "
            f"{NODE_N_CTX} tokens hold twice the KV cache (SmolLM2, f16: ~45 MiB more per slot)."
        ),
        (
            f"{rounds} round(s); per round the sequential run, then for each N = {levels[0]}..{levels[-1]} the node "
            "and llama-server, the first side alternating; "
            f"{GENERATED_TOKENS} max tokens per task; aggregate = tokens of all N answers / wall time from the first "
            "publish (request) to the last result. 'vs sequential' rows at N in "
            f"{sorted(SEQUENTIAL_LEVELS & set(levels))} only."
        ),
        "'vs sequential' divides by the median sequential rate; 'vs llama-server' is the median of per-round ratios.",
        "CPU per generated token: user + system CPU of the serving processes over the batch (the node's daemon and "
        "execution process; the llama-server process), not the clients'. Time spent waiting for the cores is not in "
        "it, but OpenMP threads spin at barriers when another process takes a core, so under load it grows too "
        "(compare paired rounds; see benchmarks/PROFILE-generation.md).",
        f"llama-server {llama_server.binary_path()}: "
        + (f"built from the vendored llama.cpp sources in {built:.0f} s (cached)" if built else "not built")
        + f", --parallel {SLOTS} -c {SLOTS * CTX_PER_SLOT} -t {options.threads}, ignore_eos, cache_prompt on "
        "(its default).",
    ]
    if worst is not None:
        met = "met" if worst[0] >= 1.0 else "NOT met"
        notes.append(
            f"goal node / llama-server >= 1.0 at every N: {met} (lowest median {worst[0]:.2f}x, at N={worst[1]})."
        )
    return Section(name="concurrency", title="3. Concurrency", rows=rows, notes=notes)
