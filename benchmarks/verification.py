"""10. Verification: honest spread, catch rates and cost of re-scoring results (docs/VERIFICATION.md).

For every runtime configuration (1 and 2 threads, 1 and 4 parallel sequences) the test
model answers a set of prompts (temperature 0 and 0.7, seeded) with traces on; a scorer
re-scores each trace in one pass. Measured:
  - honest spread: per-position |claimed - re-scored| and each result's mean bias
    (the tolerances of node/publisher/verification.py come from here), and the share
    of honest results the checker flags (goal: at most 1%);
  - a swapped model (SmolLM2 requantized to Q4_0, served under the test model's name,
    reporting its own log-probabilities): share caught (goal: at least 99%);
  - a fixed string (the same answer to every prompt, with the log-probabilities the real
    model gives it: the strongest form of that lie): share caught (goal: at least 99%);
  - cost: re-scoring time / the generation's own time (prompt + decode; goal: at most 0.2).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.options import BenchOptions
from benchmarks.report import Row, Section
from benchmarks.stats import BenchmarkError, summarize
from benchmarks.workloads import model_path
from models.batching import BatchedLlamaModel
from models.options import RuntimeOptions
from models.requests import ChatMessage, GenerationRequest
from models.scoring import TokenScorer
from models.tracing import GenerationTrace, generation_traces
from node.publisher.verification import ProofChecker, VerificationError
from node.wire.proof import Proof, ProofGeneration
from tests.support.swapped_model import requantized_smollm2

CONFIGS = [(1, 1), (1, 4), (2, 1), (2, 4)]  # (threads, parallel)
FIXED_TEXT = "I am sorry, but I cannot help with that request right now. Please try again later."
TOPICS = [
    "rivers", "the moon", "bread", "a lighthouse", "winter", "trains", "bees", "a library",
    "the sea", "mountains", "coffee", "a clock", "rain", "a garden", "the desert", "music",
]  # fmt: skip
MAX_TOKENS = 96


def _prompts(n: int) -> list[GenerationRequest]:
    requests = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        kind = ["Write a short poem about", "Explain in two sentences what is special about", "Describe"][i % 3]
        temperature = 0.0 if i % 4 == 0 else 0.7
        requests.append(
            GenerationRequest(
                messages=[ChatMessage(role="user", content=f"{kind} {topic}.")],
                max_tokens=MAX_TOKENS,
                temperature=temperature,
                seed=1000 + i,
            )
        )
    return requests


async def _traced(model: BatchedLlamaModel, request: GenerationRequest) -> tuple[GenerationTrace, str, float]:
    traces: list[GenerationTrace] = []
    generation_traces.set(traces)  # this coroutine's own context
    generation = await model.generate(request)
    return traces[0], generation.text, generation.prompt_seconds + generation.generation_seconds


async def _generate(path: Path, threads: int, parallel: int, requests: list[GenerationRequest]) -> list:
    model = await BatchedLlamaModel.load("bench", path, RuntimeOptions(n_threads=threads), parallel=parallel)
    try:
        out = []
        for start in range(0, len(requests), parallel):  # `parallel` sequences share every batch
            out += await asyncio.gather(*(_traced(model, r) for r in requests[start : start + parallel]))
        return out
    finally:
        await model.close()


def _proof(trace: GenerationTrace, logprobs: list[float] | None = None) -> Proof:
    step = ProofGeneration.model_validate(trace.model_dump())
    if logprobs is not None:
        step = step.model_copy(update={"logprobs": logprobs})
    return Proof(steps=[step])


def _caught(checker: ProofChecker, proof: Proof, text: str, scorer: TokenScorer) -> bool:
    try:
        checker.check(proof, text, scorer)
    except VerificationError:
        return True
    return False


def _progress(message: str) -> None:
    print(f"verification: {message}", file=sys.stderr, flush=True)


async def _honest(
    real: Path, threads: int, parallel: int, requests: list[GenerationRequest], raw: dict[str, Any]
) -> None:
    label = f"{threads}t/{parallel}p"
    results = await _generate(real, threads, parallel, requests)
    scorer = TokenScorer(real, RuntimeOptions(n_threads=threads))
    checker = ProofChecker()
    try:
        for trace, text, seconds in results:
            started = time.perf_counter()
            scores = scorer.score(trace.prompt_tokens, trace.tokens)
            raw["costs"].append((time.perf_counter() - started) / seconds)
            d = np.array(trace.logprobs) - np.array(scores.logprobs)
            raw["deviations"].setdefault(label, []).extend(np.abs(d).tolist())
            raw["biases"].setdefault(label, []).append(float(d.mean()) if d.size else 0.0)
            raw["honest_total"] += 1
            try:
                checker.check(_proof(trace), text, scorer)
            except VerificationError as exc:
                raw["flagged"].append(f"{label}: {exc}")
    finally:
        scorer.close()
    _progress(f"{label}: {_quantiles(raw['deviations'][label])}; flagged so far {len(raw['flagged'])}")


async def _dishonest(real: Path, threads: int, requests: list[GenerationRequest], raw: dict[str, Any]) -> None:
    swapped = requantized_smollm2(Path(tempfile.mkdtemp(prefix="verify-bench-")))
    checker = ProofChecker()
    scorer = TokenScorer(real, RuntimeOptions(n_threads=threads))
    try:
        results = await _generate(swapped, threads, 4, requests)
        n = len(results)
        caught = sum(_caught(checker, _proof(t), text, scorer) for t, text, _ in results)
        raw["swapped"] = (caught, n)
        # The stronger swap: another model's tokens, with the real model's numbers for them.
        relabelled = 0
        for trace, text, _ in results:
            honest_numbers = scorer.score(trace.prompt_tokens, trace.tokens).logprobs
            relabelled += _caught(checker, _proof(trace, honest_numbers), text, scorer)
        raw["relabelled"] = (relabelled, n)
        fixed = 0
        fixed_tokens = scorer._llm.tokenize(FIXED_TEXT.encode(), add_bos=False, special=False)
        for trace, _, _ in results:
            numbers = scorer.score(trace.prompt_tokens, fixed_tokens).logprobs
            fake = trace.model_copy(update={"tokens": fixed_tokens, "logprobs": numbers})
            fixed += _caught(checker, _proof(fake), FIXED_TEXT, scorer)
        raw["fixed"] = (fixed, n)
    finally:
        scorer.close()
    _progress(f"swapped {raw['swapped']}, relabelled {raw['relabelled']}, fixed {raw['fixed']} (caught, of)")


async def measure(options: BenchOptions, configs: list[tuple[int, int]] = CONFIGS) -> dict[str, Any]:
    """Every number of the section, raw (also used by `python -m benchmarks.verification`)."""
    requests = _prompts(options.pick(full=24, quick=8))
    real = model_path()
    raw: dict[str, Any] = {"deviations": {}, "biases": {}, "flagged": [], "honest_total": 0, "costs": []}
    for number, (threads, parallel) in enumerate(configs):
        await _honest(real, threads, parallel, requests, raw)
        if number == 0:
            await _dishonest(real, threads, requests, raw)
    return raw


def _quantiles(values: list[float]) -> str:
    a = np.array(values)
    return (
        f"p50 {np.quantile(a, 0.5):.4f}, p99 {np.quantile(a, 0.99):.4f}, p99.9 {np.quantile(a, 0.999):.4f}, "
        f"max {a.max():.4f} (n={a.size})"
    )


async def run(options: BenchOptions) -> Section:
    raw = await measure(options)
    deviations: dict[str, list[float]] = raw["deviations"]
    biases: dict[str, list[float]] = raw["biases"]
    costs: list[float] = raw["costs"]
    notes = [f"honest |claimed - re-scored| per position, {k}: {_quantiles(v)}" for k, v in deviations.items()]
    notes += [
        f"honest mean bias per result, {k}: min {min(v):.4f}, median {statistics.median(v):.4f}, max {max(v):.4f}"
        for k, v in biases.items()
    ]
    flagged: list[str] = raw["flagged"]
    total: int = raw["honest_total"]
    notes.append(f"honest flagged: {len(flagged)} of {total}" + (f" ({flagged[0]})" if flagged else ""))
    for key, what in [
        ("swapped", "swapped model (own log-probabilities)"),
        ("relabelled", "swapped model (real model's log-probabilities)"),
        ("fixed", "fixed string (real model's log-probabilities)"),
    ]:
        caught, n = raw[key]
        notes.append(f"{what}: caught {caught} of {n}")
    if not costs:
        raise BenchmarkError("no result was scored")
    rows = [Row(metric="re-scoring time / generation time", ratio=summarize(costs, "x", what="cost", percentiles=True))]
    return Section(name="verification", title="10. Verification", rows=rows, notes=notes)


if __name__ == "__main__":
    section = asyncio.run(run(BenchOptions(quick="--quick" in sys.argv, threads=1)))
    print("\n".join(section.notes))
    for row in section.rows:
        print(row.metric, row.ratio)
