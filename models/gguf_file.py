"""Cheap checks on a model file before llama.cpp sees it, and what its header says it will cost.

llama.cpp's own errors for a bad file are terse ("failed to load model"), so the
obvious cases (missing, not a GGUF, larger than the memory left) are caught here
with messages that name the file and the problem. `kv_bytes_per_token` reads the
attention shape from the GGUF metadata (as llama.cpp reports it) for memory budgets.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from models.requests import ModelLoadError

GGUF_MAGIC = b"GGUF"
# Headroom over the file size for the KV cache, compute buffers and the process.
_MEMORY_HEADROOM_BYTES = 256 * 1024 * 1024
# Bytes per K/V cache element of each cache type (q8_0: 34-byte blocks of 32 values, q4_0: 18-byte blocks).
KV_ELEMENT_BYTES: dict[str, float] = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}


def is_gguf(path: Path) -> bool:
    """True when the file starts with the GGUF magic bytes."""
    with path.open("rb") as handle:
        return handle.read(4) == GGUF_MAGIC


def available_memory_bytes() -> int | None:
    """Memory the kernel says is available to new allocations (MemAvailable), if known."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def check_model_file(path: Path, *, in_host_memory: bool = True) -> None:
    """Raise ModelLoadError naming `path` if it is missing, not a GGUF, or too large.

    `in_host_memory` is False when all layers go to a GPU, where host RAM is not
    the limit.
    """
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist")
    size = path.stat().st_size
    try:
        gguf = is_gguf(path)
    except OSError as exc:
        raise ModelLoadError(f"model file {path} cannot be read: {exc}") from exc
    if not gguf:
        raise ModelLoadError(f"model file {path} is not a GGUF file (bad magic bytes)")
    available = available_memory_bytes() if in_host_memory else None
    if available is not None and size + _MEMORY_HEADROOM_BYTES > available:
        raise ModelLoadError(
            f"model file {path} is too large: {size / 2**30:.1f} GiB "
            f"but only {available / 2**30:.1f} GiB of memory is available"
        )


def kv_bytes_per_token(metadata: Mapping[str, str], cache_type: str = "f16") -> int | None:
    """Bytes of K and V cache one token takes in every layer (of `cache_type`), from the GGUF metadata.

    `<arch>.attention.key_length`/`value_length` default to embedding_length / head_count,
    head_count_kv to head_count (no grouped-query attention). None when the header
    lacks the shape (an architecture llama.cpp describes differently).
    """
    arch = metadata.get("general.architecture", "")

    def number(key: str) -> int | None:
        value = metadata.get(f"{arch}.{key}", "")
        return int(value) if value.isdigit() else None

    layers, width, heads = number("block_count"), number("embedding_length"), number("attention.head_count")
    if layers is None or width is None:
        return None
    head_dim = width // heads if heads else width
    kv_heads = number("attention.head_count_kv") or heads or 1
    key_length = number("attention.key_length") or head_dim
    value_length = number("attention.value_length") or head_dim
    return int(layers * kv_heads * (key_length + value_length) * KV_ELEMENT_BYTES[cache_type])
