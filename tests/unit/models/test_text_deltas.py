"""Streaming a request's text: stop strings never leak, characters are never split, and the deltas
concatenate to exactly the final text (StopText + TextDeltas, then the real runtime with SmolLM2)."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from models.batching import BatchedLlamaModel
from models.options import RuntimeOptions
from models.requests import ChatMessage, GenerationRequest
from models.sampling import StopText
from models.text_deltas import TextDeltas
from tests.support.model_file import loaded_smollm2


def stream(pieces: list[bytes], stops: list[str]) -> tuple[list[str], StopText, list[str]]:
    """Feed pieces as the decode loop does; (deltas, the StopText, the text sent after each piece)."""
    text = StopText(stops)
    deltas: list[str] = []
    deltas_obj = TextDeltas(text, deltas.append)
    sent_after: list[str] = []
    for piece in pieces:
        if text.add(piece):
            break
        deltas_obj.update()
        sent_after.append("".join(deltas))
    deltas_obj.finish()
    return deltas, text, sent_after


def test_a_possible_stop_string_prefix_is_held_back_until_it_is_one() -> None:
    deltas, text, sent_after = stream([b"Hello ", b"<|im", b"_end|>", b" more"], ["<|im_end|>"])
    assert sent_after == ["Hello ", "Hello "]  # "<|im" could begin the stop string: held
    assert deltas == ["Hello "] and text.text == "Hello "


def test_a_held_prefix_is_released_when_it_turns_out_not_to_be_a_stop() -> None:
    deltas, text, sent_after = stream([b"a <", b"|x", b" b"], ["<|im_end|>"])
    assert sent_after == ["a ", "a <|x", "a <|x b"]  # "<|x" cannot begin it: released
    assert "".join(deltas) == text.text == "a <|x b"


def test_the_tail_held_at_the_end_goes_out_with_finish() -> None:
    deltas, text, sent_after = stream([b"ends with <|"], ["<|im_end|>"])
    assert sent_after == ["ends with "]
    assert deltas == ["ends with ", "<|"] and text.text == "ends with <|"


def test_a_character_split_across_tokens_goes_out_whole() -> None:
    euro = "€".encode()
    deltas, text, sent_after = stream([b"x" + euro[:1], euro[1:2], euro[2:] + b"y"], [])
    assert sent_after == ["x", "x", "x€y"]
    assert deltas == ["x", "€y"] and text.text == "x€y"


def test_invalid_bytes_are_dropped_as_in_the_final_text() -> None:
    deltas, text, _ = stream([b"a\xff", b"\xc3", b"b", b"\xe2\x82"], [])
    assert "".join(deltas) == text.text == "ab"


@pytest.mark.parametrize("seed", range(200))
def test_random_output_streams_a_prefix_at_every_step_and_exactly_the_text_at_the_end(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = ["a", "b", " ", "é", "€", "😀", "<", "|", "END", "<|e", "nd|>", "ST"]
    stops = rng.sample(["<|end|>", "STOP", "ab", "😀😀", "€<"], k=rng.randint(0, 3))
    data = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))).encode()
    cuts = sorted(rng.sample(range(1, len(data)), k=min(len(data) - 1, rng.randint(0, 30)))) if len(data) > 1 else []
    pieces = [data[i:j] for i, j in zip([0, *cuts], [*cuts, len(data)]) if data[i:j]]
    deltas, text, sent_after = stream(pieces, stops)
    assert "".join(deltas) == text.text
    for sent in sent_after:
        assert text.text.startswith(sent)
    for stop in stops:
        assert stop not in "".join(deltas)


OPTIONS = RuntimeOptions(n_ctx=512, n_threads=1)


@pytest.fixture(scope="module")
def model() -> Iterator[BatchedLlamaModel]:
    with loaded_smollm2(OPTIONS, parallel=2) as model:
        yield model


def count(stop: list[str]) -> GenerationRequest:
    return GenerationRequest(
        messages=[ChatMessage(role="user", content="Count from 1 to 30, separated by commas.")],
        max_tokens=40,
        temperature=0.0,
        stop=stop,
    )


async def test_the_runtime_streams_the_generation_in_pieces_that_make_its_text(model: BatchedLlamaModel) -> None:
    pieces: list[str] = []
    generation = await model.generate(count([]), on_text=pieces.append)
    assert len(pieces) >= 2, pieces
    assert "".join(pieces) == generation.text
    assert "<|im_end|>" not in generation.text  # the chat template's stop string stays out too


async def test_a_stop_string_never_reaches_the_stream(model: BatchedLlamaModel) -> None:
    unstopped = await model.generate(count([]))
    assert "\n7. 7" in unstopped.text, unstopped.text  # where the stop string (several tokens) would cut
    pieces: list[str] = []
    generation = await model.generate(count(["\n7. 7"]), on_text=pieces.append)
    assert generation.finish_reason == "stop"
    assert "".join(pieces) == generation.text == unstopped.text[: unstopped.text.index("\n7. 7")]
    assert all("7" not in piece for piece in pieces)
