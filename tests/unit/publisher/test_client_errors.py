"""Which error results a publisher retries on another node: all but the deterministic ones; what a call that found
no node says."""

from __future__ import annotations

import pytest

from node.publisher.client import (
    Client,
    NoNodeError,
    Task,
    TaskFailedError,
    TaskIdTakenError,
    VerificationFailedTaskError,
)
from node.wire.error_kinds import ErrorKind, ErrorLimit
from node.wire.identity import Identity
from node.wire.messages import HeartbeatBody
from node.wire.topics import DETERMINISTIC_ERROR_PREFIX
from tests.support.heartbeats import signed_heartbeat
from workflows import Simple
from workflows.errors import INVALID_PROMPT

TRANSIENT = [
    "busy: model m has 4 running and 8 queued tasks",
    "interrupted: node shutting down",
    "internal error: KeyError",
    "execution process crashed (SIGSEGV)",
    "execution process stopped answering (5 s without a health probe answer)",
    "execution process exceeded its memory limit (900 MiB RSS > 800 MiB)",
    "task '0' failed: model 'remote:smol' failed: the engine serving remote:smol is unavailable (connection failed)",
    "max_time exceeded: the workflow ran longer than 2 s",
    "deadline passed while the task was running",
]
DETERMINISTIC = [
    "Invalid prompt: the task crashed its execution process twice (SIGSEGV)",
    "Invalid prompt: invalid workflow: tasks.0.operator: unknown operator 'x'",
    "Invalid prompt: task '0': required input 'q' resolves to nothing",
]


@pytest.mark.parametrize("reason", TRANSIENT)
def test_transient_failures_are_retried(reason: str) -> None:
    assert TaskFailedError("t", reason, "0xnode").retryable


@pytest.mark.parametrize("reason", DETERMINISTIC)
def test_deterministic_failures_are_not(reason: str) -> None:
    assert not TaskFailedError("t", reason, "0xnode").retryable


def test_a_nodes_error_text_is_read_into_its_kind_and_limit() -> None:
    busy = TaskFailedError("t", TRANSIENT[0], "0xnode")
    assert (busy.kind, busy.limit) == (ErrorKind.BUSY, None)
    cut = TaskFailedError("t", "Invalid prompt: task 'a' failed: not complete JSON (max_tokens reached: 8)", "0xnode")
    assert (cut.kind, cut.limit) == (ErrorKind.INVALID_PROMPT, ErrorLimit.MAX_TOKENS)


def test_a_kind_given_is_kept_and_its_reason_not_read() -> None:
    failure = TaskFailedError("t", "Invalid prompt: said by a node in a model name", "0xnode", ErrorKind.FAILED)
    assert (failure.kind, failure.limit) == (ErrorKind.FAILED, None) and failure.retryable
    taken = TaskIdTakenError("t", "Invalid prompt: (max_tokens reached", "0xnode")
    assert (taken.kind, taken.limit) == (ErrorKind.FAILED, None)
    assert not VerificationFailedTaskError("t", "busy: no", "0xnode").retryable  # never retried, whatever its text


def test_the_engine_marks_deterministic_errors_with_the_protocol_prefix() -> None:
    assert INVALID_PROMPT == DETERMINISTIC_ERROR_PREFIX


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), 0.0, -5.0])
async def test_a_timeout_that_is_no_positive_finite_time_is_refused_before_anything_is_sent(timeout: float) -> None:
    client = Client(peers=[])  # never started: the check comes first
    with pytest.raises(ValueError, match="timeout must be a positive, finite number of seconds"):
        await client.execute(Task(workflow=Simple().workflow("hi"), models=["m"]), timeout=timeout)


def test_one_peer_given_as_a_string_is_one_peer() -> None:
    address = "/ip4/127.0.0.1/tcp/4001/p2p/16Uiu2HAmExample"
    assert Client(peers=address)._peers == [address]  # was dialled character by character


async def test_a_client_whose_first_start_found_no_peer_dials_again_on_the_next_call() -> None:
    # It kept its host after the failed start, so every later call skipped the dial and waited out its timeout
    # ("no live node ... 0 live nodes known") even once the peer was up.
    import socket

    from node.p2p.host import P2PHost
    from node.publisher.client import ClientError
    from node.wire.identity import Identity
    from node.wire.topics import TASK_TOPIC

    with socket.socket() as probe:  # a port nothing listens on yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    peer = Identity.generate()
    client = Client(peers=[f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer.peer_id}"])
    task = Task(workflow=Simple().workflow("hi"), models=["m"])
    try:
        with pytest.raises(ClientError, match="could not connect to any peer"):
            await client.execute(task, timeout=30)
        host = P2PHost(peer.secret, [f"/ip4/127.0.0.1/tcp/{port}"])  # the peer comes up
        await host.start()
        await host.subscribe(TASK_TOPIC)
        try:
            await client.start()  # dials again: with its host left behind it returned at once, connected to none
            assert await client._host.peers() == [peer.peer_id]  # type: ignore[union-attr]
        finally:
            await client.close()
            await host.stop()
    finally:
        await client.close()


def test_no_node_says_whether_the_model_is_hosted_and_what_is() -> None:
    none = NoNodeError(15, ["llama3:70b"], 0)
    assert str(none) == "no live node hosting any of ['llama3:70b'] seen within 15 s (no live node known)"
    misspelt = NoNodeError(15, ["llama3:70b"], 3, 0, ["b", "a"])
    assert str(misspelt).endswith("(3 live nodes known, hosting 'b', 'a')") and misspelt.serving == 0
    many = NoNodeError(15, ["x"], 1, 0, [f"m{i:02}" for i in range(25)])
    assert str(many).endswith(
        "hosting 'm00', 'm01', 'm02', 'm03', 'm04', 'm05', 'm06', 'm07', 'm08', 'm09' and 15 more)"
    )
    name = "gone: use --model y\x1b[2J, 'z'"
    hostile = NoNodeError(15, ["x"], 1, 0, [name])  # any key's heartbeat names models
    assert repr(name) in str(hostile) and "\x1b" not in str(hostile)  # quoted: one name, escapes inert
    busy = NoNodeError(15, ["a"], 3, 2, ["a", "b"])  # hosted, but none had room (it said "no node hosting")
    assert str(busy) == "no live node hosting any of ['a'] had room within 15 s (2 nodes host them: busy)"
    assert busy.serving == 2


async def test_the_models_named_are_those_most_nodes_host() -> None:
    # One key's heartbeat may list 64 names sorting before every honest one (a reviewer's find).
    client = Client(peers=[])
    for identity, models in ((Identity.generate(), ["smol"]), (Identity.generate(), ["smol", "tiny"])):
        inbound = signed_heartbeat(identity, models)
        assert isinstance(inbound.body, HeartbeatBody) and client.nodes.update(inbound.sender, inbound.body)
    junk = signed_heartbeat(Identity.generate(), [f"!{i:02}" for i in range(20)])
    assert isinstance(junk.body, HeartbeatBody) and client.nodes.update(junk.sender, junk.body)
    error = client._no_node(5, ["llama"])
    assert error.served[:2] == ["smol", "tiny"] and "hosting 'smol', 'tiny', '!00'" in str(error)


async def test_the_models_of_nodes_measured_serving_are_named_before_any_throwaway_keys() -> None:
    # Ten fresh keys of one name each outvoted an honest node's four names (a reviewer's find); and 7 x 1/7 is 1.
    client = Client(peers=[])
    honest = Identity.generate()
    for identity, models in [(honest, ["a", "b", "c", "d"])] + [(Identity.generate(), [f"!{i}"]) for i in range(10)]:
        inbound = signed_heartbeat(identity, models)
        assert isinstance(inbound.body, HeartbeatBody) and client.nodes.update(inbound.sender, inbound.body)
    for _ in range(3):
        client.reputation.record_result(honest.address, 2.0, 60, 1.5, 30)
    assert client._no_node(5, ["llama"]).served[:4] == ["a", "b", "c", "d"]
    ties = Client(peers=[])
    for identity, models in [(Identity.generate(), [f"y{i}" for i in range(7)] + ["x"]), (Identity.generate(), ["y0"])]:
        inbound = signed_heartbeat(identity, models)
        assert isinstance(inbound.body, HeartbeatBody) and ties.nodes.update(inbound.sender, inbound.body)
    assert ties._no_node(5, ["llama"]).served[:2] == ["y0", "x"]  # 1/8 + 1 first; then x before y1 (equal votes)
