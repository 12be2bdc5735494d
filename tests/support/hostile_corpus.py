"""The hostile-input corpus: loading the case files of tests/support/hostile/ and building their bytes.

One JSON file per case:

    {"name": "...", "category": "envelope", "topic": "task",
     "raw_text": "..." | "raw_b64": "..." | "recipe": {...},
     "expect": {"verdict": "reject", "reason": "not_json"}}

Raw cases are published byte for byte. Recipes are built at run time, because
signatures, timestamps, deadlines and task ids must be fresh. A recipe starts
from a valid task body (a Simple workflow, 8 tokens) signed by the publisher,
then applies its edits in this order: `body` / `body_text` replace the body,
`set` / `unset` edit it (dotted paths, list indexes as numbers), `pad_to` grows
it, the envelope is signed as `signature` says and edited by `envelope_set` /
`envelope_unset`. In `body_text` (for bodies JSON cannot hold, such as `NaN`), whole
quoted placeholders are replaced by their JSON values.

String values that are exactly one of these placeholders are replaced:
`$TASK_ID` (fresh), `$DEADLINE` (now + 60 s), `$PAST_DEADLINE` (now - 1 s),
`$DEADLINE_RFC3339` (now + 60 s as Dria's SDK writes it), `$PAST_DEADLINE_RFC3339`,
`$FAR_DEADLINE` (now + 2 h: beyond the default horizon), `$NOW_NS`, `$NOW_S`,
`$PUBKEY` (the publisher's compressed key), `$PUBLISHER` / `$PUBLISHER_PEER_ID`
(the publisher's address and peer id), `$NODE` (the node's
address), `$OTHER_NODE` (an address that is not the node's), `$HUGE:<n>` (a
string of n "x"), `$BRACKETS:<n>` (a string of n "[" then n "]"). `"$NESTED:<n>"` (with its quotes) is replaced in the final text, raw text
included, by n nested JSON arrays (deeper than Python's json module can write).

Verdicts:
- `reject`: the gossip validator refuses it; `reason` is the logged code.
- `ignore`: valid but not accepted; `reason` is a substring of the logged reason.
- `error_result`: accepted; the error result contains `reason`.
- `result`: accepted and answered with a (non-empty) encrypted text.
- `unsendable`: the sender's P2P layer refuses it (`MessageTooLargeError`).
- `accept`: a valid message of another topic (a heartbeat with extreme but
  in-range values): relayed, nothing accepted, nothing breaks.

Signatures: `valid`, or broken as `zero`, `flip_recovery`, `tamper_payload`,
`r_overflow`, `s_zero`, `high_s` (the malleable twin (r, n - s) of a valid one).

A case with `known_bug` states the right verdict that the node does not give yet;
its tests are strict xfails, so they flip to failures once the bug is fixed.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from config.settings import DEFAULT_MODEL
from node.wire.envelope import payload_digest
from node.wire.identity import Identity
from node.wire.topics import PROTOCOL_NAME, PROTOCOL_VERSION
from workflows import Simple

CASE_DIR = Path(__file__).parent / "hostile"
DEADLINE_S = 60
Verdict = Literal["reject", "ignore", "error_result", "result", "unsendable", "accept"]
Signature = Literal["valid", "zero", "flip_recovery", "tamper_payload", "r_overflow", "s_zero", "high_s"]
CURVE_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
TASK_TOPICS = ("task", "results", "heartbeat")
_NESTED = re.compile(r'"\$NESTED:(\d+)"')


class CorpusError(Exception):
    """A case file is malformed; the message names the file."""


class Expect(BaseModel):
    """What the node must do with the case."""

    model_config = ConfigDict(extra="forbid")

    verdict: Verdict
    reason: str = ""


class Recipe(BaseModel):
    """How to build a case's message at run time (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    body: Any = None
    body_text: str | None = None
    set: dict[str, Any] = Field(default_factory=dict)
    unset: list[str] = Field(default_factory=list)
    pad_to: int | None = Field(default=None, gt=0)
    signer: Literal["publisher", "other"] = "publisher"
    signature: Signature = "valid"
    timestamp_offset_s: float = 0.0
    envelope_set: dict[str, Any] = Field(default_factory=dict)
    envelope_unset: list[str] = Field(default_factory=list)


class Case(BaseModel):
    """One hostile input and its expected verdict."""

    model_config = ConfigDict(extra="forbid")

    name: str
    category: str
    topic: Literal["task", "results", "heartbeat"] = "task"
    raw_text: str | None = None
    raw_b64: str | None = None
    recipe: Recipe | None = None
    expect: Expect
    known_bug: str | None = None  # the node does not do `expect` yet: the bug, for an xfail

    @model_validator(mode="after")
    def _one_source(self) -> Case:
        sources = [s for s in (self.raw_text, self.raw_b64, self.recipe) if s is not None]
        if len(sources) != 1:
            raise ValueError("exactly one of raw_text, raw_b64 and recipe must be given")
        return self


def load_cases(directory: Path = CASE_DIR) -> list[Case]:
    """Every case of the corpus, sorted by file name; CorpusError names a bad file."""
    cases = []
    for path in sorted(directory.glob("*.json")):
        try:
            case = Case.model_validate_json(path.read_bytes())
        except ValueError as exc:
            raise CorpusError(f"{path.name}: {exc}") from exc
        if case.name != path.stem:
            raise CorpusError(f"{path.name}: name {case.name!r} differs from the file name")
        cases.append(case)
    return cases


@dataclass(frozen=True)
class Actors:
    """Who signs and who receives: the publisher (trusted by the node), a stranger, the node."""

    publisher: Identity
    stranger: Identity
    node_address: str


@dataclass(frozen=True)
class Built:
    """A case's bytes and, for task bodies, the task id it carries (if any)."""

    data: bytes
    task_id: str | None


def valid_task_body(prompt: str = "Say OK.", max_tokens: int = 8) -> dict[str, Any]:
    """A task body the node takes: a Simple workflow for the default model."""
    return {
        "taskId": "$TASK_ID",
        "deadline": "$DEADLINE",
        "input": {"workflow": Simple().workflow(prompt=prompt, max_tokens=max_tokens), "model": [DEFAULT_MODEL]},
        "publicKey": "$PUBKEY",
    }


def build(case: Case, actors: Actors, now_ns: int | None = None) -> Built:
    """The bytes to publish for `case`, with fresh signatures, timestamps and task ids."""
    if case.raw_text is not None:
        return Built(_NESTED.sub(_nested, case.raw_text).encode("utf-8"), None)
    if case.raw_b64 is not None:
        return Built(base64.b64decode(case.raw_b64), None)
    assert case.recipe is not None
    now = time.time_ns() if now_ns is None else now_ns
    return build_recipe(case.recipe, case.topic, actors, now)


def _rfc3339(ns: int) -> str:
    """A time the way Dria's SDK writes a deadline: microseconds and a `+00:00` offset."""
    return datetime.fromtimestamp(ns // 1000 / 1e6, tz=UTC).isoformat(timespec="microseconds")


def _placeholders(actors: Actors, now_ns: int) -> dict[str, Any]:
    other = Identity.from_hex("77" * 32).address
    return {
        "$TASK_ID": "hostile-" + secrets.token_hex(8),
        "$DEADLINE": now_ns + DEADLINE_S * 1_000_000_000,
        "$PAST_DEADLINE": now_ns - 1_000_000_000,
        "$DEADLINE_RFC3339": _rfc3339(now_ns + DEADLINE_S * 1_000_000_000),
        "$PAST_DEADLINE_RFC3339": _rfc3339(now_ns - 1_000_000_000),
        "$FAR_DEADLINE": now_ns + 2 * 3600 * 1_000_000_000,
        "$NOW_NS": now_ns,
        "$NOW_S": now_ns // 1_000_000_000,
        "$PUBKEY": actors.publisher.public_key_compressed.hex(),
        "$PUBLISHER": actors.publisher.address,
        "$PUBLISHER_PEER_ID": actors.publisher.peer_id,
        "$NODE": actors.node_address,
        "$OTHER_NODE": other if other != actors.node_address else Identity.from_hex("78" * 32).address,
    }


def _substitute(value: Any, table: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, table) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, table) for v in value]
    if isinstance(value, str):
        if value in table:
            return table[value]
        if value.startswith("$HUGE:"):
            return "x" * int(value.removeprefix("$HUGE:"))
        if value.startswith("$BRACKETS:"):
            depth = int(value.removeprefix("$BRACKETS:"))
            return "[" * depth + "]" * depth
    return value


def _walk(root: Any, path: str) -> tuple[Any, str | int]:
    """The container holding the last part of a dotted path, and that part."""
    parts: list[str | int] = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = root
    for part in parts[:-1]:
        node = node[part]
    return node, parts[-1]


def _edit(target: Any, sets: dict[str, Any], unsets: list[str], table: dict[str, Any]) -> Any:
    target = copy.deepcopy(target)
    for path, value in sets.items():
        container, key = _walk(target, path)
        container[key] = _substitute(value, table)  # type: ignore[index]
    for path in unsets:
        container, key = _walk(target, path)
        del container[key]  # type: ignore[arg-type]
    return target


def _nested(match: re.Match[str]) -> str:
    depth = int(match[1])
    return "[" * depth + "]" * depth


def _dump(value: Any) -> str:
    return _NESTED.sub(_nested, json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def _body_text(recipe: Recipe, actors: Actors, table: dict[str, Any]) -> tuple[str, str | None]:
    if recipe.body_text is not None:
        text = recipe.body_text
        for placeholder, value in table.items():  # only whole quoted placeholders, e.g. "$NOW_NS"
            text = text.replace(f'"{placeholder}"', json.dumps(value))
        return text, None
    body = valid_task_body() if recipe.body is None else recipe.body
    body = _edit(_substitute(body, table), recipe.set, recipe.unset, table)
    task_id = body.get("taskId") if isinstance(body, dict) else None
    return _dump(body), task_id if isinstance(task_id, str) else None


def _sign(recipe: Recipe, payload: str, actors: Actors) -> tuple[str, int]:
    signer = actors.publisher if recipe.signer == "publisher" else actors.stranger
    if recipe.signature == "tamper_payload":
        signature, recovery_id = signer.sign(payload_digest(payload + "AAAA"))
    else:
        signature, recovery_id = signer.sign(payload_digest(payload))
    match recipe.signature:
        case "zero":
            return "00" * 64, recovery_id
        case "flip_recovery":
            return signature.hex(), 1 - recovery_id
        case "r_overflow":
            return "ff" * 32 + signature.hex()[64:], recovery_id
        case "s_zero":
            return signature.hex()[:64] + "00" * 32, recovery_id
        case "high_s":
            high_s = (CURVE_ORDER - int.from_bytes(signature[32:], "big")).to_bytes(32, "big")
            return (signature[:32] + high_s).hex(), 1 - recovery_id
    return signature.hex(), recovery_id


def _envelope_text(recipe: Recipe, body: str, topic: str, actors: Actors, now_ns: int, table: dict[str, Any]) -> str:
    payload = base64.b64encode(body.encode("utf-8")).decode("ascii")
    signature, recovery_id = _sign(recipe, payload, actors)
    envelope = {
        "payload": payload,
        "topic": topic,
        "version": PROTOCOL_VERSION,
        "protocol": PROTOCOL_NAME,
        "timestamp": now_ns + int(recipe.timestamp_offset_s * 1e9),
        "signature": signature,
        "recovery_id": recovery_id,
    }
    return _dump(_edit(envelope, recipe.envelope_set, recipe.envelope_unset, table))


def build_recipe(recipe: Recipe, topic: str, actors: Actors, now_ns: int) -> Built:
    """The bytes of a recipe published on `topic` at `now_ns`."""
    table = _placeholders(actors, now_ns)
    body, task_id = _body_text(recipe, actors, table)
    text = _envelope_text(recipe, body, topic, actors, now_ns, table)
    if recipe.pad_to is not None:
        text = _pad(recipe, body, topic, actors, now_ns, table)
    return Built(text.encode("utf-8"), task_id)


def _pad(recipe: Recipe, body: str, topic: str, actors: Actors, now_ns: int, table: dict[str, Any]) -> str:
    """Grow the body (an ignored field) and then the envelope (trailing spaces) to `pad_to` bytes."""
    assert recipe.pad_to is not None and body.endswith("}")
    base = len(_envelope_text(recipe, body, topic, actors, now_ns, table).encode("utf-8"))
    room = recipe.pad_to - base - 64  # base64 grows the body by 4/3; keep a margin for rounding
    filler = max(0, room * 3 // 4 - len(',"padding":""'))
    padded = body[:-1] + ',"padding":"' + "x" * filler + '"}'
    text = _envelope_text(recipe, padded, topic, actors, now_ns, table)
    size = len(text.encode("utf-8"))
    if size > recipe.pad_to:
        raise CorpusError(f"padding overshot: {size} > {recipe.pad_to}")
    return text + " " * (recipe.pad_to - size)
