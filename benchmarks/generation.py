"""1. Generation efficiency: a `Simple` task through the whole node (publish -> verified,
decrypted result) against the same prompt through a plain `llama_cpp.Llama` script.

Same model, chat template, greedy sampling, threads, context and max_tokens on
both sides; a fresh topic per round, so neither side answers from a cached
prompt. Tokens: the node's own count (`completionTokens` in its result stats; an
answer without one is re-tokenized) and the raw script's answer re-tokenized with the
model's tokenizer; an answer under MIN_TOKENS on either side fails the run.
"""

from __future__ import annotations

import asyncio

from benchmarks.options import BenchOptions, Publisher
from benchmarks.peers import node_process
from benchmarks.raw_worker import RawReply, RawWorker
from benchmarks.report import Row, Section
from benchmarks.stats import BenchmarkError, alternate, paired_ratio, summarize
from benchmarks.workloads import (
    GENERATED_TOKENS,
    TokenCounter,
    model_path,
    simple_workflow,
    story_prompt,
)

N_CTX = 2048
GOAL = 0.97
MIN_TOKENS = GENERATED_TOKENS // 2  # a shorter answer would make the rate mostly prompt time


async def run(options: BenchOptions) -> Section:
    rounds = options.pick(full=7, quick=3)
    path = model_path()
    counter = TokenCounter(path)
    node_tps: list[float] = []
    node_exec_tps: list[float] = []
    raw_tps: list[float] = []
    raw_prompt_tps: list[float] = []
    raw_gen_tps: list[float] = []
    same_text = 0
    node_texts: dict[int, str] = {}
    try:
        with (
            RawWorker(path, options.threads, N_CTX) as raw,
            node_process(options.threads, n_ctx=N_CTX, extra_args=options.node_args) as node,
        ):
            async with Publisher(node) as publisher:
                # Warm-up, not counted: first decode allocates buffers on both sides.
                await publisher.run(simple_workflow("Say hello.", 8))
                await asyncio.to_thread(raw.complete, "Say hello.", 8)

                async def via_node(i: int) -> None:
                    result, seconds = await publisher.run(simple_workflow(story_prompt(i)))
                    tokens = result.completion_tokens or counter.count(result.text)
                    _check_length(tokens, "node")
                    node_texts[i] = result.text
                    node_tps.append(tokens / seconds)
                    stats = result.stats
                    node_exec_tps.append(tokens / ((stats.execution_ended_at - stats.execution_started_at) / 1e9))

                async def via_raw(i: int) -> None:
                    nonlocal same_text
                    reply: RawReply = await asyncio.to_thread(raw.complete, story_prompt(i), GENERATED_TOKENS)
                    tokens = counter.count(reply.text)
                    _check_length(tokens, "raw llama_cpp")
                    raw_tps.append(tokens / reply.seconds)
                    raw_prompt_tps.append(reply.prompt_evaluated / reply.prompt_seconds)
                    raw_gen_tps.append(reply.generation_evaluated / reply.generation_seconds)
                    same_text += node_texts.get(i, "").strip() == reply.text.strip()

                await alternate(rounds, via_node, via_raw)
            model_class = node.model_class()
    finally:
        counter.close()
    what = "generation"
    ratio = paired_ratio(node_tps, raw_tps, what=what)
    verdict = "met" if ratio.median >= GOAL else "NOT met"
    return Section(
        name="generation",
        title="1. Generation",
        rows=[
            Row(
                metric=f"Simple task tok/s, publish -> result ({GENERATED_TOKENS} max tokens)",
                node=summarize(node_tps, "tok/s", what=what),
                baseline=summarize(raw_tps, "tok/s", what=what),
                baseline_name="raw llama_cpp script",
                ratio=ratio,
            ),
            Row(
                metric="tok/s over the node's execution time (result stats)",
                node=summarize(node_exec_tps, "tok/s", what=what),
                baseline=summarize(raw_tps, "tok/s", what=what),
                baseline_name="raw llama_cpp script",
                ratio=paired_ratio(node_exec_tps, raw_tps, what=what),
            ),
            Row(
                metric="prompt eval rate",
                baseline=summarize(raw_prompt_tps, "tok/s", what=what),
                baseline_name="raw llama_cpp script (llama perf counters)",
            ),
            Row(
                metric="generation rate",
                baseline=summarize(raw_gen_tps, "tok/s", what=what),
                baseline_name="raw llama_cpp script (llama perf counters)",
            ),
        ],
        notes=[
            (
                f"{rounds} rounds, node and raw script alternately; {options.threads} thread(s), n_ctx {N_CTX}, "
                "greedy, prompt 'Write a long, detailed story about <topic>' (topic changes per round)."
            ),
            f"node model class: {model_class}; node flags: {' '.join(options.node_args) or '(defaults)'}.",
            (
                "publish -> result tokens = the answer re-tokenized with the model's tokenizer on both sides; "
                "the execution-time row uses the token counts the node reports in its result stats; the raw "
                "prompt-eval / generation split comes from llama.cpp's perf counters."
            ),
            f"identical answer text on both sides in {same_text} of {rounds} rounds.",
            f"goal node/raw >= {GOAL}: {verdict} (median {ratio.median:.3f}).",
        ],
    )


def _check_length(tokens: int, side: str) -> None:
    if tokens < MIN_TOKENS:
        raise BenchmarkError(
            f"{side} answer has only {tokens} tokens (< {MIN_TOKENS}); the prompt did not make it write long"
        )
