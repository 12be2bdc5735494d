"""Which memory keys a workflow can ever fill: telling a deterministic missing read from an unlucky one.

A read that finds nothing fails the same on every node when nothing in the task
can fill that key (no external_memory entry, no step output, no prompt for
`input`): such a failure is `Invalid prompt: `. When some step could have filled
it, the miss depends on the path the run took (model output), so it is not.
"""

from __future__ import annotations

from dataclasses import dataclass

from workflows.schema import InputValue, Workflow

INPUT_KEY = "__input"


@dataclass(frozen=True)
class KeySources:
    """The cache keys, stack keys and file store that some source of one task can fill."""

    cache: frozenset[str]
    stacks: frozenset[str]
    files: bool

    @classmethod
    def of(cls, workflow: Workflow, prompt: str | None) -> KeySources:
        """What `workflow`'s external memory, outputs and the task's `prompt` can fill."""
        cache = {key for key, value in workflow.external_memory.items() if not isinstance(value, list)}
        stacks = {key for key, value in workflow.external_memory.items() if isinstance(value, list) and value}
        if prompt is not None:
            cache.add(INPUT_KEY)
        files = False
        for step in workflow.steps:
            for out in step.outputs:
                if out.type == "write":
                    cache.add(out.key)
                elif out.type == "push":
                    stacks.add(out.key)
                else:
                    files = True
        return cls(frozenset(cache), frozenset(stacks), files)

    def never_filled(self, value: InputValue) -> bool:
        """True when no run of the workflow can give `value` anything (literals and sizes always hold one)."""
        match value.type:
            case "input":
                return INPUT_KEY not in self.cache
            case "read":
                return value.key not in self.cache
            case "pop" | "peek" | "get_all":
                return value.key not in self.stacks
            case "search":
                return not self.files
        return False
