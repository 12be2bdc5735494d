"""The publisher side: join the network, send signed tasks, collect verified results.

Delivery (`Client(delivery=...)`): "direct" (the default, protocol 0.4) sends each task
on a stream to the node chosen from heartbeats and learns at once whether it took it
(busy, ignored or a broken stream: the next node is tried at once; an answer late
past `answer_timeout` is still awaited, as the node may have taken the task); a node
without `addrs` gets the task on gossip; one that cannot be dialled is replaced at once (a
killed node looks live until its heartbeat ages out) and gets its tasks on gossip for a minute. "gossip" is
protocol 0.3: every task on the `task` topic. A task on gossip to a node this publisher is connected
to is retried at once when that connection closes (the node died), as a lost stream is; a node reached
only through other peers is retried after the attempt timeout. Either way a result is accepted once,
from the stream or from gossip, after the same checks. A node whose dial failed, or whose last connection
to this publisher closed and which then refused a new one (a probe: a node past its peer budget trims idle
connections), is weighed last until its next heartbeat or a new connection to it (NodeTable.mark_gone):
a node killed while idle gets none of the next tasks.

Node choice is by measured service (`Client.reputation`, reputation.py): every answer,
error, timeout and decline of a chosen node is recorded, in SQLite at `reputation_path`.

async with Client(peers=["/ip4/127.0.0.1/tcp/4001/p2p/16Uiu2..."]) as client:
    simple = Simple()
    res = await client.execute(Task(workflow=simple.workflow(prompt="Hey there!"), models=["smollm2:135m"]), timeout=45)
    print(simple.parse_result(res))
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import structlog

from node.p2p.host import P2PHost
from node.p2p.streams import StreamLimits
from node.publisher.attempt import Attempt
from node.publisher.attempts import AttemptHooks, AttemptLoop, OnSubmit
from node.publisher.direct import OnDelta
from node.publisher.errors import (
    ClientError,
    NoNodeError,
    TaskFailedError,
    TaskIdTakenError,
    TaskNotEncodableError,
    TaskTimeoutError,
    TaskTooLargeError,
    VerificationFailedTaskError,
)
from node.publisher.gossip_peers import GossipPeerKeeper, GossipPeerSettings
from node.publisher.inbox import PEER_LOG_WINDOW_S, ResultInbox
from node.publisher.node_table import KnownNode, NodeTable
from node.publisher.peer_watch import PeerWatch
from node.publisher.prompt_match import PromptExpectation
from node.publisher.reputation import Reputation
from node.publisher.reputation_records import ReputationSettings
from node.publisher.sender import Delivery, TaskSender
from node.publisher.tasks import Task, TaskResult, check_size, task_body
from node.publisher.verification import ResultVerifier, VerificationFailedError
from node.wire.identity import Identity
from node.wire.inbound import GossipGate, Inbound, LogWindow, consume
from node.wire.messages import HeartbeatBody, ResultBody, TaskBody
from node.wire.proof import ProofError, open_proof
from node.wire.topics import HEARTBEAT_TOPIC, RESULTS_TOPIC, TASK_TOPIC

log = structlog.get_logger(__name__)

OnMessage = Callable[[Inbound], None]  # every verified result or heartbeat, as it arrived
__all__ = [
    "Client",
    "ClientError",
    "NoNodeError",
    "Task",
    "TaskFailedError",
    "TaskIdTakenError",
    "TaskResult",
    "TaskTimeoutError",
    "TaskNotEncodableError",
    "TaskTooLargeError",
    "VerificationFailedTaskError",
]

MAX_SHOWN_NAME = 64  # characters of a model name an error shows (a heartbeat's may be 256)
PUBLISHER_STREAM_LIMITS = StreamLimits(max_streams=4096, max_streams_per_peer=1024)


class Client:
    """A publisher peer. Starts on first use; close it (or use `async with`)."""

    def __init__(
        self,
        peers: list[str] | str,
        secret_key: str | bytes | None = None,
        listen: list[str] | None = None,
        connect_timeout: float = 15.0,
        max_retries: int = 2,
        node_table: NodeTable | None = None,
        on_message: OnMessage | None = None,
        delivery: Delivery = "direct",
        answer_timeout: float = 5.0,
        attempt_timeout: float | None = None,
        verifier: ResultVerifier | None = None,
        reputation_path: Path | str | None = None,
        reputation_settings: ReputationSettings | None = None,
        gossip_peers: GossipPeerSettings | None = None,
    ) -> None:
        """`delivery`: "direct" (protocol 0.4, gossip for nodes without addrs) or "gossip" (0.3).
        `answer_timeout`: seconds to dial a node and get its answer before trying another.
        `attempt_timeout`: seconds to wait for one node's result before also trying another
        (None: half of each task's timeout; math.inf: never); results of earlier attempts are still taken.
        `reputation_path`: the SQLite file of measured node service (None: kept in memory). A
        `node_table` passed in chooses as it was made (without a reputation: by heartbeat claims).
        `verifier`: asks a share of tasks for a proof and checks it (docs/VERIFICATION.md); a result
        that fails is a VerificationFailedError for the caller and a mark on its node.
        `gossip_peers`: how many gossip peers it keeps and how it redials them when they die or
        its heartbeats stop (gossip_peers.py); `peers` are the first it dials."""
        if delivery not in ("direct", "gossip"):
            raise ValueError(f"delivery must be 'direct' or 'gossip', not {delivery!r}")
        if isinstance(secret_key, bytes):
            self.identity = Identity(secret_key)
        elif isinstance(secret_key, str):
            self.identity = Identity.from_hex(secret_key)
        else:
            self.identity = Identity.generate()
        self._peers = [peers] if isinstance(peers, str) else list(peers)  # a str: one multiaddr, not one per character
        self._listen = listen or ["/ip4/127.0.0.1/tcp/0"]
        self._connect_timeout = connect_timeout
        self._host: P2PHost | None = None
        self._inbox = ResultInbox(self.identity.secret)
        self._loops: list[asyncio.Task[None]] = []
        self._start_lock = asyncio.Lock()
        self._max_retries = max_retries
        self.delivery: Delivery = delivery
        self._answer_timeout = answer_timeout
        self._attempt_timeout = attempt_timeout
        self._sender: TaskSender | None = None
        self.reputation = Reputation(reputation_path, reputation_settings)
        self.nodes = node_table or NodeTable(reputation=self.reputation)
        self.on_message = on_message  # called for every verified result and heartbeat
        self._observer_log = LogWindow(PEER_LOG_WINDOW_S)  # it may fail on every message any peer sends
        self.verifier = verifier
        self._gossip_settings = gossip_peers
        self.gossip_keeper: GossipPeerKeeper | None = None

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Join the network: listen, subscribe, dial the peers, wait for a task mesh."""
        async with self._start_lock:
            if self._host is not None:
                return
            # Its own streams are bounded by the nodes it dials (each refuses what it cannot take).
            # The nodes it dials to send tasks stay out of its gossip: it gossips with `peers` only.
            host = P2PHost(
                self.identity.secret,
                self._listen,
                stream_limits=PUBLISHER_STREAM_LIMITS,
                gossip_with_stream_peers=False,
                on_peer_gone=self._on_peer_gone,
                on_peer_back=self._on_peer_back,
            )
            await host.start()
            self._host = host
            try:
                self._sender = TaskSender(
                    host,
                    self.identity,
                    self._inbox,
                    self._on_result,
                    self.delivery,
                    self._answer_timeout,
                    served=self.reputation.served,
                    watch=PeerWatch(host, self.nodes),
                )
                gate = GossipGate()
                await host.relay(TASK_TOPIC, gate.validate)  # joined to publish into its mesh; never read
                # `check`: the message arrives decoded by the validator (its signature is recovered once).
                queues = {t: await host.subscribe(t, gate.check) for t in (RESULTS_TOPIC, HEARTBEAT_TOPIC)}
                self._loops = [
                    asyncio.create_task(consume(queues[RESULTS_TOPIC], RESULTS_TOPIC, self._on_result)),
                    asyncio.create_task(consume(queues[HEARTBEAT_TOPIC], HEARTBEAT_TOPIC, self._on_heartbeat)),
                ]
                results = await asyncio.gather(*(host.connect(p) for p in self._peers), return_exceptions=True)
                failures = [f"{p}: {r}" for p, r in zip(self._peers, results) if isinstance(r, BaseException)]
                if self._peers and len(failures) == len(self._peers):
                    raise ClientError("could not connect to any peer: " + "; ".join(failures))
                self.gossip_keeper = GossipPeerKeeper(host, self._peers, self.nodes, self._gossip_settings)
                self._loops.append(asyncio.create_task(self.gossip_keeper.run()))
                await self._wait_for_mesh(host)
            except BaseException:
                # Half started (no peer answered, no mesh, cancelled): leave nothing behind, so the
                # next call starts again (dials the peers) instead of waiting on a host that has none.
                await self.close()
                raise

    async def close(self) -> None:
        """Stop the sender, the background loops and the host."""
        if self._sender is not None:
            await self._sender.close()
            self._sender = None
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []
        self.gossip_keeper = None
        if self._host is not None:
            await self._host.stop()
            self._host = None

    async def execute(
        self,
        task: Task,
        timeout: float = 60.0,
        on_submit: OnSubmit | None = None,
        on_delta: OnDelta | None = None,
    ) -> TaskResult:
        """Run the task and return its verified result within `timeout` seconds.

        With `task.nodes` set, the task goes on gossip to those nodes. Otherwise one live
        node that hosts an acceptable model is chosen from heartbeats and sent the task
        (see the module doc for direct delivery). A node that declines is replaced at
        once; an error result, a lost stream or a node silent for `attempt_timeout` is
        retried on another node (new task id, at most `max_retries` times), unless the
        error is deterministic (`Invalid prompt: ...`). Raises TaskTimeoutError (NoNodeError
        when no node was found), TaskFailedError, or TaskTooLargeError (before any node is chosen). `on_submit(task_id, node)` is called for
        every task a node took (or that went on gossip). `on_delta(text)`: the final step's
        text as it generates, from nodes that stream it (direct delivery only); the result
        is checked to extend what was streamed.
        """
        if not math.isfinite(timeout) or timeout <= 0:
            raise ValueError(f"timeout must be a positive, finite number of seconds, not {timeout!r}")
        self.check_size(task, timeout)
        proof = task.verify and self.verifier is not None and task.public_key is None and self.verifier.wants_proof()
        expected = PromptExpectation.of(task.workflow, task.prompt) if proof else None
        if task.nodes:
            task_id = await self.submit(task, timeout, proof=proof)
            if on_submit is not None:
                on_submit(task_id, None)
            result = await self.wait(task_id, timeout, nodes=task.nodes, models=task.models)
            return await self._verified(result, proof, expected)
        hooks = AttemptHooks(
            nodes=self.nodes,
            reputation=self.reputation,
            choose=self._choose,
            send=lambda task, node, remaining, on_delta: self._send(task, node, remaining, on_delta, proof),
            verify=lambda result: self._verified(result, proof, expected),
            end=self._end_attempt,
        )
        return await AttemptLoop(
            hooks,
            task,
            timeout,
            self._max_retries,
            self._attempt_timeout,
            on_submit=on_submit,
            on_delta=on_delta,
            tried=set(task.exclude),
        ).run()

    def check_size(self, task: Task, timeout: float) -> None:
        """TaskTooLargeError when no envelope could carry `task`, with all a send may add (a picked node,
        `stream`, `proof`): checked before a node is chosen, so no node is reserved, sent it or marked."""
        worst = task if task.nodes else task.model_copy(update={"nodes": [self.identity.address]})
        check_size(task_body(worst, timeout, self.identity.public_key_compressed.hex(), stream=True, proof=True))

    async def _end_attempt(self, attempt: Attempt) -> None:
        """Stop waiting for the attempt's result and close its stream; its place at the node is free again."""
        self.reputation.finished(attempt.node)
        self.nodes.release(attempt.node, attempt.models)
        self._inbox.forget(attempt.task_id)
        if self._sender is not None:
            await self._sender.end(attempt)
        elif attempt.direct is not None:
            await attempt.direct.close()

    async def _verified(self, result: TaskResult, proof: bool, expected: PromptExpectation | None) -> TaskResult:
        """The result, checked against its proof when the task asked for one; a failure is the task's error."""
        if not proof or self.verifier is None:
            return result
        try:
            opened = None if result.proof is None else open_proof(self.identity.secret, result.proof)
            verdict = await self.verifier.verify(
                result.model, opened, result.text, node=result.node, runner=self, expected=expected
            )
        except (ProofError, VerificationFailedError) as exc:
            self._record_verification(result.node, False)
            reason = exc.reason if isinstance(exc, VerificationFailedError) else f"verification failed: {exc}"
            log.warning("result failed verification", task_id=result.task_id, node=result.node, reason=reason)
            raise VerificationFailedTaskError(result.task_id, reason, result.node) from None
        if verdict is None:
            log.info("result not verified: no scorer for its model", task_id=result.task_id, model=result.model)
            return result
        self._record_verification(result.node, True)
        log.debug("result verified", task_id=result.task_id, positions=verdict.positions, bias=verdict.mean_bias)
        return result.model_copy(update={"verified": True})

    def others_serve(self, model: str, exclude: set[str]) -> bool:
        """Whether a live node outside `exclude` serves `model` (remote scoring's ScoreTaskRunner)."""
        return self.nodes.serving([model], exclude=exclude)

    async def run_score_task(
        self, workflow: dict[str, Any], model: str, exclude: set[str], timeout: float
    ) -> tuple[str, str]:
        """Run a score workflow on a node outside `exclude`, without a proof: (result text, node)."""
        result = await self.execute(
            Task(workflow=workflow, models=[model], exclude=sorted(exclude), verify=False), timeout=timeout
        )
        return result.text, result.node

    def _record_verification(self, node: str, passed: bool) -> None:
        """The one place a verification outcome reaches the node's measured reputation (a failure bans it)."""
        self.reputation.record_verification(node, passed)

    async def _send(
        self, task: Task, node: KnownNode, remaining: float, on_delta: OnDelta | None, proof: bool = False
    ) -> Attempt:
        """Send the task to `node` (sender.py); DeclinedError: it did not take it."""
        return await (await self._started()).send(task, node, remaining, on_delta, proof)

    async def _started(self) -> TaskSender:
        """The sender of the started client (starting it first)."""
        await self.start()
        assert self._sender is not None
        return self._sender

    async def _choose(
        self,
        models: list[str],
        tried: set[str],
        deadline: float,
        timeout: float,
        last_failure: TaskFailedError | None,
        explore: bool = True,
    ) -> KnownNode:
        await self.start()
        loop = asyncio.get_running_loop()
        while True:
            node = self.nodes.choose(models, exclude=tried, explore=explore)
            if node is not None:
                return node
            if last_failure is not None and not self.nodes.serving(models, exclude=tried):
                raise last_failure  # every node that could run it was tried
            if loop.time() >= deadline:  # what the last node tried said, if one was: nodes were seen
                raise last_failure or self._no_node(timeout, models)
            await asyncio.sleep(0.1)

    def _no_node(self, timeout: float, models: list[str]) -> NoNodeError:
        live = self.nodes.live()
        serving = sum(node.serves(models) for node in live)
        # Names of nodes measured serving first (keys are free; measurement is not), then by votes: each node
        # lends its names one vote among them, so one key's many names rank after the names nodes share.
        votes: dict[str, Fraction] = {}
        measured: set[str] = set()
        for node in live:
            names = {name[:MAX_SHOWN_NAME] for name in node.models}
            for name in names:
                votes[name] = votes.get(name, Fraction(0)) + Fraction(1, len(names))
            if self.reputation.served(node.address):
                measured |= names
        served = sorted(votes, key=lambda name: (name not in measured, -votes[name], name))
        return NoNodeError(timeout, models, len(live), serving, served)

    async def submit(self, task: Task, timeout: float = 60.0, proof: bool = False) -> str:
        """Publish the task (deadline = now + timeout) and return its id; collect it with `wait`.

        `proof`: ask the node for a proof of its work (returned in `TaskResult.proof`)."""
        sender = await self._started()
        body = sender.body(task, timeout, proof=proof)
        task_id = body.task_id
        self._inbox.expect(task_id, task.nodes, sealed=bool(task.public_key), models=task.models)
        try:
            await self.publish_task(body)
        except ClientError:
            self._inbox.forget(task_id)
            raise
        log.debug("task published", task_id=task_id, models=task.models)
        return task_id

    async def publish_task(self, body: TaskBody) -> None:
        """Sign and publish a task body as it is (its result is not awaited: see `on_message`)."""
        await (await self._started()).publish(body)

    async def wait(
        self,
        task_id: str,
        timeout: float,
        nodes: list[str] | None = None,
        sealed: bool = False,
        models: list[str] | None = None,
    ) -> TaskResult:
        """Wait for the result of a task published by this key (also one from an earlier session).

        `sealed`: the task was encrypted to another key (`Task.public_key`): return its ciphertext.
        `models`: the task's model entries: a result naming another model is its node's failure.
        """
        # Before joining: a result may arrive as soon as the mesh forms.
        future = self._inbox.expect(task_id, nodes, sealed=sealed, models=models)
        try:
            async with asyncio.timeout(timeout):
                await self.start()
                return await future
        except TimeoutError:
            raise TaskTimeoutError(task_id, timeout, "; ".join(self.nodes.departures(nodes or [], timeout))) from None
        finally:
            self._inbox.forget(task_id)

    async def _wait_for_mesh(self, host: P2PHost) -> None:
        if not self._peers:
            return
        if not await host.wait_for_mesh(TASK_TOPIC, self._connect_timeout):
            raise ClientError(f"no peer joined the '{TASK_TOPIC}' topic within {self._connect_timeout:g} s")

    def _on_result(self, inbound: Inbound) -> None:
        assert isinstance(inbound.body, ResultBody)
        self._notify(inbound)
        self._inbox.accept(inbound.body, inbound.sender)

    def _on_peer_gone(self, peer_id: str) -> None:
        """A peer's last connection closed (PeerWatch probes it). Not while the Client closes: it hangs up on
        every peer then."""
        if self._sender is not None:
            self._sender.watch.gone(peer_id)

    def _on_peer_back(self, peer_id: str) -> None:
        if self._sender is not None:
            self._sender.watch.back(peer_id)

    def _on_heartbeat(self, inbound: Inbound) -> None:
        assert isinstance(inbound.body, HeartbeatBody)
        # Observers (the gateway's /rpc/get_alive_peers) see what the table holds: a replayed,
        # stale or overtaken heartbeat, validly signed but rejected here, goes no further.
        if self.nodes.update(inbound.sender, inbound.body, envelope=inbound.signed.envelope):
            if self.gossip_keeper is not None:
                self.gossip_keeper.heard()
            self._notify(inbound)

    def _notify(self, inbound: Inbound) -> None:
        try:
            if self.on_message is not None:
                self.on_message(inbound)
        except Exception:  # the consumer loop must survive a failing observer
            if (not_logged := self._observer_log.may_log("failed")) is not None:
                log.exception("message observer failed", topic=inbound.signed.topic, not_logged_since=not_logged)
