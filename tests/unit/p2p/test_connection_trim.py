"""Which idle inbound connections the node trims past its budget (the pure choice of node/p2p/connection_trim.py)."""

import pytest
from pydantic import ValidationError

from node.p2p.connection_trim import ConnectionBudget, PeerConnection, choose_trimmed

BUDGET = ConnectionBudget(high_water=4, low_water=2, grace_s=10.0)


def peer(name: str, first_seen: float = 0.0, inbound: bool = True, protected: bool = False) -> PeerConnection:
    return PeerConnection(name, inbound=inbound, first_seen=first_seen, protected=protected)


def test_nothing_is_trimmed_at_or_under_the_high_water_mark() -> None:
    assert choose_trimmed([peer(str(i)) for i in range(4)], now=100.0, budget=BUDGET) == []


def test_past_it_the_oldest_idle_inbound_peers_go_down_to_the_low_water_mark() -> None:
    peers = [peer(f"p{i}", first_seen=float(10 - i)) for i in range(6)]  # p5 is the oldest
    assert choose_trimmed(peers, now=100.0, budget=BUDGET) == ["p5", "p4", "p3", "p2"]


def test_mesh_and_stream_peers_ours_and_new_ones_are_kept_even_if_fewer_are_trimmed() -> None:
    peers = [
        peer("mesh", protected=True),
        peer("dialled-by-us", inbound=False),
        peer("new", first_seen=95.0),  # within the grace period
        peer("idle-a", first_seen=1.0),
        peer("idle-b", first_seen=2.0),
        peer("idle-c", first_seen=3.0),
    ]
    assert choose_trimmed(peers, now=100.0, budget=BUDGET) == ["idle-a", "idle-b", "idle-c"]


def test_a_budget_whose_low_water_is_above_its_high_water_is_refused() -> None:
    with pytest.raises(ValidationError, match="low_water"):
        ConnectionBudget(high_water=2, low_water=3)
