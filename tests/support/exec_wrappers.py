"""Test-only backends for execution processes (COMPUTE_NODE_TEST_EXEC_WRAPPER=tests.support.exec_wrappers:NAME).

Workflows cannot run code, so tests reach a runaway or crashing runtime through
this wrapper around the real model: a prompt holding a marker misbehaves on purpose.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import llama_cpp

from models.requests import EmbeddingRequest, Generation, GenerationRequest

SPIN = "#spin"  # a CPU loop that never yields and ignores cancellation
BOMB = "#bomb"  # allocates (and touches) memory without bound
GRAMMAR_CRASH = "#grammar-crash"  # a grammar sampler handed a token it cannot hold: llama.cpp aborts


class Misbehaving:
    """The real model, except for prompts with a marker."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.name = model.name

    @property
    def parallel(self) -> int:
        return self._model.parallel

    @property
    def slots_free(self) -> int:
        return self._model.slots_free

    @property
    def queued(self) -> int:
        return self._model.queued

    async def generate(self, request: GenerationRequest) -> Generation:
        text = request.messages[-1].content or ""
        if SPIN in text:
            while True:
                pass
        if BOMB in text:
            hog = []
            while True:
                hog.append(b"x" * (8 * 1024 * 1024))
                time.sleep(0.02)
        if GRAMMAR_CRASH in text:
            _crash_in_grammar(self._model)
        return await self._model.generate(request)

    async def embed(self, request: EmbeddingRequest) -> list[list[float]]:
        return await self._model.embed(request)

    async def close(self) -> None:
        await self._model.close()


def _crash_in_grammar(model: Any) -> None:
    vocab = model._vocab._model.vocab
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, b'root ::= "yes" | "no"', b"root")
    llama_cpp.llama_sampler_accept(sampler, 2**30)  # std::out_of_range in llama_grammar_accept_impl: abort


def misbehave(model: Any) -> Misbehaving:
    return Misbehaving(model)


def crash_at_start(model: Any) -> Any:
    """A model whose name holds "crash" dies while loading, as llama.cpp's AMX path does on some hosts."""
    if "crash" in model.name:
        os.kill(os.getpid(), signal.SIGSEGV)
    return model
