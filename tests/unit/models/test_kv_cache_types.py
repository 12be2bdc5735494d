"""KV cache types and flash attention: each runs the real model; a quantized cache without flash attention is refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from config.settings import ConfigError, Settings
from models.batching import BatchedLlamaModel
from models.options import RuntimeOptions
from models.requests import ChatMessage, GenerationRequest
from tests.support.model_file import SMOLLM2

ASK = GenerationRequest(
    messages=[ChatMessage(role="user", content="Say the word river and nothing else.")], max_tokens=16, temperature=0.0
)


@pytest.mark.parametrize(("cache_type", "flash_attn"), [("f16", "off"), ("q8_0", "on"), ("q4_0", "auto")])
async def test_each_cache_type_answers(cache_type: str, flash_attn: str) -> None:
    options = RuntimeOptions.model_validate(
        {"n_ctx": 256, "n_threads": 1, "kv_cache_type": cache_type, "flash_attn": flash_attn}
    )
    model = await BatchedLlamaModel.load("smollm2", SMOLLM2, options, parallel=1)
    try:
        answer = await model.generate(ASK)
    finally:
        await model.close()
    assert answer.completion_tokens >= 1 and answer.text.strip(), (cache_type, answer)
    if cache_type != "q4_0":  # q4_0 changes this tiny model's greedy answer ("The ocean."): see benchmark 10
        assert "river" in answer.text.lower(), (cache_type, answer.text)


def test_a_quantized_cache_needs_flash_attention() -> None:
    with pytest.raises(ValidationError, match="kv_cache_type q8_0 needs flash_attn on or auto"):
        RuntimeOptions(kv_cache_type="q8_0", flash_attn="off")
    with pytest.raises(ConfigError, match="kv_cache_type q4_0 needs flash_attn on or auto"):
        Settings.load(None, kv_cache_type="q4_0", flash_attn="false")
    assert Settings.load(None, flash_attn="true").flash_attn == "on"  # older boolean configs still load


def test_auto_flash_attention_is_off_only_on_a_cpu_with_an_f16_cache() -> None:
    assert Settings().flash_attn == "auto"
    cpu_f16 = RuntimeOptions(flash_attn="auto", n_gpu_layers=0)
    assert not cpu_f16.flash_attn_on()  # CPU decode steps at long contexts: up to 2x faster without it
    assert RuntimeOptions(flash_attn="auto", n_gpu_layers=0, kv_cache_type="q8_0").flash_attn_on()  # needs it
    assert RuntimeOptions(flash_attn="auto", n_gpu_layers=-1).flash_attn_on()  # layers on a GPU
    assert RuntimeOptions(flash_attn="on", n_gpu_layers=0).flash_attn_on()  # a setting that says so wins
    assert not RuntimeOptions(flash_attn="off", n_gpu_layers=-1).flash_attn_on()
    assert cpu_f16.flash_attn_type() != RuntimeOptions(flash_attn="on").flash_attn_type()
    assert cpu_f16.flash_attn_for_batches()  # re-scoring and embeddings: batched passes keep it
    assert not RuntimeOptions(flash_attn="off").flash_attn_for_batches()
