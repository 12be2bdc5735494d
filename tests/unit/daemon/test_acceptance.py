"""Acceptance decisions: model matching, pickedNodes, bloom filter, deadline, replays, allow-list."""

import random
import time

import pytest

from node.daemon.acceptance import COMPACT_SLACK, Accept, Acceptance, Ignore, SeenTasks
from node.wire.identity import Identity
from node.wire.messages import TaskBody, TaskFilter, TaskInput
from tests.support.bloom_filters import bloom_of

NODE = Identity.from_hex("11" * 32)
OTHER = Identity.from_hex("22" * 32)
PUBLISHER = Identity.from_hex("33" * 32)
HOSTED = ["smollm2:135m", "qwen2.5:0.5b-instruct-q4_K_M"]


def task(task_id: str = "t1", models: list[str] | None = None, deadline_in_s: float = 60, **extra) -> TaskBody:
    return TaskBody(
        task_id=task_id,
        deadline=time.time_ns() + int(deadline_in_s * 1e9),
        input=TaskInput(workflow={}, model=models or ["smollm2:135m"]),
        public_key=PUBLISHER.public_key_compressed.hex(),
        **extra,
    )


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        (["smollm2:135m"], {"smollm2:135m"}),
        (["gemma3:270m", "qwen2.5:0.5b-instruct-q4_K_M"], {"qwen2.5:0.5b-instruct-q4_K_M"}),
        (["llamacpp"], set(HOSTED)),
        (["*"], set(HOSTED)),
        (["!"], {"smollm2:135m"}),
        (["gemma3:270m"], {None}),
        (["SMOLLM2:135M"], {None}),  # names are exact
    ],
)
def test_model_matching(requested: list[str], expected: set) -> None:
    acceptance = Acceptance(NODE.address, HOSTED, rng=random.Random(7))
    now = time.time_ns()
    decisions = [acceptance.decide(PUBLISHER.address, task(f"t{i}", models=requested), now) for i in range(50)]
    assert {d.model if isinstance(d, Accept) else None for d in decisions} == expected


def test_accepts_a_matching_task_once() -> None:
    acceptance = Acceptance(NODE.address, HOSTED)
    now = time.time_ns()
    body = task()
    assert acceptance.decide(PUBLISHER.address, body, now) == Accept("smollm2:135m")
    assert acceptance.decide(PUBLISHER.address, body, now) == Ignore("duplicate")


def test_the_seen_ids_passed_are_the_ones_kept_and_their_bound_holds() -> None:
    # An empty SeenTasks is falsy (it has a length): `seen or SeenTasks()` swapped the node's, bounded by
    # journal_max_records, for a default one of 100,000.
    seen = SeenTasks(max_entries=2)
    acceptance = Acceptance(NODE.address, HOSTED, seen=seen)
    assert acceptance.seen is seen
    now = time.time_ns()
    for i in range(3):
        assert acceptance.decide(PUBLISHER.address, task(f"t{i}", deadline_in_s=60 + i), now) == Accept("smollm2:135m")
    assert len(seen) == 2


def test_picked_nodes() -> None:
    acceptance = Acceptance(NODE.address, HOSTED)
    now = time.time_ns()
    assert isinstance(acceptance.decide(PUBLISHER.address, task("a", picked_nodes=[NODE.address]), now), Accept)
    assert isinstance(
        acceptance.decide(PUBLISHER.address, task("b", picked_nodes=["0x" + NODE.address.upper()]), now), Accept
    )
    assert acceptance.decide(PUBLISHER.address, task("c", picked_nodes=[OTHER.address]), now) == Ignore("not_picked")


def test_bloom_filter_selects_by_raw_address() -> None:
    acceptance = Acceptance(NODE.address, HOSTED)
    now = time.time_ns()
    ours = bloom_of([NODE.address_bytes])
    theirs = bloom_of([OTHER.address_bytes])
    assert isinstance(
        acceptance.decide(PUBLISHER.address, task("a", filter=TaskFilter(hex=ours.hex, hashes=ours.hashes)), now),
        Accept,
    )
    decision = acceptance.decide(
        PUBLISHER.address, task("b", filter=TaskFilter(hex=theirs.hex, hashes=theirs.hashes)), now
    )
    assert decision == Ignore("not_in_filter")


def test_past_deadline_and_no_model() -> None:
    acceptance = Acceptance(NODE.address, HOSTED)
    now = time.time_ns()
    assert acceptance.decide(PUBLISHER.address, task("a", deadline_in_s=-1), now) == Ignore("deadline_passed")
    decision = acceptance.decide(PUBLISHER.address, task("b", models=["gemma3:270m"]), now)
    assert decision.reason == "no_model" and "gemma3:270m" in decision.detail
    # A task not accepted is not remembered: it could still be accepted after a config change.
    assert "b" not in acceptance.seen


def test_only_models_serving_now_take_tasks() -> None:
    serving = list(HOSTED)
    acceptance = Acceptance(NODE.address, HOSTED, serving=lambda: serving)
    now = time.time_ns()
    assert acceptance.decide(PUBLISHER.address, task("a", models=["!"]), now) == Accept(HOSTED[0])
    serving.remove(HOSTED[0])  # crash-looping, or its remote engine is down: out of the heartbeats too
    decision = acceptance.decide(PUBLISHER.address, task("b", models=[HOSTED[0]]), now)
    assert decision.reason == "model_unavailable" and HOSTED[0] in decision.detail
    assert "b" not in acceptance.seen  # another node may take it; so may this one once the model is back
    assert acceptance.decide(PUBLISHER.address, task("c", models=["!"]), now).reason == "model_unavailable"
    assert acceptance.decide(PUBLISHER.address, task("d", models=["*"]), now) == Accept(HOSTED[1])
    assert acceptance.decide(PUBLISHER.address, task("e", models=["gemma3:270m"]), now).reason == "no_model"
    serving.append(HOSTED[0])
    assert acceptance.decide(PUBLISHER.address, task("b", models=[HOSTED[0]]), now) == Accept(HOSTED[0])


def test_publisher_allow_list() -> None:
    acceptance = Acceptance(NODE.address, HOSTED, publishers=[PUBLISHER.address])
    now = time.time_ns()
    assert isinstance(acceptance.decide(PUBLISHER.address, task("a"), now), Accept)
    decision = acceptance.decide(OTHER.address, task("b"), now)
    assert decision.reason == "publisher_not_allowed" and OTHER.address in decision.detail


def test_seen_tasks_kept_until_deadline_and_bounded() -> None:
    seen = SeenTasks(max_entries=3)
    assert seen.add("a", deadline_ns=100, now_ns=0)
    assert not seen.add("a", deadline_ns=100, now_ns=50)  # replay before the deadline
    assert seen.add("b", deadline_ns=200, now_ns=50)
    seen.prune(now_ns=150)
    assert "a" not in seen and "b" in seen
    for name, deadline in [("c", 300), ("d", 400), ("e", 500)]:
        seen.add(name, deadline_ns=deadline, now_ns=150)
    assert len(seen) == 3 and "b" not in seen  # earliest deadline forgotten first


def test_a_task_id_forgotten_again_and_again_holds_a_bounded_heap() -> None:
    """A task answered busy on a stream is forgotten (it may come back): replayed while the node is busy,
    the same signed task is added and forgotten each time, and must not leave an entry per replay
    until its deadline (an hour ahead: millions)."""
    seen = SeenTasks()
    for _ in range(10_000):
        assert seen.add("again", deadline_ns=10**18, now_ns=0)
        seen.discard("again")
    seen.add("kept", deadline_ns=10**18, now_ns=0)
    assert len(seen) == 1 and len(seen._by_deadline) <= 2 * len(seen) + COMPACT_SLACK


def test_an_id_forgotten_and_taken_again_is_not_evicted_by_its_old_deadline() -> None:
    seen = SeenTasks(max_entries=2)
    seen.add("a", deadline_ns=100, now_ns=0)
    seen.discard("a")
    seen.add("a", deadline_ns=300, now_ns=0)  # back, and accepted this time
    seen.add("b", deadline_ns=200, now_ns=0)
    seen.add("c", deadline_ns=400, now_ns=0)  # full: the earliest live deadline goes, b's
    assert "a" in seen and "b" not in seen and "c" in seen


def test_deadline_beyond_the_horizon_is_not_accepted() -> None:
    acceptance = Acceptance(NODE.address, HOSTED, horizon_s=600)
    now = time.time_ns()
    decision = acceptance.decide(PUBLISHER.address, task("far", deadline_in_s=601), now)
    assert decision.reason == "deadline_too_far" and "600 s" in decision.detail
    assert "far" not in acceptance.seen
    assert isinstance(acceptance.decide(PUBLISHER.address, task("near", deadline_in_s=599), now), Accept)
    default = Acceptance(NODE.address, HOSTED)  # one hour by default
    assert default.decide(PUBLISHER.address, task("x", deadline_in_s=3601), now).reason == "deadline_too_far"
    assert isinstance(default.decide(PUBLISHER.address, task("y", deadline_in_s=3599), now), Accept)


def test_a_discarded_task_id_can_be_accepted_again() -> None:
    acceptance = Acceptance(NODE.address, HOSTED)
    now = time.time_ns()
    first = task("t")
    assert isinstance(acceptance.decide(PUBLISHER.address, first, now), Accept)
    acceptance.seen.discard("t")  # it could not be journalled: not accepted after all
    assert isinstance(acceptance.decide(PUBLISHER.address, first, now), Accept)
    acceptance.seen.prune(first.deadline + 1)
    assert "t" not in acceptance.seen and len(acceptance.seen) == 0


def test_a_task_naming_several_models_goes_to_one_with_room() -> None:
    # The pick was random before capacity was looked at: with one model full, a `*` task was answered busy
    # about half the time while the heartbeat advertised the other's free places.
    full = {"smollm2:135m"}
    acceptance = Acceptance(NODE.address, HOSTED, rng=random.Random(7), has_room=lambda model: model not in full)
    now = time.time_ns()
    picks = {acceptance.decide(PUBLISHER.address, task(f"t{i}", models=["*"]), now).model for i in range(50)}  # type: ignore[union-attr]
    assert picks == {"qwen2.5:0.5b-instruct-q4_K_M"}
    full.add("qwen2.5:0.5b-instruct-q4_K_M")  # none has room: the pick is as before (the answer is busy)
    picks = {acceptance.decide(PUBLISHER.address, task(f"u{i}", models=["*"]), now).model for i in range(50)}  # type: ignore[union-attr]
    assert picks == set(HOSTED)


def test_llamacpp_names_the_local_gguf_models_only() -> None:
    acceptance = Acceptance(NODE.address, HOSTED, rng=random.Random(7), local_models=["smollm2:135m"])
    now = time.time_ns()
    decisions = [acceptance.decide(PUBLISHER.address, task(f"t{i}", models=["llamacpp"]), now) for i in range(50)]
    assert {d.model for d in decisions if isinstance(d, Accept)} == {"smollm2:135m"}  # not the remote engine's
    assert {acceptance.decide(PUBLISHER.address, task(f"s{i}", models=["*"]), now).model for i in range(50)} == set(  # type: ignore[union-attr]
        HOSTED
    )
