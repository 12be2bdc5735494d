"""A swapped model for dishonest-node tests: SmolLM2 requantized (Q4_1 -> Q4_0), a close but different model.

The same architecture, vocabulary and chat template as the test model, so a node can serve it
under the test model's name and every reply looks right: only re-scoring tells them apart.
Made with llama.cpp's own quantizer in about 2 s; cached per directory.
"""

from __future__ import annotations

from pathlib import Path

import llama_cpp

from tests.support.model_file import SMOLLM2

SWAPPED_NAME = "smollm2-q4_0.gguf"


def requantized_smollm2(directory: Path) -> Path:
    """SmolLM2 requantized to Q4_0 in `directory` (made once)."""
    target = directory / SWAPPED_NAME
    if target.is_file():
        return target
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    params.allow_requantize = True
    params.nthread = 1
    partial = directory / (SWAPPED_NAME + ".part")
    rc = llama_cpp.llama_model_quantize(str(SMOLLM2).encode(), str(partial).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize returned {rc}")
    partial.rename(target)
    return target
