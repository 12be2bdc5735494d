"""`ModelVocab`: the vocabulary and GGUF metadata of a model the decode loop loaded, for other threads.

A second, vocabulary-only open of the file (what `llama_cpp.Llama(vocab_only=True)`
does) costs its own copy of the vocabulary: ~17 MiB and ~0.15 s on SmolLM2's 49k
tokens. Tokenizing only reads a llama.cpp vocabulary (llama-server tokenizes in its
HTTP threads beside the decode the same way), so the model's own is used, under the
caller's lock. The decode loop frees the model when it ends: `close()` first, after
which every call raises ModelClosedError.
"""

from __future__ import annotations

import ctypes

import llama_cpp

from models.requests import ModelClosedError, ModelError

_PIECE_BYTES = 256


class ModelVocab:
    """Tokenize, detokenize and read the header of a loaded llama.cpp model (not thread-safe: lock it)."""

    def __init__(self, name: str, model: llama_cpp.llama_model_p) -> None:
        self._name = name
        self._model: llama_cpp.llama_model_p | None = model
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.metadata = _metadata(model)
        self._n_vocab: int = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self._piece = ctypes.create_string_buffer(_PIECE_BYTES)

    def _check_open(self) -> None:
        if self._model is None:
            raise ModelClosedError(f"model {self._name} is closed")

    def n_vocab(self) -> int:
        """The vocabulary's size."""
        return self._n_vocab

    def token_bos(self) -> int:
        """The beginning-of-sequence token."""
        return int(llama_cpp.llama_vocab_bos(self.vocab))

    def token_eos(self) -> int:
        """The end-of-sequence token."""
        return int(llama_cpp.llama_vocab_eos(self.vocab))

    def tokenize(self, text: bytes, add_bos: bool, special: bool) -> list[int]:
        """The tokens of `text` (as `llama_cpp.Llama.tokenize` gives them)."""
        self._check_open()
        capacity = len(text) + 8
        tokens = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(self.vocab, text, len(text), tokens, capacity, add_bos, special)
        if n < 0:  # more tokens than bytes (special tokens): -n is the count needed
            capacity = -n
            tokens = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(self.vocab, text, len(text), tokens, capacity, add_bos, special)
            if n < 0:
                raise ModelError(f"llama.cpp could not tokenize a text of {len(text)} bytes")
        return list(tokens[:n])

    def detokenize(self, tokens: list[int], special: bool = False) -> bytes:
        """The bytes of `tokens` (as `llama_cpp.Llama.detokenize` gives them)."""
        self._check_open()
        out = bytearray()
        for token in tokens:
            n = llama_cpp.llama_token_to_piece(self.vocab, token, self._piece, _PIECE_BYTES, 0, special)
            if n < 0:
                raise ModelError(f"token {token} is longer than {_PIECE_BYTES} bytes")
            out += self._piece.raw[:n]
        if tokens and tokens[0] == self.token_bos() and out[:1] == b" ":
            del out[:1]  # as llama-cpp-python: no leading space after a BOS token
        return bytes(out)

    def close(self) -> None:
        """Stop using the model (the decode loop frees it next)."""
        self._model = None


def _metadata(model: llama_cpp.llama_model_p) -> dict[str, str]:
    """The GGUF header's key/value pairs as strings (llama.cpp's rendering, as `Llama.metadata`)."""
    metadata: dict[str, str] = {}
    size = 1024
    buffer = ctypes.create_string_buffer(size)
    for i in range(llama_cpp.llama_model_meta_count(model)):
        values = []
        for read in (llama_cpp.llama_model_meta_key_by_index, llama_cpp.llama_model_meta_val_str_by_index):
            n = read(model, i, buffer, size)
            if n >= size:
                size = n + 1
                buffer = ctypes.create_string_buffer(size)
                n = read(model, i, buffer, size)
            values.append(buffer.value.decode("utf-8", errors="replace"))
        metadata[values[0]] = values[1]
    return metadata
