"""Node choice by a heartbeat's per-model free places (`modelCapacity`, protocol 0.4).

A node's models each have places of their own: with its model a full and its model b free, its total
`capacity.free` still shows room, and a-only tasks sent to it came back busy. A choice weighs the free
places of the task's models when the heartbeat says them, never more than the total, clamped like every
heartbeat number, and ignores entries for models the node does not list."""

from __future__ import annotations

import json
import random

import pytest

from node.publisher.heartbeat_claims import MAX_CAPACITY
from node.publisher.node_table import NodeTable
from node.publisher.reputation import Reputation
from node.wire.messages import Capacity, HeartbeatBody, MessageError, decode_heartbeat

X, Y = "a" * 40, "b" * 40


def heartbeat(
    address: str,
    models: list[str],
    free: int,
    per_model: dict[str, int] | None = None,
    at: float = 0.0,
) -> HeartbeatBody:
    """A heartbeat claiming `free` places in all and, when given, `per_model` free places of each model."""
    return HeartbeatBody(
        address=address,
        peer_id="16Uiu2x",
        models=models,
        capacity=Capacity(free=free, max=max(free, 1)),
        pending=0,
        tps={},
        version="0.3.0",
        timestamp=int(at * 1e9),
        model_capacity=None if per_model is None else {m: Capacity(free=n, max=n) for m, n in per_model.items()},
    )


def picks(table: NodeTable, wanted: list[str], times: int = 200) -> set[str]:
    return {table.choose(wanted, now=0).address for _ in range(times)}  # type: ignore[union-attr]


@pytest.mark.parametrize("reputation", [None, Reputation()], ids=["claims", "reputation"])
def test_a_task_for_a_model_that_is_full_on_a_node_goes_to_another_node(reputation: Reputation | None) -> None:
    table = NodeTable(rng=random.Random(1), reputation=reputation)
    # X: model a full, b free; its total still shows 4 free places.
    assert table.update(X, heartbeat(X, ["a", "b"], free=4, per_model={"a": 0, "b": 4}), now=0)
    assert table.update(Y, heartbeat(Y, ["a"], free=1, per_model={"a": 1}), now=0)
    assert picks(table, ["a"]) == {Y}
    assert picks(table, ["b"]) == {X}
    assert picks(table, ["a", "b"]) == {X, Y}  # either model will do: X has room for b
    node = table.get(X)
    assert node is not None
    assert (node.free_for(["a"]), node.free_for(["b"]), node.free_for(["*"]), node.free_for(["a", "b"])) == (0, 4, 4, 4)


def test_a_node_without_per_model_places_is_weighed_by_its_total_as_before() -> None:
    table = NodeTable(rng=random.Random(2))
    assert table.update(X, heartbeat(X, ["a", "b"], free=4), now=0)  # a 0.3 node
    assert table.update(Y, heartbeat(Y, ["a"], free=1, per_model={"a": 1}), now=0)
    assert picks(table, ["a"]) == {X, Y}
    assert table.get(X).free_for(["a"]) == 4  # type: ignore[union-attr]


def test_per_model_places_never_weigh_more_than_the_total_and_are_clamped() -> None:
    table = NodeTable(rng=random.Random(3))
    huge = 2**63 - 1
    assert table.update(X, heartbeat(X, ["a", "b"], free=1, per_model={"a": huge, "b": huge}), now=0)
    assert table.update(Y, heartbeat(Y, ["a"], free=huge, per_model={"a": huge}), now=0)
    x, y = table.get(X), table.get(Y)
    assert x is not None and y is not None
    assert x.model_free == {"a": MAX_CAPACITY, "b": MAX_CAPACITY} and y.model_free == {"a": MAX_CAPACITY}
    assert x.free_for(["a"]) == 1 and x.free_for(["a", "b"]) == 1  # the total bounds what per-model claims add
    assert y.free_for(["a"]) == MAX_CAPACITY
    assert picks(table, ["a"]) <= {X, Y}  # never raises


def test_entries_for_models_the_node_does_not_list_are_ignored() -> None:
    table = NodeTable(rng=random.Random(4))
    # X lists a only; its entry for c neither makes it serve c nor counts for anything.
    assert table.update(X, heartbeat(X, ["a"], free=4, per_model={"a": 0, "c": 1024}), now=0)
    assert table.update(Y, heartbeat(Y, ["a", "c"], free=1, per_model={"a": 1, "c": 1}), now=0)
    x = table.get(X)
    assert x is not None and x.model_free == {"a": 0}
    assert picks(table, ["c"]) == {Y} and picks(table, ["a"]) == {Y}
    # An entry missing for a wanted model it serves: that model's places are unknown, the total counts.
    assert table.update(X, heartbeat(X, ["a", "b"], free=4, per_model={"a": 0}, at=1), now=1)
    assert table.get(X).free_for(["b"]) == 4  # type: ignore[union-attr]


def test_every_node_full_for_the_model_still_gets_a_choice() -> None:
    """As with the total: nodes weighing nothing are chosen when every candidate does (the node answers busy)."""
    table = NodeTable(rng=random.Random(5))
    assert table.update(X, heartbeat(X, ["a", "b"], free=4, per_model={"a": 0, "b": 4}), now=0)
    assert picks(table, ["a"], times=20) == {X}


def test_a_task_sent_counts_against_its_models_places_until_it_ends() -> None:
    table = NodeTable(rng=random.Random(6))
    assert table.update(X, heartbeat(X, ["a", "b"], free=4, per_model={"a": 1, "b": 3}), now=0)
    assert table.update(Y, heartbeat(Y, ["a"], free=1, per_model={"a": 1}), now=0)
    table.reserve(X, ["a"])
    x = table.get(X)
    assert x is not None and (x.free_for(["a"]), x.free_for(["b"]), x.free) == (0, 3, 3)
    assert picks(table, ["a"]) == {Y}
    table.release(X, ["a"])
    x = table.get(X)
    assert x is not None and (x.free_for(["a"]), x.free_for(["b"]), x.free) == (1, 3, 4)
    table.release(X, ["a"])  # nothing left counted: no place made up
    assert table.get(X).free_for(["a"]) == 1  # type: ignore[union-attr]
    table.reserve(X, ["a"])
    assert table.update(X, heartbeat(X, ["a", "b"], free=4, per_model={"a": 1, "b": 3}, at=1), now=1)
    table.release(X, ["a"])  # the node's next heartbeat counted it already
    assert table.get(X).free_for(["a"]) == 1  # type: ignore[union-attr]


def test_hostile_per_model_heartbeats_are_refused_or_harmless() -> None:
    body = heartbeat(X, ["a"], free=1).model_dump(by_alias=True, exclude_none=True)
    for places in (
        {"a": {"free": -5, "max": 1}},
        {"a": {"free": 10**400, "max": 1}},
        {"a": {"free": "9", "max": 1}},
        {f"m{i}": {"free": 1, "max": 1} for i in range(65)},
    ):
        with pytest.raises(MessageError):
            decode_heartbeat(json.dumps({**body, "modelCapacity": places}).encode())
    # Within the wire's bounds: 64 entries of 256-character names, none of them listed, change nothing.
    names = {f"{i:02d}" + "x" * 254: {"free": 2**63 - 1, "max": 2**63 - 1} for i in range(64)}
    decoded = decode_heartbeat(json.dumps({**body, "modelCapacity": names}).encode())
    table = NodeTable(rng=random.Random(7))
    assert table.update(X, decoded, now=0)
    x = table.get(X)
    assert x is not None and x.model_free == {} and x.free_for(["a"]) == 1


def test_a_task_for_either_of_two_models_takes_one_place_not_one_of_each() -> None:
    """A task runs on ONE of its models: a node's per-model places are counted down only for a task that can
    run on one model of it; one for either leaves each model's own count and takes one off the total."""
    table = NodeTable(rng=random.Random(1))
    assert table.update(X, heartbeat(X, ["a", "b"], free=2, per_model={"a": 1, "b": 1}), now=0)
    table.reserve(X, ["a", "b"])
    node = table.get(X)
    assert node is not None and node.free == 1
    assert node.free_for(["a"]) == 1 and node.free_for(["b"]) == 1
    table.release(X, ["a", "b"])
    table.reserve(X, ["a"])  # an a-only task: a is full, b still has its place
    node = table.get(X)
    assert node is not None and node.free_for(["a"]) == 0 and node.free_for(["b"]) == 1
    table.release(X, ["a"])
    node = table.get(X)
    assert node is not None and (node.free, node.free_for(["a"]), node.free_for(["b"])) == (2, 1, 1)
