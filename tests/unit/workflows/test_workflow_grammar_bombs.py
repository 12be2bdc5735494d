"""The grammar-bomb family (tests/support/grammar_bombs.py) as tasks: refused at validation, or run on
SmolLM2 to a result or to an `Invalid prompt: ` error (the same on every node), never an internal error."""

from __future__ import annotations

import pytest

from models.batching import BatchedLlamaModel
from tests.support.grammar_bombs import HONEST_FAILURES, VARIANT_BOMBS, WORKFLOW_BOMBS, GrammarBomb
from workflows import EngineOptions, WorkflowValidationError, parse_workflow, run_workflow
from workflows.errors import public_error_text


@pytest.mark.parametrize("bomb", WORKFLOW_BOMBS + VARIANT_BOMBS, ids=lambda b: b.name)
async def test_a_bomb_task_ends_in_a_result_or_invalid_prompt(bomb: GrammarBomb, model: BatchedLlamaModel) -> None:
    try:
        workflow = parse_workflow(bomb.workflow(max_tokens=8))
    except WorkflowValidationError as exc:
        assert public_error_text(exc).startswith("Invalid prompt: invalid workflow: tasks[0].schema: ")
        return
    try:
        result = await run_workflow(workflow, model, options=EngineOptions(max_tokens_cap=8))
    except Exception as exc:  # noqa: BLE001 - the text the publisher gets is the check
        text = public_error_text(exc)
        # max_tokens cut the answer short: an honest failure of the task, not of the node.
        assert text.startswith("Invalid prompt: ") or any(s in text for s in HONEST_FAILURES), text
        return
    assert result.text is not None


def test_the_open_paren_pattern_is_refused_by_name_not_by_recursion() -> None:
    bomb = GrammarBomb("parens", json_schema={"type": "string", "pattern": "(" * 1000})
    with pytest.raises(WorkflowValidationError, match="nest more than 100 deep") as caught:
        parse_workflow(bomb.workflow(max_tokens=8))
    assert public_error_text(caught.value).startswith("Invalid prompt: ")
