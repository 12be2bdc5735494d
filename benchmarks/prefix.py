"""6. Prefix reuse: a workflow's second step whose prompt extends the first one's.

Measured on the batched llama.cpp runtime (prompt evaluation time is not visible from
outside the node). Each round runs step 1, then step 2 on the same model, so
step 2 can start from the KV cache step 1 left in its slot; the baseline is the
same step 2 on a freshly loaded model, which has to evaluate the whole prompt.
Goal: step 2's prompt evaluation >= 5x faster with reuse.
"""

from __future__ import annotations

from benchmarks.options import BenchOptions
from benchmarks.report import Row, Section
from benchmarks.stats import BenchmarkError, alternate, paired_ratio, summarize
from benchmarks.workloads import TOPICS, model_path
from models.batching import BatchedLlamaModel
from models.options import RuntimeOptions
from models.requests import ChatMessage, GenerationRequest

GOAL = 5.0
STEP_TOKENS = 32


def _steps(topic: str) -> tuple[list[ChatMessage], list[ChatMessage]]:
    """Step 1 asks for a story; step 2 is the same conversation plus the answer and a new question."""
    context = " ".join(f"Chapter {i}: the tale of {topic} goes on, with new places and people." for i in range(1, 25))
    first = [
        ChatMessage(role="system", content="You are a careful storyteller who keeps track of every detail."),
        ChatMessage(role="user", content=f"{context}\nContinue the story of {topic}."),
    ]
    second = [
        *first,
        ChatMessage(role="assistant", content="{answer}"),
        ChatMessage(role="user", content="Now give it a title."),
    ]
    return first, second


async def run(options: BenchOptions) -> Section:
    rounds = options.pick(full=5, quick=2)
    runtime = RuntimeOptions(n_ctx=2048, n_threads=options.threads, flash_attn="auto")  # the node's default
    path = model_path()
    warm: list[float] = []
    cold: list[float] = []
    reused: list[int] = []
    prompt_tokens: list[int] = []

    async def step_two(model: BatchedLlamaModel, messages: list[ChatMessage]) -> float:
        result = await model.generate(GenerationRequest(messages=messages, max_tokens=STEP_TOKENS))
        if result.prompt_seconds <= 0:
            raise BenchmarkError("prefix: the runtime reported no prompt evaluation time")
        prompt_tokens.append(result.prompt_tokens)
        reused.append(getattr(result, "reused_prompt_tokens", 0))
        return result.prompt_seconds

    async def with_reuse(i: int) -> None:
        first, second = _steps(TOPICS[i % len(TOPICS)])
        model = await BatchedLlamaModel.load("smollm2:135m", path, runtime, parallel=1)
        try:
            answer = await model.generate(GenerationRequest(messages=first, max_tokens=STEP_TOKENS))
            second[2] = ChatMessage(role="assistant", content=answer.text)
            warm.append(await step_two(model, second))
        finally:
            await model.close()
        cold_messages.append(second)

    async def without_reuse(i: int) -> None:
        model = await BatchedLlamaModel.load("smollm2:135m", path, runtime, parallel=1)
        try:
            cold.append(await step_two(model, cold_messages[i]))
        finally:
            await model.close()

    cold_messages: list[list[ChatMessage]] = []
    await alternate(rounds, with_reuse, without_reuse)
    what = "prefix reuse"
    speedup = paired_ratio(cold, warm, what=what)
    verdict = "met" if speedup.median >= GOAL else "NOT met"
    return Section(
        name="prefix",
        title="6. Prefix reuse",
        rows=[
            Row(
                metric="step 2 prompt evaluation (ms), prompt extends step 1",
                node=summarize([s * 1000 for s in warm], "ms", what=what),
                baseline=summarize([s * 1000 for s in cold], "ms", what=what),
                baseline_name="same prompt, fresh model (no reuse)",
                ratio=speedup,
            ),
        ],
        notes=[
            (
                f"{rounds} rounds alternately; BatchedLlamaModel, 1 slot, {options.threads} thread(s), n_ctx 2048; "
                f"step 2 prompt {min(prompt_tokens)}-{max(prompt_tokens)} tokens, of which the warm runs reused "
                f"{min(reused[0::2])}-{max(reused[0::2])}; the ratio column is the speed-up (no reuse / reuse)."
            ),
            f"goal speed-up >= {GOAL:g}x: {verdict} (median {speedup.median:.1f}x).",
        ],
    )
