"""Render chat messages into a prompt with the model's own chat template.

The batched runtime decodes prompts in its own loop, so it renders them here
with the same Jinja2 formatter `Llama.create_chat_completion` builds from the
GGUF's `tokenizer.chat_template`. A GGUF without a chat template falls back to
ChatML.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llama_cpp import llama_chat_format

from models.requests import ChatMessage
from models.vocab import ModelVocab

_TEMPLATE_KEY = "tokenizer.chat_template"


@dataclass(frozen=True)
class ChatPrompt:
    """A rendered prompt: its text and the template's stop strings."""

    text: str
    stop: list[str]
    # The template already wrote the BOS token itself (do not add another).
    has_bos: bool


def _token_text(llama: ModelVocab, token_id: int) -> str:
    if token_id < 0:
        return ""
    return llama.detokenize([token_id], special=True).decode("utf-8", errors="replace")


class ChatTemplate:
    """The chat template of one model file."""

    def __init__(self, llama: ModelVocab) -> None:
        template = llama.metadata.get(_TEMPLATE_KEY)
        self.source = "gguf" if template else "chatml-fallback"
        self._formatter: llama_chat_format.ChatFormatter
        if template:
            self._formatter = llama_chat_format.Jinja2ChatFormatter(
                template=template,
                eos_token=_token_text(llama, llama.token_eos()),
                bos_token=_token_text(llama, llama.token_bos()),
            )
        else:
            self._formatter = llama_chat_format.format_chatml

    def render(self, messages: list[ChatMessage]) -> ChatPrompt:
        """Render the conversation, ending with the assistant's turn opened."""
        turns: list[Any] = [m.model_dump() for m in messages]  # llama_types' TypedDict shapes
        result = self._formatter(messages=turns)
        stop = result.stop if isinstance(result.stop, list) else [result.stop] if result.stop else []
        return ChatPrompt(
            text=result.prompt,
            stop=[s for s in stop if s],
            has_bos=result.added_special,
        )
