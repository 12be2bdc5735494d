"""Per-sequence sampling for the batched runtime: one llama.cpp sampler chain per request.

The chain mirrors what `llama_cpp.Llama.create_completion` builds with
repeat_penalty 1.0 and its default top-k/top-p/min-p, so a request samples as
it would through llama-cpp-python's high-level API:
  [end-token mask (ignore_eos)] -> greedy                          (temperature 0)
  [end-token mask (ignore_eos)] -> top_k 40 -> typical 1.0 ->
      top_p 0.95 -> min_p 0.05 -> temp -> dist(seed)                (temperature > 0)
A grammar (from a JSON schema or a regex, see models.grammar) is kept beside the
chain and checked lazily (see SequenceSampler).

`StopText` collects a sequence's output bytes and finds its stop strings.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import llama_cpp
import numpy as np

from models.grammar import GrammarError, check_gbnf, json_schema_to_gbnf, regex_to_gbnf
from models.requests import GenerationRequest, ModelError

__all__ = ["Grammar", "GrammarError", "SamplingSettings", "SequenceSampler", "StopText", "token_piece"]

# The sampling constants create_completion uses by default.
_TOP_K, _TYPICAL_P, _TOP_P, _MIN_P, _MIN_KEEP = 40, 1.0, 0.95, 0.05, 1


@dataclass(frozen=True)
class Grammar:
    """A GBNF grammar whose rule `root` is the start (checked again before llama.cpp sees it)."""

    gbnf: str

    @classmethod
    def for_request(cls, request: GenerationRequest) -> Grammar | None:
        """The grammar constraining `request`, if any; GrammarError names a problem in it.

        The regex (matched as a whole) takes precedence over the JSON schema (Gemini's upper-case form too).
        """
        if request.json_schema is None and request.regex is None:
            return None
        if request.ignore_eos:
            raise ModelError("ignore_eos cannot be combined with json_schema or regex")
        if request.regex is not None:
            return cls(gbnf=regex_to_gbnf(request.regex))
        assert request.json_schema is not None
        return cls(gbnf=json_schema_to_gbnf(request.json_schema))


@dataclass(frozen=True)
class SamplingSettings:
    """How one sequence picks its next token."""

    temperature: float
    seed: int | None
    grammar: Grammar | None
    # Tokens forbidden outright (end-of-generation tokens when ignore_eos).
    banned_tokens: tuple[int, ...] = ()


# llama_token_data as numpy sees it: a full-vocabulary candidate array is filled without a Python loop.
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
assert _TOKEN_DATA.itemsize == ctypes.sizeof(llama_cpp.llama_token_data)


class SequenceSampler:
    """A llama.cpp sampler chain owned by one sequence. Use only on the context's thread.

    A grammar is checked lazily, as llama.cpp's own common sampler does: the chain picks a
    token from the unconstrained logits, and only when the grammar refuses it is the
    full vocabulary masked by the grammar and the token picked again. Masking every
    token costs milliseconds per step on a large vocabulary; checking one costs microseconds.
    At temperature 0 both give the same token.
    """

    def __init__(self, vocab: llama_cpp.llama_vocab_p, n_vocab: int, settings: SamplingSettings) -> None:
        self._chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        self._grammar: llama_cpp.llama_sampler_p | None = None
        self._n_vocab = n_vocab
        self._one = (llama_cpp.llama_token_data * 1)()
        self._candidates: np.ndarray | None = None  # allocated on the first refused token
        try:
            self._build(vocab, n_vocab, settings)
        except BaseException:
            self.close()
            raise

    def _add(self, sampler: llama_cpp.llama_sampler_p | None, what: str) -> None:
        if not sampler:
            raise GrammarError(f"llama.cpp could not create the {what} sampler")
        llama_cpp.llama_sampler_chain_add(self._chain, sampler)

    def _build(self, vocab: llama_cpp.llama_vocab_p, n_vocab: int, settings: SamplingSettings) -> None:
        if settings.banned_tokens:
            biases = (llama_cpp.llama_logit_bias * len(settings.banned_tokens))()
            for i, token in enumerate(settings.banned_tokens):
                biases[i].token = token  # type: ignore[assignment]
                biases[i].bias = float("-inf")
            # llama.cpp copies the array, so `biases` may go out of scope.
            self._add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(biases), biases), "logit bias")
        if settings.grammar is not None:
            gbnf = check_gbnf(settings.grammar.gbnf)  # llama.cpp's parser can abort the process
            self._grammar = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
            if not self._grammar:
                raise GrammarError("llama.cpp could not create the grammar sampler")
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
        """Sample (and accept) the next token from the logits of batch position `output_index`."""
        token = int(llama_cpp.llama_sampler_sample(self._chain, ctx, output_index))
        if self._grammar is None:
            return token
        if not self._allowed(token):
            token = self._constrained(ctx, output_index)
        llama_cpp.llama_sampler_accept(self._grammar, token)
        return token

    def _allowed(self, token: int) -> bool:
        """Whether the grammar accepts `token` next (it is offered alone)."""
        assert self._grammar is not None
        self._one[0].id, self._one[0].logit, self._one[0].p = token, 0.0, 0.0  # type: ignore[assignment]
        array = llama_cpp.llama_token_data_array(self._one, 1, -1, False)
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(array))
        return bool(self._one[0].logit != float("-inf"))

    def _constrained(self, ctx: llama_cpp.llama_context_p, output_index: int) -> int:
        """Pick again from the full vocabulary with the grammar's mask applied first."""
        assert self._grammar is not None
        if self._candidates is None:
            self._candidates = np.empty(self._n_vocab, dtype=_TOKEN_DATA)
        candidates = self._candidates
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, output_index), shape=(self._n_vocab,))
        candidates["id"] = np.arange(self._n_vocab, dtype=np.int32)
        candidates["logit"] = logits
        candidates["p"] = 0.0
        data = candidates.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data))
        array = llama_cpp.llama_token_data_array(data, self._n_vocab, -1, False)
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(array))
        llama_cpp.llama_sampler_apply(self._chain, ctypes.byref(array))
        if array.selected < 0:
            raise GrammarError("the grammar allows no token here")
        return int(candidates["id"][array.selected])

    def close(self) -> None:
        """Free the chain, the grammar and every sampler in them."""
        if self._chain:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
        if self._grammar:
            llama_cpp.llama_sampler_free(self._grammar)
            self._grammar = None


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
