"""9. Constrained decoding: what a schema costs per generated token on the batched runtime.

The schemas are the ones Dria's SDK sends for a pydantic model (tests/support/data/sdk_schemas.json):
the outlines regex (Ollama/OpenRouter names) and the strict JSON schema (OpenAI names).
Each round runs the same 4 requests at once with the constraint and without it
(alternately, on one loaded model); the ratio is constrained / unconstrained time per
generated token. Goal: a constraint costs at most 1.5x.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

from benchmarks.options import BenchOptions
from benchmarks.report import Row, Section
from benchmarks.stats import BenchmarkError, alternate, paired_ratio, summarize
from benchmarks.workloads import model_path
from models.batching import BatchedLlamaModel
from models.options import RuntimeOptions
from models.requests import ChatMessage, GenerationRequest

GOAL = 1.5  # masking the whole vocabulary at every step (grammar first in the chain) cost ~1.7x here
PARALLEL = 4
MAX_TOKENS = 80
SCHEMAS = Path(__file__).parent.parent / "tests" / "support" / "data" / "sdk_schemas.json"


def _request(**constraint: Any) -> GenerationRequest:
    return GenerationRequest(
        messages=[ChatMessage(role="user", content="Write a short product review as JSON.")],
        max_tokens=MAX_TOKENS,
        **constraint,
    )


async def run(options: BenchOptions) -> Section:
    rounds = options.pick(full=6, quick=3)
    schemas = json.loads(SCHEMAS.read_text(encoding="utf-8"))["Review"]
    forms = {
        "outlines regex (Ollama names)": {"regex": base64.b64decode(schemas["ollama"]).decode("utf-8")},
        "JSON schema (OpenAI names)": {"json_schema": json.loads(schemas["openai"])},
    }
    runtime = RuntimeOptions(n_ctx=2048, n_threads=options.threads, flash_attn=True)
    model = await BatchedLlamaModel.load("smollm2:135m", model_path(), runtime, parallel=PARALLEL)
    rows: list[Row] = []
    try:

        async def per_token(constraint: dict[str, Any]) -> float:
            started = time.perf_counter()
            results = await asyncio.gather(*[model.generate(_request(**constraint)) for _ in range(PARALLEL)])
            tokens = sum(r.completion_tokens for r in results)
            if tokens == 0:
                raise BenchmarkError("grammar: no token was generated")
            return (time.perf_counter() - started) / tokens * 1000

        for name, constraint in forms.items():
            constrained, free = await alternate(rounds, lambda _i, c=constraint: per_token(c), lambda _i: per_token({}))
            what = f"grammar {name}"
            rows.append(
                Row(
                    metric=f"ms per generated token, {PARALLEL} sequences at once, {name}",
                    node=summarize(constrained, "ms", what=what),
                    baseline=summarize(free, "ms", what=what),
                    baseline_name="same requests, no constraint",
                    ratio=paired_ratio(constrained, free, what=what),
                )
            )
    finally:
        await model.close()
    worst = max(row.ratio.median for row in rows if row.ratio is not None)
    return Section(
        name="grammar",
        title="9. Constrained decoding",
        rows=rows,
        notes=[
            (
                f"{rounds} rounds alternately; BatchedLlamaModel, {PARALLEL} slots, {options.threads} thread(s); "
                f"schemas as Dria's SDK sends them for one pydantic model; the grammar is checked lazily "
                f"(the unconstrained pick first, the full vocabulary masked only when it is refused)."
            ),
            f"goal ratio <= {GOAL:g}x: {'met' if worst <= GOAL else 'NOT met'} (worst median {worst:.2f}x).",
        ],
    )
