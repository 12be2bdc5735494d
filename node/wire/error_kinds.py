"""The kinds of an error result: an error travels as text (PROTOCOL.md, result `error`), and its kind is its start.

A node makes an error knowing its kind (`TaskError.of` writes the kind's prefix); a text that arrives (a node's
result at a publisher, an execution process's answer at the daemon) is read once, by `parse_error`, the one
reader of error text: everything else matches on the kind. `Invalid prompt: ` is the protocol's (Dria's SDK
reads it); `busy: ` and `interrupted: ` are this node's.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from node.wire.topics import (
    BUSY_PREFIX,
    CONTEXT_OVERFLOW_MARK,
    CUT_SHORT_MARK,
    DETERMINISTIC_ERROR_PREFIX,
    INTERRUPTED_PREFIX,
)


class ErrorKind(Enum):
    """What an error result says of its failure, by the start of its text (values: the ledger's outcomes)."""

    INVALID_PROMPT = "invalid_prompt"  # fails the same way on any node: not retried
    BUSY = "busy"  # no capacity now (or paused, draining): another node, or later
    INTERRUPTED = "interrupted"  # cut off: a shutdown, a restart of the node or of its execution process
    FAILED = "error"  # any other failure: transient (a model or engine failure, a deadline)

    @property
    def prefix(self) -> str:
        """The text an error of this kind starts with ("" for FAILED, which has none)."""
        return _PREFIXES.get(self, "")

    @property
    def retryable(self) -> bool:
        """Whether another node (or a later try) may succeed: anything but INVALID_PROMPT."""
        return self is not ErrorKind.INVALID_PROMPT


_PREFIXES = {
    ErrorKind.INVALID_PROMPT: DETERMINISTIC_ERROR_PREFIX,
    ErrorKind.BUSY: BUSY_PREFIX,
    ErrorKind.INTERRUPTED: INTERRUPTED_PREFIX,
}


class ErrorLimit(Enum):
    """A limit an error's text says the task ran into (the engine's wording, workflows/operators.py)."""

    MAX_TOKENS = "max_tokens"  # an answer under a schema cut short at max_tokens (the task's, or a node's cap)
    CONTEXT = "context"  # the prompt and max_tokens do not fit the model's context


@dataclass(frozen=True)
class TaskError:
    """An error result's text, as on the wire, with its kind (and the limit it names, for a text read)."""

    kind: ErrorKind
    text: str
    limit: ErrorLimit | None = None

    @classmethod
    def of(cls, kind: ErrorKind, detail: str) -> TaskError:
        """The error of `kind` whose text is its prefix, then `detail`."""
        return cls(kind, kind.prefix + detail)

    @classmethod
    def failed(cls, text: str) -> TaskError:
        """A failure of no other kind (FAILED has no prefix): transient, e.g. a deadline, a crash, a bug."""
        return cls(ErrorKind.FAILED, text)


def parse_error(text: str) -> TaskError:
    """The kind (and limit) of an error result's text: a text of no known start is FAILED. A text that names
    both limits names MAX_TOKENS (an answer cut short is the caller's max_tokens to raise, whatever else)."""
    kind = next((kind for kind, prefix in _PREFIXES.items() if text.startswith(prefix)), ErrorKind.FAILED)
    limit = (
        ErrorLimit.MAX_TOKENS
        if CUT_SHORT_MARK in text
        else ErrorLimit.CONTEXT
        if CONTEXT_OVERFLOW_MARK in text
        else None
    )
    return TaskError(kind, text, limit)
