"""Direct delivery (protocol 0.4, PROTOCOL.md section 8): the JSON frames besides the envelopes.

A stream carries, node to publisher: one `StreamAnswer`, then `Progress` frames (only
for a task with `"stream": true`), then the result envelope as published on `results`.
`frame_kind` tells them apart without trusting them: each is then decoded strictly.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, ValidationError

from node.wire.messages import MessageError, TaskId, _Wire

ReasonCode = Annotated[str, StringConstraints(max_length=256)]


class AnswerStatus(StrEnum):
    """What the node did with a task it received on a stream."""

    ACCEPTED = "accepted"  # it will run it; the result follows on the stream
    BUSY = "busy"  # valid and for this node, but no capacity now (or draining): try another node
    IGNORED = "ignored"  # valid but not for this node (model, picked, deadline, duplicate...)
    REJECTED = "rejected"  # invalid (envelope or body), or the stream broke the protocol


class StreamAnswer(_Wire):
    """The node's immediate answer to the task frame."""

    task_id: Annotated[str, StringConstraints(max_length=128)]  # "" when the frame held no readable task
    status: AnswerStatus
    reason: ReasonCode = ""


class Progress(_Wire):
    """Generated text so far, in order: the concatenated deltas are a prefix of the result text."""

    task_id: TaskId
    delta: str = Field(max_length=256 * 1024)


FrameKind = Literal["answer", "progress", "envelope"]


def frame_kind(data: bytes) -> FrameKind:
    """Which frame this is (by its fields); MessageError when it is none of them."""
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deep
        raise MessageError(f"stream frame: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise MessageError("stream frame: not a JSON object")
    if "status" in value:
        return "answer"
    if "delta" in value:
        return "progress"
    if "payload" in value:
        return "envelope"
    raise MessageError("stream frame: neither an answer, a progress frame nor an envelope")


def decode_answer(data: bytes) -> StreamAnswer:
    """Parse and validate an answer frame."""
    try:
        return StreamAnswer.model_validate_json(data)
    except ValidationError as exc:
        raise MessageError(f"stream answer: {exc.errors()[0]['msg']}") from None


def decode_progress(data: bytes) -> Progress:
    """Parse and validate a progress frame."""
    try:
        return Progress.model_validate_json(data)
    except ValidationError as exc:
        raise MessageError(f"progress frame: {exc.errors()[0]['msg']}") from None


def encode_frame_body(frame: StreamAnswer | Progress) -> bytes:
    """Compact UTF-8 JSON, camelCase names."""
    return frame.model_dump_json(by_alias=True).encode("utf-8")
