"""Measured reputation: the prior, decay, the claim penalty, the capacity cap, bans, persistence and the row bound."""

import sqlite3

import pytest

from node.publisher.node_table import NodeTable
from node.publisher.remote_scoring import score_workflow
from node.publisher.reputation import SPEED_CAP, Reputation, read_views
from node.publisher.reputation_records import ReputationSettings
from node.publisher.tasks import NODE_MAX_STEPS, NODE_MAX_TASK_TOKENS, NODE_MAX_TOKENS, Task, generation_budget
from node.wire.messages import Capacity, HeartbeatBody
from node.wire.proof import ProofGeneration
from workflows.options import DEFAULT_MAX_STEPS, DEFAULT_MAX_TOKENS, DEFAULT_TASK_TOKENS

A, B, C = "a" * 40, "b" * 40, "c" * 40
T0 = 1_000_000.0


def serve(table: Reputation, address: str, n: int, tps: float = 50.0, claim: float = 50.0, at: float = T0) -> None:
    """`n` answered tasks of 20 tokens at `tps`, one at a time."""
    for _ in range(n):
        table.started(address)
        table.record_result(address, 20 / tps, 20, 20 / tps, claim, now=at)
        table.finished(address)


def test_an_unseen_node_gets_the_prior_not_its_claim() -> None:
    table = Reputation()
    view = table.view(A, now=T0)
    assert view.success == pytest.approx(0.5) and view.service_tps == pytest.approx(10.0)
    # Claims of free capacity or speed do not raise an unseen node above the prior: at most one place counts.
    assert table.weight(A, claimed_free=1024, claimed_tps=1e6, now=T0) == pytest.approx(0.5 * 10.0 * 1)
    assert table.weight(B, claimed_free=4, claimed_tps=95, now=T0) == pytest.approx(0.5 * 10.0 * 1)
    assert table.weight(C, claimed_free=1, claimed_tps=2.0, now=T0) == pytest.approx(0.5 * 2.0)  # claims less: believed


def test_service_raises_the_weight_and_failures_lower_it() -> None:
    table = Reputation()
    serve(table, A, 10, tps=50)
    for _ in range(10):
        table.record_timeout(B, now=T0)
    fast, dead = table.view(A, now=T0), table.view(B, now=T0)
    # A's 50 tok/s is also the median of the nodes measured, so its prior is 50 too.
    assert fast.success == pytest.approx(11 / 12) and fast.service_tps == pytest.approx((200 + 50 * 5) / (4 + 5))
    assert dead.success == pytest.approx(1 / 12)
    assert table.weight(A, 4, 50, now=T0) > 10 * table.weight(B, 4, 50, now=T0)


def test_an_unseen_node_is_assumed_as_fast_as_the_median_measured_node() -> None:
    table = Reputation()
    serve(table, A, 10, tps=40)
    serve(table, B, 10, tps=100)
    serve(table, C, 10, tps=60)
    # The prior follows the measured median (60), not the 10 tok/s assumed before anything was measured,
    # so a new node is tried at a real share of a fast network's tasks; a claim below it still caps it.
    assert table.view("new", now=T0).service_tps == pytest.approx(60)
    assert table.weight("new", claimed_free=4, claimed_tps=1e6, now=T0) == pytest.approx(0.5 * 60 * 1)
    assert table.weight("new", claimed_free=4, claimed_tps=20, now=T0) == pytest.approx(0.5 * 20 * 1)
    serve(table, "new", 10, tps=200)  # of an even count the lower middle: 40, 60, 100, 200
    assert table.view("other", now=T0).service_tps == pytest.approx(60)
    table.record_verification(A, passed=False, now=T0)  # a caught node's speed no longer counts: 60, 100, 200
    assert table.view("other", now=T0).service_tps == pytest.approx(100)


def test_a_node_that_answers_at_once_weighs_at_most_speed_cap_times_the_median() -> None:
    """A node chooses what its speed is measured from (its claimed tokens, within its result's size) and can
    answer junk at once: a red team's did, and took 99.97% of the choice from two honest nodes. Its speed counts
    at most SPEED_CAP times the median node's, whichever of two nodes it is."""
    table = Reputation()
    serve(table, A, 10, tps=100)
    serve(table, C, 1000, tps=2_000_000)  # against A alone: the lower middle of the two is A's
    assert table.view(C, now=T0).service_tps == pytest.approx(SPEED_CAP * 100)
    serve(table, B, 10, tps=100)
    weights = {node: table.weight(node, claimed_free=4, claimed_tps=0, now=T0) for node in (A, B, C)}
    # SPEED_CAP / (SPEED_CAP + 2) of the choice, a little more for its surer success (1000 answers against 10)
    assert SPEED_CAP / (SPEED_CAP + 2) < weights[C] / sum(weights.values()) < 0.7


def test_busy_counts_as_half_a_failure() -> None:
    table = Reputation()
    for _ in range(2):
        table.record_declined(A, now=T0)
    assert table.view(A, now=T0).success == pytest.approx(1 / 3)


def test_measurements_decay_with_the_half_life() -> None:
    table = Reputation(settings=ReputationSettings(half_life_s=100))
    for _ in range(8):
        table.record_error(A, now=T0)
    assert table.view(A, now=T0).errors == pytest.approx(8)
    assert table.view(A, now=T0 + 100).errors == pytest.approx(4)
    assert table.view(A, now=T0 + 300).errors == pytest.approx(1)
    table.record_error(A, now=T0 + 300)  # a new measurement adds to the decayed sum
    assert table.view(A, now=T0 + 300).errors == pytest.approx(2)


def test_a_claim_beyond_the_measured_speed_is_penalised_and_an_honest_one_is_not() -> None:
    table = Reputation()
    serve(table, A, 5, tps=50, claim=1e6)
    serve(table, B, 5, tps=50, claim=400)  # within the tolerance: stats count prompt time too
    liar, honest = table.view(A, now=T0), table.view(B, now=T0)
    assert liar.measured_tps == pytest.approx(50) and honest.penalty == 1.0
    assert liar.penalty == pytest.approx(0.02)  # 10 x 50 / 1e6 is below the floor
    assert table.weight(A, 1024, 1e6, now=T0) < 0.05 * table.weight(B, 4, 400, now=T0)
    serve(table, C, 5, tps=50, claim=1000)
    assert table.view(C, now=T0).penalty == pytest.approx(0.5)  # 10 x 50 / 1000


def test_claimed_free_capacity_is_capped_by_what_was_seen_served() -> None:
    table = Reputation()
    for _ in range(3):
        table.started(A)
    table.record_result(A, 0.4, 20, 0.4, 50, now=T0)  # answered with three of ours in flight
    per_place = table.weight(A, 1, 50, now=T0)
    assert table.view(A, now=T0).peak == 3
    assert table.weight(A, 1024, 50, now=T0) == pytest.approx(4 * per_place)
    assert table.weight(A, 2, 50, now=T0) == pytest.approx(2 * per_place)
    assert table.weight(A, 0, 50, now=T0) == 0


def test_a_failed_verification_bans_the_node_for_the_setting() -> None:
    table = Reputation(settings=ReputationSettings(verify_ban_seconds=600))
    serve(table, A, 5)
    table.record_verification(A, passed=True, now=T0)
    assert not table.banned(A, now=T0) and table.view(A, now=T0).verify_passed == 1
    table.record_verification(A, passed=False, now=T0)
    assert table.banned(A, now=T0 + 599) and table.weight(A, 4, 50, now=T0 + 599) == 0
    assert not table.banned(A, now=T0 + 601) and table.weight(A, 4, 50, now=T0 + 601) > 0


def test_a_banned_node_is_never_chosen() -> None:
    reputation = Reputation()
    nodes = NodeTable(reputation=reputation)
    for address in (A, B):
        body = HeartbeatBody(
            address=address,
            peer_id="16Uiu2x",
            models=["m"],
            capacity=Capacity(free=4, max=4),
            pending=0,
            tps={"m": 50.0},
            version="0.4.0",
            timestamp=int(T0 * 1e9),
        )
        assert nodes.update(address, body, now=T0)
    reputation.record_verification(A, passed=False)
    assert {nodes.choose(["m"], now=T0).address for _ in range(50)} == {B}  # type: ignore[union-attr]
    assert nodes.choose(["m"], exclude={B}, now=T0) is None


def test_the_table_survives_a_restart_in_its_sqlite_file(tmp_path) -> None:
    path = tmp_path / "publisher" / "reputation.sqlite3"
    table = Reputation(path)
    serve(table, A, 3, tps=40, claim=1e6)
    table.record_verification(B, passed=False)  # now: banned for a week from now
    assert {file.name: file.stat().st_mode & 0o077 for file in path.parent.iterdir()} == {
        name: 0 for name in ("reputation.sqlite3", "reputation.sqlite3-wal", "reputation.sqlite3-shm")
    }  # owner-only: which nodes served this publisher
    table.close()
    rows = sqlite3.connect(path).execute("SELECT address FROM reputation ORDER BY address").fetchall()
    assert rows == [(A,), (B,)]
    again = Reputation(path)
    assert again.view(A, now=T0).answered == pytest.approx(3) and again.view(A, now=T0).peak == 1
    assert again.banned(B)
    assert {v.address: v.score == 0 for v in read_views(path)} == {A: False, B: True}  # B is banned
    assert read_views(tmp_path / "none.sqlite3") == []


def test_an_unreadable_row_costs_that_row_not_the_table(tmp_path) -> None:
    # One row that no longer validates (a hand edit, a torn write) made the whole file unused, at every start:
    # every measurement and ban forgotten, nothing saved again.
    path = tmp_path / "reputation.sqlite3"
    table = Reputation(path)
    serve(table, A, 3, tps=40, claim=1e6)
    table.record_verification(B, passed=False)
    table.close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO reputation VALUES (?, ?, ?)", ("zz", "{}", 0))
    again = Reputation(path)
    assert again.store_error is None and again.banned(B) and again.view(A, now=T0).answered == pytest.approx(3)
    serve(again, C, 1, tps=40, claim=1e6)
    again.close()
    rows = {a for (a,) in sqlite3.connect(path).execute("SELECT address FROM reputation")}
    assert {A, B, C} <= rows
    assert {view.address for view in read_views(path)} == {A, B, C}  # `compute-node nodes` lists them


def test_rows_are_bounded_and_the_stalest_unbanned_go_first(tmp_path) -> None:
    path = tmp_path / "reputation.sqlite3"
    table = Reputation(path, ReputationSettings(max_rows=3))
    table.record_verification(A, passed=False, now=T0)  # the oldest, but a ban
    table.record_error(B, now=T0 + 1)
    table.record_error(C, now=T0 + 2)
    for i in range(20):  # anyone can make addresses
        table.record_error(f"{i:040x}", now=T0 + 10 + i)
    assert len(table) == 3
    assert table.banned(A, now=T0 + 100)
    count = sqlite3.connect(path).execute("SELECT count(*) FROM reputation").fetchone()[0]
    assert count == 3
    assert len(Reputation(path, ReputationSettings(max_rows=2))) == 2  # a smaller bound applies on load


def test_an_unusable_store_leaves_a_working_table_in_memory(tmp_path) -> None:
    path = tmp_path / "not-a-db.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    table = Reputation(path)
    table.record_error(A, now=T0)
    assert table.view(A, now=T0).errors == 1


def test_score_tasks_are_kept_apart_from_the_speed_and_the_claim_penalty() -> None:
    table = Reputation()
    serve(table, A, 5, tps=20, claim=150)  # a generator at 20 tok/s, claiming within the tolerance
    serve(table, B, 5, tps=20, claim=150)
    for _ in range(20):  # B also scores: 400 tokens in 0.2 s each (2000 tok/s of teacher forcing)
        table.record_result(B, 0.2, 400, 0.2, 150, now=T0, scoring=True)
    generator, scorer = table.view(A, now=T0), table.view(B, now=T0)
    assert scorer.scored == pytest.approx(20) and scorer.answered == pytest.approx(5)
    assert scorer.scoring_tps == pytest.approx(2000) and generator.scoring_tps is None
    assert (scorer.service_tps, scorer.measured_tps, scorer.penalty, scorer.mean_result_s) == (
        generator.service_tps,
        generator.measured_tps,
        generator.penalty,
        generator.mean_result_s,
    )
    assert scorer.success == pytest.approx(26 / 27) and generator.success == pytest.approx(6 / 7)
    # Scoring fast never backs a claim: 3000 tok/s claimed, 2 measured generating (with the scored
    # tokens counted it would be 573, within the tolerance).
    table.record_result(C, 0.2, 400, 0.2, 3000, now=T0, scoring=True)
    table.record_result(C, 0.5, 1, 0.5, 3000, now=T0)
    assert table.view(C, now=T0).measured_tps == pytest.approx(2.0)
    assert table.view(C, now=T0).penalty == pytest.approx(0.02)


def test_a_workflow_with_a_score_step_is_a_scoring_task() -> None:
    step = ProofGeneration(prompt_tokens=[1, 2], tokens=[3], logprobs=[-0.5], temperature=0)
    assert Task(workflow=score_workflow(step, 30), models=["m"]).scores_tokens
    generating = {"tasks": [{"id": "g", "operator": "generation"}, {"id": "_end", "operator": "end"}]}
    assert not Task(workflow=generating, models=["m"]).scores_tokens
    assert not Task(workflow={}, models=["m"]).scores_tokens
    assert not Task(workflow={"tasks": "score"}, models=["m"]).scores_tokens  # malformed: the node refuses it


def test_a_results_tokens_count_at_most_its_workflows_generation_budget() -> None:
    """What a node's result is measured by: its claim, within the task's own bound (max_tokens per step, for
    each of max_steps; a node's caps where the workflow names none or nonsense)."""
    copied = (NODE_MAX_TOKENS, NODE_MAX_STEPS, NODE_MAX_TASK_TOKENS)
    assert copied == (DEFAULT_MAX_TOKENS, DEFAULT_MAX_STEPS, DEFAULT_TASK_TOKENS)  # the node's caps
    assert generation_budget({"config": {"max_tokens": 16, "max_steps": 2}}) == 32
    assert generation_budget({"config": {"max_steps": 3}}) == 3 * DEFAULT_MAX_TOKENS
    assert generation_budget({"config": {"max_tokens": 10**12, "max_steps": 10**12}}) == DEFAULT_TASK_TOKENS
    assert generation_budget({"config": {"max_tokens": True, "max_steps": "9"}}) == DEFAULT_MAX_TOKENS
    assert generation_budget({"config": []}) == generation_budget({}) == DEFAULT_MAX_TOKENS
