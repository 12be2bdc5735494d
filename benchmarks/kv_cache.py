"""10. KV cache types: memory, prompt and generation speed, and quality of f16, q8_0 and q4_0 caches.

Each configuration runs in a fresh process (benchmarks/kv_worker.py) on the node's
runtime: 4 slots of 2048 tokens, one ~500-token prompt, then 32 generated tokens
(its prefix reused). Speeds are tokens per second of wall time and of the worker's
CPU time (steadier on a shared machine). Quality cost: the mean absolute difference,
over the tokens of a fixed text, of the log-probability llama.cpp gives each next
token, against f16 without flash attention (the reference). Configurations run in
turn, round after round, so load drifts hit them alike.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
from typing import Any

from benchmarks.options import BenchOptions
from benchmarks.report import Row, Section
from benchmarks.stats import BenchmarkError, summarize
from benchmarks.workloads import model_path
from models.gguf_file import KV_ELEMENT_BYTES

CONFIGS: list[tuple[str, str]] = [("f16", "off"), ("f16", "on"), ("q8_0", "on"), ("q4_0", "on")]
REFERENCE = ("f16", "off")
SMOLLM2_KV_ELEMENTS_PER_TOKEN = 30 * 3 * 128  # layers x KV heads x (key + value dims)
CACHE_TOKENS = 4 * 2048


async def _measure(cache_type: str, flash_attn: str, threads: int) -> dict[str, Any]:
    config = {"path": str(model_path()), "n_threads": threads, "kv_cache_type": cache_type, "flash_attn": flash_attn}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.kv_worker",
        json.dumps(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise BenchmarkError(f"kv_cache {cache_type}/{flash_attn}: worker failed: {err.decode()[-400:]}")
    report: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return report


async def run(options: BenchOptions) -> Section:
    rounds = options.pick(full=2, quick=1)
    threads = 1  # one thread: no barrier spinning, so CPU time counts the work alone
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {c: [] for c in CONFIGS}
    for _ in range(rounds):
        for cache_type, flash_attn in CONFIGS:
            samples[(cache_type, flash_attn)].append(await _measure(cache_type, flash_attn, threads))
    reference = samples[REFERENCE][0]["logprobs"]
    rows: list[Row] = []
    table = [
        "| KV cache | flash attn | KV MiB (4 x 2048) | RSS loaded MiB | prompt tok/s (per CPU s) "
        "| generation tok/s (per CPU s) | mean abs logprob diff vs f16 |",
        "|---|---|---|---|---|---|---|",
    ]
    for cache_type, flash_attn in CONFIGS:
        runs = samples[(cache_type, flash_attn)]
        what = f"kv_cache {cache_type}/{flash_attn}"

        def med(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return statistics.median(float(r[key]) for r in runs)

        diffs = [statistics.fmean(abs(a - b) for a, b in zip(r["logprobs"], reference, strict=True)) for r in runs]
        kv_mib = SMOLLM2_KV_ELEMENTS_PER_TOKEN * CACHE_TOKENS * KV_ELEMENT_BYTES[cache_type] / 2**20
        table.append(
            f"| {cache_type} | {flash_attn} | {kv_mib:.0f} | {med('rss_loaded_mib'):.0f} "
            f"| {med('prompt_tps'):.0f} ({med('prompt_tokens_per_cpu_s'):.0f}) "
            f"| {med('generation_tps'):.1f} ({med('generation_tokens_per_cpu_s'):.1f}) "
            f"| {statistics.median(diffs):.4f} |"
        )
        rows.append(
            Row(
                metric=f"KV {cache_type}, flash {flash_attn}: generation tokens per CPU second",
                node=summarize([float(r["generation_tokens_per_cpu_s"]) for r in runs], "tok/CPU s", what=what),
                baseline=summarize(
                    [float(r["generation_tokens_per_cpu_s"]) for r in samples[REFERENCE]], "tok/CPU s", what=what
                ),
                baseline_name="f16, flash off",
            )
        )
    return Section(
        name="kv_cache",
        title="10. KV cache types",
        rows=rows,
        notes=[
            f"{rounds} round(s), each configuration in a fresh process, {threads} thread; SmolLM2-135M, "
            "BatchedLlamaModel 4 slots x 2048; KV MiB from the GGUF shape (30 layers x 3 KV heads x 128) "
            "and the type's bytes per element.",
            "\n" + "\n".join(table),
        ],
    )
