"""Whether a proven generation step was asked the publisher's own prompt (docs/VERIFICATION.md, rule 6).

A proof carries the exact prompt token ids a step ran on; a node could prove honest work on a
prompt other than the one it was sent. The verifier has the step's prompt as text (detokenized
by its scorer) and the publisher has its workflow: every proven step must hold, verbatim up to
whitespace, the literal words of the messages of one model-calling task of that workflow (the
text between `{name}` / `{{name}}` placeholders of declared inputs, the task's `prompt` filled
in where an input reads it). Placeholder values that come from memory are not checked: the
publisher does not know them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

MODEL_OPERATORS = ("generation", "function_calling", "function_calling_raw")
_SPACE = re.compile(r"\s+")


def _normal(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


@dataclass(frozen=True)
class PromptExpectation:
    """Per model-calling task of the publisher's workflow: the pieces of text its prompt must hold."""

    alternatives: tuple[tuple[str, ...], ...]

    @classmethod
    def of(cls, workflow: dict[str, Any], prompt: str | None) -> PromptExpectation | None:
        """What `workflow` (as sent) makes a step's prompt hold; None when it calls no model as written."""
        tasks = workflow.get("tasks")
        if not isinstance(tasks, list):
            return None
        alternatives = [pieces for task in tasks if (pieces := _task_pieces(task, prompt)) is not None]
        return cls(tuple(alternatives)) if alternatives else None

    def holds(self, prompt_text: str) -> bool:
        """Whether a step's prompt text holds every piece of one task's messages."""
        text = _normal(prompt_text)
        return any(all(piece in text for piece in pieces) for pieces in self.alternatives)


def _task_pieces(task: Any, prompt: str | None) -> tuple[str, ...] | None:
    if not isinstance(task, dict) or task.get("operator") not in MODEL_OPERATORS:
        return None
    messages = task.get("messages") or ([{"content": task["prompt"]}] if isinstance(task.get("prompt"), str) else [])
    inputs = [i for i in task.get("inputs") or [] if isinstance(i, dict) and isinstance(i.get("name"), str)]
    filled: dict[str, str | None] = {
        i["name"]: prompt for i in inputs if _reads_input(i) and prompt is not None and not _is_json(prompt)
    }
    names = [i["name"] for i in inputs]
    pieces: list[str] = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            pieces.extend(p for p in _literal_pieces(content, names, filled) if p)
    return tuple(pieces)


def _reads_input(item: dict[str, Any]) -> bool:
    value = item.get("value")
    return isinstance(value, dict) and value.get("type") == "input"


def _is_json(text: str) -> bool:
    # The engine keeps an entry that parses as JSON as JSON and renders it compactly: not verbatim.
    try:
        json.loads(text)
    except (ValueError, RecursionError):  # nested past the parser's depth: the engine cannot parse it either
        return False
    return True


def _literal_pieces(content: str, names: list[str], filled: dict[str, str | None]) -> list[str]:
    """`content` cut at the placeholders of `names` (those in `filled` replaced by their value), normalised."""
    if not names:
        return [_normal(content)]
    alternation = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    placeholder = re.compile(r"\{\{(" + alternation + r")\}\}|\{(" + alternation + r")\}")
    pieces: list[str] = []
    current = ""
    last = 0
    for match in placeholder.finditer(content):
        current += content[last : match.start()]
        value = filled.get(match.group(1) or match.group(2))
        if value is None:
            pieces.append(_normal(current))
            current = ""
        else:
            current += value
        last = match.end()
    pieces.append(_normal(current + content[last:]))
    return pieces
