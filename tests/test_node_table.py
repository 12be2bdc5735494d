"""The publisher's node table: liveness from heartbeats and weighted choice."""

import random

from node.messages import Capacity, HeartbeatBody
from node.node_table import NodeTable


def heartbeat(address: str, models: list[str], free: int = 1, tps: dict[str, float] | None = None) -> HeartbeatBody:
    return HeartbeatBody(
        address=address, peer_id="16Uiu2x", models=models, capacity=Capacity(free=free, max=4),
        pending=0, tps=tps or {}, version="0.3.0", timestamp=1,
    )


A, B, C = "a" * 40, "b" * 40, "c" * 40


def test_only_signers_own_heartbeat_counts() -> None:
    table = NodeTable()
    table.update(B, heartbeat(A, ["m"]), now=0)  # B speaking for A is ignored
    assert table.live(now=0) == []


def test_nodes_silent_for_the_ttl_are_gone() -> None:
    table = NodeTable(ttl=90)
    table.update(A, heartbeat(A, ["m"]), now=0)
    assert [n.address for n in table.live(now=90)] == [A]
    assert table.live(now=91) == []
    assert table.choose(["m"], now=91) is None


def test_choice_respects_models_and_exclusions() -> None:
    table = NodeTable(rng=random.Random(1))
    table.update(A, heartbeat(A, ["m1"]), now=0)
    table.update(B, heartbeat(B, ["m2"]), now=0)
    assert {table.choose(["m2"], now=1).address for _ in range(20)} == {B}
    assert {table.choose(["*"], now=1).address for _ in range(50)} == {A, B}
    assert table.choose(["m2"], exclude={B}, now=1) is None
    assert table.choose(["m3"], now=1) is None


def test_choice_is_weighted_by_free_capacity_and_speed() -> None:
    table = NodeTable(rng=random.Random(2))
    table.update(A, heartbeat(A, ["m"], free=4, tps={"m": 100.0}), now=0)
    table.update(B, heartbeat(B, ["m"], free=1, tps={"m": 10.0}), now=0)
    table.update(C, heartbeat(C, ["m"], free=0, tps={"m": 1000.0}), now=0)
    picks = [table.choose(["m"], now=1).address for _ in range(2000)]
    assert picks.count(C) == 0  # full nodes are not chosen while others have room
    assert 0.95 < picks.count(A) / len(picks) < 0.995  # 400:10


def test_reserve_counts_sent_tasks_until_the_next_heartbeat() -> None:
    table = NodeTable(rng=random.Random(3))
    table.update(A, heartbeat(A, ["m"], free=1), now=0)
    table.update(B, heartbeat(B, ["m"], free=1), now=0)
    first = table.choose(["m"], now=1).address
    table.reserve(first)
    assert {table.choose(["m"], now=1).address for _ in range(20)} == ({A, B} - {first})


def test_table_stays_bounded_under_a_flood_of_new_keys() -> None:
    table = NodeTable(ttl=90, max_nodes=100)
    for i in range(1000):
        address = f"{i:040x}"
        table.update(address, heartbeat(address, ["m"]), now=i * 0.01)
    assert len(table.live(now=10)) == 100
    newest = f"{999:040x}"
    assert newest in {node.address for node in table.live(now=10)}
