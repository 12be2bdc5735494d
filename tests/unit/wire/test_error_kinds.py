"""parse_error, the one reader of error result text, and TaskError.of, the writer: a test per kind and limit."""

from __future__ import annotations

import pytest

from node.wire.error_kinds import ErrorKind, ErrorLimit, TaskError, parse_error

CUT_BY_THE_TASK = (
    "Invalid prompt: task 'chat' failed: the model's answer is not complete JSON for the schema"
    " (max_tokens reached: 64; raise it or bound the schema)"
)
CUT_BY_A_NODE = (
    "task 'chat' failed: the model's answer is not complete JSON for the schema"
    " (max_tokens reached: this node allows 512 of the 1024 asked; bound the schema)"
)
CONTEXT_OVERFLOW = "Invalid prompt: task 'chat' failed: the task does not fit the model's context: 9000 > 2048"


def test_an_invalid_prompt_text_is_invalid_prompt_and_not_retryable() -> None:
    error = parse_error("Invalid prompt: invalid workflow: tasks[0].id: duplicate task id")
    assert (error.kind, error.limit) == (ErrorKind.INVALID_PROMPT, None)
    assert not error.kind.retryable


def test_a_busy_text_is_busy_and_retryable() -> None:
    error = parse_error("busy: model m has 1 running and 8 queued tasks")
    assert (error.kind, error.limit) == (ErrorKind.BUSY, None)
    assert error.kind.retryable


def test_an_interrupted_text_is_interrupted_and_retryable() -> None:
    error = parse_error("interrupted: execution process restarted (another task would not stop)")
    assert (error.kind, error.limit) == (ErrorKind.INTERRUPTED, None)
    assert error.kind.retryable


@pytest.mark.parametrize(
    "text",
    [
        "model error: out of memory",
        "deadline passed while the task was running",
        "",
        "Invalid prompt:no space",  # the prefix is the whole "Invalid prompt: "
        "invalid prompt: lower case",
        "a busy: node",  # a prefix only counts at the start
        "Busy: node is paused",
        "interrupted node restarted",
    ],
)
def test_any_other_text_is_failed_and_retryable(text: str) -> None:
    error = parse_error(text)
    assert (error.kind, error.limit) == (ErrorKind.FAILED, None)
    assert error.kind.retryable


def test_an_answer_cut_at_the_tasks_max_tokens_names_max_tokens_and_is_invalid_prompt() -> None:
    error = parse_error(CUT_BY_THE_TASK)
    assert (error.kind, error.limit) == (ErrorKind.INVALID_PROMPT, ErrorLimit.MAX_TOKENS)


def test_an_answer_cut_at_a_nodes_cap_names_max_tokens_and_is_retryable() -> None:
    error = parse_error(CUT_BY_A_NODE)
    assert (error.kind, error.limit) == (ErrorKind.FAILED, ErrorLimit.MAX_TOKENS)
    assert error.kind.retryable


def test_a_prompt_too_long_for_the_context_names_the_context() -> None:
    error = parse_error(CONTEXT_OVERFLOW)
    assert (error.kind, error.limit) == (ErrorKind.INVALID_PROMPT, ErrorLimit.CONTEXT)


def test_a_text_naming_both_limits_names_max_tokens() -> None:
    assert parse_error(f"{CONTEXT_OVERFLOW} (max_tokens reached: 8)").limit is ErrorLimit.MAX_TOKENS


def test_the_parse_keeps_the_text_as_it_came() -> None:
    assert parse_error(CUT_BY_A_NODE).text == CUT_BY_A_NODE


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        (ErrorKind.INVALID_PROMPT, "Invalid prompt: the task crashed its execution process twice (SIGSEGV)"),
        (ErrorKind.BUSY, "busy: node is paused"),
        (ErrorKind.INTERRUPTED, "interrupted: node restarted"),
        (ErrorKind.FAILED, "internal error: ValueError"),
    ],
)
def test_an_error_made_with_its_kind_has_the_wire_text_and_reads_back_as_that_kind(kind: ErrorKind, text: str) -> None:
    detail = text.removeprefix(kind.prefix)
    made = TaskError.of(kind, detail)
    assert made == TaskError(kind, text)
    assert parse_error(made.text).kind is kind
