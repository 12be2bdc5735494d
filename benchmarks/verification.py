"""11. Verification: honest spread, catch rates and cost of re-scoring results (docs/VERIFICATION.md).

Catch rates, per cell (1 and 2 threads x 1 and 4 parallel sequences), over the same
`n` distinct prompts (short answers, temperatures 0 and 0.7, seeded), every result checked
by node.publisher.verification.ProofChecker against a TokenScorer of the real model:
  - honest: the real model's results with their traces. Per-position |claimed - re-scored|
    and per-result mean bias are kept (the distributions the tolerances come from) and the
    share flagged (goal: at most 1%);
  - swapped: SmolLM2 requantized to Q4_0 served as the real model, reporting its own
    log-probabilities (goal: caught in at least 99%);
  - fixed: the same answer to every prompt, with the log-probabilities the real model
    gives it (the strongest form of that lie; goal: caught in at least 99%);
  - relabelled: the swapped model's tokens with the real model's numbers (the known gap).
Cost, 1 thread, 1 and 4 parallel, answers of 32, 128 and 256 tokens (ignore_eos): the
scorer's time for one result / the time its generation took (prompt + decode, the
runtime's own counters), measured one after the other in the same run, once with a
fresh KV (every token evaluated) and once with the prompt's KV kept from a check of the
same prompt (the scorer's prefix reuse). Goal: at most 0.2.
The distributions are drawn in benchmarks/verification.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.options import BenchOptions
from benchmarks.report import Row, Section
from benchmarks.stats import BenchmarkError, summarize
from benchmarks.verification_cells import CHECK_TOKENS, PREFIX_LENGTHS, Cell, Kind, cell_notes, quantiles, spread
from benchmarks.workloads import model_path, story_prompt
from config.settings import Settings
from models.batching import BatchedLlamaModel
from models.benchmark import build_fingerprint
from models.cpu import CpuInfo, extra_buffers_enabled
from models.llama_open import file_type
from models.options import RuntimeOptions
from models.requests import ChatMessage, Generation, GenerationRequest
from models.scoring import ScoredTokens, TokenScorer
from models.scoring_copy import ScoringPrecision, amx_scores, bf16_pays, choose_precision, scoring_copy
from models.tracing import GenerationTrace, generation_traces
from node.publisher.verification import ProofChecker, VerificationError
from node.wire.proof import Proof, ProofGeneration
from tests.support.swapped_model import requantized_smollm2

CELLS = [(1, 1), (1, 4), (2, 1), (2, 4)]  # (threads, parallel)
COST_LENGTHS = [32, 128, 256]
FIXED_TEXT = "I am sorry, but I cannot help with that request right now. Please try again later."
TOPICS = [
    "rivers", "the moon", "bread", "a lighthouse", "winter", "trains", "bees", "a library",
    "the sea", "mountains", "coffee", "a clock", "rain", "a garden", "the desert", "music",
]  # fmt: skip
KINDS = [
    "Write a short poem about", "Explain in two sentences what is special about", "Describe",
    "Give three facts about", "Tell a one-line joke about", "Write a haiku about", "Why do people like",
]  # fmt: skip
STYLES = [
    "", " Keep it simple.", " Use plain words.", " Be brief.", " Write for a child.", " Sound cheerful.",
    " Be precise.", " Start with a question.", " Avoid rhyme.", " Use the present tense.",
]  # fmt: skip
PLOT_PATH = Path(__file__).with_name("verification.png")
# Generation and re-scoring with the node's flash-attention default, as a node and `run-task --verify` run them.
FLASH_ATTN = Settings.model_fields["flash_attn"].default


def runtime(threads: int) -> RuntimeOptions:
    """llama.cpp options of the benchmark's generators and scorers at `threads` threads."""
    return RuntimeOptions(
        n_threads=threads, flash_attn=FLASH_ATTN, extra_buffers=extra_buffers_enabled("auto", CpuInfo.read())
    )


def catch_prompts(n: int) -> list[GenerationRequest]:
    """`n` distinct prompts (n <= 1120), a quarter at temperature 0, the rest at 0.7 with their own seed."""
    requests = []
    for i in range(n):
        topic, kind = TOPICS[i % len(TOPICS)], KINDS[(i // len(TOPICS)) % len(KINDS)]
        style = STYLES[(i // (len(TOPICS) * len(KINDS))) % len(STYLES)]
        requests.append(
            GenerationRequest(
                messages=[ChatMessage(role="user", content=f"{kind} {topic}.{style}")],
                max_tokens=CHECK_TOKENS,
                temperature=0.0 if i % 4 == 0 else 0.7,
                seed=1000 + i,
            )
        )
    return requests


async def _traced(model: BatchedLlamaModel, request: GenerationRequest) -> tuple[GenerationTrace, Generation]:
    traces: list[GenerationTrace] = []
    generation_traces.set(traces)  # this coroutine's own context
    generation = await model.generate(request)
    return traces[0], generation


def _proof(trace: GenerationTrace, tokens: list[int] | None = None, logprobs: list[float] | None = None) -> Proof:
    step = ProofGeneration.model_validate(trace.model_dump())
    update: dict[str, Any] = {}
    if tokens is not None:
        update["tokens"] = tokens
    if logprobs is not None:
        update["logprobs"] = logprobs
    return Proof(steps=[step.model_copy(update=update)])


class _Remembered:
    """The scorer, remembering its last answer: a check re-scores what was just scored for the distributions."""

    def __init__(self, scorer: TokenScorer, last: tuple[list[int], list[int], ScoredTokens] | None = None) -> None:
        self.scorer = scorer
        self._last = last  # (prompt tokens, tokens, their scores)

    def score(self, prompt_tokens: list[int], tokens: list[int]) -> ScoredTokens:
        if self._last is not None and self._last[0] == prompt_tokens and self._last[1][: len(tokens)] == tokens:
            last = self._last[2]
            if len(tokens) == len(self._last[1]):
                return last
            k = len(tokens)  # a prefix of the last: a causal model scores it the same
            text = self.scorer.prompt_text(tokens)
            return ScoredTokens(
                logprobs=last.logprobs[:k], best_logprobs=last.best_logprobs[:k], ranks=last.ranks[:k], text=text
            )
        scores = self.scorer.score(prompt_tokens, tokens)
        self._last = (prompt_tokens, tokens, scores)
        return scores

    def prompt_text(self, prompt_tokens: list[int]) -> str:
        return self.scorer.prompt_text(prompt_tokens)


def _check(kind: Kind, proof: Proof, text: str, scorer: _Remembered, checker: ProofChecker) -> None:
    step = proof.steps[0]
    scores = scorer.score(step.prompt_tokens, step.tokens)
    d = np.array(step.logprobs) - np.array(scores.logprobs)
    kind.deviations.extend(np.abs(d).tolist())
    kind.biases.append(float(d.mean()) if d.size else 0.0)
    kind.positions.append(int(d.size))
    if d.size:
        kind.prefix_peaks.append(float((np.cumsum(d) / np.sqrt(np.arange(1, d.size + 1))).max()))
    kind.checked += 1
    try:
        checker.check(proof, text, scorer)
    except VerificationError as exc:
        kind.failed.append(str(exc))
    flat = replace(checker, mean_spread=0.0)
    for i, k in enumerate(PREFIX_LENGTHS):
        if len(step.tokens) < k:
            continue
        prefix = Proof(steps=[step.model_copy(update={"tokens": step.tokens[:k], "logprobs": step.logprobs[:k]})])
        prefix_text = scorer.prompt_text(step.tokens[:k])
        kind.prefix_checked[i] += 1
        kind.prefix_failed[i] += _fails(checker, prefix, prefix_text, scorer)
        kind.prefix_failed_flat[i] += _fails(flat, prefix, prefix_text, scorer)


def _fails(checker: ProofChecker, proof: Proof, text: str, scorer: _Remembered) -> bool:
    try:
        checker.check(proof, text, scorer)
    except VerificationError:
        return True
    return False


def _progress(message: str) -> None:
    print(f"verification: {message}", file=sys.stderr, flush=True)


async def _cell(
    cell: Cell,
    paths: tuple[Path, Path],
    requests: list[GenerationRequest],
    opened: TokenScorer,
    deadline: float | None = None,
    on_group: Callable[[Cell], None] | None = None,
) -> None:
    """Honest and swapped results for `requests`, `parallel` at a time, each checked (until `deadline`, a monotonic time)."""
    checker = ProofChecker()
    scorer = _Remembered(opened)
    fixed_tokens = opened._llm.tokenize(FIXED_TEXT.encode(), add_bos=False, special=False)
    options = runtime(cell.threads)
    real, cheat = [await BatchedLlamaModel.load("bench", p, options, parallel=cell.parallel) for p in paths]
    k = cell.kinds
    try:
        for start in range(0, len(requests), cell.parallel):  # `parallel` sequences share every batch
            group = requests[start : start + cell.parallel]
            honest = await asyncio.gather(*(_traced(real, r) for r in group))
            swapped = await asyncio.gather(*(_traced(cheat, r) for r in group))
            for (trace, generation), (cheat_trace, cheat_generation) in zip(honest, swapped, strict=True):
                # One prompt's checks one after another: the scorer keeps the prompt's KV between them.
                _check(k["honest"], _proof(trace), generation.text, scorer, checker)
                _check(k["swapped"], _proof(cheat_trace), cheat_generation.text, scorer, checker)
                real_numbers = scorer.score(cheat_trace.prompt_tokens, cheat_trace.tokens).logprobs
                relabelled = _proof(cheat_trace, logprobs=real_numbers)
                _check(k["relabelled"], relabelled, cheat_generation.text, scorer, checker)
                fixed_numbers = scorer.score(trace.prompt_tokens, fixed_tokens).logprobs
                _check(k["fixed"], _proof(trace, fixed_tokens, fixed_numbers), FIXED_TEXT, scorer, checker)
            if on_group is not None:
                on_group(cell)
            if deadline is not None and time.monotonic() > deadline:
                break
    finally:
        await real.close()
        await cheat.close()
    _progress(
        f"{cell.label}: honest flagged {len(k['honest'].failed)}/{k['honest'].checked}, "
        + ", ".join(
            f"{name} caught {len(k[name].failed)}/{k[name].checked}" for name in ("swapped", "fixed", "relabelled")
        )
        + f"; honest |d| {quantiles(k['honest'].deviations)}; "
        + "; ".join(f"{name} bias {spread(k[name].biases)}" for name in ("honest", "swapped"))
    )


async def _costs(
    real: Path, parallel: int, reps: int, scorers: dict[str, TokenScorer], out: dict[str, list[float]]
) -> None:
    """Verify / generate for each answer length, at 1 thread and `parallel` sequences sharing the batches,
    with each scorer (the model file, its bf16 copy)."""
    model = await BatchedLlamaModel.load("bench", real, runtime(1), parallel=parallel)
    try:
        for rep in range(reps):
            for length in COST_LENGTHS:
                requests = [
                    GenerationRequest(
                        messages=[ChatMessage(role="user", content=story_prompt(rep * parallel + j))],
                        max_tokens=length,
                        temperature=0.7,
                        seed=rep * 100 + j,
                        ignore_eos=True,
                    )
                    for j in range(parallel)
                ]
                results = await asyncio.gather(*(_traced(model, r) for r in requests))
                for trace, generation in results:
                    took = generation.prompt_seconds + generation.generation_seconds
                    for label, scorer in scorers.items():
                        scorer.clear()
                        started = time.perf_counter()
                        scorer.score(trace.prompt_tokens, trace.tokens)
                        fresh = time.perf_counter() - started
                        started = time.perf_counter()  # again: the prompt's KV is kept from the first check
                        scores = scorer.score(trace.prompt_tokens, trace.tokens)
                        cached = time.perf_counter() - started
                        key = f"{length} tokens, 1t/{parallel}p, {label}"
                        out.setdefault(f"{key}, fresh KV", []).append(fresh / took)
                        out.setdefault(f"{key}, prompt KV kept", []).append(cached / took)
                        remembered = _Remembered(scorer, (trace.prompt_tokens, trace.tokens, scores))
                        flagged = _fails(ProofChecker(), _proof(trace), generation.text, remembered)
                        out.setdefault(f"{key}, honest flagged", []).append(float(flagged))
                    out.setdefault(f"{length} tokens, 1t/{parallel}p, prompt tokens", []).append(
                        len(trace.prompt_tokens)
                    )
    finally:
        await model.close()
    _progress(f"cost 1t/{parallel}p measured")


async def measure(
    options: BenchOptions,
    cells: list[tuple[int, int]] = CELLS,
    cost: bool = True,
    deadline: float | None = None,
    on_group: Callable[[Cell], None] | None = None,
    n: int | None = None,
    precision: ScoringPrecision = "auto",
) -> dict[str, Any]:
    """Every number of the section, raw (also used by `python -m benchmarks.verification`).

    `precision`: the weights the catch-rate checks re-score with, as `verify_precision` sets them for
    `run-task --verify` (auto: the bf16 copy where it pays); the cost is measured with both.
    """
    n = n or options.pick(full=100, quick=8)
    requests = catch_prompts(n)
    real = model_path()
    scratch = Path(tempfile.mkdtemp(prefix="verify-bench-"))
    swapped = requantized_smollm2(scratch)
    copy = (
        scoring_copy(real, scratch) if bf16_pays(CpuInfo.read(), build_fingerprint()) or precision == "bf16" else None
    )
    amx = amx_scores(CpuInfo.read(), build_fingerprint(), runtime(1).extra_buffers, file_type(real))
    chosen = choose_precision(precision, real, CpuInfo.read(), build_fingerprint(), amx=amx)
    checking = copy if chosen == "bf16" and copy is not None else real
    _progress(f"catch rates re-scored with {checking.name}")
    threads = sorted({t for t, _ in cells})
    scorers = {t: TokenScorer(checking, runtime(t)) for t in threads}
    cost_scorers = {"model file": TokenScorer(real, runtime(1))}
    if copy is not None:
        cost_scorers["bf16 copy"] = TokenScorer(copy, runtime(1))
    costs: dict[str, list[float]] = {}
    done: list[Cell] = []
    try:
        for parallel, reps in ((1, options.pick(full=3, quick=1)), (4, 1)) if cost else ():
            await _costs(real, parallel, reps, cost_scorers, costs)
        for t, parallel in cells:
            cell = Cell(t, parallel, scorer=checking.name)
            await _cell(cell, (real, swapped), requests, scorers[t], deadline, on_group)
            done.append(cell)
    finally:
        for scorer in [*scorers.values(), *cost_scorers.values()]:
            scorer.close()
    return {"n": n, "cells": done, "costs": costs}


async def run(options: BenchOptions, cells: list[tuple[int, int]] = CELLS, cost: bool = True) -> Section:
    raw = await measure(options, cells, cost)
    measured: list[Cell] = raw["cells"]
    costs: dict[str, list[float]] = raw["costs"]
    if not costs and not measured:
        raise BenchmarkError("nothing was scored")
    rows = [
        Row(metric=f"verify / generate, {key}", ratio=summarize(values, "x", what=key))
        for key, values in costs.items()
        if not key.endswith(("prompt tokens", "honest flagged"))
    ]
    notes = [f"cost {k}: {min(v):.0f}-{max(v):.0f}" for k, v in costs.items() if k.endswith("prompt tokens")][:1]
    notes += [f"cost {k}: {sum(v):.0f} of {len(v)}" for k, v in costs.items() if k.endswith("honest flagged")]
    if measured:
        from benchmarks.verification_plot import draw  # matplotlib only when cells were measured

        notes += cell_notes(measured)
        notes.append(f"distributions drawn in {draw(measured, ProofChecker(), PLOT_PATH).name}")
    return Section(name="verification", title="11. Verification", rows=rows, notes=notes)


def _main() -> None:
    """`python -m benchmarks.verification [--quick] [--cells 1x1,2x4] [--no-cost | --cost-only]`: parts of the section."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.verification")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cells", default=",".join(f"{t}x{p}" for t, p in CELLS), help="THREADSxPARALLEL,...")
    parser.add_argument("--no-cost", action="store_true", help="catch rates only")
    parser.add_argument("--cost-only", action="store_true", help="cost only")
    parser.add_argument("--dump", type=Path, help="write the cells' raw numbers to this JSON file")
    parser.add_argument("--minutes", type=float, help="with --dump: stop each cell after this many minutes")
    parser.add_argument("--n", type=int, help="with --dump: prompts per cell (default 100, at most 1120)")
    parser.add_argument("--combine", type=Path, nargs="+", help="no run: notes and plot of cells dumped by --dump")
    parser.add_argument(
        "--precision",
        choices=["auto", "model", "bf16"],
        default="auto",
        help="weights the catch-rate checks re-score with",
    )
    args = parser.parse_args()
    if args.combine:
        combined = [Cell.from_dict(c) for f in args.combine for c in json.loads(f.read_text())["cells"]]
        print("\n".join(cell_notes(combined)))
        from benchmarks.verification_plot import draw

        print(f"distributions drawn in {draw(combined, ProofChecker(), PLOT_PATH)}")
        return
    cells = [] if args.cost_only else [(int(t), int(p)) for t, p in (c.split("x") for c in args.cells.split(","))]
    options = BenchOptions(quick=args.quick, threads=1)
    if args.dump:
        dump: Path = args.dump
        deadline = time.monotonic() + 60 * args.minutes if args.minutes else None

        def save(cell: Cell) -> None:  # after every group, replaced whole: a run stopped early leaves its last dump
            partial = dump.with_name(dump.name + ".part")
            partial.write_text(json.dumps({"cells": [asdict(cell)]}))
            partial.replace(dump)

        raw = asyncio.run(measure(options, cells, False, deadline, save, args.n, args.precision))
        print("\n".join(cell_notes(raw["cells"])))
        return
    section = asyncio.run(run(options, cells, cost=not args.no_cost))
    print("\n".join(section.notes))
    for row in section.rows:
        print(f"{row.metric}: {row.ratio.text() if row.ratio else ''}")


if __name__ == "__main__":
    _main()
