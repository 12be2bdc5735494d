"""Bodies of the task, results and heartbeat topics (PROTOCOL.md sections 4-6)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from node.wire import ecies
from node.wire.identity import Identity
from node.wire.messages import (
    Capacity,
    HeartbeatBody,
    MessageError,
    ResultBody,
    Stats,
    TaskBody,
    TaskInput,
    decode_heartbeat,
    decode_result,
    decode_task,
    encode_body,
)
from node.wire.wire_time import parse_rfc3339_ns
from tests.support.bloom_filters import bloom_of
from tests.support.protocol_files import EXAMPLES

PUBLISHER = Identity.from_hex("11" * 32)
NODE = Identity.from_hex("22" * 32)
STATS = {"receivedAt": 1, "publishedAt": 4, "executionStartedAt": 2, "executionEndedAt": 3}  # the 0.3.0 form
STATS_RFC3339 = {
    "receivedAt": "1970-01-01T00:00:00.000000001Z",
    "publishedAt": "1970-01-01T00:00:00.000000004Z",
    "executionStartedAt": "1970-01-01T00:00:00.000000002Z",
    "executionEndedAt": "1970-01-01T00:00:00.000000003Z",
}


def task_json(**changes: Any) -> dict[str, Any]:
    task: dict[str, Any] = {
        "taskId": "u7Tq-9_x",
        "deadline": 1_733_160_600_000_000_000,
        "input": {
            "workflow": json.loads((EXAMPLES / "simple.json").read_text()),
            "model": ["gemma3:270m", "llamacpp", "*"],
            "prompt": None,
        },
        "filter": {"hex": bloom_of([NODE.address_bytes]).hex, "hashes": 7},
        "pickedNodes": [NODE.address],
        "publicKey": PUBLISHER.public_key_compressed.hex(),
    }
    task.update(changes)
    return task


def task_error(task: dict[str, Any]) -> str:
    with pytest.raises(MessageError) as info:
        decode_task(json.dumps(task).encode())
    return str(info.value)


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.json")))
def test_task_camel_case_round_trip(example: str) -> None:
    workflow = json.loads((EXAMPLES / example).read_text())
    raw = task_json(input={"workflow": workflow, "model": ["*"], "prompt": "hi"})
    task = decode_task(json.dumps(raw).encode())
    assert task.task_id == "u7Tq-9_x"
    assert task.picked_nodes == [NODE.address]
    assert task.public_key == raw["publicKey"]
    assert task.input.workflow == workflow  # kept raw, nulls included
    assert task.input.prompt == "hi"
    encoded = encode_body(task)
    assert json.loads(encoded) == raw
    assert decode_task(encoded) == task


def test_task_built_in_python_omits_none_optionals() -> None:
    task = TaskBody(
        task_id="t1",
        deadline=5,
        input=TaskInput(workflow={"a": None}, model=["*"]),
        public_key=PUBLISHER.public_key_uncompressed.hex(),
    )
    wire = json.loads(encode_body(task))
    assert wire == {
        "taskId": "t1",
        "deadline": 5,
        "input": {"workflow": {"a": None}, "model": ["*"]},
        "publicKey": PUBLISHER.public_key_uncompressed.hex(),
    }


def test_picked_nodes_are_normalized() -> None:
    picked_upper = decode_task(json.dumps(task_json(pickedNodes=["0x" + NODE.address.upper()])).encode())
    assert picked_upper.picked_nodes == [NODE.address]


@pytest.mark.parametrize("task_id", ["", "a" * 129, "has space", "semi;colon", "ünï", 42])
def test_invalid_task_id(task_id: Any) -> None:
    assert "taskId" in task_error(task_json(taskId=task_id))


def test_task_id_limits_accepted() -> None:
    assert decode_task(json.dumps(task_json(taskId="a" * 128)).encode()).task_id == "a" * 128


@pytest.mark.parametrize(
    "public_key",
    ["", "zz", "02" + "ff" * 32, "05" + "11" * 32, "04" + "00" * 64, "00" * 64, "ab" * 20, 5],
)
def test_bad_public_key(public_key: Any) -> None:
    assert "publicKey" in task_error(task_json(publicKey=public_key))


def test_public_key_forms_accepted() -> None:
    for key in (
        PUBLISHER.public_key_compressed,
        PUBLISHER.public_key_uncompressed,
        PUBLISHER.public_key_uncompressed[1:],
    ):
        task = decode_task(json.dumps(task_json(publicKey=key.hex())).encode())
        ciphertext = ecies.encrypt(task.public_key, b"result")
        assert ecies.decrypt(PUBLISHER.secret, ciphertext) == b"result"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"deadline": "1733160600000000000"}, "deadline"),
        ({"deadline": True}, "deadline"),
        ({"deadline": -1}, "deadline"),
        ({"deadline": 2**63}, "deadline"),
        ({"deadline": 10**400}, "deadline"),
        ({"deadline": 1.7e18}, "deadline"),
        ({"deadline": "2025-04-03T10:05:00"}, "deadline"),  # no offset
        ({"deadline": "2025-04-03"}, "deadline"),
        ({"deadline": "2025-02-30T10:05:00Z"}, "deadline"),
        ({"deadline": "2025-04-03T10:05:00." + "1" * 65 + "Z"}, "deadline"),  # RFC 3339 allows many; 65 is silly
        ({"deadline": "1969-12-31T23:59:59Z"}, "deadline"),
        ({"deadline": "2262-04-12T00:00:00Z"}, "deadline"),  # past int64 nanoseconds
        ({"deadline": "2025-04-03T10:05:00.\u0661\u0662Z"}, "deadline"),  # digits of another script
        ({"deadline": "2025-04-03T10:05:00+\u0660\u0661:00"}, "deadline"),
        ({"input": {"workflow": {}, "model": []}}, "input.model"),
        ({"input": {"workflow": {}, "model": [""]}}, "input.model.0"),
        ({"input": {"workflow": {}, "model": ["m"] * 65}}, "input.model"),
        ({"input": {"workflow": [], "model": ["m"]}}, "input.workflow"),
        ({"input": {"model": ["m"]}}, "input.workflow"),
        ({"input": {"workflow": {}, "model": ["m"], "prompt": 3}}, "input.prompt"),
        ({"filter": {"hex": "", "hashes": 7}}, "filter"),
        ({"filter": {"hex": "abc", "hashes": 7}}, "filter"),
        ({"filter": {"hex": "zz", "hashes": 7}}, "filter"),
        ({"filter": {"hex": "00", "hashes": 0}}, "filter"),
        ({"filter": {"hex": "00", "hashes": 65}}, "filter"),
        ({"filter": {"hex": "00" * 70_000, "hashes": 7}}, "filter.hex"),
        ({"pickedNodes": ["not an address"]}, "pickedNodes.0"),
        ({"pickedNodes": "d79fdf178547614cfdd0df6397c53569716bd596"}, "pickedNodes"),
    ],
)
def test_invalid_task_fields_are_named(changes: dict[str, Any], field: str) -> None:
    message = task_error(task_json(**changes))
    assert message.startswith(f"task body: {field}"), message


@pytest.mark.parametrize(
    ("deadline", "ns"),
    [
        ("2025-04-03T10:05:00.123456+00:00", 1_743_674_700_123_456_000),  # what Dria's SDK sends
        ("2025-04-03T10:05:00Z", 1_743_674_700_000_000_000),
        ("2025-04-03T12:05:00.123456789+02:00", 1_743_674_700_123_456_789),
        ("2025-04-03t10:05:00.5z", 1_743_674_700_500_000_000),
        (1_743_674_700_123_456_789, 1_743_674_700_123_456_789),
        (2**63 - 1, 2**63 - 1),
    ],
)
def test_deadline_forms_become_nanoseconds(deadline: Any, ns: int) -> None:
    task = decode_task(json.dumps(task_json(deadline=deadline)).encode())
    assert task.deadline == ns
    assert json.loads(encode_body(task))["deadline"] == ns


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_inside_a_workflow_are_refused(token: str) -> None:
    raw = json.dumps(task_json(input={"workflow": {"config": {"max_time": 1}, "tasks": [{"x": [2]}]}, "model": ["*"]}))
    for original, hostile in (('"max_time": 1', f'"max_time": {token}'), ('"x": [2]', f'"x": [{token}]')):
        with pytest.raises(MessageError, match="not a finite number"):
            decode_task(raw.replace(original, hostile).encode())


def test_missing_task_field_is_named() -> None:
    raw = task_json()
    del raw["input"]
    assert task_error(raw).startswith("task body: input: Field required")


def test_not_json_is_a_message_error() -> None:
    for body in (b"", b"{", b"\xff", b"[]", b"null"):
        with pytest.raises(MessageError):
            decode_task(body)


def result_json(**changes: Any) -> dict[str, Any]:
    result: dict[str, Any] = {"taskId": "t1", "model": "gemma3:270m", "stats": dict(STATS)}
    result.update(changes)
    return result


def test_result_success_round_trip_with_extra_stats() -> None:
    ciphertext = ecies.encrypt(PUBLISHER.public_key_compressed, b"a haiku").hex()
    raw = result_json(ciphertext=ciphertext, stats={**STATS, "inputTokens": 12, "outputTokens": 30})
    result = decode_result(json.dumps(raw).encode())
    assert result.stats.execution_ended_at == 3
    assert result.stats.model_extra == {"inputTokens": 12, "outputTokens": 30}
    assert json.loads(encode_body(result)) == {**raw, "stats": {**STATS_RFC3339, "inputTokens": 12, "outputTokens": 30}}
    assert ecies.decrypt(PUBLISHER.secret, bytes.fromhex(result.ciphertext or "")) == b"a haiku"


def test_result_error_round_trip_built_in_python() -> None:
    result = ResultBody(
        task_id="t1",
        error="deadline passed",
        model="gemma3:270m",
        stats=Stats(received_at=1, published_at=4, execution_started_at=2, execution_ended_at=3),
    )
    wire = json.loads(encode_body(result))
    assert wire == result_json(error="deadline passed", stats=STATS_RFC3339)
    assert decode_result(encode_body(result)) == result


@pytest.mark.parametrize(
    "changes",
    [
        {"ciphertext": "00ff", "error": "boom"},
        {},
        {"ciphertext": None, "error": None},
    ],
)
def test_result_needs_exactly_one_outcome(changes: dict[str, Any]) -> None:
    with pytest.raises(MessageError, match="exactly one of ciphertext and error"):
        decode_result(json.dumps(result_json(**changes)).encode())


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"ciphertext": "xyz", "stats": STATS}, "ciphertext"),
        (
            {"error": "e", "stats": {k: v for k, v in STATS.items() if k != "publishedAt"}},
            "stats.publishedAt",
        ),
        ({"error": "e", "stats": {**STATS, "receivedAt": "1"}}, "stats.receivedAt"),
        ({"error": "e", "taskId": "bad id"}, "taskId"),
    ],
)
def test_invalid_result_fields_are_named(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(MessageError) as info:
        decode_result(json.dumps(result_json(**changes)).encode())
    assert str(info.value).startswith(f"result body: {field}"), str(info.value)


def test_stats_are_written_as_rfc3339_and_read_in_both_forms() -> None:
    stats = {
        "receivedAt": "2025-04-03T10:00:00.101000000Z",
        "executionStartedAt": "2025-04-03T10:00:00.102000000Z",
        "executionEndedAt": "2025-04-03T10:00:01.502000000Z",
        "publishedAt": "2025-04-03T10:00:01.503000000Z",
    }
    result = decode_result(json.dumps(result_json(error="e", stats=stats)).encode())
    assert result.stats.received_at == 1_743_674_400_101_000_000
    assert json.loads(encode_body(result))["stats"] == stats
    mixed = {**stats, "publishedAt": 1_743_674_401_503_000_000, "receivedAt": "2025-04-03T12:00:00.101+02:00"}
    assert decode_result(json.dumps(result_json(error="e", stats=mixed)).encode()) == result


def test_rfc3339_times_take_any_number_of_fraction_digits_and_keep_nanoseconds() -> None:
    assert parse_rfc3339_ns("2025-04-03T10:00:00.1234567891234Z") == 1_743_674_400_123_456_789
    assert parse_rfc3339_ns("2025-04-03T10:00:00.1Z") == 1_743_674_400_100_000_000
    with pytest.raises(ValueError):
        parse_rfc3339_ns("2025-04-03T10:00:00." + "1" * 65 + "Z")


def test_stats_strings_parse_the_way_dria_sdk_parses_them() -> None:
    from datetime import datetime

    stats = Stats(received_at=1_743_674_400_123_456_789, published_at=2, execution_started_at=3, execution_ended_at=4)
    text = json.loads(stats.model_dump_json(by_alias=True))["receivedAt"]
    assert text == "2025-04-03T10:00:00.123456789Z"
    head, fraction = text.rstrip("Z").split(".")
    parsed = datetime.fromisoformat(f"{head}.{fraction[:6]}+00:00")  # the SDK cuts to 6 digits
    assert int(parsed.timestamp()) * 1_000_000_000 + 123_456_000 == 1_743_674_400_123_456_000


@pytest.mark.parametrize("value", [-1, 2**63, 1.5, True, "2025-04-03T10:00:00", "yesterday", "NaN"])
def test_bad_stats_are_refused(value: Any) -> None:
    with pytest.raises(MessageError, match="stats.receivedAt"):
        decode_result(json.dumps(result_json(error="e", stats={**STATS, "receivedAt": value})).encode())


def test_non_finite_or_huge_stats_extras_are_refused() -> None:
    raw = json.dumps(result_json(error="e", stats={**STATS, "tokens": 1})).replace('"tokens": 1', '"tokens": NaN')
    with pytest.raises(MessageError, match="not a finite number"):
        decode_result(raw.encode())
    with pytest.raises(MessageError, match="tokens does not fit in int64"):
        decode_result(json.dumps(result_json(error="e", stats={**STATS, "tokens": 2**63})).encode())
    assert decode_result(json.dumps(result_json(error="e", stats={**STATS, "tokens": 2**63 - 1})).encode())


def heartbeat_json(**changes: Any) -> dict[str, Any]:
    heartbeat: dict[str, Any] = {
        "address": NODE.address,
        "peerId": NODE.peer_id,
        "models": ["gemma3:270m"],
        "capacity": {"free": 3, "max": 4},
        "pendingTasks": 1,
        "pending_tasks": [1, 0],
        "tps": {"gemma3:270m": 41.7},
        "version": "0.3.0",
        "timestamp": 1_733_160_000_123_456_789,
    }
    heartbeat.update(changes)
    return heartbeat


def test_heartbeat_round_trip() -> None:
    raw = heartbeat_json()
    heartbeat = decode_heartbeat(json.dumps(raw).encode())
    assert heartbeat.peer_id.startswith("16Uiu2")
    assert heartbeat.capacity == Capacity(free=3, max=4)
    assert json.loads(encode_body(heartbeat)) == raw
    built = HeartbeatBody(
        address=NODE.address,
        peer_id=NODE.peer_id,
        models=["gemma3:270m"],
        capacity=Capacity(free=3, max=4),
        pending=1,
        tps={"gemma3:270m": 41.7},
        version="0.3.0",
        timestamp=1_733_160_000_123_456_789,
    )
    assert built == heartbeat


def test_heartbeat_of_protocol_0_3_0_gets_the_dria_pending_list() -> None:
    raw = heartbeat_json(pendingTasks=2)
    del raw["pending_tasks"]
    heartbeat = decode_heartbeat(json.dumps(raw).encode())
    assert (heartbeat.pending, heartbeat.pending_tasks) == (2, (2, 0))
    assert json.loads(encode_body(heartbeat))["pending_tasks"] == [2, 0]


def test_heartbeat_tps_integer_is_a_float() -> None:
    assert decode_heartbeat(json.dumps(heartbeat_json(tps={"m": 40})).encode()).tps == {"m": 40.0}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"address": "xyz"}, "address"),
        ({"capacity": {"free": -1, "max": 4}}, "capacity.free"),
        ({"pendingTasks": "1"}, "pendingTasks"),
        ({"pendingTasks": 2**63}, "pendingTasks"),
        ({"pending_tasks": 1}, "pending_tasks"),
        ({"pending_tasks": [1, -1]}, "pending_tasks.1"),
        ({"capacity": {"free": 10**400, "max": 4}}, "capacity.free"),
        ({"capacity": {"free": 1, "max": 2**63}}, "capacity.max"),
        ({"timestamp": 2**63}, "timestamp"),
        ({"tps": {"m": 1e999}}, "tps.m"),
        ({"tps": {"m": "fast"}}, "tps.m"),
        ({"tps": {"m": -1.0}}, "tps.m"),
        ({"peerId": ""}, "peerId"),
    ],
)
def test_invalid_heartbeat_fields_are_named(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(MessageError) as info:
        decode_heartbeat(json.dumps(heartbeat_json(**changes)).encode())
    assert str(info.value).startswith(f"heartbeat body: {field}"), str(info.value)


def test_heartbeat_rejects_nan_and_infinity() -> None:
    for value in (b"NaN", b"Infinity", b"1e999"):
        body = json.dumps(heartbeat_json(tps={})).encode().replace(b'"tps": {}', b'"tps": {"m": ' + value + b"}")
        with pytest.raises(MessageError):
            decode_heartbeat(body)


def test_heartbeat_model_capacity_round_trips_and_its_absence_is_a_0_3_heartbeat() -> None:
    places = {"gemma3:270m": {"free": 0, "max": 2}, "other": {"free": 3, "max": 3}}
    raw = heartbeat_json(modelCapacity=places)
    heartbeat = decode_heartbeat(json.dumps(raw).encode())
    assert heartbeat.model_capacity == {"gemma3:270m": Capacity(free=0, max=2), "other": Capacity(free=3, max=3)}
    assert json.loads(encode_body(heartbeat)) == raw  # `other` is not in `models`: valid, publishers ignore it
    assert decode_heartbeat(json.dumps(heartbeat_json()).encode()).model_capacity is None
    assert "modelCapacity" not in json.loads(encode_body(decode_heartbeat(json.dumps(heartbeat_json()).encode())))


@pytest.mark.parametrize(
    ("places", "field"),
    [
        ({"m": {"free": -1, "max": 4}}, "modelCapacity.m.free"),
        ({"m": {"free": "1", "max": 4}}, "modelCapacity.m.free"),
        ({"m": {"free": 1.5, "max": 4}}, "modelCapacity.m.free"),
        ({"m": {"free": 2**63, "max": 4}}, "modelCapacity.m.free"),
        ({"m": {"free": 10**400, "max": 4}}, "modelCapacity.m.free"),
        ({"m": {"free": 1}}, "modelCapacity.m.max"),
        ({"m": 3}, "modelCapacity.m"),
        ({"": {"free": 1, "max": 1}}, "modelCapacity."),
        ({f"m{i}": {"free": 1, "max": 1} for i in range(65)}, "modelCapacity"),
        ([{"free": 1, "max": 1}], "modelCapacity"),
        ("lots", "modelCapacity"),
    ],
)
def test_a_malformed_model_capacity_makes_the_heartbeat_invalid(places: Any, field: str) -> None:
    """Held to `capacity`'s rules: a node that follows the protocol never sends one (section 7: rejected)."""
    with pytest.raises(MessageError) as info:
        decode_heartbeat(json.dumps(heartbeat_json(modelCapacity=places)).encode())
    assert str(info.value).startswith(f"heartbeat body: {field}"), str(info.value)


def test_a_model_capacity_of_nan_or_infinity_is_refused() -> None:
    for value in (b"NaN", b"Infinity", b"1e999"):
        body = json.dumps(heartbeat_json(modelCapacity={"m": {"free": 1, "max": 1}})).encode()
        with pytest.raises(MessageError):
            decode_heartbeat(body.replace(b'"free": 1,', b'"free": ' + value + b","))
