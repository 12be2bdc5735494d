"""The temperature-0 sampler picks what llama.cpp's own greedy chain picks from the same
logits of the real SmolLM2 model, with and without banned (ignore_eos) tokens."""

from __future__ import annotations

from collections.abc import Iterator

import llama_cpp
import pytest

from models.sampling import SamplingSettings, SequenceSampler
from tests.support.model_file import SMOLLM2

PROMPTS = ["The capital of France is", "Once upon a time, a dragon", "def fibonacci(n):", "1, 2, 3, 4,"]


@pytest.fixture(scope="module")
def llama() -> Iterator[llama_cpp.Llama]:
    model = llama_cpp.Llama(str(SMOLLM2), n_ctx=256, n_threads=1, verbose=False)
    yield model
    model.close()


def _evaluated(llama: llama_cpp.Llama, prompt: str) -> llama_cpp.llama_context_p:
    llama.reset()
    llama.eval(llama.tokenize(prompt.encode()))
    return llama._ctx.ctx


def _llama_cpp_greedy(llama: llama_cpp.Llama, banned: tuple[int, ...] = ()) -> int:
    """llama.cpp's own pick: [logit bias -inf on `banned`] -> greedy, on the last output row."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    try:
        if banned:
            biases = (llama_cpp.llama_logit_bias * len(banned))()
            for i, token in enumerate(banned):
                biases[i].token = token  # type: ignore[assignment]
                biases[i].bias = float("-inf")
            llama_cpp.llama_sampler_chain_add(
                chain, llama_cpp.llama_sampler_init_logit_bias(llama.n_vocab(), len(banned), biases)
            )
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        return int(llama_cpp.llama_sampler_sample(chain, llama._ctx.ctx, -1))
    finally:
        llama_cpp.llama_sampler_free(chain)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_pick_is_llama_cpps_pick(llama: llama_cpp.Llama, prompt: str) -> None:
    ctx = _evaluated(llama, prompt)
    sampler = SequenceSampler(llama.n_vocab(), SamplingSettings(temperature=0.0, seed=None, constraint=None))
    try:
        picked = sampler.sample(ctx, -1)
    finally:
        sampler.close()
    assert picked == _llama_cpp_greedy(llama)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_a_banned_best_token_gives_the_next_best(llama: llama_cpp.Llama, prompt: str) -> None:
    ctx = _evaluated(llama, prompt)
    best = _llama_cpp_greedy(llama)
    banned = (best, llama.token_eos())
    settings = SamplingSettings(temperature=0.0, seed=None, constraint=None, banned_tokens=banned)
    sampler = SequenceSampler(llama.n_vocab(), settings)
    try:
        picked = sampler.sample(ctx, -1)
    finally:
        sampler.close()
    assert picked not in banned
    assert picked == _llama_cpp_greedy(llama, banned)
