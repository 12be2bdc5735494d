"""Verifying on another node: a Client without the model file checks results through `score` tasks.

Real nodes in this test process, each with its own execution process running SmolLM2 (some
through a wrapper of tests/support/dishonest_runtimes.py, chosen by the environment when that
node starts its execution process). The Client has no scorer of its own: every proof is
scored by a node other than the one that produced the result.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest

from node.daemon.server import NodeServer
from node.execution.process import TEST_WRAPPER_ENV
from node.publisher.client import Client, Task, VerificationFailedTaskError
from node.publisher.verification import ResultVerifier
from tests.support.cluster import dialable, node_settings, running_node
from tests.support.dishonest_runtimes import SWAPPED_MODEL_ENV
from tests.support.swapped_model import requantized_smollm2
from workflows import Simple

MODEL = "smollm2:135m"
PROMPT = "Describe a harbour at dawn."


@asynccontextmanager
async def _nodes(
    tmp_path: Path, wrappers: list[str | None], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[list[NodeServer]]:
    """Nodes started one by one, node i's execution process run through `wrappers[i]` (None: honest)."""
    async with AsyncExitStack() as stack:
        servers = []
        for i, wrapper in enumerate(wrappers):
            if wrapper is None:
                monkeypatch.delenv(TEST_WRAPPER_ENV, raising=False)
            else:
                monkeypatch.setenv(TEST_WRAPPER_ENV, f"tests.support.dishonest_runtimes:{wrapper}")
            servers.append(await stack.enter_async_context(running_node(node_settings(tmp_path / f"node{i}"))))
        monkeypatch.delenv(TEST_WRAPPER_ENV, raising=False)
        yield servers


async def _client_seeing(servers: list[NodeServer], stack: AsyncExitStack) -> Client:
    """A Client without any model file, once it has every node's heartbeat."""
    verifier = ResultVerifier(1.0, lambda name: None)
    client = await stack.enter_async_context(Client(peers=[dialable(s) for s in servers], verifier=verifier))
    addresses = {s.running.identity.address for s in servers}
    for _ in range(300):
        if addresses <= {n.address for n in client.nodes.live()}:
            return client
        await asyncio.sleep(0.1)
    raise AssertionError("the client never saw every node's heartbeat")


async def _run_on(client: Client, producer: NodeServer) -> object:
    task = Task(
        workflow=Simple().workflow(prompt=PROMPT, max_tokens=32),
        models=[MODEL],
        nodes=[producer.running.identity.address],
    )
    try:
        return await client.execute(task, timeout=180)
    except VerificationFailedTaskError as exc:
        return exc


@pytest.mark.slow
async def test_an_honest_result_is_verified_by_another_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with _nodes(tmp_path, [None, None], monkeypatch) as (producer, scorer), AsyncExitStack() as stack:
        client = await _client_seeing([producer, scorer], stack)
        result = await _run_on(client, producer)
        assert not isinstance(result, Exception), result
        assert result.verified is True  # type: ignore[attr-defined]
        assert (
            client.reputation.view(scorer.running.identity.address).scored > 0.5
        )  # the score task ran there (counts decay; kept apart from answered generations)
        assert client.reputation.view(producer.running.identity.address).scored == 0  # never scored its own work
        assert client.reputation.view(producer.running.identity.address).verify_passed == 1


@pytest.mark.slow
async def test_a_swapped_model_is_caught_by_remote_scorers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SWAPPED_MODEL_ENV, str(requantized_smollm2(tmp_path)))
    async with (
        _nodes(tmp_path, ["swapped_model", None, None], monkeypatch) as (producer, *scorers),
        AsyncExitStack() as stack,
    ):
        client = await _client_seeing([producer, *scorers], stack)
        result = await _run_on(client, producer)
        assert isinstance(result, VerificationFailedTaskError), result
        assert "log-probabilit" in result.reason or "best token" in result.reason
        assert client.reputation.banned(producer.running.identity.address)
        # The failure was confirmed: both other nodes scored it.
        assert all(client.reputation.view(s.running.identity.address).scored > 0.5 for s in scorers)


@pytest.mark.slow
async def test_a_proof_of_another_prompt_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with (
        _nodes(tmp_path, ["different_prompt", None], monkeypatch) as (producer, scorer),
        AsyncExitStack() as stack,
    ):
        client = await _client_seeing([producer, scorer], stack)
        result = await _run_on(client, producer)
        assert isinstance(result, VerificationFailedTaskError), result
        assert "does not hold the task's messages" in result.reason


@pytest.mark.slow
async def test_a_lying_scorer_cannot_get_an_honest_node_banned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with (
        _nodes(tmp_path, [None, "lying_scorer", None], monkeypatch) as (producer, *scorers),
        AsyncExitStack() as stack,
    ):
        client = await _client_seeing([producer, *scorers], stack)
        result = await _run_on(client, producer)
        # The honest scorer passes it (verified) or contradicts the liar (left unverified): never a failure.
        assert not isinstance(result, Exception), result
        assert result.verified in (True, None)  # type: ignore[attr-defined]
        assert not client.reputation.banned(producer.running.identity.address)
