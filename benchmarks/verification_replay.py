"""Seeded-sampler replay, a feasibility measurement (docs/VERIFICATION.md, "Replaying the seeded sampler").

Not wired into the checker: this measures whether replay would close the relabelled-token gap.
For prompts at temperature 0.7 with their own seed (benchmarks.verification.catch_prompts),
1 thread, 1 sequence: an honest result and a swapped-model result (the swapped model samples
with the same seed, as a cheater handed the publisher's seed would). Each is re-scored by
teacher forcing (the real model, fresh KV) and its sampler replayed on the re-scored rows:
  - the seed's uniform draws come from llama.cpp's own `dist` sampler, applied to 2^14
    equal candidates (the chosen index is the draw, to 6e-5), one draw per position as the
    generation's chain consumed them;
  - the chain before `dist` (top-k 40, typical 1.0, top-p 0.95, min-p 0.05, temperature) is
    llama.cpp's, applied to each re-scored row, leaving the candidates in the order `dist`
    walks them;
  - the draw gap of a position: 0 when the draw falls in the chosen token's share of the
    cumulative probability, else its distance to that share (1.0: the token was not kept).
Reported: the honest per-result maximum gap (what a tolerance must admit), and for the
relabelled results (the swapped tokens with the real model's numbers) whether the current
checker catches them and their maximum gap. `python -m benchmarks.verification_replay --n 84
--minutes 20 --dump F`.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import tempfile
import time
from pathlib import Path
from typing import TypedDict

import llama_cpp
import numpy as np

from benchmarks.verification import _proof, _traced, catch_prompts
from benchmarks.workloads import model_path
from models.batching import BatchedLlamaModel
from models.options import RuntimeOptions
from models.scoring import TokenScorer
from node.publisher.verification import ProofChecker, VerificationError
from tests.support.swapped_model import requantized_smollm2

TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
PROBE = 1 << 14  # equal candidates a draw is read from
GAP_THRESHOLDS = (0.1, 0.15, 0.2, 0.3)


def _array(candidates: np.ndarray) -> llama_cpp.llama_token_data_array:
    data = candidates.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data))
    return llama_cpp.llama_token_data_array(data, len(candidates), -1, False)


def _decode(ctx: llama_cpp.llama_context_p, sequence: list[int], start: int, end: int, first: int) -> np.ndarray:
    """Evaluate positions start..end-1 as one batch; the logit rows of those at or after `first`."""
    batch = llama_cpp.llama_batch_init(end - start, 0, 1)
    try:
        for i, pos in enumerate(range(start, end)):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = sequence[pos], pos, 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = pos >= first
        batch.n_tokens = end - start
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        outputs = end - max(start, first)
        n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(llama_cpp.llama_get_model(ctx)))
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx), shape=(outputs, n_vocab)).copy()
    finally:
        llama_cpp.llama_batch_free(batch)


def logit_rows(scorer: TokenScorer, prompt: list[int], tokens: list[int], one_by_one: bool = False) -> np.ndarray:
    """The real model's logit rows predicting each of `tokens` after `prompt`: one fresh pass, as TokenScorer,
    or (`one_by_one`) the answer evaluated a token per decode, the shape a generation at 1 sequence has."""
    ctx = scorer._llm._ctx.ctx
    scorer.clear()
    sequence = prompt + tokens
    first, last = len(prompt) - 1, len(sequence) - 1
    try:
        if not one_by_one:
            return _decode(ctx, sequence, 0, last, first)
        rows = [_decode(ctx, sequence, 0, len(prompt), first)]
        rows += [_decode(ctx, sequence, pos, pos + 1, first) for pos in range(len(prompt), last)]
        return np.concatenate(rows)
    finally:
        scorer.clear()


def seed_draws(seed: int, n: int) -> list[float]:
    """The first `n` uniform draws of llama.cpp's `dist` sampler seeded with `seed`."""
    sampler = llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF)
    probe = np.zeros(PROBE, dtype=TOKEN_DATA)
    draws = []
    try:
        for _ in range(n):
            probe["id"], probe["logit"], probe["p"] = np.arange(PROBE), 0.0, 0.0
            array = _array(probe)
            llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
            draws.append((array.selected + 0.5) / PROBE)
    finally:
        llama_cpp.llama_sampler_free(sampler)
    return draws


def draw_gaps(rows: np.ndarray, tokens: list[int], seed: int, temperature: float) -> list[float]:
    """Per position: how far the seed's draw falls from the chosen token's share (0: it would be chosen)."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    for sampler in (
        llama_cpp.llama_sampler_init_top_k(40),
        llama_cpp.llama_sampler_init_typical(1.0, 1),
        llama_cpp.llama_sampler_init_top_p(0.95, 1),
        llama_cpp.llama_sampler_init_min_p(0.05, 1),
        llama_cpp.llama_sampler_init_temp(temperature),
    ):
        llama_cpp.llama_sampler_chain_add(chain, sampler)
    gaps = []
    try:
        for row, token, draw in zip(rows, tokens, seed_draws(seed, len(tokens)), strict=True):
            candidates = np.empty(len(row), dtype=TOKEN_DATA)
            candidates["id"], candidates["logit"], candidates["p"] = np.arange(len(row)), row, 0.0
            array = _array(candidates)
            llama_cpp.llama_sampler_apply(chain, ctypes.byref(array))
            kept = candidates[: array.size]  # sorted and cut in place, in the order `dist` walks
            where = np.nonzero(kept["id"] == token)[0]
            if where.size == 0:
                gaps.append(1.0)
                continue
            logits = kept["logit"].astype(np.float64)
            p = np.exp(logits - logits.max())
            cumulative = np.cumsum(p / p.sum())
            high = float(cumulative[where[0]])
            low = high - float(p[where[0]] / p.sum())
            gaps.append(0.0 if low <= draw <= high else min(abs(draw - low), abs(draw - high)))
    finally:
        llama_cpp.llama_sampler_free(chain)
    return gaps


class Gaps(TypedDict):
    """Per result, its positions' gaps (honest and relabelled), and whether the checker caught the relabelled one."""

    honest: list[list[float]]
    relabelled: list[list[float]]
    caught: list[bool]


async def measure(n: int, minutes: float, dump: Path | None, one_by_one: bool = False) -> Gaps:
    real = model_path()
    swapped = requantized_smollm2(Path(tempfile.mkdtemp(prefix="replay-bench-")))
    options = RuntimeOptions(n_threads=1)
    scorer = TokenScorer(real, options)
    honest_model = await BatchedLlamaModel.load("bench", real, options, parallel=1)
    cheat_model = await BatchedLlamaModel.load("bench", swapped, options, parallel=1)
    checker = ProofChecker()
    out: Gaps = {"honest": [], "relabelled": [], "caught": []}
    deadline = time.monotonic() + 60 * minutes
    try:
        for request in [r for r in catch_prompts(4 * n) if r.temperature > 0][:n]:
            if time.monotonic() > deadline:
                break
            assert request.seed is not None
            honest, _ = await _traced(honest_model, request)
            cheat, cheat_generation = await _traced(cheat_model, request)
            rows = logit_rows(scorer, honest.prompt_tokens, honest.tokens, one_by_one)
            out["honest"].append(draw_gaps(rows, honest.tokens, request.seed, request.temperature))
            rows = logit_rows(scorer, cheat.prompt_tokens, cheat.tokens, one_by_one)
            out["relabelled"].append(draw_gaps(rows, cheat.tokens, request.seed, request.temperature))
            numbers = scorer.score(cheat.prompt_tokens, cheat.tokens).logprobs
            try:
                checker.check(_proof(cheat, logprobs=numbers), cheat_generation.text, scorer)
                out["caught"].append(False)
            except VerificationError:
                out["caught"].append(True)
            if dump is not None:
                dump.write_text(json.dumps(out))
    finally:
        await honest_model.close()
        await cheat_model.close()
        scorer.close()
    return out


def summary(out: Gaps) -> list[str]:
    """What the gaps say: the honest tail, and what replay would add to the checker on relabelled results."""
    honest = np.array([max(g) for g in out["honest"]])
    relabelled = np.array([max(g) for g in out["relabelled"]])
    caught = np.array(out["caught"], dtype=bool)
    positions = np.concatenate([np.array(g) for g in out["honest"]])
    lines = [
        f"n = {len(honest)} results each (temperature 0.7, 24 tokens at most), {positions.size} honest positions",
        f"honest positions with a gap: {(positions > 0).sum()}; per-result max gap p50 {np.median(honest):.3f}, "
        f"p90 {np.quantile(honest, 0.9):.3f}, max {honest.max():.3f}",
        f"relabelled caught by the checker today: {caught.sum()} of {caught.size}",
    ]
    for tau in GAP_THRESHOLDS:
        lines.append(
            f"replay at gap > {tau}: honest flagged {(honest > tau).sum()}, relabelled caught {(relabelled > tau).sum()}, "
            f"with the checker {(caught | (relabelled > tau)).sum()} of {caught.size}"
        )
    return lines


def _main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.verification_replay")
    parser.add_argument("--n", type=int, default=84)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--dump", type=Path)
    parser.add_argument("--one-by-one", action="store_true", help="re-score a token per decode (generation's shape)")
    parser.add_argument("--combine", type=Path, help="no run: the summary of a dump")
    args = parser.parse_args()
    out: Gaps = (
        json.loads(args.combine.read_text())
        if args.combine
        else asyncio.run(measure(args.n, args.minutes, args.dump, args.one_by_one))
    )
    print("\n".join(summary(out)))


if __name__ == "__main__":
    _main()
