"""The publisher's node table: liveness from heartbeats and weighted choice."""

import json
import random

import pytest

from node.publisher.heartbeat_claims import MAX_CAPACITY, MAX_TPS
from node.publisher.node_table import NodeTable
from node.publisher.reputation import Reputation
from node.wire.messages import Capacity, HeartbeatBody, decode_heartbeat


def heartbeat(
    address: str, models: list[str], free: int = 1, tps: dict[str, float] | None = None, at: float = 0.0, max_: int = 4
) -> HeartbeatBody:
    """A heartbeat whose signed body was stamped at `at` (Unix seconds)."""
    return HeartbeatBody(
        address=address,
        peer_id="16Uiu2x",
        models=models,
        capacity=Capacity(free=free, max=max_),
        pending=0,
        tps=tps or {},
        version="0.3.0",
        timestamp=int(at * 1e9),
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


def test_default_ttl_is_two_heartbeat_intervals() -> None:
    table = NodeTable()
    assert table.update(A, heartbeat(A, ["m"], at=100), now=100)
    assert table.live(now=160) and not table.live(now=161)


def test_liveness_is_judged_by_the_signed_body_timestamp() -> None:
    table = NodeTable(ttl=60)
    old = heartbeat(A, ["m"], at=1000)
    assert table.update(A, old, now=1000)
    # The same signed body re-sent later (a fresh envelope around it) keeps nothing alive.
    assert not table.update(A, old, now=1050)
    assert table.live(now=1061) == []
    assert not table.update(A, old, now=1061)  # stale on arrival: ignored
    assert table.live(now=1061) == []


def test_a_heartbeat_older_than_the_newest_seen_is_ignored() -> None:
    table = NodeTable(ttl=60)
    assert table.update(A, heartbeat(A, ["m"], free=3, at=100), now=100)
    assert not table.update(A, heartbeat(A, ["m"], free=0, at=90), now=101)  # an older one replayed
    assert table.live(now=101)[0].free == 3
    assert table.update(A, heartbeat(A, ["m"], free=0, at=101), now=101)
    assert table.live(now=101)[0].free == 0


def test_a_heartbeat_from_the_future_is_ignored() -> None:
    table = NodeTable(ttl=60, max_skew=60)
    assert not table.update(A, heartbeat(A, ["m"], at=10_000), now=100)
    assert table.update(A, heartbeat(A, ["m"], at=150), now=100)  # within the skew


@pytest.mark.parametrize(
    ("free", "max_", "tps", "expected_free", "expected_tps"),
    [
        (2**63 - 1, 2**63 - 1, 1e308, MAX_CAPACITY, MAX_TPS),
        (0, 0, 0.0, 0, 0.0),
        (5, 4, 2e6, 5, MAX_TPS),
    ],
)
def test_heartbeat_numbers_are_clamped_before_weighing(
    free: int, max_: int, tps: float, expected_free: int, expected_tps: float
) -> None:
    table = NodeTable(rng=random.Random(5))
    assert table.update(A, heartbeat(A, ["m"], free=free, max_=max_, tps={"m": tps}), now=0)
    assert table.update(B, heartbeat(B, ["m"], free=1, tps={"m": 1.0}), now=0)
    [node] = [n for n in table.live(now=0) if n.address == A]
    assert (node.free, node.tps["m"]) == (expected_free, expected_tps) and node.max <= MAX_CAPACITY
    picks = {table.choose(["m"], now=0).address for _ in range(200)}  # never raises
    assert picks <= {A, B}


def test_extreme_heartbeats_never_reach_the_table() -> None:
    """`free = 10**400` or `tps = Infinity` is refused when the body is parsed; clamping covers the rest."""
    from node.wire.messages import MessageError

    body = heartbeat(A, ["m"]).model_dump(by_alias=True)
    for change in ({"capacity": {"free": 10**400, "max": 1}}, {"tps": {"m": float("inf")}}):
        with pytest.raises(MessageError):
            decode_heartbeat(json.dumps({**body, **change}).encode())


def test_table_stays_bounded_in_bytes() -> None:
    table = NodeTable(max_nodes=10_000, max_bytes=200_000)
    models = [f"model-{i:03d}-" + "x" * 240 for i in range(60)]
    for i in range(100):
        address = f"{i:040x}"
        table.update(address, heartbeat(address, models, at=i * 0.01), now=1)
        assert table.bytes_used <= 200_000
    live = table.live(now=1)
    assert 0 < len(live) < 100 and f"{99:040x}" in {n.address for n in live}
    assert table.bytes_used == sum(n.size for n in live)


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
        table.update(address, heartbeat(address, ["m"], at=i * 0.01), now=i * 0.01)
    assert len(table.live(now=10)) == 100
    newest = f"{999:040x}"
    assert newest in {node.address for node in table.live(now=10)}


def test_a_flood_stamped_ahead_of_time_does_not_push_out_a_node_that_keeps_heartbeating() -> None:
    # Keys stamped 59 s ahead (within the skew allowed) used to outrank the honest heartbeats.
    table = NodeTable(max_nodes=100)
    for i in range(1000):
        if i % 50 == 0:
            table.update(A, heartbeat(A, ["m"], at=i), now=i)
        address = f"{i:040x}"
        table.update(address, heartbeat(address, ["m"], at=i + 59), now=i)
        assert table.get(A) is not None, f"pushed out after {i + 1} keys"
    assert len(table.known()) == 100
    assert table.get(f"{899:040x}") is None and table.get(f"{999:040x}") is not None  # the least recently heard went


def test_a_flood_of_new_keys_does_not_push_out_live_nodes_that_served_us() -> None:
    # Heartbeats of the largest size fill the default 16 MiB in about 200 keys: a few new keys a
    # second would keep out every node that heartbeats each 30 s, unless what it did for us counts.
    reputation = Reputation()
    table = NodeTable(max_nodes=100, reputation=reputation)
    table.update(A, heartbeat(A, ["m"], at=0), now=0)
    table.update(B, heartbeat(B, ["m"], at=0), now=0)
    reputation.record_result(A, 1.0, 10, 1.0, 10.0, now=0)  # A answered a task of ours; B never did
    table.update(C, heartbeat(C, ["m"], at=0), now=0)
    reputation.record_result(C, 1.0, 10, 1.0, 10.0, now=0)
    reputation.record_verification(C, passed=False, now=0)  # but C's result failed verification: banned
    for i in range(1000):
        address = f"{i:040x}"
        table.update(address, heartbeat(address, ["m"], at=1 + i * 0.01), now=1 + i * 0.01)
    assert table.get(A) is not None and table.get(B) is None and table.get(C) is None
    assert len(table.known()) == 100 and table.get(f"{999:040x}") is not None
    for i in range(1000, 1200):  # once silent past the ttl, it goes like any other
        address = f"{i:040x}"
        table.update(address, heartbeat(address, ["m"], at=61 + i * 0.01), now=61 + i * 0.01)
    assert table.get(A) is None


def test_addrs_are_kept_and_a_leaving_node_is_never_chosen() -> None:
    table = NodeTable()
    addrs = ["/ip4/127.0.0.1/tcp/1/p2p/16Uiu2x"]
    assert table.update(A, heartbeat(A, ["m"], at=100).model_copy(update={"addrs": addrs}), now=100)
    assert table.update(B, heartbeat(B, ["m"], free=4, at=100), now=100)
    assert {n.address: n.addrs for n in table.live(now=100)} == {A: tuple(addrs), B: ()}
    assert table.update(B, heartbeat(B, ["m"], free=0, at=101).model_copy(update={"leaving": True}), now=101)
    assert {table.choose(["m"], now=101).address for _ in range(50)} == {A}  # type: ignore[union-attr]
    assert table.choose(["m"], exclude={A}, now=101) is None
    # A restart under the same key (a newer heartbeat without `leaving`) makes it choosable again.
    assert table.update(B, heartbeat(B, ["m"], free=4, at=102), now=102)
    assert table.choose(["m"], exclude={A}, now=102).address == B  # type: ignore[union-attr]
