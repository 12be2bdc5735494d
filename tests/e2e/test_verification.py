"""Verifiable results end to end: real nodes, honest or dishonest, and a Client that verifies every result.

Each node is a real node process part (in this test process) whose execution process runs
SmolLM2 through a test wrapper of tests/support/dishonest_runtimes.py: a fixed answer, a swapped
model (SmolLM2 requantized to Q4_0, served as `smollm2:135m`), or a generation that never
ends. The Client re-scores each proof with its own copy of the model file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from models.options import RuntimeOptions
from models.scoring import TokenScorer
from node.execution.process import TEST_WRAPPER_ENV
from node.publisher.client import Client, Task, TaskTimeoutError, VerificationFailedTaskError
from node.publisher.verification import ResultVerifier
from tests.support.cluster import dialable, node_settings, running_node
from tests.support.dishonest_runtimes import FIXED_TEXT, SWAPPED_MODEL_ENV
from tests.support.model_file import SMOLLM2
from tests.support.swapped_model import requantized_smollm2
from workflows import Simple

MODEL = "smollm2:135m"


@pytest.fixture(scope="module")
def scorer() -> Iterator[TokenScorer]:
    opened = TokenScorer(SMOLLM2, RuntimeOptions(n_ctx=1024, n_threads=1))
    yield opened
    opened.close()


async def _run_one(tmp_path: Path, scorer: TokenScorer, timeout: float) -> object:
    async with running_node(node_settings(tmp_path / "node")) as server:
        verifier = ResultVerifier(1.0, lambda name: scorer if name == MODEL else None)
        async with Client(peers=[dialable(server)], verifier=verifier) as client:
            workflow = Simple().workflow(prompt="Describe a harbour at dawn.", max_tokens=32)
            task = Task(workflow=workflow, models=[MODEL], nodes=[server.running.identity.address])
            try:
                return await client.execute(task, timeout=timeout)
            except (VerificationFailedTaskError, TaskTimeoutError) as exc:
                return exc


@pytest.mark.slow
async def test_an_honest_nodes_result_is_verified(tmp_path: Path, scorer: TokenScorer) -> None:
    result = await _run_one(tmp_path, scorer, timeout=120)
    assert not isinstance(result, Exception), result
    assert result.verified is True and result.proof is not None and result.text  # type: ignore[attr-defined]


@pytest.mark.slow
async def test_a_fixed_string_node_fails_verification(
    tmp_path: Path, scorer: TokenScorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TEST_WRAPPER_ENV, "tests.support.dishonest_runtimes:fixed_string")
    result = await _run_one(tmp_path, scorer, timeout=120)
    assert isinstance(result, VerificationFailedTaskError), result
    assert "no generation to check" in result.reason
    assert FIXED_TEXT not in str(result)  # the error names the rule, not the answer


@pytest.mark.slow
async def test_a_swapped_model_node_fails_verification(
    tmp_path: Path, scorer: TokenScorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TEST_WRAPPER_ENV, "tests.support.dishonest_runtimes:swapped_model")
    monkeypatch.setenv(SWAPPED_MODEL_ENV, str(requantized_smollm2(tmp_path)))
    result = await _run_one(tmp_path, scorer, timeout=120)
    assert isinstance(result, VerificationFailedTaskError), result
    assert "log-probabilit" in result.reason or "best token" in result.reason


@pytest.mark.slow
async def test_a_stalling_node_ends_in_a_timeout_not_a_verified_result(
    tmp_path: Path, scorer: TokenScorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TEST_WRAPPER_ENV, "tests.support.dishonest_runtimes:stalling")
    result = await _run_one(tmp_path, scorer, timeout=15)
    assert isinstance(result, TaskTimeoutError), result
