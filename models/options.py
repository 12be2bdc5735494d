"""`RuntimeOptions`: how llama.cpp runs a local model (context, threads, GPU layers, batch)."""

from __future__ import annotations

import os

import llama_cpp
from pydantic import BaseModel, ConfigDict, Field


class RuntimeOptions(BaseModel):
    """How llama.cpp runs a model."""

    model_config = ConfigDict(extra="forbid")

    n_ctx: int = Field(default=2048, ge=64)
    # None: the cores this process may run on.
    n_threads: int | None = Field(default=None, ge=1)
    # None: all layers on the GPU when llama.cpp was built with one, else 0.
    n_gpu_layers: int | None = None
    flash_attn: bool = False
    n_batch: int = Field(default=512, ge=1)
    # llama.cpp's extra buffer types (AMX, CPU weight repacking); see models/cpu.py.
    extra_buffers: bool = True

    def threads(self) -> int:
        """The thread count to use."""
        return self.n_threads or len(os.sched_getaffinity(0))

    def gpu_layers(self) -> int:
        """The number of layers to offload (-1: all)."""
        if self.n_gpu_layers is not None:
            return self.n_gpu_layers
        return -1 if llama_cpp.llama_supports_gpu_offload() else 0
