"""A request that failed validation names its field the same way on `/v1` and OpenAI's routes."""

from __future__ import annotations

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from node.gateway.validation import field_path, first_error


class _Message(BaseModel):
    content: str


class _Body(BaseModel):
    messages: list[_Message]


def test_a_location_is_a_path_without_where_it_was() -> None:
    assert field_path(("body", "tasks", 0, "workflow")) == "tasks[0].workflow"
    assert field_path(("query", "ids")) == "ids"
    assert field_path(("body",)) == ""  # the whole body
    assert field_path(("messages", 2, "content")) == "messages[2].content"


def test_the_first_error_of_a_request_gives_path_and_message() -> None:
    try:
        _Body.model_validate({"messages": [{"content": "hi"}, {"content": 3}]})
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
    path, message = first_error(RequestValidationError(errors))
    assert (path, message) == ("messages[1].content", "Input should be a valid string")
