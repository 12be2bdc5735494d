"""`ModelVocab` on a loaded model gives what llama-cpp-python's vocabulary-only `Llama` gives."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import pytest

from models.llama_open import open_vocab
from models.requests import ModelClosedError
from models.vocab import ModelVocab
from tests.support.model_file import SMOLLM2

ROOT = Path(__file__).resolve().parents[3]

TEXTS = [
    "",
    "hello world",
    "<|im_start|>user\nWhat is 2+2? ünïcödé 🚀<|im_end|>\n<|im_start|>assistant\n",
    "  leading spaces and a tab\t" * 40,
]


@pytest.fixture(scope="module")
def loaded() -> Iterator[llama_cpp.llama_model_p]:
    params = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(str(SMOLLM2).encode(), params)
    assert model
    yield model
    llama_cpp.llama_model_free(model)


@pytest.fixture(scope="module")
def reference() -> Iterator[llama_cpp.Llama]:
    vocab = open_vocab(SMOLLM2)
    yield vocab
    vocab.close()


@pytest.mark.parametrize("special", [False, True])
@pytest.mark.parametrize("add_bos", [False, True])
def test_tokens_and_text_match_llama_cpp_pythons(
    loaded: llama_cpp.llama_model_p, reference: llama_cpp.Llama, add_bos: bool, special: bool
) -> None:
    vocab = ModelVocab("smollm2", loaded)
    for text in TEXTS:
        tokens = vocab.tokenize(text.encode(), add_bos=add_bos, special=special)
        assert tokens == reference.tokenize(text.encode(), add_bos=add_bos, special=special)
        assert vocab.detokenize(tokens, special=special) == reference.detokenize(tokens, special=special)


def test_header_and_special_tokens_match(loaded: llama_cpp.llama_model_p, reference: llama_cpp.Llama) -> None:
    vocab = ModelVocab("smollm2", loaded)
    assert vocab.metadata == reference.metadata
    assert "tokenizer.chat_template" in vocab.metadata
    assert (vocab.n_vocab(), vocab.token_bos(), vocab.token_eos()) == (
        reference.n_vocab(),
        reference.token_bos(),
        reference.token_eos(),
    )


def test_a_closed_vocab_refuses_calls(loaded: llama_cpp.llama_model_p) -> None:
    vocab = ModelVocab("smollm2", loaded)
    vocab.close()
    with pytest.raises(ModelClosedError, match="smollm2 is closed"):
        vocab.tokenize(b"hello", add_bos=False, special=False)
    with pytest.raises(ModelClosedError):
        vocab.detokenize([1, 2])


def test_a_tokenizer_open_says_nothing_on_stderr() -> None:
    """llama.cpp warns that a vocabulary-only context exceeds its training context (0): chatter, not a problem,
    kept at debug (the log router) so a CLI that checks a file's type (run-task --verify) prints no warning."""
    code = (
        "from models.llama_open import file_type; from node.ops.log import configure_logging; "
        f"configure_logging('warning', 'console'); print(file_type(__import__('pathlib').Path({str(SMOLLM2)!r})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"  # Q4_1
    assert "n_ctx_train" not in done.stderr
