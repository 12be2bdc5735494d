"""A scoring copy of a model file: its weights dequantized to bf16, re-scored about 3x faster.

Re-scoring a result (models/scoring.py) evaluates prompt + generated tokens in one batched pass.
A Q4_1 file's batched kernels are only ~2x faster per token than decoding on CPU, so at one
sequence re-scoring cost 0.6-0.8 of the generation. The same weights in bf16 run llama.cpp's
bf16 matrix kernels: measured on a 2-core AMD EPYC with AVX512_BF16 (SmolLM2-135M, answers of
32-256 tokens, 1 thread, quiet) 0.20-0.23 of the generation against 0.54-0.66, with the honest
spread of |claimed - re-scored| per position a little wider (p99 0.24 against 0.19 nats; the
tolerances are measured with it: benchmarks/verification.py, docs/VERIFICATION.md).

The copy is made by llama.cpp's own quantizer (`llama_model_quantize`, Q4_1 -> bf16 is a
widening: every weight is kept to bf16's precision), once per source file, and cached beside
the other copies in a directory the caller owns; a file that changed (size or mtime) gets a new
copy, and its old one is deleted. `auto` takes it only where it pays: the CPU and
the llama.cpp build both have AVX512_BF16 (without native bf16 dot products bf16 is slow),
the copy stays small (4x the file at most: a file of at most `AUTO_MAX_FILE_BYTES`), and the
file's own batched kernels are not the AMX ones. Those multiply the file's quantized weights
on the CPU's tile unit (llama.cpp's AMX kernels cover `AMX_FILE_TYPES`; models/cpu.py says when
they run) and re-score far faster than bf16: measured on a 2-core Xeon (Sapphire Rapids class,
SmolLM2 Q4_1, 1 thread, 1 sequence) 0.30 / 0.20 / 0.20 of a 32 / 128 / 256-token generation
with the file, 0.81 / 0.52 / 0.46 with the copy (which AMX does not multiply).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Literal

from models.cpu import CpuInfo
from models.requests import ModelLoadError

ScoringPrecision = Literal["auto", "model", "bf16"]  # config.settings.Settings.verify_precision
AUTO_MAX_FILE_BYTES = 1 << 30  # the copy is ~16 bits per weight: up to ~4 GiB for a 1 GiB Q4 file
BUILD_FEATURE = "AVX512_BF16 = 1"  # in llama.cpp's system info when its CPU backend has the bf16 kernels
CPU_FLAG = "avx512_bf16"
AMX_BUILD_FEATURE = "AMX_INT8 = 1"  # in the system info of a build with llama.cpp's AMX kernels
AMX_CPU_FLAG = "amx_int8"
# llama_ftype of the files whose weights the AMX kernels multiply (ggml-cpu/amx/common.h:
# Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K, IQ4_XS): Q4_0, Q4_1, Q8_0, Q4_K_S/M, Q5_K_S/M, Q6_K, IQ4_XS.
AMX_FILE_TYPES = frozenset({2, 3, 7, 14, 15, 16, 17, 18, 30})


def bf16_pays(cpu: CpuInfo, system_info: str) -> bool:
    """Whether a bf16 copy re-scores faster here: native bf16 dot products in the CPU and in the build."""
    return CPU_FLAG in cpu.flags and BUILD_FEATURE in system_info


def amx_scores(cpu: CpuInfo, system_info: str, extra_buffers: bool, file_type: int | None) -> bool:
    """Whether llama.cpp's AMX kernels multiply this file's weights here: the CPU and the build have
    them, extra buffers are on (models/cpu.py: only with the patched kernel) and the file's type is one
    they multiply (`file_type`: the GGUF's general.file_type)."""
    return (
        extra_buffers and AMX_CPU_FLAG in cpu.flags and AMX_BUILD_FEATURE in system_info and file_type in AMX_FILE_TYPES
    )


def choose_precision(
    setting: ScoringPrecision, path: Path, cpu: CpuInfo, system_info: str, *, amx: bool = False
) -> Literal["model", "bf16"]:
    """What `setting` means for the model file at `path` on this machine (`amx`: `amx_scores` for it)."""
    if setting != "auto":
        return setting
    if amx or not bf16_pays(cpu, system_info):
        return "model"
    return "bf16" if path.stat().st_size <= AUTO_MAX_FILE_BYTES else "model"


def scoring_copy(path: Path, directory: Path) -> Path:
    """The bf16 copy of the GGUF at `path` in `directory`, made on first use (ModelLoadError if it cannot be)."""
    import llama_cpp

    stat = path.stat()
    source = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
    version = hashlib.sha256(f"{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:8]
    target = directory / f"{path.stem}.{source}.{version}.bf16.gguf"
    if target.is_file():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(f"{path.stem}.{source}.*.bf16.gguf"):  # copies of the file before it changed
        stale.unlink(missing_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.part")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_BF16
    params.allow_requantize = True
    params.nthread = os.cpu_count() or 1
    try:
        rc = llama_cpp.llama_model_quantize(str(path).encode(), str(partial).encode(), params)
        if rc != 0:
            raise ModelLoadError(f"llama.cpp could not make a bf16 scoring copy of {path} (error {rc})")
        partial.replace(target)  # whole or not at all, also with another process making the same copy
    finally:
        partial.unlink(missing_ok=True)
    return target
