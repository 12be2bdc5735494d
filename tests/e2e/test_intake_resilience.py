"""A running node (default settings: no publisher allow-list) against a full journal disk,
replays across a restart, and floods of valid tasks it does not want or cannot run."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog

from node.daemon.journal import ROW_OVERHEAD_BYTES
from node.daemon.server import NodeServer
from node.p2p.handoff import GossipMessage
from node.p2p.host import P2PHost
from node.wire.ecies import decrypt
from node.wire.identity import Identity
from node.wire.inbound import decode
from node.wire.messages import ResultBody
from node.wire.topics import RESULTS_TOPIC, TASK_TOPIC
from tests.support.cluster import node_settings, running_node
from tests.support.hostile_corpus import Actors, Built, Recipe, build_recipe, valid_task_body
from tests.support.live_hostile import connected_peer
from tests.support.small_disk import small_disk as mounted_small_disk

pytestmark = pytest.mark.slow

# Returns its prompt without calling the model: fast, and its result is as large as the prompt.
ECHO_WORKFLOW: dict[str, Any] = {
    "config": {"max_steps": 5, "max_time": 30, "tools": []},
    "tasks": [
        {
            "id": "a",
            "name": "echo",
            "description": "d",
            "messages": [{"role": "user", "content": "x"}],
            "operator": "end",
        }
    ],
    "steps": [{"source": "a", "target": "_end"}],
    "return_value": {"input": {"type": "input", "key": "__input"}},
}
WAIT_S = 30.0


def echo_task(prompt: str, **changes: Any) -> Recipe:
    return Recipe(set={"input.workflow": ECHO_WORKFLOW, "input.prompt": prompt, **changes})


async def publish(peer: P2PHost, actors: Actors, recipe: Recipe) -> Built:
    built = build_recipe(recipe, TASK_TOPIC, actors, time.time_ns())
    await peer.publish(TASK_TOPIC, built.data)
    return built


async def result_for(results: asyncio.Queue[GossipMessage], task_id: str | None) -> ResultBody:
    deadline = time.monotonic() + WAIT_S
    while True:
        message = await asyncio.wait_for(results.get(), timeout=max(deadline - time.monotonic(), 0.01))
        body = decode(RESULTS_TOPIC, message.data).body
        assert isinstance(body, ResultBody)
        if body.task_id == task_id:
            return body


async def logged(logs: list[MutableMapping[str, Any]], since: int, **match: Any) -> MutableMapping[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        for entry in logs[since:]:
            if all(entry.get(k) == v for k, v in match.items()):
                return entry
        await asyncio.sleep(0.01)
    raise AssertionError(f"no log entry {match}")


def loops_alive(node: NodeServer) -> bool:
    return node.supervisor.failed() == [] and node.supervisor.fatal is None


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path | None]:
    with mounted_small_disk(tmp_path) as mount_point:
        yield mount_point


async def test_a_full_journal_disk_gives_clear_errors_and_no_dead_loop(small_disk: Path | None, tmp_path: Path) -> None:
    data_dir = (small_disk or tmp_path) / "node"
    publisher = Identity.generate()
    with structlog.testing.capture_logs() as logs:
        async with running_node(node_settings(data_dir, n_ctx=512)) as node:
            filler = data_dir.parent / "filler"
            if small_disk is None:  # no mount allowed: SQLite's page limit fails the same way (SQLITE_FULL)
                node.running.journal._conn.execute("PRAGMA max_page_count = 40")
            else:
                free = subprocess.run(["df", "-B1", "--output=avail", str(small_disk)], capture_output=True, text=True)
                filler.write_bytes(b"\0" * max(int(free.stdout.split()[-1]) - 120 * 1024, 0))
            peer, results = await connected_peer(node, publisher)
            actors = Actors(publisher, Identity.generate(), node.running.identity.address)
            try:
                since = len(logs)
                for i in range(12):
                    await publish(peer, actors, echo_task(f"{i:02d}" + "x" * 30_000))
                    await asyncio.sleep(0.05)
                entry = await logged(logs, since, event="task ignored", reason="journal_error")
                assert (
                    "database or disk is full" in entry["detail"] and str(node.running.journal.path) in entry["detail"]
                )
                assert "x" * 100 not in entry["detail"]  # names the cause, not the task's data
                assert loops_alive(node)
                # Room again: the very same intake loop takes and answers the next task.
                if small_disk is None:
                    node.running.journal._conn.execute("PRAGMA max_page_count = 1000000")
                else:
                    filler.unlink()
                built = await publish(peer, actors, echo_task("after the disk had room again"))
                body = await result_for(results, built.task_id)
                assert body.ciphertext is not None
                assert decrypt(publisher.secret, bytes.fromhex(body.ciphertext)) == b"after the disk had room again"
                assert loops_alive(node)
            finally:
                await peer.stop()
    crashes = [
        e for e in logs if e["event"] in ("task intake failed; the next task goes through as usual", "task crashed")
    ]
    assert crashes == []


async def test_a_replayed_task_is_not_accepted_again_after_a_restart(tmp_path: Path) -> None:
    publisher = Identity.generate()
    settings = node_settings(tmp_path / "node", n_ctx=512)
    with structlog.testing.capture_logs() as logs:
        async with running_node(settings) as node:
            peer, results = await connected_peer(node, publisher)
            actors = Actors(publisher, Identity.generate(), node.running.identity.address)
            try:
                original = await publish(peer, actors, echo_task("once", deadline=time.time_ns() + 8 * 10**9))
                assert (await result_for(results, original.task_id)).ciphertext is not None
            finally:
                await peer.stop()
        async with running_node(settings) as node:  # the same data directory: a restart
            peer, results = await connected_peer(node, publisher)
            try:
                for wait_s, reason in ((0.0, "duplicate"), (9.0, "deadline_passed")):
                    await asyncio.sleep(wait_s)
                    envelope = json.loads(original.data)
                    envelope["timestamp"] = time.time_ns()  # not signed: anyone can re-stamp it
                    since = len(logs)
                    await peer.publish(TASK_TOPIC, json.dumps(envelope).encode())
                    entry = await logged(logs, since, event="task ignored", task_id=original.task_id)
                    assert entry["reason"] == reason
            finally:
                await peer.stop()
    assert [e for e in logs if e["event"] == "task accepted" and e.get("task_id") == original.task_id] != []
    assert len([e for e in logs if e["event"] == "task accepted" and e.get("task_id") == original.task_id]) == 1


async def test_floods_of_ignored_and_busy_tasks_leave_no_bodies_in_the_journal(tmp_path: Path) -> None:
    publisher = Identity.generate()
    settings = node_settings(tmp_path / "node", n_ctx=512, max_concurrent=1, max_queue=1)
    with structlog.testing.capture_logs() as logs:
        async with running_node(settings) as node:
            peer, results = await connected_peer(node, publisher)
            actors = Actors(publisher, Identity.generate(), node.running.identity.address)
            try:
                used = node.running.journal.usage().bytes
                unwanted = [
                    {"deadline": "$FAR_DEADLINE"},
                    {"input.model": ["a-model-this-node-does-not-host"]},
                    {"pickedNodes": ["$OTHER_NODE"]},
                    {"deadline": "$PAST_DEADLINE"},
                ]
                since = len(logs)
                for i in range(200):
                    await publish(
                        peer, actors, Recipe(set={"input.prompt": f"unwanted {i} " + "y" * 2000, **unwanted[i % 4]})
                    )
                deadline = time.monotonic() + WAIT_S
                while time.monotonic() < deadline:
                    ignored = [e for e in logs[since:] if e["event"] == "task ignored"]
                    if len(ignored) >= 200:
                        break
                    await asyncio.sleep(0.05)
                assert len(ignored) == 200
                assert {e["reason"] for e in ignored} == {
                    "deadline_too_far",
                    "no_model",
                    "not_picked",
                    "deadline_passed",
                }
                assert node.running.journal.usage().bytes == used  # nothing journalled for tasks not taken

                # Valid tasks beyond the capacity (1 running + 1 queued): refused as busy, with an
                # error result, and journalled without their bodies.
                since = len(logs)
                sent = [
                    await publish(peer, actors, Recipe(body=valid_task_body(f"Count to {i}.", max_tokens=48)))
                    for i in range(8)
                ]
                answers = {}
                while len(answers) < len(sent):
                    message = await asyncio.wait_for(results.get(), timeout=WAIT_S * 3)
                    body = decode(RESULTS_TOPIC, message.data).body
                    answers[body.task_id] = body
                busy = [b for b in answers.values() if b.error is not None and b.error.startswith("busy")]
                done = [b for b in answers.values() if b.ciphertext is not None]
                assert busy and done, [b.error for b in answers.values()]
                await asyncio.sleep(0.5)  # the last result is marked published after it went out
                # Published: only each task's dedupe record is left, never its body or result.
                entries = [node.running.journal.get(b.task_id) for b in answers.values()]
                assert all(e.task_message == b"" and e.result_body is None for e in entries)
                assert node.running.journal.usage().bytes - used == len(entries) * ROW_OVERHEAD_BYTES
                assert loops_alive(node)
            finally:
                await peer.stop()


async def test_an_unexpected_intake_failure_is_logged_and_the_loop_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publisher = Identity.generate()
    with structlog.testing.capture_logs() as logs:
        async with running_node(node_settings(tmp_path / "node", n_ctx=512)) as node:
            peer, results = await connected_peer(node, publisher)
            actors = Actors(publisher, Identity.generate(), node.running.identity.address)
            acceptance = node.running.parts.intake.acceptance
            decide = acceptance.decide
            calls = []

            def broken_once(*args: Any) -> Any:
                calls.append(args)
                if len(calls) == 1:
                    raise RuntimeError("a bug in intake")
                return decide(*args)

            monkeypatch.setattr(acceptance, "decide", broken_once)
            try:
                since = len(logs)
                await publish(peer, actors, echo_task("first"))
                await logged(logs, since, event="task intake failed; the next task goes through as usual")
                built = await publish(peer, actors, echo_task("second"))
                assert (await result_for(results, built.task_id)).ciphertext is not None
                assert loops_alive(node)
            finally:
                await peer.stop()
