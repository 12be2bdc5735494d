"""`TokenPieces` on SmolLM2's real vocabulary: the same bytes and end flags llama.cpp gives, asked once per token."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator

import llama_cpp
import pytest

from models.token_pieces import TokenPieces
from tests.support.model_file import smollm2_vocab


@pytest.fixture(scope="module")
def vocab() -> Iterator[llama_cpp.llama_vocab_p]:
    with smollm2_vocab() as vocab:
        yield vocab


def _piece(vocab: llama_cpp.llama_vocab_p, token: int) -> bytes:
    buffer = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, False)
    assert n >= 0
    return buffer.raw[:n]


def _tokens(vocab: llama_cpp.llama_vocab_p, text: bytes) -> list[int]:
    out = (llama_cpp.llama_token * 256)()
    n = llama_cpp.llama_tokenize(vocab, text, len(text), out, len(out), False, True)
    assert n > 0
    return list(out[:n])


def test_pieces_and_end_flags_match_llama_cpp_on_every_call(vocab: llama_cpp.llama_vocab_p) -> None:
    pieces = TokenPieces(vocab)
    tokens = _tokens(vocab, "Hello wörld 🚀 <|im_end|> again".encode())
    eos = llama_cpp.llama_vocab_eos(vocab)
    checked = [*tokens, eos, 0, llama_cpp.llama_vocab_n_tokens(vocab) - 1]
    for _ in range(2):  # the second pass answers from the cache: still the same
        for token in checked:
            assert pieces.piece(token) == _piece(vocab, token)
            assert pieces.ends_generation(token) is bool(llama_cpp.llama_vocab_is_eog(vocab, token))
    assert pieces.ends_generation(eos)
    assert not pieces.ends_generation(tokens[0])
    assert b"".join(pieces.piece(t) for t in tokens if not pieces.ends_generation(t)).startswith(b"Hello w\xc3\xb6rld")


def test_the_longest_piece_comes_whole(vocab: llama_cpp.llama_vocab_p) -> None:
    pieces = TokenPieces(vocab)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    longest = max(range(n_vocab), key=lambda t: len(_piece(vocab, t)))
    assert len(_piece(vocab, longest)) > 64  # past TokenPieces' buffer: read again with one of its size
    assert pieces.piece(longest) == _piece(vocab, longest)
