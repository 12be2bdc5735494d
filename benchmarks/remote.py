"""7. Remote engine: what a node fronting an engine costs. 8 simultaneous `Simple` tasks
through a node whose only model is served by `llama-server --parallel 8` (registry
backend "openai"), next to the same 8 requests sent straight to that llama-server.

Both sides send the same prompts with the same max_tokens at temperature 0, so the
engine does the same work; both sides' answers are counted with the same tokenizer.
The ratio (node / direct aggregate tokens/s) is the share of the engine's throughput
left after the node's path: gossip, intake, the workflow engine, the HTTP hop, ECIES
and the publisher's verification. The lead's done-when: at most 5% lost (ratio >= 0.95).
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx

from benchmarks import llama_server
from benchmarks.options import BenchOptions, Publisher
from benchmarks.peers import node_process
from benchmarks.report import Row, Section
from benchmarks.stats import BenchmarkError, paired_ratio, summarize
from benchmarks.workloads import GENERATED_TOKENS, TokenCounter, model_path, simple_workflow, story_prompt
from node.publisher.client import Task

REMOTE_NAME = "remote:llama-server"
ENGINE_MODEL = "smollm2"
SLOTS = 8
CTX_PER_SLOT = 1024


async def _node_batch(publisher: Publisher, counter: TokenCounter, prompts: list[str]) -> float:
    async def one(prompt: str) -> str:
        task = Task(workflow=simple_workflow(prompt), models=[REMOTE_NAME], nodes=[publisher.node.address])
        result = await publisher.client.execute(task, timeout=300)
        if result.model != REMOTE_NAME:
            raise BenchmarkError(f"the node answered with model {result.model}, not {REMOTE_NAME}")
        return result.text or ""

    started = time.perf_counter()
    texts = await asyncio.gather(*(one(p) for p in prompts))
    return sum(counter.count(t) for t in texts) / (time.perf_counter() - started)


async def _direct_batch(http: httpx.AsyncClient, counter: TokenCounter, prompts: list[str]) -> float:
    async def one(prompt: str) -> str:
        reply = await http.post(
            "/v1/chat/completions",
            json={
                "model": ENGINE_MODEL,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": GENERATED_TOKENS,
                "temperature": 0.0,
            },
        )
        reply.raise_for_status()
        return str(reply.json()["choices"][0]["message"]["content"])

    started = time.perf_counter()
    texts = await asyncio.gather(*(one(p) for p in prompts))
    return sum(counter.count(t) for t in texts) / (time.perf_counter() - started)


async def run(options: BenchOptions) -> Section:
    if options.llama_server_problem is not None:
        raise BenchmarkError(f"needs llama-server: {options.llama_server_problem[:200]}")
    rounds = options.pick(full=4, quick=1)
    path = model_path()
    counter = TokenCounter(path)
    node: list[float] = []
    direct: list[float] = []
    try:
        with llama_server.running_server(path, SLOTS, options.threads, CTX_PER_SLOT) as url:
            entry = {"backend": "openai", "base_url": f"{url}/v1", "model": ENGINE_MODEL, "max_concurrent": SLOTS}
            peer = node_process(
                options.threads,
                max_concurrent=SLOTS,
                max_queue=2 * SLOTS,
                extra_args=[
                    "--model",
                    REMOTE_NAME,
                    "--registry",
                    json.dumps({REMOTE_NAME: entry}),
                    "--no-startup-benchmark",
                    *options.node_args,
                ],
            )
            with peer:
                async with Publisher(peer) as publisher, httpx.AsyncClient(base_url=url, timeout=300) as http:
                    await _node_batch(publisher, counter, ["Say hello."])  # warm-up, both paths
                    await _direct_batch(http, counter, ["Say hello."])
                    for r in range(rounds):
                        prompts = [story_prompt(r * SLOTS + j) for j in range(SLOTS)]
                        # Alternate which side goes first, so drift in the machine's load cancels.
                        if r % 2:
                            direct.append(await _direct_batch(http, counter, prompts))
                            node.append(await _node_batch(publisher, counter, prompts))
                        else:
                            node.append(await _node_batch(publisher, counter, prompts))
                            direct.append(await _direct_batch(http, counter, prompts))
    finally:
        counter.close()
    what = "remote"
    ratio = paired_ratio(node, direct, what=what)
    return Section(
        name="remote",
        title="7. Remote engine",
        rows=[
            Row(
                metric=f"{SLOTS} simultaneous tasks, aggregate",
                node=summarize(node, "tok/s", what=what),
                baseline=summarize(direct, "tok/s", what=what),
                baseline_name=f"same requests straight to llama-server --parallel {SLOTS}",
                ratio=ratio,
            )
        ],
        notes=[
            (
                f"the node's only model is `{REMOTE_NAME}` (backend openai -> llama-server at 127.0.0.1, "
                f"max_concurrent {SLOTS}); {rounds} round(s) of {SLOTS} simultaneous {GENERATED_TOKENS}-max-token "
                "story prompts per side, sides alternating first; tokens re-counted with the model's tokenizer."
            ),
            (
                f"the node keeps {ratio.median:.1%} of the engine's direct aggregate (done-when: >= 95%); "
                "node, engine and publisher share this machine's cores."
            ),
            f"llama-server --parallel {SLOTS} -c {SLOTS * CTX_PER_SLOT} -t {options.threads}.",
        ],
    )
