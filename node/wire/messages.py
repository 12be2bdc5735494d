"""Bodies of the three gossip topics: a task, a result, a heartbeat.

Python attributes are snake_case; wire names are their camelCase aliases
(`alias_generator=to_camel`). Models are strict (no str -> int coercion) and
ignore unknown fields, so newer publishers can add fields. `decode_*` raise
MessageError only; its message names the field.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from node.wire.bloom import BloomFilter, BloomFilterError
from node.wire.identity import IdentityError, parse_public_key
from node.wire.topics import MAX_ADDR_CHARS, MAX_HEARTBEAT_ADDRS
from node.wire.wire_time import INT64_MAX, format_rfc3339_ns, ns_from_wire

MAX_FILTER_HEX_CHARS = 128 * 1024  # 64 KiB of filter bytes
MAX_MODELS = 64

TaskId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")]
ModelName = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Address = Annotated[str, StringConstraints(pattern=r"^(0x)?[0-9a-fA-F]{40}$")]
Multiaddr = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ADDR_CHARS)]
Int64 = Annotated[int, Field(ge=0, le=INT64_MAX)]
Nanoseconds = Int64
# A task deadline: Unix ns or an RFC-3339 string with an offset, kept as ns.
Deadline = Annotated[int, BeforeValidator(ns_from_wire), Field(ge=0, le=INT64_MAX)]
# A result stat: written as RFC-3339 UTC with 9 digits and `Z`, read in either form.
StatTime = Annotated[
    int,
    BeforeValidator(ns_from_wire),
    Field(ge=0, le=INT64_MAX),
    PlainSerializer(format_rfc3339_ns, return_type=str, when_used="json"),
]


M = TypeVar("M", bound=BaseModel)


class MessageError(Exception):
    """A message body is not valid for its topic; str(e) names the field at fault."""


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, strict=True, allow_inf_nan=False)


def _normalize_address(address: str) -> str:
    return address.lower().removeprefix("0x")


class TaskFilter(_Wire):
    """Bloom filter over the raw 20-byte addresses of the nodes that may accept the task."""

    hex: str = Field(max_length=MAX_FILTER_HEX_CHARS)
    hashes: int = Field(ge=1, le=64)

    @model_validator(mode="after")
    def _valid_bloom(self) -> TaskFilter:
        try:
            BloomFilter.from_hex(self.hex, self.hashes)
        except BloomFilterError as e:
            raise ValueError(str(e)) from e
        return self


def json_values(value: Any) -> int:
    """How many values parsed JSON holds, itself and the keys of its objects included."""
    return _scan(value)[0]


def _scan(value: Any) -> tuple[int, bool]:
    """One walk over parsed JSON: how many values it holds (`json_values`), and whether one is NaN or infinite.

    The JSON parser takes `NaN`, `Infinity` and `1e999` (none of them JSON numbers) into free-form
    parts such as a workflow; they are refused, and the count is what a decoded body holds (`held_bytes`).
    """
    count, non_finite, stack = 0, False, [value]
    while stack:
        item = stack.pop()
        count += 1
        if isinstance(item, float):
            non_finite = non_finite or not math.isfinite(item)
        elif isinstance(item, dict):
            count += len(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count, non_finite


def _first_non_finite(value: Any) -> str:
    """Path of the first NaN or infinite number inside parsed JSON that `_scan` found to hold one."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return path or "value"
        if isinstance(item, dict):
            stack.extend((f"{path}.{key}" if path else str(key), inner) for key, inner in item.items())
        elif isinstance(item, list):
            stack.extend((f"{path}.{index}" if path else str(index), inner) for index, inner in enumerate(item))
    return "value"


def _finite_json(value: Any, where: str) -> int:
    """How many values `value` holds; ValueError naming the first NaN or infinite number in it."""
    values, non_finite = _scan(value)
    if non_finite:
        raise ValueError(f"{where}{_first_non_finite(value)} is not a finite number (NaN and Infinity are not JSON)")
    return values


class TaskInput(_Wire):
    """What to run: a raw workflow (validated later by the engine) and acceptable models."""

    workflow: dict[str, Any]
    model: list[ModelName] = Field(min_length=1, max_length=MAX_MODELS)
    prompt: str | None = None
    _json_values: int = PrivateAttr(0)  # values in `workflow`, counted by the same walk as the finite check

    @model_validator(mode="after")
    def _finite_numbers(self) -> TaskInput:
        self._json_values = _finite_json(self.workflow, "workflow.")
        return self


class TaskBody(_Wire):
    """Topic `task`: a publisher's request."""

    task_id: TaskId
    deadline: Deadline
    input: TaskInput
    filter: TaskFilter | None = None
    picked_nodes: list[Address] | None = None
    public_key: str
    # Protocol 0.4, direct delivery only: the publisher wants progress frames while the final step generates.
    stream: bool | None = None
    # The publisher wants a proof of the work next to the result (node/wire/proof.py).
    proof: bool | None = None

    @field_validator("picked_nodes")
    @classmethod
    def _lowercase_addresses(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [_normalize_address(a) for a in value]

    @field_validator("public_key")
    @classmethod
    def _valid_public_key(cls, value: str) -> str:
        try:
            parse_public_key(value)
        except IdentityError as e:
            raise ValueError(str(e)) from None
        return value


class Stats(_Wire):
    """Timings of a task, Unix nanoseconds in Python and RFC-3339 strings in JSON;
    extra fields (token counts) are kept."""

    model_config = ConfigDict(extra="allow")
    _json_values: int = PrivateAttr(0)  # values in the extra fields, counted by the same walk as the finite check

    received_at: StatTime
    published_at: StatTime
    execution_started_at: StatTime
    execution_ended_at: StatTime

    @model_validator(mode="after")
    def _finite_extras(self) -> Stats:
        extras = self.model_extra or {}
        self._json_values = _finite_json(extras, "")
        for name, value in extras.items():
            if isinstance(value, int) and not -INT64_MAX - 1 <= value <= INT64_MAX:
                raise ValueError(f"{name} does not fit in int64")
        return self


class ResultBody(_Wire):
    """Topic `results`: exactly one of `ciphertext` (hex ECIES) or `error`."""

    task_id: TaskId
    ciphertext: str | None = Field(default=None, pattern=r"^([0-9a-fA-F]{2})+$")
    error: str | None = None
    model: str
    stats: Stats
    # Hex ECIES of the proof a task asked for (node/wire/proof.py); never with `error`.
    proof: str | None = Field(default=None, pattern=r"^([0-9a-fA-F]{2})+$")

    @model_validator(mode="after")
    def _one_outcome(self) -> ResultBody:
        if (self.ciphertext is None) == (self.error is None):
            raise ValueError("exactly one of ciphertext and error must be present")
        if self.proof is not None and self.error is not None:
            raise ValueError("an error result carries no proof")
        return self


class Capacity(_Wire):
    """Task places: free now, and the most the node runs at once."""

    free: Int64
    max: Int64


class HeartbeatBody(_Wire):
    """Topic `heartbeat`: what a node hosts and how busy it is.

    Protocol 0.4 adds `addrs` (where the node takes direct-delivery streams; each must end
    in `/p2p/<its peerId>`, checked with the signer in node/wire/inbound.py) and `leaving`
    (the node is draining: choose it no more), and `modelCapacity` (free and max task places
    per model: each model has places of its own, so the total `capacity` can show room while one
    model is full). All are optional. `modelCapacity` is held to the same rules as `capacity`
    (a malformed entry makes the body invalid); an entry for a model not in `models` is valid
    here and ignored by publishers, as `tps` entries are.
    """

    address: Address
    peer_id: str = Field(min_length=1, max_length=128)
    models: list[ModelName] = Field(max_length=MAX_MODELS)
    capacity: Capacity
    pending: Int64 = Field(alias="pendingTasks")
    # Dria's form, `[tasks accepted and unfinished, 0]`; filled in from `pending` when absent.
    pending_tasks: tuple[Int64, Int64] | None = Field(default=None, alias="pending_tasks")
    tps: dict[ModelName, Annotated[float, Field(ge=0)]] = Field(max_length=MAX_MODELS)
    version: str = Field(max_length=64)
    timestamp: Nanoseconds
    addrs: list[Multiaddr] | None = Field(default=None, max_length=MAX_HEARTBEAT_ADDRS)
    leaving: bool | None = None
    model_capacity: dict[ModelName, Capacity] | None = Field(default=None, max_length=MAX_MODELS)

    @field_validator("address")
    @classmethod
    def _lowercase_address(cls, value: str) -> str:
        return _normalize_address(value)

    @model_validator(mode="after")
    def _dria_pending(self) -> HeartbeatBody:
        if self.pending_tasks is None:
            self.pending_tasks = (self.pending, 0)
        return self


# Python memory of a decoded body, about: each JSON value of its free-form parts (a task's workflow, a result's
# extra stats) takes 38-76 bytes beyond its text, and the envelope and models around them some KiB (measured with
# tracemalloc: a small task holds 12.5 KB for its 0.9 KB; 150 KB of `[[]],` hold 4.2 MB).
VALUE_BYTES = 80
MODEL_BYTES = 8192
CAPACITY_VALUES = 5  # a heartbeat's `modelCapacity` entry beyond its text: a name and a Capacity (440 B measured)


def held_bytes(body: TaskBody | ResultBody | HeartbeatBody, body_bytes: int) -> int:
    """About how much memory `body`, decoded from `body_bytes` bytes, holds: up to twenty times its bytes
    when its free-form parts are many small values, which is what budgets of decoded messages must count."""
    if isinstance(body, TaskBody):
        values = body.input._json_values
    elif isinstance(body, ResultBody):
        values = body.stats._json_values
    else:
        values = len(body.models) + len(body.tps) + len(body.addrs or ())
        values += CAPACITY_VALUES * len(body.model_capacity or ())
    return MODEL_BYTES + body_bytes + VALUE_BYTES * values


def _decode(kind: str, model: type[M], body: bytes) -> M:
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        first = e.errors()[0]
        path = ".".join(str(part) for part in first["loc"])
        where = f"{path}: " if path else ""
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise MessageError(f"{kind} body: {where}{first['msg']}{more}") from e


def decode_task(body: bytes) -> TaskBody:
    """Parse and validate a `task` body."""
    return _decode("task", TaskBody, body)


def decode_result(body: bytes) -> ResultBody:
    """Parse and validate a `results` body."""
    return _decode("result", ResultBody, body)


def decode_heartbeat(body: bytes) -> HeartbeatBody:
    """Parse and validate a `heartbeat` body."""
    return _decode("heartbeat", HeartbeatBody, body)


def encode_body(model: BaseModel) -> bytes:
    """Compact UTF-8 JSON with camelCase names, leaving out optional fields that are None."""
    return model.model_dump_json(by_alias=True, exclude_none=True).encode("utf-8")
