"""One KV-cache configuration measured in a fresh process: `python -m benchmarks.kv_worker CONFIG_JSON`.

Prints one JSON line: RSS (MiB) after load and after a long prompt filled the cache,
prompt and generation tokens per second on the node's runtime (BatchedLlamaModel, 4
slots of 2048 tokens, one sequence running) in wall time and in this process's CPU
time (the steadier figure on a shared machine), and the log-probability of each next
token of a fixed text (llama.cpp's own logits), which the parent compares against f16.
"""

from __future__ import annotations

import asyncio
import json
import math
import resource
import sys
from pathlib import Path

import numpy as np

from models.batching import BatchedLlamaModel
from models.llama_open import construct_llama
from models.options import RuntimeOptions
from models.requests import ChatMessage, GenerationRequest

SLOTS = 4
N_CTX = 2048
GENERATED = 32
QUALITY_TOKENS = 256
FIXED_TEXT = " ".join(
    f"Chapter {i}. The lighthouse keeper counted the ships that passed the rocks at night, wrote their names "
    f"in a book, and wondered where each of them would sleep when the storm was over."
    for i in range(1, 13)
)


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def speed(path: Path, options: RuntimeOptions) -> dict[str, float]:
    model = await BatchedLlamaModel.load("smollm2", path, options, parallel=SLOTS)
    messages = [ChatMessage(role="user", content=FIXED_TEXT + "\nContinue the story.")]
    try:
        loaded = rss_mib()
        cpu = cpu_seconds()
        prompt = await model.generate(GenerationRequest(messages=messages, max_tokens=1, temperature=0.0))
        prompt_cpu = cpu_seconds() - cpu
        cpu = cpu_seconds()  # the same prompt again: its prefix is reused, so this is generation
        generation = await model.generate(
            GenerationRequest(messages=messages, max_tokens=GENERATED, ignore_eos=True, temperature=0.0)
        )
        generation_cpu = cpu_seconds() - cpu
        return {
            "rss_loaded_mib": loaded,
            "rss_filled_mib": rss_mib(),
            "prompt_tps": prompt.prompt_tokens / prompt.prompt_seconds,
            "generation_tps": generation.completion_tokens / generation.generation_seconds,
            "prompt_tokens_per_cpu_s": prompt.prompt_tokens / prompt_cpu,
            "generation_tokens_per_cpu_s": generation.completion_tokens / generation_cpu,
            "prompt_tokens": prompt.prompt_tokens,
            "reused": getattr(generation, "reused_prompt_tokens", 0),
        }
    finally:
        await model.close()


def next_token_logprobs(path: Path, options: RuntimeOptions) -> list[float]:
    llm = construct_llama(
        path,
        extra_buffers=options.extra_buffers,
        n_ctx=QUALITY_TOKENS + 8,
        n_batch=512,
        n_threads=options.threads(),
        n_threads_batch=options.threads(),
        n_gpu_layers=options.gpu_layers(),
        flash_attn=options.flash_attn != "off",
        type_k=options.kv_ggml_type(),
        type_v=options.kv_ggml_type(),
        logits_all=True,
    )
    try:
        tokens = llm.tokenize(FIXED_TEXT.encode("utf-8"), add_bos=True)[:QUALITY_TOKENS]
        llm.eval(tokens)
        scores = np.asarray(llm.scores[: len(tokens) - 1], dtype=np.float64)
        top = scores.max(axis=1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(scores - top).sum(axis=1))
        chosen = scores[np.arange(len(tokens) - 1), tokens[1:]]
        return [float(v) for v in chosen - log_norm if math.isfinite(float(v))]
    finally:
        llm.close()


def main() -> None:
    config = json.loads(sys.argv[1])
    path = Path(config.pop("path"))
    options = RuntimeOptions.model_validate({"n_ctx": N_CTX, **config})
    report = asyncio.run(speed(path, options))
    report["logprobs"] = next_token_logprobs(path, options)  # type: ignore[assignment]
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
