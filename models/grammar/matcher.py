"""`Constraint`: one request's place in its grammar, on a model's vocabulary.

Built off the decode thread (compiling a grammar on a 49k-token vocabulary can take
milliseconds), then used only on it: `allows` checks one token (microseconds),
`allowed_tokens` computes the full mask (bounded by the step fuel of
`grammar_limits`), `consume` advances. A step that runs out of fuel puts the matcher
in an error state, which every method turns into a GrammarError for this request only.
"""

from __future__ import annotations

import ctypes
import warnings
from collections.abc import Sequence

import llguidance
import numpy as np

from models.grammar.compile import grammar_limits
from models.grammar.errors import GrammarError


def vocab_tokenizer(vocab: ctypes.c_void_p, end_tokens: Sequence[int]) -> llguidance.LLTokenizer:
    """llguidance's view of a llama.cpp vocabulary (every token's bytes); `end_tokens` end a generation.

    About a second for a 50k vocabulary: build it once per model. `vocab` must outlive it.
    """
    from llguidance.llamacpp import lltokenizer_from_vocab  # imports llama_cpp

    with warnings.catch_warnings():  # it calls llama_token_get_attr, deprecated, once per token
        warnings.simplefilter("ignore", DeprecationWarning)
        return lltokenizer_from_vocab(vocab, eos_token=list(end_tokens))  # type: ignore[arg-type]


class Constraint:
    """The grammar state of one generating sequence. Not thread-safe: one thread at a time."""

    def __init__(self, tokenizer: llguidance.LLTokenizer, grammar: str) -> None:
        self._matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0, limits=grammar_limits())
        self._check("cannot be compiled")
        self._n_vocab = tokenizer.vocab_size
        self._end_tokens = frozenset(tokenizer.eos_tokens)
        self._mask = np.zeros((self._n_vocab + 31) // 32, dtype=np.int32)

    def _check(self, doing: str) -> None:
        if self._matcher.is_error():
            # The error text names the limit or the refused token; it never quotes task data.
            reason = self._matcher.get_error().splitlines()[0][:200] if self._matcher.get_error() else "error"
            raise GrammarError(f"the constraint {doing}: {reason}")

    def allows(self, token: int) -> bool:
        """Whether the grammar accepts `token` next (an end token: whether the text so far is complete)."""
        if token in self._end_tokens:  # validate_tokens refuses them once the grammar is stopped
            return self._matcher.is_accepting()
        return self._matcher.validate_tokens([token]) == 1

    def allowed_tokens(self) -> np.ndarray:
        """The ids of every token the grammar accepts next (int64, ascending)."""
        self._matcher.unsafe_compute_mask_ptr(self._mask.ctypes.data, self._mask.nbytes)
        self._check("is too costly at this step")
        bits = np.unpackbits(self._mask.view(np.uint8), bitorder="little")[: self._n_vocab]
        return np.flatnonzero(bits)

    def consume(self, token: int) -> None:
        """Advance past `token` (one `allows` or `allowed_tokens` said it may come next)."""
        if not self._matcher.consume_token(token):
            self._check("refused a token")
            raise GrammarError("the constraint refused a token")
