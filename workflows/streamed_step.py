"""Which step of a workflow may stream its generation as the task's progress text.

Progress text must be a prefix of the result, so only a generation whose text IS the
result streams: the one `generation` step without a schema whose `write` output is the
only write to the cache key that `return_value` reads (a single `read`, no post-processing), and that can
run at most once (no edge, fallback or condition leads from it back to itself). Any
other shape streams nothing; the publisher still gets the result.

The engine returns that step's text as the model wrote it, so the result always extends
what streamed. Memory keeps a JSON-looking string as JSON and renders it compact, so any
other shape (structured output with a schema among them) returns the compact form and
does not stream. The publisher still checks that the result extends the streamed text
and treats a mismatch as a failed attempt.
"""

from __future__ import annotations

from workflows.schema import RESULT_VALUE, Workflow


def streamed_step(workflow: Workflow) -> str | None:
    """The id of the step whose generation is the result's text, or None when there is none."""
    spec = workflow.return_value
    if isinstance(spec.input, list) or spec.input.type != "read" or spec.post_process:
        return None
    key = spec.input.key
    writers = [(step, out) for step in workflow.steps for out in step.outputs if out.type == "write" and out.key == key]
    if len(writers) != 1:
        return None
    step, out = writers[0]
    if (
        step.operator != "generation"
        or step.json_schema is not None
        or out.value != RESULT_VALUE
        or _reaches_itself(workflow, step.id)
    ):
        return None
    return step.id


def _reaches_itself(workflow: Workflow, start: str) -> bool:
    """Whether a path of edges (targets, conditions' other targets, fallbacks) leads from `start` back to it."""
    following: dict[str, set[str]] = {}
    for edge in workflow.edges:
        nexts = following.setdefault(edge.source, set())
        nexts.add(edge.target)
        if edge.condition is not None:
            nexts.add(edge.condition.target_if_not)
        if edge.fallback is not None:
            nexts.add(edge.fallback)
    seen: set[str] = set()
    frontier = list(following.get(start, ()))
    while frontier:
        node = frontier.pop()
        if node == start:
            return True
        if node not in seen:
            seen.add(node)
            frontier.extend(following.get(node, ()))
    return False
