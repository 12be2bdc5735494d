"""What a publisher sends and gets back: a `Task` (workflow, acceptable models) and its `TaskResult`.

`check_size` refuses a task body no envelope can carry (TaskTooLargeError), before any node is chosen or sent it.
A result's token counts and finish reason are what its node claims: `TaskResult` reads them as counts (a known
reason) or not at all.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import pydantic_core
from pydantic import BaseModel, Field

from node.publisher.errors import TaskNotEncodableError, TaskTooLargeError
from node.wire.envelope import sealed_size
from node.wire.messages import Stats, TaskBody, TaskInput, encode_body
from node.wire.results import FinishReason, result_finish_reason
from node.wire.topics import MAX_MESSAGE_BYTES, TASK_TOPIC

MAX_TOKEN_COUNT = 2**31 - 1  # the most tokens a result's stats may claim for a prompt (beyond any context)


class Task(BaseModel):
    """What a publisher asks for: a workflow and the models it accepts."""

    workflow: dict[str, Any]
    models: list[str] = Field(min_length=1)
    prompt: str | None = None
    nodes: list[str] | None = None  # addresses to pick; None: any node that matches
    # Encrypt the result to this key instead of the client's (a gateway serving a caller):
    # the client then returns the node's ciphertext untouched.
    public_key: str | None = None
    # Publisher-side only (never sent): nodes not to choose, and False to never ask for a proof
    # (remote scoring's own score tasks, node/publisher/remote_scoring.py).
    exclude: list[str] = Field(default_factory=list)
    verify: bool = True

    @property
    def scores_tokens(self) -> bool:
        """Whether a step of its workflow scores given tokens (`score` operator) rather than generating them.

        Scoring is teacher forcing, many times faster per token than generating: such a result
        never measures a node's speed (reputation.py).
        """
        steps = self.workflow.get("tasks")
        return isinstance(steps, list) and any(isinstance(t, dict) and t.get("operator") == "score" for t in steps)


class TaskResult(BaseModel):
    """A verified, decrypted result."""

    task_id: str
    text: str = ""
    ciphertext: str | None = None  # hex ECIES, for a task encrypted to another key (`Task.public_key`)
    node: str  # address that signed the result
    model: str
    stats: Stats
    proof: str | None = None  # hex ECIES of the node's proof, when the task asked for one
    verified: bool | None = None  # True: passed verification; None: not checked

    def __str__(self) -> str:
        return self.text

    @property
    def prompt_tokens(self) -> int:
        """The prompt tokens its node's stats claim (`promptTokens`), as a count (see `_count`)."""
        return claimed_count((self.stats.model_extra or {}).get("promptTokens"), MAX_TOKEN_COUNT)

    @property
    def completion_tokens(self) -> int:
        """The completion tokens its node's stats claim (`completionTokens`), at most the result's bytes."""
        size = len(self.text.encode()) if self.ciphertext is None else len(self.ciphertext) // 2
        return claimed_count((self.stats.model_extra or {}).get("completionTokens"), size)

    @property
    def finish_reason(self) -> FinishReason | None:
        """Why the generation that is its text ended, as its node's stats say (`finishReason`): "stop", "length",
        or None when the node did not say (an older node, a result that is not one generation's text) or said
        something else."""
        return result_finish_reason(self.stats)


# A node's default caps on a workflow's tokens a step, steps and tokens in all (workflows/options.py's
# DEFAULT_MAX_TOKENS, DEFAULT_MAX_STEPS and DEFAULT_TASK_TOKENS, which this side does not import).
NODE_MAX_TOKENS = 4096
NODE_MAX_STEPS = 1000
NODE_MAX_TASK_TOKENS = 32768


def generation_budget(workflow: dict[str, Any]) -> int:
    """The most tokens a node can generate for `workflow`: its `config.max_tokens` (a node's cap where it names
    none) for each of its `config.max_steps` (each at most a node's cap), at most a node's cap for a whole task.
    A node's claim past it is false."""
    config = workflow.get("config")
    config = config if isinstance(config, dict) else {}
    per_step = _positive_int(config.get("max_tokens"), NODE_MAX_TOKENS)
    steps = min(_positive_int(config.get("max_steps"), 1), NODE_MAX_STEPS)
    return min(min(per_step, NODE_MAX_TOKENS) * steps, NODE_MAX_TASK_TOKENS)


def _positive_int(value: object, otherwise: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else otherwise


def claimed_count(claimed: object, most: int) -> int:
    """A node's claimed count within 0..`most`; 0 for anything but an integer (a string, a list, a bool, a float)."""
    if not isinstance(claimed, int) or isinstance(claimed, bool):
        return 0
    return min(max(claimed, 0), most)


def task_body(task: Task, timeout: float, public_key: str, stream: bool = False, proof: bool = False) -> TaskBody:
    """The wire body of `task`: a new task id, deadline now + timeout, the result encrypted to
    `task.public_key` or else to `public_key` (the publisher's, hex); `stream`, `proof` asked for when True."""
    return TaskBody(
        task_id=secrets.token_urlsafe(16),
        deadline=time.time_ns() + int(timeout * 1e9),
        input=TaskInput(workflow=task.workflow, model=task.models, prompt=task.prompt),
        picked_nodes=task.nodes,
        public_key=task.public_key or public_key,
        stream=True if stream else None,
        proof=True if proof else None,
    )


def check_size(body: TaskBody) -> bytes:
    """`body`'s encoding; TaskTooLargeError when `body`, sealed, would pass the network's message (and frame)
    limit, TaskNotEncodableError when it nests deeper than a node's JSON parser reads."""
    try:
        encoded = encode_body(body)
        pydantic_core.from_json(encoded)  # the parser nodes decode tasks with (node/wire/messages.py): its depth limit
    except ValueError as exc:  # pydantic's serialization depth, or the parser's recursion limit
        raise TaskNotEncodableError(str(exc)) from None
    size = sealed_size(TASK_TOPIC, encoded)
    if size > MAX_MESSAGE_BYTES:
        raise TaskTooLargeError(size, MAX_MESSAGE_BYTES)
    return encoded
