"""`RuntimeOptions`: how llama.cpp runs a local model (context, threads, GPU layers, batch, KV cache)."""

from __future__ import annotations

import os
from typing import Literal

import llama_cpp
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

FlashAttention = Literal["on", "off", "auto"]
KvCacheType = Literal["f16", "q8_0", "q4_0"]

# llama.cpp's ggml type of each KV cache type (bytes per element: models.gguf_file.KV_ELEMENT_BYTES).
_GGML_TYPES: dict[str, int] = {
    "f16": llama_cpp.GGML_TYPE_F16,
    "q8_0": llama_cpp.GGML_TYPE_Q8_0,
    "q4_0": llama_cpp.GGML_TYPE_Q4_0,
}


def flash_attention(value: object) -> object:
    """A boolean (older configs: `flash_attn = true`) as `on`/`off`; anything else unchanged."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return value


class RuntimeOptions(BaseModel):
    """How llama.cpp runs a model."""

    model_config = ConfigDict(extra="forbid")

    n_ctx: int = Field(default=2048, ge=64)
    # None: the cores this process may run on.
    n_threads: int | None = Field(default=None, ge=1)
    # None: all layers on the GPU when llama.cpp was built with one, else 0.
    n_gpu_layers: int | None = None
    flash_attn: FlashAttention = "off"
    # The type of the K and V caches; a quantized V cache needs flash attention in llama.cpp.
    kv_cache_type: KvCacheType = "f16"
    n_batch: int = Field(default=512, ge=1)
    # llama.cpp's extra buffer types (AMX, CPU weight repacking); see models/cpu.py.
    extra_buffers: bool = True

    _bool_flash_attn = field_validator("flash_attn", mode="before")(flash_attention)

    @model_validator(mode="after")
    def _quantized_cache_needs_flash_attention(self) -> RuntimeOptions:
        if self.kv_cache_type != "f16" and self.flash_attn == "off":
            raise ValueError(f"kv_cache_type {self.kv_cache_type} needs flash_attn on or auto (llama.cpp)")
        return self

    def threads(self) -> int:
        """The thread count to use."""
        return self.n_threads or len(os.sched_getaffinity(0))

    def gpu_layers(self) -> int:
        """The number of layers to offload (-1: all)."""
        if self.n_gpu_layers is not None:
            return self.n_gpu_layers
        return -1 if llama_cpp.llama_supports_gpu_offload() else 0

    def flash_attn_on(self) -> bool:
        """Whether generation runs with flash attention: `auto` is on where a GPU runs layers or the KV
        cache is quantized (llama.cpp needs it there), and off on a CPU with an f16 cache. On a CPU,
        one-token decode steps with flash attention slowed as the context grew on an Intel Xeon
        (Sapphire Rapids class: 1.6x slower at 256 tokens, 2.1x at 1,800) and were even on an AMD
        EPYC, while batched prompt evaluation gained 4-17% (README: benchmark 10)."""
        if self.flash_attn != "auto":
            return self.flash_attn == "on"
        return self.kv_cache_type != "f16" or self.gpu_layers() != 0

    def flash_attn_for_batches(self) -> bool:
        """Whether a context that only evaluates whole batches (re-scoring, embeddings) uses flash
        attention: unless the setting is `off`, since `auto` is about one-token decode steps and a
        batched pass is faster with it (a 300-token check: -13% at 1 thread)."""
        return self.flash_attn != "off"

    def flash_attn_type(self) -> int:
        """llama.cpp's `flash_attn_type` for this setting (`auto` resolved by `flash_attn_on`)."""
        if self.flash_attn_on():
            return int(llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED)
        return int(llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)

    def kv_ggml_type(self) -> int:
        """llama.cpp's `type_k`/`type_v` for this setting."""
        return _GGML_TYPES[self.kv_cache_type]
