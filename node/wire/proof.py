"""Proofs: what a node returns, encrypted next to its result, so a publisher can re-score its work.

A task that asks for one (`TaskBody.proof`) gets, in `ResultBody.proof`, the hex ECIES of
zlib-compressed JSON of a `Proof`: for every generation of the workflow's steps, the exact
prompt token ids it ran on, the token ids it chose, each one's log-probability under the
model and the sampling settings. docs/VERIFICATION.md has the design and threat model.

`seal_proof` keeps the proof within a byte budget: generations are dropped oldest first (and
counted in `omitted`) until it fits.
"""

from __future__ import annotations

import json
import zlib

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from node.wire.ecies import decrypt, encrypt

PROOF_VERSION = 1
MAX_PROOF_STEPS = 256
MAX_PROOF_TOKENS = 1 << 17  # per list; far beyond any context a node serves
MAX_PROOF_BYTES = 4 << 20  # decompressed JSON: a zlib bomb stops here
LOGPROB_DECIMALS = 4  # 1e-4 nats: far below the verifier's tolerance


class ProofError(Exception):
    """A proof could not be opened or is malformed; str(e) names the problem."""


class _ProofWire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, allow_inf_nan=False, extra="forbid")


class ProofGeneration(_ProofWire):
    """One generation: its prompt tokens, chosen tokens and their log-probabilities, its sampling."""

    prompt_tokens: list[int] = Field(min_length=1, max_length=MAX_PROOF_TOKENS)
    tokens: list[int] = Field(max_length=MAX_PROOF_TOKENS)
    logprobs: list[float] = Field(max_length=MAX_PROOF_TOKENS)
    temperature: float = Field(ge=0.0, le=5.0)
    seed: int | None = None
    constrained: bool = False
    ignore_eos: bool = False

    @model_validator(mode="after")
    def _aligned(self) -> ProofGeneration:
        if len(self.tokens) != len(self.logprobs):
            raise ValueError("tokens and logprobs differ in length")
        if any(lp > 0.0 for lp in self.logprobs):
            raise ValueError("a log-probability is above 0")
        return self


class Proof(_ProofWire):
    """Every generation of a task, in order, under the wire field `steps` (`omitted`: earlier ones left out to fit)."""

    version: int = PROOF_VERSION
    steps: list[ProofGeneration] = Field(max_length=MAX_PROOF_STEPS)
    omitted: int = Field(default=0, ge=0)


def _pack(proof: Proof) -> bytes:
    return zlib.compress(proof.model_dump_json(by_alias=True, exclude_defaults=False).encode("utf-8"), 6)


def seal_proof(proof: Proof, public_key: str, budget_hex_chars: int) -> str | None:
    """The proof as hex ECIES within `budget_hex_chars`, dropping the oldest steps as needed.

    With every step dropped it is still sent (empty, `omitted` counting them); None only when not even that fits.
    """
    steps = [s.model_copy(update={"logprobs": [round(lp, LOGPROB_DECIMALS) for lp in s.logprobs]}) for s in proof.steps]
    omitted = proof.omitted
    while True:
        packed = _pack(Proof(steps=steps, omitted=omitted))
        if 2 * (len(packed) + 97) <= budget_hex_chars:  # ECIES adds 97 bytes; hex doubles
            return encrypt(public_key, packed).hex()
        if not steps:
            return None
        steps, omitted = steps[1:], omitted + 1


def open_proof(secret: bytes, ciphertext_hex: str) -> Proof:
    """Decrypt, decompress (bounded) and validate a proof. ProofError names what is wrong."""
    try:
        packed = decrypt(secret, bytes.fromhex(ciphertext_hex))
        inflater = zlib.decompressobj()
        raw = inflater.decompress(packed, MAX_PROOF_BYTES)
        if inflater.unconsumed_tail:
            raise ProofError(f"proof is larger than {MAX_PROOF_BYTES} bytes decompressed")
        proof = Proof.model_validate(json.loads(raw))
    except ProofError:
        raise
    except Exception as exc:  # noqa: BLE001 - any malformation is the node's fault, named
        raise ProofError(f"proof does not open: {type(exc).__name__}: {str(exc)[:200]}") from None
    if proof.version != PROOF_VERSION:
        raise ProofError(f"proof version {proof.version} is not {PROOF_VERSION}")
    return proof
