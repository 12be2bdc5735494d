"""3. Concurrency: aggregate generated tokens/s with 1, 2, 4 and 8 simultaneous `Simple`
tasks on one node, next to the same node running tasks one after another, and next
to upstream `llama-server --parallel 8` (continuous batching) on the same model and
threads, sent the same number of simultaneous requests.

The node's answers are re-tokenized to count tokens (its results carry no counts,
and a Simple workflow cannot ask for ignore_eos; the long-story prompt keeps it
writing). llama-server gets `ignore_eos` and reports its own token counts.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import ExitStack

import httpx

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

LEVELS = [1, 2, 4, 8]
SLOTS = 8
CTX_PER_SLOT = 1024
SEQUENTIAL_TASKS = 4
# The node's default context; the batched model class takes it per slot.
NODE_N_CTX = 2048


async def _node_batch(publisher: Publisher, counter: TokenCounter, prompts: list[str]) -> float:
    """Aggregate tok/s of these prompts published all at once."""
    started = time.perf_counter()
    results = await asyncio.gather(*(publisher.run(simple_workflow(p), timeout=300) for p in prompts))
    elapsed = time.perf_counter() - started
    return sum(counter.count(r.text) for r, _ in results) / elapsed


async def _node_sequential(publisher: Publisher, counter: TokenCounter, prompts: list[str]) -> float:
    tokens, elapsed = 0, 0.0
    for prompt in prompts:
        result, seconds = await publisher.run(simple_workflow(prompt), timeout=300)
        tokens += counter.count(result.text)
        elapsed += seconds
    return tokens / elapsed


async def _server_batch(http: httpx.AsyncClient, prompts: list[str]) -> float:
    async def one(prompt: str) -> int:
        reply = await http.post(
            "/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": GENERATED_TOKENS,
                "temperature": 0.0,
                "ignore_eos": True,
                "cache_prompt": False,
            },
        )
        reply.raise_for_status()
        tokens = int(reply.json()["usage"]["completion_tokens"])
        if tokens != GENERATED_TOKENS:
            raise BenchmarkError(f"llama-server generated {tokens} tokens, not {GENERATED_TOKENS}, with ignore_eos")
        return tokens

    started = time.perf_counter()
    counts = await asyncio.gather(*(one(p) for p in prompts))
    return sum(counts) / (time.perf_counter() - started)


async def run(options: BenchOptions) -> Section:
    rounds = options.pick(full=3, quick=1)
    path = model_path()
    counter = TokenCounter(path)
    server_problem = options.llama_server_problem
    sequential: list[float] = []
    node: dict[int, list[float]] = {n: [] for n in LEVELS}
    server: dict[int, list[float]] = {n: [] for n in LEVELS}
    try:
        with ExitStack() as stack:
            peer = stack.enter_context(
                node_process(
                    options.threads,
                    n_ctx=NODE_N_CTX,
                    max_concurrent=SLOTS,
                    max_queue=2 * SLOTS,
                    extra_args=options.node_args,
                )
            )
            url = None
            if server_problem is None:
                url = stack.enter_context(llama_server.running_server(path, SLOTS, options.threads, CTX_PER_SLOT))
            async with Publisher(peer) as publisher, httpx.AsyncClient(base_url=url or "", timeout=300) as http:
                await publisher.run(simple_workflow("Say hello.", 8))  # warm-up
                if url:
                    await _server_batch(http, ["Say hello."])
                topic = 0
                for _ in range(rounds):
                    prompts = [story_prompt(topic + j) for j in range(SEQUENTIAL_TASKS)]
                    sequential.append(await _node_sequential(publisher, counter, prompts))
                    for n in LEVELS:
                        prompts = [story_prompt(topic + j) for j in range(n)]
                        topic += 1
                        node[n].append(await _node_batch(publisher, counter, prompts))
                        if url:
                            server[n].append(await _server_batch(http, prompts))
            model_class = peer.model_class()
    finally:
        counter.close()
    return _section(options, rounds, model_class, sequential, node, server, server_problem)


def _section(
    options: BenchOptions,
    rounds: int,
    model_class: str,
    sequential: list[float],
    node: dict[int, list[float]],
    server: dict[int, list[float]],
    server_problem: str | None,
) -> Section:
    what = "concurrency"
    seq = summarize(sequential, "tok/s", what=what)
    rows = [Row(metric=f"sequential: {SEQUENTIAL_TASKS} tasks one after another", node=seq)]
    for n in LEVELS:
        mine = summarize(node[n], "tok/s", what=what)
        seq_ratio = Summary(
            **{
                **mine.model_dump(),
                "median": mine.median / seq.median,
                "low": mine.low / seq.median,
                "high": mine.high / seq.median,
                "unit": "x",
            }
        )
        rows.append(
            Row(
                metric=f"{n} simultaneous, aggregate",
                node=mine,
                baseline=seq,
                baseline_name="same node, sequential",
                ratio=seq_ratio,
            )
        )
        if server_problem is None:
            rows.append(
                Row(
                    metric=f"{n} simultaneous, aggregate",
                    node=mine,
                    baseline=summarize(server[n], "tok/s", what=what),
                    baseline_name=f"llama-server --parallel {SLOTS}",
                    ratio=paired_ratio(node[n], server[n], what=what),
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
    return Section(
        name="concurrency",
        title="3. Concurrency",
        rows=rows,
        notes=[
            (
                f"node model class: {model_class}; node flags: max_concurrent {SLOTS}, n_ctx {NODE_N_CTX}, "
                f"{options.threads} thread(s); extra node flags: {' '.join(options.node_args) or 'none'}."
            ),
            (
                f"{rounds} round(s); per round the sequential run, then for each N the node and llama-server "
                f"alternately; {GENERATED_TOKENS} max tokens per task; aggregate = tokens of all N answers / wall "
                "time from the first publish to the last result."
            ),
            "'vs sequential' divides by the median sequential rate; 'vs llama-server' is the median of per-round ratios.",
            f"llama-server {llama_server.binary_path()}: "
            + (f"built from the vendored llama.cpp sources in {built:.0f} s (cached)" if built else "not built")
            + f", --parallel {SLOTS} -c {SLOTS * CTX_PER_SLOT} -t {options.threads}, ignore_eos, cache_prompt off.",
        ],
    )
