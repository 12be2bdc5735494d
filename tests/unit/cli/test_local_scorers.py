"""The publisher's local scorers open a model's bf16 scoring copy when `verify_precision` asks for it."""

from __future__ import annotations

from pathlib import Path

import pytest

import node.cli.scorers as scorers_module
from config.settings import Settings
from node.cli.scorers import LocalScorers
from node.publisher.verification import ResultVerifier, VerificationFailedError
from node.wire.proof import Proof, ProofGeneration


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


async def test_a_generation_longer_than_the_scoring_context_here_leaves_the_result_unverified(tmp_path: Path) -> None:
    # The publisher's scorer holds 512 tokens here (4,096 by default); a node's slot may hold 8,192. Its honest
    # generation did not fit, and the check failed the result and marked the node as a cheat.
    scorers = LocalScorers(Settings(verify_precision="model"), tmp_path / "scoring", n_ctx=512)
    verifier = ResultVerifier(1.0, scorers, remote=False)
    long = ProofGeneration(prompt_tokens=[1] * 600, tokens=[2], logprobs=[-1.0], temperature=0.0)
    foreign = ProofGeneration(prompt_tokens=[1, 2], tokens=[10**7], logprobs=[-1.0], temperature=0.0)
    try:
        assert await verifier.verify("smollm2:135m", Proof(steps=[long]), "x") is None  # unverified, not failed
        with pytest.raises(VerificationFailedError, match="cannot be scored"):  # no model takes these tokens
            await verifier.verify("smollm2:135m", Proof(steps=[foreign]), "x")
    finally:
        scorers.close()
