"""Opening a model file as a `llama_cpp.Llama` (the tokenizer and the embedding context use it).

The batched runtime's generation context is opened by the decode loop itself
(models/decode_loop.py) through llama.cpp's C API.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import llama_cpp

from models.llama_log import install_llama_log_router
from models.requests import ModelLoadError

# llama-cpp-python's Llama(verbose=False) points the process's stdout/stderr at
# /dev/null while it loads (dup2 on fds 1 and 2, then restores them). Two loads
# overlapping in two threads would restore each other's redirect and could leave
# the process muted for good, so constructions are serialised process-wide.
# (llama.cpp's own log lines are not lost: they go through the log router.)
_CONSTRUCT_LOCK = threading.Lock()


def construct_llama(path: Path, extra_buffers: bool = True, **params: Any) -> llama_cpp.Llama:
    """`llama_cpp.Llama(path, **params)`, quiet, one construction at a time in this process."""
    with _CONSTRUCT_LOCK:
        if extra_buffers:
            return llama_cpp.Llama(model_path=str(path), verbose=False, **params)
        # Llama() takes no use_extra_bufts argument: hand it default model params with
        # the switch off, for this one construction (the lock keeps it to this one).
        defaults = llama_cpp.llama_cpp.llama_model_default_params

        def without_extra_buffers() -> llama_cpp.llama_model_params:
            model_params: llama_cpp.llama_model_params = defaults()
            model_params.use_extra_bufts = False
            return model_params

        llama_cpp.llama_cpp.llama_model_default_params = without_extra_buffers
        try:
            return llama_cpp.Llama(model_path=str(path), verbose=False, **params)
        finally:
            llama_cpp.llama_cpp.llama_model_default_params = defaults


def open_vocab(path: Path) -> llama_cpp.Llama:
    """A tokenizer-only `Llama` of the model file (no weights, no context to speak of)."""
    install_llama_log_router()  # its context's warning (no training context) goes to debug, not to a CLI's stderr
    try:
        return construct_llama(path, vocab_only=True, n_ctx=64)
    except Exception as exc:
        raise ModelLoadError(f"llama.cpp could not read the vocabulary of {path}: {exc}") from exc


def file_type(path: Path) -> int | None:
    """The file's `general.file_type` (llama.cpp's `llama_ftype`: 3 is Q4_1), None where it has none or is unreadable."""
    try:
        value = open_vocab(path).metadata.get("general.file_type")
    except ModelLoadError:
        return None
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
