"""Node choice against a table full of Sybil keys: 10,000 signed heartbeats from fresh keys that claim the
task's model (every model), the most free places and the highest speed the table allows. The work of one
choice stays bounded, their number buys them no share of the choices once a node was measured serving, and
a node measured serving is never pushed out of the reputation by their rows, nor out of the gossip peers
the publisher dials."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from node.p2p.host import P2PHost
from node.publisher.gossip_peers import GossipPeerKeeper
from node.publisher.node_table import NodeTable
from node.publisher.reputation import Reputation
from node.publisher.reputation_records import ReputationSettings
from node.wire.identity import Identity
from node.wire.inbound import Inbound
from node.wire.messages import HeartbeatBody
from tests.support.heartbeats import signed_heartbeat

FAKES = 10_000
NOW = 1_800_000_000.0


def heartbeat(identity: Identity, models: list[str], at: float = NOW) -> Inbound:
    """A Sybil's heartbeat: the most free places and the highest speed the table allows, dialable."""
    return signed_heartbeat(identity, models, tps=1e6, at=at, dialable=True)


@pytest.fixture(scope="module")
def fakes() -> list[Inbound]:
    return [heartbeat(Identity(random.Random(i).randbytes(32)), ["m", "*", "other"]) for i in range(FAKES)]


def heard(table: NodeTable, inbound: Inbound, at: float = NOW) -> bool:
    """The table takes the heartbeat as the Client does (with its envelope)."""
    assert isinstance(inbound.body, HeartbeatBody)
    return table.update(inbound.sender, inbound.body, now=at, envelope=inbound.signed.envelope)


class CountingReputation(Reputation):
    """Counts the nodes it weighs."""

    def __init__(self, settings: ReputationSettings | None = None) -> None:
        super().__init__(settings=settings)
        self.weighed = 0

    def weight(self, address: str, claimed_free: int, claimed_tps: float, now: float | None = None) -> float:
        self.weighed += 1
        return super().weight(address, claimed_free, claimed_tps, now)


def table_of(fakes: list[Inbound], reputation: Reputation, at: float = NOW) -> NodeTable:
    table = NodeTable(reputation=reputation, rng=random.Random(1), max_bytes=1 << 30)
    for inbound in fakes:
        assert heard(table, inbound, at)
    return table


def honest_node(table: NodeTable, reputation: Reputation, tasks: int = 3) -> str:
    """A node that heartbeats honestly and answered `tasks` tasks of ours."""
    identity = Identity(random.Random("honest").randbytes(32))
    inbound = heartbeat(identity, ["m"])
    assert heard(table, inbound)
    for _ in range(tasks):
        reputation.record_result(identity.address, 2.0, 60, 1.5, 1e6, now=NOW)
    return identity.address


def test_one_choice_weighs_a_bounded_number_of_nodes_whatever_the_table_holds(fakes: list[Inbound]) -> None:
    reputation = CountingReputation()
    table = table_of(fakes, reputation)
    for wanted in (["m"], ["*"], ["m", "other"]):
        reputation.weighed = 0
        assert table.choose(wanted, now=NOW + 1) is not None
        assert reputation.weighed <= 2 * 64, f"{wanted}: weighed {reputation.weighed} of {FAKES} nodes"


def test_a_node_measured_serving_keeps_its_choices_among_ten_thousand_fresh_keys(fakes: list[Inbound]) -> None:
    reputation = Reputation()
    table = table_of(fakes, reputation)
    honest = honest_node(table, reputation)
    picks = [table.choose(["m"], now=NOW + 1) for _ in range(500)]
    share = sum(p is not None and p.address == honest for p in picks) / len(picks)
    assert share >= 0.8, f"the measured node got {share:.1%} of the choices"
    # Not measured ones still get tried (a new honest node must be able to earn a measurement) ...
    assert share < 1.0
    # ... but not once the call's exploration is spent, while the measured node has room.
    assert {table.choose(["m"], now=NOW + 1, explore=False).address for _ in range(50)} == {honest}  # type: ignore[union-attr]
    assert table.choose(["m"], exclude={honest}, now=NOW + 1, explore=False) is not None  # then any other


def test_a_measured_node_with_no_free_place_is_chosen_over_keys_once_exploration_is_spent(
    fakes: list[Inbound],
) -> None:
    """Its heartbeat's `free` is up to an interval old (and a one-place node says 0 right after our own task):
    keys that claim free places without end must not take every choice of the call then."""
    reputation = Reputation()
    table = table_of(fakes, reputation)
    honest = honest_node(table, reputation)
    identity = Identity(random.Random("honest").randbytes(32))
    assert heard(table, signed_heartbeat(identity, ["m"], free=0, tps=1e6, at=NOW + 0.5, dialable=True), NOW + 0.5)
    assert table.get(honest).free_for(["m"]) == 0  # type: ignore[union-attr]
    assert {table.choose(["m"], now=NOW + 1, explore=False).address for _ in range(50)} == {honest}  # type: ignore[union-attr]
    assert table.choose(["m"], exclude={honest}, now=NOW + 1, explore=False) is not None  # then any other


def test_keys_that_fail_when_tried_shrink_the_share_all_such_keys_get(fakes: list[Inbound]) -> None:
    reputation = Reputation()
    table = table_of(fakes, reputation)
    honest = honest_node(table, reputation)
    for inbound in fakes[:30]:  # each tried once: it took the task and never answered
        reputation.record_timeout(inbound.sender, now=NOW)
    assert reputation.explore_share(now=NOW + 1) == pytest.approx(0.01)
    picks = [table.choose(["m"], now=NOW + 1) for _ in range(500)]
    share = sum(p is not None and p.address == honest for p in picks) / len(picks)
    assert share >= 0.96, f"the measured node got {share:.1%} of the choices"
    # What a node measured serving does counts no more; new nodes that answer raise it again.
    for _ in range(30):
        reputation.record_timeout(honest, now=NOW + 1)
    assert reputation.explore_share(now=NOW + 1) == pytest.approx(0.01)
    for inbound in fakes[-10:]:
        reputation.record_result(inbound.sender, 2.0, 60, 1.5, 0.0, now=NOW + 1)
    assert reputation.explore_share(now=NOW + 1) == pytest.approx(
        0.1 * (11 + 1) / (11 + 30 + 1), rel=1e-3
    )  # the honest one's first answer counted too


def test_a_live_node_is_found_among_ten_thousand_silent_ones(fakes: list[Inbound]) -> None:
    reputation = Reputation()
    table = table_of(fakes, reputation, at=NOW)  # silent past the ttl by NOW + 100
    late = heartbeat(Identity(random.Random("late").randbytes(32)), ["m"], at=NOW + 100)
    assert heard(table, late, NOW + 100)
    assert table.choose(["m"], now=NOW + 100).address == late.sender  # type: ignore[union-attr]
    assert table.choose(["*"], now=NOW + 100).address == late.sender  # type: ignore[union-attr]
    # The silent ones left the index as the draws found them; a heartbeat brings one back.
    back = fakes[0]
    fresh = heartbeat(Identity(random.Random(0).randbytes(32)), ["m"], at=NOW + 101)
    assert back.sender == fresh.sender and heard(table, fresh, NOW + 101)
    assert {table.choose(["m"], now=NOW + 101).address for _ in range(40)} == {late.sender, back.sender}  # type: ignore[union-attr]


def test_rows_of_keys_that_never_answered_go_before_a_node_that_did() -> None:
    reputation = Reputation(settings=ReputationSettings(max_rows=100))
    honest = "a" * 40
    reputation.record_result(honest, 1.0, 10, 1.0, 10.0, now=NOW)
    for i in range(1000):  # each key declined one task, later than the honest node's last answer
        reputation.record_declined(f"{i:040x}", now=NOW + 1 + i)
    assert reputation.served(honest, now=NOW + 2000) and len(reputation) == 100


def test_the_model_index_follows_the_table_through_evictions(fakes: list[Inbound]) -> None:
    table = NodeTable(reputation=Reputation(), max_nodes=50)
    for inbound in fakes[:100]:
        heard(table, inbound)
    assert table.count("m") == 50 and table.count("other") == 50 and table.count("none") == 0
    assert {n.address for n in table.known()} == {table.choose(["m"], now=NOW).address for _ in range(2000)}  # type: ignore[union-attr]


async def test_gossip_peers_are_dialled_among_nodes_measured_serving_before_fresh_keys(fakes: list[Inbound]) -> None:
    # Gossip peers drawn from a table full of keys anyone can make would be theirs, free to drop the
    # honest nodes' heartbeats (an eclipse): the keeper dials the nodes this publisher measured first.
    now = time.time()
    reputation = Reputation()
    table = NodeTable(reputation=reputation, rng=random.Random(1))
    for index in range(200):
        assert heard(table, heartbeat(Identity(random.Random(index).randbytes(32)), ["m"], at=now), now)
    honest = [Identity(random.Random(f"honest {i}").randbytes(32)) for i in range(3)]
    for identity in honest:
        assert heard(table, heartbeat(identity, ["m"], at=now), now)
        reputation.record_result(identity.address, 2.0, 60, 1.5, 1e6)
    keeper = GossipPeerKeeper(P2PHost(Identity.generate().secret, ["/ip4/127.0.0.1/tcp/0"]), [], table)
    candidates = [peer for peer, _ in keeper._candidates(set(), asyncio.get_running_loop().time())]
    assert len(candidates) == 203
    assert set(candidates[:3]) == {identity.peer_id for identity in honest}


def test_rows_of_keys_that_never_answered_go_stalest_first_bans_kept_and_the_order_survives_a_restart(
    tmp_path: Path,
) -> None:
    path = tmp_path / "reputation.sqlite"
    reputation = Reputation(path, ReputationSettings(max_rows=100))
    honest = "a" * 40
    reputation.record_result(honest, 1.0, 10, 1.0, 10.0, now=NOW)
    banned = "b" * 40
    reputation.record_verification(banned, passed=False, now=NOW)
    for i in range(1000):
        reputation.record_declined(f"{i:040x}", now=NOW + 1 + i)
        if i == 990:  # an older key declines again: it counts as updated now
            reputation.record_declined(f"{895:040x}", now=NOW + 1 + i)
    reputation.close()
    for table in (reputation, Reputation(path, ReputationSettings(max_rows=100))):
        kept = {view.address for view in table.views(now=NOW + 2000)}
        assert {honest, banned} <= kept
        assert kept - {honest, banned} == {f"{i:040x}" for i in (895, *range(903, 1000))}
    again = Reputation(path, ReputationSettings(max_rows=100))
    again.record_declined("c" * 40, now=NOW + 3000)  # the stalest row that never answered goes
    assert f"{903:040x}" not in {view.address for view in again.views(now=NOW + 3000)}
    assert f"{895:040x}" in {view.address for view in again.views(now=NOW + 3000)}
