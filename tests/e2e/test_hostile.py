"""The hostile-input corpus (tests/support/hostile/) against a running node.

A raw libp2p peer publishes the whole corpus at a real node, interleaved with
valid Simple tasks: every hostile message gets its verdict and logged reason,
every valid task is answered, the node keeps running and its memory stays bounded.
(Each case's verdict from the checks alone: tests/unit/daemon/test_hostile_offline.py.)
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog

from node.daemon.server import NodeServer
from node.p2p.handoff import GossipMessage
from node.p2p.host import MessageTooLargeError, P2PHost
from node.wire.ecies import decrypt
from node.wire.identity import Identity
from node.wire.inbound import decode
from node.wire.messages import ResultBody
from node.wire.topics import RESULTS_TOPIC, TASK_TOPIC
from tests.support.cluster import node_settings, running_node
from tests.support.hostile_corpus import (
    Actors,
    Built,
    Case,
    Recipe,
    build,
    build_recipe,
    load_cases,
    valid_task_body,
)
from tests.support.live_hostile import connected_peer, rss_bytes

CASES = load_cases()
# A case may carry `known_bug` (then its offline test is a strict xfail and the network
# run leaves it out, until the bug is fixed); none does at the moment.
SOUND = [case for case in CASES if not case.known_bug]
VALID_TASK_EVERY = 20  # one valid task after this many hostile cases
ROUNDS = 3  # the corpus is published this many times: memory must level off
LOG_WAIT_S = 5.0
RESULTS_WAIT_S = 60.0
MAX_RSS_GROWTH_BYTES = 200 * 1024 * 1024
CRASH_EVENTS = {
    "validator failed",
    "task crashed",
    "gossip validator raised",
    "message sink failed",
    "p2p host crashed",
}


# --------------------------------------------------------------------------- against a node


@dataclass
class Run:
    """What the raw peer saw while publishing the corpus."""

    node: NodeServer
    peer: P2PHost
    actors: Actors
    logs: list[MutableMapping[str, Any]]
    results: asyncio.Queue[GossipMessage]
    awaiting: dict[str, Case] = field(default_factory=dict)  # task id -> case answered by a result
    to_accept: set[str] = field(default_factory=set)  # the task ids the node must accept, and no other
    valid_sent: int = 0
    valid_completed: int = 0
    failures: list[str] = field(default_factory=list)

    async def wait_for_log(self, since: int, match: dict[str, Any]) -> MutableMapping[str, Any] | None:
        deadline = time.monotonic() + LOG_WAIT_S
        while time.monotonic() < deadline:
            for entry in self.logs[since:]:
                if all(entry.get(k) == v for k, v in match.items()):
                    return entry
            await asyncio.sleep(0.005)
        return None

    async def publish_case(self, case: Case) -> None:
        built = build(case, self.actors)
        expect = case.expect
        if expect.verdict == "unsendable":
            try:
                await self.peer.publish(case.topic, built.data)
            except MessageTooLargeError:
                return
            self.failures.append(f"{case.name}: a {len(built.data)}-byte message was sent")
            return
        since = len(self.logs)
        await self.peer.publish(case.topic, built.data)
        if expect.verdict == "accept":
            return  # relayed and not acted on: the crash check and the valid tasks around it tell
        if expect.verdict == "reject":
            entry = await self.wait_for_log(since, {"event": "message rejected"})
            if entry is None or entry["reason"] != expect.reason or entry["topic"] != case.topic:
                self.failures.append(f"{case.name}: expected reject {expect.reason}, logged {entry}")
        elif expect.verdict == "ignore":
            entry = await self.wait_for_log(since, {"event": "task ignored", "task_id": built.task_id})
            if entry is None or entry["reason"] != expect.reason:
                self.failures.append(f"{case.name}: expected ignore {expect.reason}, logged {entry}")
        else:
            assert built.task_id is not None, case.name
            self.awaiting[built.task_id] = case
            self.to_accept.add(built.task_id)

    async def publish_valid_task(self, index: int) -> Built:
        body = valid_task_body(prompt=f"Say OK number {index}.")
        built = build_recipe(Recipe(body=body), TASK_TOPIC, self.actors, time.time_ns())
        await self.peer.publish(TASK_TOPIC, built.data)
        assert built.task_id is not None
        self.awaiting[built.task_id] = VALID_CASE
        self.to_accept.add(built.task_id)
        self.valid_sent += 1
        return built

    async def replay(self, original: Built) -> None:
        """Re-stamp a valid envelope (the timestamp is not signed): the node must not run it twice."""
        envelope = json.loads(original.data)
        envelope["timestamp"] = time.time_ns()
        since = len(self.logs)
        await self.peer.publish(TASK_TOPIC, json.dumps(envelope).encode("utf-8"))
        entry = await self.wait_for_log(since, {"event": "task ignored", "task_id": original.task_id})
        if entry is None or entry["reason"] != "duplicate":
            self.failures.append(f"replayed task {original.task_id}: expected ignore duplicate, logged {entry}")

    async def collect_results(self) -> None:
        """Check every awaited result, counting the valid tasks answered."""
        deadline = time.monotonic() + RESULTS_WAIT_S
        while self.awaiting and time.monotonic() < deadline:
            try:
                message = await asyncio.wait_for(self.results.get(), timeout=deadline - time.monotonic())
            except TimeoutError:
                break
            inbound = decode(RESULTS_TOPIC, message.data)
            body = inbound.body
            assert isinstance(body, ResultBody)
            case = self.awaiting.pop(body.task_id, None)
            if case is None:
                continue
            self.valid_completed += self.check_result(case, body, inbound.sender)
        self.failures += [f"{case.name}: no result for task {task_id}" for task_id, case in self.awaiting.items()]
        self.awaiting.clear()

    def check_result(self, case: Case, body: ResultBody, sender: str) -> int:
        if sender != self.node.running.identity.address:
            self.failures.append(f"{case.name}: result signed by {sender}")
        if case.expect.verdict == "error_result":
            if body.error is None or case.expect.reason not in body.error:
                self.failures.append(
                    f"{case.name}: expected error containing {case.expect.reason!r}, got {body.error!r}"
                )
            return 0
        if body.ciphertext is None:
            self.failures.append(f"{case.name}: expected a result, got error {body.error!r}")
            return 0
        text = decrypt(self.actors.publisher.secret, bytes.fromhex(body.ciphertext)).decode("utf-8")
        if not text.strip():
            self.failures.append(f"{case.name}: empty result text")
        return int(case is VALID_CASE)


VALID_CASE = Case.model_validate(
    {"name": "valid_simple_task", "category": "valid", "recipe": {}, "expect": {"verdict": "result"}}
)


@dataclass
class Outcome:
    """What publishing cases at a node measured."""

    failures: list[str]
    crashes: list[MutableMapping[str, Any]]
    valid_sent: int
    valid_completed: int
    unhealthy: str | None  # the node's own health check at the end
    rss: list[int]  # before the first round, then after each round's results


async def publish_round(run: Run, cases: list[Case], valid_every: int) -> None:
    """All cases, a valid task first and after every `valid_every` cases, a replay; then the results."""
    first = await run.publish_valid_task(run.valid_sent)
    for index, case in enumerate(cases, start=1):
        await run.publish_case(case)
        if index % valid_every == 0:
            await run.publish_valid_task(run.valid_sent)
    await run.replay(first)
    await run.publish_valid_task(run.valid_sent)
    await run.collect_results()


async def run_corpus(tmp_path: Path, cases: list[Case], valid_every: int, rounds: int = 1) -> Outcome:
    """Publish `cases` `rounds` times from a raw peer at a fresh node, with valid tasks among them."""
    publisher = Identity.generate()
    settings = node_settings(
        tmp_path / "node",
        publishers=[publisher.address],
        max_queue=32,
        n_ctx=512,
        reject_log_window=0,
        max_result_bytes=96 * 1024,  # the largest an operator may set: the envelope limit is what these cases probe
    )
    with structlog.testing.capture_logs() as logs:
        async with running_node(settings) as node:
            peer, results = await connected_peer(node, publisher)
            run = Run(node, peer, Actors(publisher, Identity.generate(), node.running.identity.address), logs, results)
            try:
                rss = [rss_bytes()]
                for round_ in range(rounds):
                    # Raw cases again would be the same gossip message (content ids): dropped before validation.
                    again = cases if round_ == 0 else [case for case in cases if case.recipe is not None]
                    await publish_round(run, again, valid_every)
                    rss.append(rss_bytes())
                await node.running.parts.monitor.sample()
                health = node.running.parts.monitor.health()  # background loops alive, model loaded, peers connected
            finally:
                await peer.stop()
    crashes = [entry for entry in logs if entry["event"] in CRASH_EVENTS or entry.get("reason") == "internal"]
    accepted = {entry["task_id"] for entry in logs if entry["event"] == "task accepted"}
    if accepted != run.to_accept:
        run.failures.append(
            f"accepted but not expected: {accepted - run.to_accept}; expected but not accepted: {run.to_accept - accepted}"
        )
    return Outcome(run.failures, crashes, run.valid_sent, run.valid_completed, health.reason, rss)


@pytest.mark.slow
async def test_node_survives_the_corpus_and_answers_valid_tasks(tmp_path: Path) -> None:
    started = time.monotonic()
    outcome = await run_corpus(tmp_path, SOUND, VALID_TASK_EVERY, rounds=ROUNDS)
    print(
        f"\nhostile corpus: {len(SOUND)} cases, {ROUNDS} rounds, {outcome.valid_sent} valid tasks in "
        f"{time.monotonic() - started:.1f} s; RSS MiB before and after each round: {[r >> 20 for r in outcome.rss]}"
    )
    assert not outcome.failures, "\n".join(outcome.failures)
    assert outcome.crashes == []
    assert outcome.valid_completed == outcome.valid_sent >= 5
    assert outcome.unhealthy is None
    assert outcome.rss[-1] - outcome.rss[0] < MAX_RSS_GROWTH_BYTES
