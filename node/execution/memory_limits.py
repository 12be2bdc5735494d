"""The execution process's memory guards when the operator sets none ("auto"): derived from the model.

What a model may hold is known once it is loaded: its file (mapped for generation
and again by the embedding context), and its KV cache, `n_ctx` tokens per slot
plus one embedding context, at the size the GGUF header gives per token and `kv_cache_type` (for a
remote engine: its answers in flight, each up to the byte cap). The RSS
limit is that with a margin (a quarter more, plus 512 MiB for the interpreter,
compute buffers and the tasks' own memory; plus 1 GiB of driver memory with GPU
offload). The address-space limit (CPU only: GPU drivers map huge ranges) is the
process's address space once loaded plus the RSS limit plus room for new threads,
so the RSS guard, which restarts the process, fires first for memory that is used,
and RLIMIT_AS fails a huge allocation at once, before it touches the machine.

This module loads llama.cpp (vocabulary-only reads of the GGUF headers): the
execution process imports it, the daemon never does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from config.settings import Settings
from models.gguf_file import kv_bytes_per_token
from models.llama_open import open_vocab
from node.execution.model_setup import model_store, runtime_options

log = structlog.get_logger("node.execution")

MIB = 1024 * 1024
MARGIN_FRACTION = 0.25
MARGIN_MB = 512
GPU_DRIVER_MB = 1024
THREAD_ADDRESS_SPACE_MB = 64  # a thread's stack reservation and its share of malloc arenas
REMOTE_ANSWER_COST = 4  # bytes held per byte of a remote engine's answer while it is read and parsed


@dataclass(frozen=True)
class MemoryLimits:
    """The limits one execution process runs under (None: none)."""

    max_rss_mb: int | None
    address_space_mb: int | None


def model_bytes(
    path: Path, kv_tokens: int, mappings: int, cache_type: str = "f16", metadata: Mapping[str, str] | None = None
) -> int:
    """The file (`mappings` times) and a KV cache of `kv_tokens` tokens of `cache_type`; the file
    size stands in for a KV shape the header does not give. `metadata`: the header, when the file
    is loaded already (else it is read here)."""
    size = path.stat().st_size
    if metadata is None:
        vocab = open_vocab(path)
        try:
            metadata = dict(vocab.metadata)
        finally:
            vocab.close()
    per_token = kv_bytes_per_token(metadata, cache_type)
    return size * mappings + (per_token * kv_tokens if per_token is not None else size)


def footprint_bytes(settings: Settings, model: str, parallel: int, metadata: Mapping[str, str] | None = None) -> int:
    """Bytes the model of this process may keep resident: a local GGUF's file and KV cache, or a
    remote engine's answers in flight; and a separate local embedding model's. `metadata`: the
    model's GGUF header when it is loaded already."""
    registry, store = model_store(settings)
    total = 0
    spec = registry.get(model)
    path = None if spec.is_remote else store.locate(spec)
    if spec.is_remote:
        from models.remote.endpoint import MAX_RESPONSE_BYTES  # its HTTP client only where a model is remote

        # Each request in flight may hold an answer up to the byte cap, and its parse (~4x).
        total += parallel * REMOTE_ANSWER_COST * MAX_RESPONSE_BYTES
    elif path is not None:
        # `parallel` slots of n_ctx, and the embedding context (one more n_ctx, another mapping).
        embeds_here = settings.embedding_model in (None, model)
        kv_tokens = settings.n_ctx * (parallel + embeds_here)
        total += model_bytes(path, kv_tokens, 1 + embeds_here, settings.kv_cache_type, metadata)
    if settings.embedding_model not in (None, model):
        embedding = registry.get(settings.embedding_model)
        embedding_path = None if embedding.is_remote else store.locate(embedding)
        if embedding_path is not None:
            total += model_bytes(embedding_path, settings.n_ctx, 1, settings.kv_cache_type)
    return total


def derive_max_rss_mb(footprint: int, gpu: bool) -> int:
    """The model's footprint, a quarter more, plus the fixed margin (and the GPU driver's share)."""
    return int(footprint * (1 + MARGIN_FRACTION)) // MIB + MARGIN_MB + (GPU_DRIVER_MB if gpu else 0)


def derive_address_space_mb(address_space_now: int, max_rss_mb: int, threads: int) -> int:
    """What the process has mapped now, plus the RSS limit, plus room for threads and arenas."""
    return address_space_now // MIB + max_rss_mb + MARGIN_MB + THREAD_ADDRESS_SPACE_MB * max(threads, 1) * 2


def address_space_bytes() -> int:
    """This process's mapped address space (VmSize)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmSize in /proc/self/status")


def memory_limits(
    settings: Settings, model: str, parallel: int, metadata: Mapping[str, str] | None = None
) -> MemoryLimits:
    """The limits for this loaded model: the operator's where set (0: off), derived where unset.
    `metadata`: its GGUF header as the load read it, so the file is not opened again."""
    options = runtime_options(settings)
    gpu = options.gpu_layers() != 0
    rss, space = settings.exec_max_rss_mb, settings.exec_address_space_mb
    footprint = derived_rss = None
    if rss is None or (space is None and not gpu):
        footprint = footprint_bytes(settings, model, parallel, metadata)
        derived_rss = derive_max_rss_mb(footprint, gpu)
    if rss is None:
        rss = derived_rss
    if space is None:
        space = 0 if gpu else derive_address_space_mb(address_space_bytes(), derived_rss or 0, options.threads())
    limits = MemoryLimits(max_rss_mb=rss or None, address_space_mb=space or None)
    log.info(
        "memory limits",
        model=model,
        max_rss_mb=limits.max_rss_mb,
        address_space_mb=limits.address_space_mb,
        footprint_mb=None if footprint is None else footprint // MIB,
        derived=settings.exec_max_rss_mb is None or settings.exec_address_space_mb is None,
    )
    return limits
