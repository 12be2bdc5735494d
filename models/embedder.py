"""Sentence embeddings from a model file, in a separate llama.cpp context of its own.

The batched runtime's generation context is owned by its decode loop's thread,
so embeddings use their own context (created on first use, mean pooling, L2
normalised) on their own worker thread.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import llama_cpp

from models.llama_open import construct_llama
from models.options import RuntimeOptions
from models.requests import ModelError, ModelLoadError


class Embedder:
    """A lazily created embedding context for one model file."""

    def __init__(self, name: str, path: Path, options: RuntimeOptions) -> None:
        self.name = name
        self._path = path
        self._options = options
        self._llama: llama_cpp.Llama | None = None
        # One worker thread: the embedding context is only ever used from it.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llama-embed-{name}")

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """Mean-pooled, L2-normalised vectors, one per text."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._embed_sync, texts)

    def _open(self) -> llama_cpp.Llama:
        opts = self._options
        try:
            return construct_llama(
                self._path,
                extra_buffers=opts.extra_buffers,
                n_ctx=opts.n_ctx,
                n_batch=opts.n_batch,
                n_threads=opts.threads(),
                n_threads_batch=opts.threads(),
                n_gpu_layers=opts.gpu_layers(),
                flash_attn=opts.flash_attn_for_batches(),
                type_k=opts.kv_ggml_type(),
                type_v=opts.kv_ggml_type(),
                embedding=True,
                pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
            )
        except Exception as exc:
            raise ModelLoadError(f"llama.cpp could not load model file {self._path} for embeddings: {exc}") from exc

    def _embed_sync(self, texts: list[str]) -> list[list[float]]:
        try:
            if self._llama is None:
                self._llama = self._open()
            vectors = self._llama.embed(texts, normalize=True, truncate=True)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"embedding on model {self.name} failed: {exc}") from exc
        return [[float(x) for x in v] for v in vectors]

    async def close(self) -> None:
        """Free the embedding context and end its thread."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._close_sync)
        self._thread.shutdown(wait=False)

    def _close_sync(self) -> None:
        if self._llama is not None:
            self._llama.close()
            self._llama = None
