"""What the decode loop asks of the vocabulary for every generated token, asked of llama.cpp once per token id.

Each step the decode loop needs, per sampled token, its text bytes (stop strings, the
result's text) and whether it ends the generation. Both are fixed by the model's
vocabulary, and the two ctypes calls per token cost more than the dictionary lookups that
replace them (~8 us a token here; benchmarks/PROFILE-generation.md). `TokenPieces`
remembers each answer per token id.
The cache is bounded by the vocabulary (at most one entry per token id: a few MiB
for a 50k vocabulary, usually far less, since a generation reuses its tokens).
"""

from __future__ import annotations

import ctypes

import llama_cpp

from models.sampling import token_piece

_PIECE_BYTES = 64  # a larger piece is read again with a buffer of its size (token_piece)


class TokenPieces:
    """A vocabulary's token bytes and end-of-generation flags, looked up once per token id.

    Use on the decode loop's thread only (the buffer and the dictionaries are not locked).
    """

    def __init__(self, vocab: llama_cpp.llama_vocab_p) -> None:
        self._vocab = vocab
        self._buffer = ctypes.create_string_buffer(_PIECE_BYTES)
        self._pieces: dict[int, bytes] = {}
        self._ends: dict[int, bool] = {}

    def piece(self, token: int) -> bytes:
        """The bytes of `token` as text (special tokens render as nothing, as in create_completion)."""
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = token_piece(self._vocab, token, self._buffer)
        return piece

    def ends_generation(self, token: int) -> bool:
        """Whether `token` is an end-of-generation token of the vocabulary."""
        ends = self._ends.get(token)
        if ends is None:
            ends = self._ends[token] = bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))
        return ends
