"""The publisher's local scorers: a model's bf16 scoring copy when `verify_precision` asks for it, a scoring
context that grows to fit a proof's step up to the model's trained context."""

from __future__ import annotations

from pathlib import Path

import pytest

import node.cli.scorers as scorers_module
from config.settings import Settings
from models.batching import BatchedLlamaModel
from models.options import RuntimeOptions
from models.requests import ChatMessage, GenerationRequest
from models.tracing import GenerationTrace, generation_traces
from node.cli.scorers import LocalScorers
from node.publisher.prompt_match import PromptExpectation
from node.publisher.verification import ResultVerifier, VerificationFailedError
from node.wire.proof import Proof, ProofGeneration
from tests.support.model_file import SMOLLM2
from workflows import Simple


def test_the_publishers_scorers_open_the_copy_when_the_setting_asks(tmp_path: Path) -> None:
    scorers = LocalScorers(Settings(verify_precision="bf16"), tmp_path / "scoring", n_ctx=512)
    try:
        assert scorers("smollm2:135m") is not None
        assert [p.name for p in (tmp_path / "scoring").glob("*.bf16.gguf")]
        assert scorers("no-such-model:1b") is None
    finally:
        scorers.close()
    plain = LocalScorers(Settings(verify_precision="model"), tmp_path / "plain" / "scoring", n_ctx=512)
    try:
        assert plain("smollm2:135m") is not None
        assert not (tmp_path / "plain" / "scoring").exists()
    finally:
        plain.close()


def test_a_copy_that_cannot_be_made_falls_back_to_the_model_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_copy(path: Path, directory: Path) -> Path:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(scorers_module, "scoring_copy", no_copy)
    scorers = LocalScorers(Settings(verify_precision="bf16"), tmp_path / "scoring", n_ctx=512)
    try:
        assert scorers("smollm2:135m") is not None  # verifying still works, on the model file
    finally:
        scorers.close()


async def _honest_long_generation() -> tuple[str, ProofGeneration]:
    """A real generation on a ~600-token prompt, in a slot of 1,024 tokens, with its trace."""
    traces: list[GenerationTrace] = []
    model = await BatchedLlamaModel.load("smollm2", SMOLLM2, RuntimeOptions(n_ctx=1024, n_threads=1), parallel=1)
    try:
        generation_traces.set(traces)
        words = " ".join(f"word{i}" for i in range(150))
        request = GenerationRequest(messages=[ChatMessage(role="user", content=f"{words}. Say hi.")], max_tokens=8)
        text = (await model.generate(request)).text
    finally:
        generation_traces.set(None)
        await model.close()
    return text, ProofGeneration.model_validate(traces[0].model_dump())


async def test_a_generation_longer_than_the_scoring_context_gets_a_larger_one_and_is_checked(tmp_path: Path) -> None:
    """The publisher's scorer holds 512 tokens here (4,096 by default); a node's slot may hold up to the model's
    trained context (8,192 for SmolLM2). A longer step is checked in a larger scoring context, not left
    unverified: padding a proof's prompt past the scorer is no way around the check."""
    text, honest = await _honest_long_generation()
    assert len(honest.prompt_tokens) > 512
    scorers = LocalScorers(Settings(verify_precision="model"), tmp_path / "scoring", n_ctx=512)
    verifier = ResultVerifier(1.0, scorers, remote=False)
    forged = honest.model_copy(update={"logprobs": [-0.01] * len(honest.tokens)})
    past_training = ProofGeneration(prompt_tokens=[1] * 8200, tokens=[2], logprobs=[-1.0], temperature=0.0)
    foreign = ProofGeneration(prompt_tokens=[1, 2], tokens=[10**7], logprobs=[-1.0], temperature=0.0)
    try:
        verdict = await verifier.verify("smollm2:135m", Proof(steps=[honest]), text)
        assert verdict is not None and verdict.positions == len(honest.tokens)  # verified, in 1,024 tokens
        with pytest.raises(VerificationFailedError, match="claimed log-probability"):
            await verifier.verify("smollm2:135m", Proof(steps=[forged]), text)
        with pytest.raises(VerificationFailedError, match="trained context of 8192"):  # no node serves it
            await verifier.verify("smollm2:135m", Proof(steps=[past_training]), "x")
        with pytest.raises(VerificationFailedError, match="cannot be scored"):  # no model takes these tokens
            await verifier.verify("smollm2:135m", Proof(steps=[foreign]), "x")
        # The cheap rule first: a padded prompt that does not hold the task's messages fails before any scoring.
        expected = PromptExpectation.of(Simple().workflow(prompt="What is the capital of France?"), None)
        with pytest.raises(VerificationFailedError, match="does not hold the task's messages"):
            await verifier.verify("smollm2:135m", Proof(steps=[past_training]), "x", expected=expected)
        # ...whose reading refuses ids the model does not have (llama.cpp aborted the publisher's process on them)
        foreign_prompt = ProofGeneration(prompt_tokens=[1, 10**6], tokens=[2], logprobs=[-1.0], temperature=0.0)
        with pytest.raises(VerificationFailedError, match="outside the model's vocabulary"):
            await verifier.verify("smollm2:135m", Proof(steps=[foreign_prompt]), "x", expected=expected)
    finally:
        scorers.close()


async def test_a_step_past_the_verifiers_own_cap_is_left_unverified(tmp_path: Path) -> None:
    """Within the model's trained context but past what this verifier opens (its KV cache and prefill are
    the verifier's cost): unverified, never failed: an honest node may serve that long."""
    scorers = LocalScorers(Settings(verify_precision="model"), tmp_path / "scoring", n_ctx=512, max_n_ctx=1024)
    verifier = ResultVerifier(1.0, scorers, remote=False)
    long = ProofGeneration(prompt_tokens=[1] * 2000, tokens=[2], logprobs=[-1.0], temperature=0.0)
    try:
        assert await verifier.verify("smollm2:135m", Proof(steps=[long]), "x") is None
    finally:
        scorers.close()
