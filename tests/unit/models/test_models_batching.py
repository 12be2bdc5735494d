"""The batched runtime with the real SmolLM2 GGUF: no cross-talk, agreement with
solo runs (one slot), JSON in a batch, cancellation, context overflow, prefix reuse,
deadlines, stop strings, embeddings and closing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.batching import BatchedLlamaModel
from models.options import RuntimeOptions
from models.requests import (
    ChatMessage,
    ContextOverflowError,
    DeadlineExceededError,
    EmbeddingRequest,
    GenerationRequest,
    ModelError,
    ModelLoadError,
)
from models.slots import BatchedGeneration
from tests.support.model_file import SMOLLM2, loaded_smollm2

# One thread: no OpenMP spin collapse when the 2-core CI machine is busy.
OPTIONS = RuntimeOptions(n_ctx=512, n_threads=1)
PARALLEL = 4
# Words SmolLM2 repeats at temperature 0 when asked with `_say`.
WORDS = ["apple", "river", "candle", "mountain", "window", "banana"]


@pytest.fixture(scope="module")
def model() -> Iterator[BatchedLlamaModel]:
    with loaded_smollm2(OPTIONS, parallel=PARALLEL) as model:
        yield model


@pytest.fixture(scope="module")
def solo() -> Iterator[BatchedLlamaModel]:
    """The single-sequence baseline: one slot, so every request runs alone."""
    with loaded_smollm2(OPTIONS, parallel=1) as model:
        yield model


def _say(word: str, **fields: object) -> GenerationRequest:
    return GenerationRequest(
        messages=[ChatMessage(role="user", content=f"Say the word {word} and nothing else.")],
        **{"max_tokens": 16, **fields},  # type: ignore[arg-type]
    )


async def _wait_until(condition: object, timeout: float) -> float:
    started = time.monotonic()
    while not condition():  # type: ignore[operator]
        assert time.monotonic() - started < timeout, "condition not reached in time"
        await asyncio.sleep(0.005)
    return time.monotonic() - started


def test_the_loaded_models_gguf_header_is_kept(model: BatchedLlamaModel) -> None:
    # The execution process sizes its memory limits from it, without opening the file again.
    assert model.metadata["general.architecture"] == "llama"
    assert model.metadata["llama.block_count"] == "30"


async def test_no_cross_talk_with_more_requests_than_slots(model: BatchedLlamaModel) -> None:
    results = await asyncio.gather(*(model.generate(_say(w)) for w in WORDS))
    for word, result in zip(WORDS, results):
        text = result.text.lower()
        assert word in text, (word, result.text)
        assert not [other for other in WORDS if other != word and other in text], (word, result.text)
    assert model.slots_free == PARALLEL and model.queued == 0


async def test_batched_outputs_agree_with_solo_runs(model: BatchedLlamaModel, solo: BatchedLlamaModel) -> None:
    prompts = [
        "Name three colours.",
        "What is the capital of France?",
        "Write one sentence about the sea.",
        "Count from one to five.",
    ]
    requests = [
        GenerationRequest(messages=[ChatMessage(role="user", content=p)], max_tokens=32, ignore_eos=True)
        for p in prompts
    ]
    # A seeded sampled request must draw the same in a batch as alone.
    requests.append(
        GenerationRequest(
            messages=[ChatMessage(role="user", content="Tell me a short joke.")],
            max_tokens=32,
            ignore_eos=True,
            temperature=0.8,
            seed=7,
        )
    )
    batched = await asyncio.gather(*(model.generate(r) for r in requests))
    alone = [await solo.generate(r) for r in requests]
    agreed: list[int] = []
    total = 0
    for b, a in zip(batched, alone, strict=True):
        bt, at = model.tokenize(b.text), model.tokenize(a.text)
        agreed.append(next((i for i, (x, y) in enumerate(zip(bt, at)) if x != y), min(len(bt), len(at))))
        total += max(len(bt), len(at))
        assert b.completion_tokens == a.completion_tokens == 32
    print(f"token agreement, batched vs one slot: {agreed} of {total}")
    # llama.cpp numerics may shift a little with the batch shape (and with a reused prompt
    # prefix): one near-tie flipped early changes everything after it in that sequence (seen:
    # [32, 32, 5, 32] alone, on every commit since stop 46, and in one full run). A systematic
    # difference (cross-talk, a wrong slot, another sampler chain) breaks them all: at least three
    # of the four greedy sequences must agree entirely, and the sampled one (temperature 0.8) must
    # start the same.
    whole = [n == len(model.tokenize(a.text)) for n, a in zip(agreed[:-1], alone[:-1], strict=True)]
    assert sum(whole) >= 3, agreed
    assert agreed[-1] >= 1


async def test_json_schema_sequence_in_a_batch_is_valid_json(model: BatchedLlamaModel) -> None:
    schema = {
        "type": "object",
        # Bounded: with an unbounded integer this 135M model may write digits until max_tokens, or not,
        # as its kernels round (it does with the AMX ones): the test is about the batch, not the model.
        "properties": {
            "city": {"type": "string", "maxLength": 20},
            "population": {"type": "integer", "minimum": 0, "maximum": 99_999_999},
        },
        "required": ["city", "population"],
    }
    structured = GenerationRequest(
        messages=[ChatMessage(role="user", content="Give the largest city of Japan and its population as JSON.")],
        json_schema=schema,
        max_tokens=60,
    )
    results = await asyncio.gather(model.generate(structured), *(model.generate(_say(w)) for w in WORDS[:3]))
    data = json.loads(results[0].text)
    assert isinstance(data["city"], str) and isinstance(data["population"], int)
    for word, result in zip(WORDS[:3], results[1:]):
        assert word in result.text.lower()


async def test_cancelling_one_sequence_frees_its_slot_and_spares_the_others(model: BatchedLlamaModel) -> None:
    long = GenerationRequest(
        messages=[ChatMessage(role="user", content="Tell a long story.")], max_tokens=400, ignore_eos=True
    )
    # Text streamed so far, per request: a request has text once its prompt is evaluated and it generates.
    streamed: list[list[str]] = [[] for _ in range(4)]
    victim = asyncio.create_task(model.generate(long, on_text=streamed[0].append))
    others = [
        asyncio.create_task(model.generate(_say(w, max_tokens=60, ignore_eos=True), on_text=streamed[i + 1].append))
        for i, w in enumerate(WORDS[:3])
    ]
    # Cancellation is seen between decode steps. A step that still evaluates a prompt (a few dozen
    # tokens) lasts seconds on a loaded 2-core machine; once all four only generate, a step is one
    # token each. So the bound below is about a generating batch: wait until all four stream text.
    await _wait_until(lambda: all(streamed), timeout=30)
    assert model.slots_free == 0 and not any(task.done() for task in others)
    victim.cancel()
    # Freed at the next step, not when the victim's 400 tokens would end: the others (60 tokens
    # each) are still generating then. A relative bound, not a wall-clock one (the machine is shared).
    await _wait_until(lambda: model.slots_free >= 1, timeout=30)
    assert not all(task.done() for task in others), "the slot was freed only after the others ended"
    with pytest.raises(asyncio.CancelledError):
        await victim
    results = await asyncio.gather(*others)
    for word, result in zip(WORDS[:3], results):
        assert result.completion_tokens == 60 and word in result.text.lower(), (word, result.text)
    again = await model.generate(_say("river"))
    assert "river" in again.text.lower()


async def test_prompt_longer_than_the_context_fails_alone(model: BatchedLlamaModel) -> None:
    too_long = GenerationRequest(messages=[ChatMessage(role="user", content="word " * 2000)])
    results = await asyncio.gather(
        model.generate(too_long), *(model.generate(_say(w)) for w in WORDS[:2]), return_exceptions=True
    )
    assert isinstance(results[0], ContextOverflowError)
    assert "512-token context" in str(results[0])
    for word, result in zip(WORDS[:2], results[1:]):
        assert isinstance(result, BatchedGeneration) and word in result.text.lower()


async def test_next_step_reuses_the_cached_prompt_prefix(model: BatchedLlamaModel) -> None:
    system = ChatMessage(role="system", content="You are a careful assistant. " * 25)
    first = [system, ChatMessage(role="user", content="Name a fruit.")]
    step1 = await model.generate(GenerationRequest(messages=first, max_tokens=12))
    second = first + [
        ChatMessage(role="assistant", content=step1.text),
        ChatMessage(role="user", content="Name another one."),
    ]
    step2 = await model.generate(GenerationRequest(messages=second, max_tokens=12))
    assert isinstance(step2, BatchedGeneration)
    assert step2.reused_prompt_tokens >= step1.prompt_tokens - 1
    evaluated = step2.prompt_tokens - step2.reused_prompt_tokens
    assert evaluated < step2.prompt_tokens / 4
    # A seeded request evaluates its whole prompt (no prefix reuse) and answers the same.
    fresh = await model.generate(GenerationRequest(messages=second, max_tokens=12, seed=1))
    assert isinstance(fresh, BatchedGeneration) and fresh.reused_prompt_tokens == 0
    reused, whole = model.tokenize(step2.text), model.tokenize(fresh.text)
    same = next((i for i, (a, b) in enumerate(zip(reused, whole)) if a != b), min(len(reused), len(whole)))
    assert same >= max(len(reused), len(whole)) // 2, (step2.text, fresh.text)


async def test_stop_strings_deadline_and_max_tokens(model: BatchedLlamaModel) -> None:
    counted = GenerationRequest(
        messages=[ChatMessage(role="user", content="Count from one to ten with digits.")], max_tokens=60, stop=["5"]
    )
    slow = GenerationRequest(
        messages=[ChatMessage(role="user", content="Tell a long story.")],
        max_tokens=450,
        ignore_eos=True,
        deadline_seconds=0.3,
    )
    short = _say("apple", max_tokens=3, ignore_eos=True)
    stopped, late, capped = await asyncio.gather(
        model.generate(counted), model.generate(slow), model.generate(short), return_exceptions=True
    )
    assert isinstance(stopped, BatchedGeneration) and "4" in stopped.text and "5" not in stopped.text
    assert stopped.finish_reason == "stop"
    assert isinstance(late, DeadlineExceededError)
    assert isinstance(capped, BatchedGeneration)
    assert capped.completion_tokens == 3 and capped.finish_reason == "length"


async def test_embeddings_and_closing() -> None:
    own = await BatchedLlamaModel.load("smollm2", SMOLLM2, OPTIONS, parallel=2)
    try:
        vectors = await own.embed(EmbeddingRequest(texts=["a cat", "a dog"]))
        assert len(vectors) == 2 and len(vectors[0]) == 576
        running = asyncio.create_task(
            own.generate(
                GenerationRequest(
                    messages=[ChatMessage(role="user", content="Tell a long story.")], max_tokens=400, ignore_eos=True
                )
            )
        )
        await _wait_until(lambda: own.slots_free == 1, timeout=10)
    finally:
        await own.close()
    with pytest.raises(ModelError, match="closed"):
        await running
    with pytest.raises(ModelError, match="closed"):
        await own.generate(_say("apple"))


async def test_a_truncated_model_file_fails_to_load_with_its_name_and_why(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    whole = SMOLLM2.read_bytes()
    broken.write_bytes(whole[: len(whole) // 2])  # its header and tensor table whole, half its data
    with pytest.raises(ModelLoadError, match=r"broken\.gguf: .*corrupted or incomplete"):
        await BatchedLlamaModel.load("broken", broken, OPTIONS, parallel=2)
