"""Proofs on the wire: sealed within a budget, opened with bounds, optional for old peers."""

from __future__ import annotations

import json
import zlib

import pytest

from node.wire.ecies import encrypt
from node.wire.identity import Identity
from node.wire.messages import ResultBody, TaskBody, encode_body
from node.wire.proof import MAX_PROOF_BYTES, Proof, ProofError, ProofGeneration, open_proof, seal_proof
from node.wire.results import Output, result_body

STATS = {"received_at": 1, "execution_started_at": 2, "execution_ended_at": 3, "published_at": 4}


def _step(n: int, offset: int = 0) -> ProofGeneration:
    return ProofGeneration(
        prompt_tokens=[1, 2, 3],
        tokens=[offset + i for i in range(n)],
        logprobs=[-0.123456789] * n,
        temperature=0.7,
        seed=5,
    )


def test_a_sealed_proof_opens_with_the_publishers_key_only() -> None:
    publisher, other = Identity.generate(), Identity.generate()
    sealed = seal_proof(Proof(steps=[_step(10)]), publisher.public_key_compressed.hex(), 1 << 20)
    assert sealed is not None
    opened = open_proof(publisher.secret, sealed)
    assert opened.steps[0].tokens == list(range(10))
    assert opened.steps[0].logprobs[0] == pytest.approx(-0.1235, abs=1e-9)  # rounded to 1e-4
    with pytest.raises(ProofError, match="does not open"):
        open_proof(other.secret, sealed)


def test_steps_are_dropped_oldest_first_to_fit_the_budget_and_counted() -> None:
    publisher = Identity.generate()
    key = publisher.public_key_compressed.hex()
    proof = Proof(steps=[_step(4000, offset=k * 7919) for k in range(4)])
    whole = seal_proof(proof, key, 1 << 22)
    assert whole is not None
    budget = len(whole) // 2
    sealed = seal_proof(proof, key, budget)
    assert sealed is not None and len(sealed) <= budget
    opened = open_proof(publisher.secret, sealed)
    assert 0 < len(opened.steps) < 4 and opened.omitted == 4 - len(opened.steps)
    assert opened.steps[-1].tokens[0] == 3 * 7919  # the last step is kept
    assert seal_proof(proof, key, 100) is None
    empty = seal_proof(proof, key, 600)  # room for no step: the proof says how many were left out
    assert empty is not None and open_proof(publisher.secret, empty).omitted == 4


def test_a_proof_that_inflates_past_the_bound_is_refused() -> None:
    publisher = Identity.generate()
    bomb = zlib.compress(b'{"steps": [' + b" " * (MAX_PROOF_BYTES + 10) + b"]}")
    with pytest.raises(ProofError, match="larger than"):
        open_proof(publisher.secret, encrypt(publisher.public_key_compressed.hex(), bomb).hex())


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ({"steps": [{"promptTokens": [1], "tokens": [1, 2], "logprobs": [-1.0], "temperature": 0}]}, "differ in"),
        ({"steps": [{"promptTokens": [1], "tokens": [1], "logprobs": [0.5], "temperature": 0}]}, "above 0"),
        ({"steps": [{"promptTokens": [], "tokens": [], "logprobs": [], "temperature": 0}]}, "promptTokens"),
        ({"steps": [], "version": 9}, "version 9"),
        ({"steps": [{"promptTokens": [1], "tokens": [1], "logprobs": [-1.0], "temperature": 9}]}, "temperature"),
        ({"steps": [], "extra": 1}, "extra"),
    ],
)
def test_malformed_proofs_are_named(payload: dict[str, object], problem: str) -> None:
    publisher = Identity.generate()
    packed = zlib.compress(json.dumps(payload).encode())
    with pytest.raises(ProofError, match=problem):
        open_proof(publisher.secret, encrypt(publisher.public_key_compressed.hex(), packed).hex())


def test_the_fields_are_optional_and_absent_unless_used() -> None:
    publisher = Identity.generate()
    key = publisher.public_key_compressed.hex()
    plain = result_body("t1", "m", Output("hi", key, 1, 1), received_at_ns=1, started_at_ns=2, ended_at_ns=3)
    assert b'"proof"' not in encode_body(plain)
    proven = result_body(
        "t1", "m", Output("hi", key, 1, 1, Proof(steps=[_step(3)])), received_at_ns=1, started_at_ns=2, ended_at_ns=3
    )
    assert proven.proof is not None and open_proof(publisher.secret, proven.proof).steps[0].tokens == [0, 1, 2]
    task = {"taskId": "t", "deadline": 1, "input": {"workflow": {}, "model": ["m"]}, "publicKey": key}
    assert TaskBody.model_validate(task).proof is None
    assert TaskBody.model_validate({**task, "proof": True}).proof is True
    with pytest.raises(ValueError, match="no proof"):
        ResultBody.model_validate({"taskId": "t", "error": "x", "model": "m", "stats": STATS, "proof": "00"})
