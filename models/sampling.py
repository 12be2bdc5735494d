"""Per-sequence sampling for the batched runtime: one llama.cpp sampler chain per request.

The chain mirrors what `llama_cpp.Llama.create_completion` builds with
repeat_penalty 1.0 and its default top-k/top-p/min-p, so a request samples as
it would through llama-cpp-python's high-level API:
  [end-token mask (ignore_eos)] -> greedy                          (temperature 0)
  [end-token mask (ignore_eos)] -> top_k 40 -> typical 1.0 ->
      top_p 0.95 -> min_p 0.05 -> temp -> dist(seed)                (temperature > 0)
At temperature 0 the greedy pick is numpy's argmax over the logits row: the same token,
without the chain's full-vocabulary candidate array. A constraint (a JSON schema or a
regex compiled by llguidance, see models.grammar) is kept beside the chain and checked
lazily (see SequenceSampler).

`StopText` collects a sequence's output bytes and finds its stop strings.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import TYPE_CHECKING

import llama_cpp
import numpy as np

from models.grammar import GrammarError
from models.requests import ModelError

if TYPE_CHECKING:  # llguidance (its matcher) is loaded with the first constrained request
    from models.grammar.matcher import Constraint

__all__ = ["GrammarError", "SamplingSettings", "SequenceSampler", "StopText", "token_piece"]

# The sampling constants create_completion uses by default.
_TOP_K, _TYPICAL_P, _TOP_P, _MIN_P, _MIN_KEEP = 40, 1.0, 0.95, 0.05, 1


@dataclass(frozen=True)
class SamplingSettings:
    """How one sequence picks its next token."""

    temperature: float
    seed: int | None
    # The request's own grammar state (used, and advanced, by its sampler only).
    constraint: Constraint | None
    # Tokens forbidden outright (end-of-generation tokens when ignore_eos).
    banned_tokens: tuple[int, ...] = ()


# llama_token_data as numpy sees it: a full-vocabulary candidate array is filled without a Python loop.
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
assert _TOKEN_DATA.itemsize == ctypes.sizeof(llama_cpp.llama_token_data)


class SequenceSampler:
    """A llama.cpp sampler chain owned by one sequence. Use only on the context's thread.

    A constraint is checked lazily, as llama.cpp's own common sampler does with grammars:
    the chain picks a token from the unconstrained logits, and only when the constraint
    refuses it are the logits cut down to the tokens the constraint allows and the token
    picked again. Checking one token costs microseconds; a full mask, a fraction of a
    millisecond on a 49k vocabulary. At temperature 0 both give the same token.
    """

    def __init__(self, n_vocab: int, settings: SamplingSettings) -> None:
        self._chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        self._constraint = settings.constraint
        self._n_vocab = n_vocab
        # Greedy picks the largest logit: numpy's argmax over the context's logits row does it
        # without the chain's copy of the whole vocabulary into a candidate array (~0.1 ms a token
        # here). A banned token on top goes to the chain, which masks it.
        self._greedy = settings.temperature == 0.0
        self._banned = frozenset(settings.banned_tokens)
        self._logits_row = ctypes.c_float * n_vocab
        try:
            self._build(n_vocab, settings)
        except BaseException:
            self.close()
            raise

    def _add(self, sampler: llama_cpp.llama_sampler_p | None, what: str) -> None:
        if not sampler:
            raise ModelError(f"llama.cpp could not create the {what} sampler")
        llama_cpp.llama_sampler_chain_add(self._chain, sampler)

    def _build(self, n_vocab: int, settings: SamplingSettings) -> None:
        if settings.banned_tokens:
            biases = (llama_cpp.llama_logit_bias * len(settings.banned_tokens))()
            for i, token in enumerate(settings.banned_tokens):
                biases[i].token = token  # type: ignore[assignment]
                biases[i].bias = float("-inf")
            # llama.cpp copies the array, so `biases` may go out of scope.
            self._add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(biases), biases), "logit bias")
        if settings.temperature == 0.0:
            self._add(llama_cpp.llama_sampler_init_greedy(), "greedy")
            return
        seed = llama_cpp.LLAMA_DEFAULT_SEED if settings.seed is None else settings.seed & 0xFFFFFFFF
        self._add(llama_cpp.llama_sampler_init_top_k(_TOP_K), "top-k")
        self._add(llama_cpp.llama_sampler_init_typical(_TYPICAL_P, _MIN_KEEP), "typical")
        self._add(llama_cpp.llama_sampler_init_top_p(_TOP_P, _MIN_KEEP), "top-p")
        self._add(llama_cpp.llama_sampler_init_min_p(_MIN_P, _MIN_KEEP), "min-p")
        self._add(llama_cpp.llama_sampler_init_temp(settings.temperature), "temperature")
        self._add(llama_cpp.llama_sampler_init_dist(seed), "distribution")

    def sample(self, ctx: llama_cpp.llama_context_p, output_index: int) -> int:
        """Sample (and accept) the next token from the logits of batch position `output_index`.

        GrammarError when the constraint allows no token, or runs out of fuel, here.
        """
        token = self._argmax(ctx, output_index) if self._greedy else -1
        if token < 0 or token in self._banned:
            token = int(llama_cpp.llama_sampler_sample(self._chain, ctx, output_index))
        constraint = self._constraint
        if constraint is None:
            return token
        if not constraint.allows(token):
            token = self._constrained(constraint, ctx, output_index)
        constraint.consume(token)
        return token

    def _argmax(self, ctx: llama_cpp.llama_context_p, output_index: int) -> int:
        """The token with the largest logit (the first such, as llama.cpp's greedy sampler picks)."""
        address = ctypes.cast(llama_cpp.llama_get_logits_ith(ctx, output_index), ctypes.c_void_p).value
        if not address:  # no such row: the chain's own call reports it
            return -1
        return int(np.frombuffer(memoryview(self._logits_row.from_address(address)), dtype=np.float32).argmax())

    def _constrained(self, constraint: Constraint, ctx: llama_cpp.llama_context_p, output_index: int) -> int:
        """Pick again from the tokens the constraint allows, with their logits."""
        allowed = constraint.allowed_tokens()
        if allowed.size == 0:
            raise GrammarError("the constraint allows no token here")
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, output_index), shape=(self._n_vocab,))
        candidates = np.empty(allowed.size, dtype=_TOKEN_DATA)
        candidates["id"] = allowed
        candidates["logit"] = logits[allowed]
        candidates["p"] = 0.0
        data = candidates.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data))
        array = llama_cpp.llama_token_data_array(data, allowed.size, -1, False)
        llama_cpp.llama_sampler_apply(self._chain, ctypes.byref(array))
        if array.selected < 0:
            raise GrammarError("the constraint allows no token here")
        return int(candidates["id"][array.selected])

    def close(self) -> None:
        """Free the chain and every sampler in it."""
        if self._chain:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None


class StopText:
    """A sequence's generated bytes, watched for stop strings."""

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s.encode("utf-8") for s in stops if s]
        self._longest = max((len(s) for s in self._stops), default=0)
        self._data = bytearray()
        self._cut: int | None = None

    def add(self, piece: bytes) -> bool:
        """Append a token's bytes; True once a stop string has appeared."""
        start = max(0, len(self._data) - self._longest + 1)
        self._data += piece
        if self._stops and self._cut is None:
            window = bytes(self._data[start:])
            found = [window.find(s) for s in self._stops]
            hits = [i for i in found if i >= 0]
            if hits:
                self._cut = start + min(hits)
        return self._cut is not None

    def settled(self, *, final: bool = False) -> int:
        """How many output bytes no later token can remove: up to the stop string once found;
        else all but the longest tail that could still begin a stop string (all, when `final`)."""
        if self._cut is not None:
            return self._cut
        if final:
            return len(self._data)
        data = self._data
        for held in range(min(self._longest - 1, len(data)), 0, -1):
            tail = bytes(data[-held:])
            if any(stop.startswith(tail) for stop in self._stops):
                return len(data) - held
        return len(data)

    def span(self, start: int, end: int) -> bytes:
        """Output bytes `start` to `end` (a stop string included once found)."""
        return bytes(self._data[start:end])

    @property
    def text(self) -> str:
        """The output up to (not including) the first stop string; broken UTF-8 dropped."""
        data = self._data if self._cut is None else self._data[: self._cut]
        return bytes(data).decode("utf-8", errors="ignore")


def token_piece(vocab: llama_cpp.llama_vocab_p, token: int, buffer: ctypes.Array[ctypes.c_char]) -> bytes:
    """The bytes of one token as text (special tokens render as nothing, as in create_completion)."""
    n = llama_cpp.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, False)
    if n < 0:
        bigger = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, token, bigger, len(bigger), 0, False)
        return bigger.raw[:n]
    return buffer.raw[:n]
