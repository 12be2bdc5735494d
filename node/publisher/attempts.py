"""The attempts of one `Client.execute`: each task id sent to one node, and what to do with the first news of any.

A retry is a new attempt with a new task id; earlier attempts stay live, so a late result
from a slow node is still taken (once: the Client accepts one result per call).
`AttemptLoop` runs one call: it chooses a node, sends (a decline: the next node at once; so too for a
node that ran another key's task under our id), waits for the first news of any live attempt
(`next_outcome`), and retries on an error result, a lost stream, a node silent for the attempt timeout,
or (a task sent on gossip) a node whose connection to this publisher closed, up to `max_retries` times.
Only a node the publisher was connected to can be seen to go: one reached through other peers is timed
out as before. An attempt is failed once:
the stream (or connection) of one already timed out that ends later is no second mark and no other retry.
After MAX_UNMEASURED_ATTEMPTS nodes not measured serving, it keeps to nodes that were while one
has room, and it stops at the deadline however many nodes decline.

A streamed call (`on_delta`) hears one node: the first attempt whose text reaches `on_delta` is its
speaker, and the deltas of every other attempt are dropped. Each progress frame of the attempt timed
(the speaker, else the newest) counts as news, so a node streaming a long answer is not timed out.
Once text has gone out it cannot be taken back: the speaker's failure or silence ends the call (a
result from another node would not extend the text the caller has), and no retry is sent.

A deterministic error (`Invalid prompt: ...`) would be the same on every node, but any node can
claim one. While retries remain and another node serves the task's models now, one more node
is asked (a second opinion): if it returns a result, that result is the call's and the first node
is marked with an error; anything else (its own error, a decline, silence) ends the call with
the first node's error.
The Client hands it what it needs as callables (`AttemptHooks`): choosing, sending,
verifying a result, ending an attempt. A result must extend the text its node streamed,
and each one is recorded in the node's measured reputation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from node.publisher.attempt import Attempt, checked, id_taken, next_outcome
from node.publisher.direct import DeclinedError, DeclineKind, NotDialableError, OnDelta
from node.publisher.errors import TaskFailedError, TaskIdTakenError, TaskTimeoutError, VerificationFailedTaskError
from node.publisher.inbox import ID_TAKEN
from node.publisher.node_table import KnownNode, NodeTable
from node.publisher.reputation import Reputation
from node.publisher.tasks import Task, TaskResult, generation_budget
from node.wire.error_kinds import ErrorKind, ErrorLimit

log = structlog.get_logger(__name__)

NODE_POLL_S = 0.5  # waiting on a running attempt, how often to look for a free node to retry on
# Nodes not measured serving that one call may try (declines count) before it keeps to measured ones while
# any has room: anyone can make keys that claim free places and never answer.
MAX_UNMEASURED_ATTEMPTS = 1
NODE_GONE = "its node disconnected without a result"  # the reason of a retry for a gossip task whose node went
OnSubmit = Callable[[str, "str | None"], None]  # (task id sent, node picked or None)


@dataclass
class AttemptHooks:
    """What an AttemptLoop asks of its Client."""

    nodes: NodeTable
    reputation: Reputation
    # (models, tried, deadline, timeout, last failure, explore) -> a node, waiting for one (NoNodeError at the
    # deadline); `explore` False: none not measured serving while one that was has room (NodeTable.choose)
    choose: Callable[[list[str], set[str], float, float, TaskFailedError | None, bool], Awaitable[KnownNode]]
    # (task, node, seconds left, on_delta) -> the attempt; DeclinedError when the node did not take it
    send: Callable[[Task, KnownNode, float, OnDelta | None], Awaitable[Attempt]]
    verify: Callable[[TaskResult], Awaitable[TaskResult]]  # checked against its proof; TaskFailedError if it fails
    end: Callable[[Attempt], Awaitable[None]]  # stop waiting for it and close its stream


@dataclass
class AttemptLoop:
    """One `Client.execute` call without `task.nodes`: attempts on chosen nodes until one result."""

    hooks: AttemptHooks
    task: Task
    timeout: float
    max_retries: int
    attempt_timeout: float | None  # None: half of `timeout`
    on_submit: OnSubmit | None = None
    on_delta: OnDelta | None = None
    tried: set[str] = field(default_factory=set)
    attempts: dict[str, Attempt] = field(default_factory=dict)
    sent: dict[str, float] = field(default_factory=dict)  # task id -> when its node took it
    judged: set[str] = field(default_factory=set)  # task ids already recorded as a failure of their node
    gone: set[str] = field(default_factory=set)  # gossip task ids whose node's connection closed (marked at the end)
    retries: int = 0
    explored: int = 0  # nodes not measured serving tried so far
    voices: dict[str, object] = field(default_factory=dict)  # task id -> the token its deltas carry
    speaker: object | None = None  # the token of the attempt whose text went to `on_delta`
    doubted: TaskFailedError | None = None  # a node's deterministic error, while a second node is asked
    need_new: bool = True
    sent_at: float = 0.0
    deadline: float = 0.0
    last_failure: TaskFailedError | None = None
    fates: list[str] = field(default_factory=list)  # what became of attempts without a result, for a timeout's text

    async def run(self) -> TaskResult:
        """The first accepted result; TaskTimeoutError, NoNodeError or the last TaskFailedError."""
        loop = asyncio.get_running_loop()
        self.deadline = loop.time() + self.timeout
        self.sent_at = loop.time()
        try:
            while True:
                live = [a for a in self.attempts.values() if not a.result.done()]
                if self.need_new and self.retries <= self.max_retries and not await self._send_new(live):
                    if loop.time() >= self.deadline:  # keys that decline can be made without end
                        if not live and self.last_failure is not None:
                            raise self.last_failure
                        self.need_new = False  # the attempts still live time out below
                    continue  # declined: the next node at once
                if not live:
                    if self.last_failure is not None:
                        raise self.last_failure
                    raise self._timed_out()
                attempt, outcome = await next_outcome(live, self._give_up_at(live) - loop.time())
                if attempt is None:
                    if self._give_up_at(live) > loop.time():
                        continue  # it streamed meanwhile: still working
                    self._silent(live)
                    continue
                result = await self._settle(attempt, outcome)
                if result is not None:
                    return result
        finally:
            self._mark_gone()
            ending = [asyncio.ensure_future(self.hooks.end(a)) for a in self.attempts.values()]
            # Every attempt is ended, even when a second cancellation comes while one end awaits (a stream's close).
            await asyncio.shield(asyncio.gather(*ending, return_exceptions=True))

    async def _send_new(self, live: list[Attempt]) -> bool:
        """Send the task to one more node (appended to `live`); False when the chosen node declined it."""
        hooks, loop = self.hooks, asyncio.get_running_loop()
        # With an attempt still running, only a node free now is worth another try.
        explore = self.explored < MAX_UNMEASURED_ATTEMPTS
        node = (
            hooks.nodes.choose(self.task.models, exclude=self.tried, explore=explore)
            if live or self.doubted is not None  # a second opinion is asked of a node free now, or of none
            else await hooks.choose(
                self.task.models, self.tried, self.deadline, self.timeout, self.last_failure, explore
            )
        )
        if node is None:
            if self.doubted is not None and not live:
                raise self.doubted
            return True
        if not hooks.reputation.served(node.address):
            self.explored += 1
        self.tried.add(node.address)
        hooks.nodes.reserve(node.address, self.task.models)
        voice = object()
        on_delta = None if self.on_delta is None else self._forward(voice, self.on_delta)
        try:
            attempt = await hooks.send(self.task, node, max(self.deadline - loop.time(), 0.001), on_delta)
        except DeclinedError as exc:
            hooks.reputation.record_declined(node.address)
            if self.doubted is not None:
                raise self.doubted from None
            # A node not dialable is said once by the sender (a failed dial), or not at all (a host:port that failed
            # for another key: thousands of keys may name one, so at info that would be a line per key).
            log_decline = log.debug if isinstance(exc, NotDialableError) else log.info
            log_decline("retrying on another node", task_id=exc.task_id, node=node.address, reason=exc.reason)
            if isinstance(exc, NotDialableError) and exc.dialled:
                # Dead, or behind a NAT: weighed last until its next heartbeat, so the next calls do not wait
                # out an attempt timeout on gossip to a node killed since its last heartbeat.
                hooks.nodes.mark_gone(node.peer_id)
            if isinstance(exc, NotDialableError) and not hooks.nodes.serving(self.task.models, exclude=self.tried):
                self.tried.discard(node.address)  # no other node: it gets the task again, on gossip this time
            # Not a retry (nothing ran); once every node declined, this is the error.
            self.last_failure = exc.failure(node.address)
            return False
        attempt.models = tuple(self.task.models)
        self.attempts[attempt.task_id] = attempt
        self.voices[attempt.task_id] = voice
        self.sent[attempt.task_id] = loop.time()
        hooks.reputation.started(node.address)
        live.append(attempt)
        self.need_new, self.sent_at = False, loop.time()
        if self.on_submit is not None:
            self.on_submit(attempt.task_id, node.address)
        return True

    def _forward(self, voice: object, on_delta: OnDelta) -> OnDelta:
        """`on_delta` for one attempt: its deltas reach the caller if it is the first to stream, or was."""

        def forward(delta: str) -> None:
            if self.speaker is None:
                self.speaker, self.need_new = voice, False  # no other node's answer can follow this text
            if self.speaker is voice:
                on_delta(delta)

        return forward

    def _speaks(self, attempt: Attempt) -> bool:
        return self.speaker is not None and self.voices.get(attempt.task_id) is self.speaker

    def _timed(self, live: list[Attempt]) -> Attempt | None:
        """The attempt whose silence counts: the speaker's while it is live, else the newest."""
        return next((a for a in live if self._speaks(a)), live[-1] if live else None)

    def _give_up_at(self, live: list[Attempt]) -> float:
        """When to stop waiting for news: the attempt timeout since the timed attempt was sent or last streamed,
        or a short poll for a node that frees up."""
        if not self.need_new:
            attempt_timeout = self.timeout / 2 if self.attempt_timeout is None else self.attempt_timeout
            timed = self._timed(live)
            news = self.sent_at
            if timed is not None and timed.direct is not None and timed.direct.last_progress is not None:
                news = max(news, timed.direct.last_progress)
            return min(self.deadline, news + attempt_timeout)
        if self.retries <= self.max_retries:
            return min(self.deadline, asyncio.get_running_loop().time() + NODE_POLL_S)
        return self.deadline

    def _silent(self, live: list[Attempt]) -> None:
        """No news in time: the timed attempt's node is marked slow, and a retry is due (or the deadline passed,
        or the silent node is the speaker: its text went out, so no other node's answer can follow it)."""
        newest = self._timed(live)
        if newest is not None and newest.task_id not in self.judged:
            self.judged.add(newest.task_id)
            self.hooks.reputation.record_timeout(newest.node)
        if asyncio.get_running_loop().time() >= self.deadline:
            raise self._timed_out()
        if newest is not None and self._speaks(newest):
            silent = "its node went silent after streaming part of the answer"
            raise TaskFailedError(newest.task_id, silent, newest.node, ErrorKind.FAILED)
        if self.doubted is not None:
            raise self.doubted
        if not self.need_new and newest is not None:
            log.info("retrying on another node", task_id=newest.task_id, node=newest.node, reason="no result yet")
            self.fates.append(f"node {newest.node} sent no result within {self._age(newest):.1f} s")
            self.retries, self.need_new = self.retries + 1, True

    async def _settle(self, attempt: Attempt, outcome: str) -> TaskResult | None:
        """Act on one attempt's news: its accepted result, or None after arranging what comes next."""
        reputation = self.hooks.reputation
        declined = attempt.direct.declined if attempt.direct is not None else None
        if outcome == "lost" and attempt.task_id in self.judged:
            await self._ended_late(attempt, declined)
            return None
        if outcome != "result" and self.doubted is not None:
            if declined is not None:
                reputation.record_declined(attempt.node)
            else:
                reputation.record_error(attempt.node)
            raise self.doubted
        if outcome == "lost" and declined is not None:  # a late answer but not accepted: nothing ran there
            if declined.kind is DeclineKind.STREAMS_FULL:
                self.tried.discard(attempt.node)  # its streams from us are full, not its places: it may run it
            else:
                reputation.record_declined(attempt.node)
            await self._not_run(attempt, declined.failure(attempt.node))
            return None
        if outcome == "result" and id_taken(attempt):
            # Its node ran another key's task under our id (inbox.py): ours never ran there. Another node at once,
            # with a new id, and the node is marked as after a decline (it may be lying, to shed the task).
            reputation.record_declined(attempt.node)
            if self.doubted is not None:
                raise self.doubted
            await self._not_run(attempt, TaskIdTakenError(attempt.task_id, ID_TAKEN, attempt.node))
            return None
        if outcome == "lost" and attempt.direct is None:
            self._node_gone(attempt)
            return None
        if outcome == "lost":
            reason = "stream closed without a result"
            self.fates.append(
                f"the stream of node {attempt.node} closed without a result after {self._age(attempt):.1f} s"
            )
            self.judged.add(attempt.task_id)
            reputation.record_error(attempt.node)
            if self._speaks(attempt):
                cut = f"{reason} after streaming part of the answer"
                raise TaskFailedError(attempt.task_id, cut, attempt.node, ErrorKind.FAILED)
            self._retry_after(attempt, reason)
            return None
        try:
            result = await self.hooks.verify(checked(attempt))
        except TaskFailedError as exc:
            if self.doubted is not None:
                raise (self.doubted if exc.retryable else exc) from None
            if not exc.retryable:
                if not self._second_opinion(attempt, exc):
                    raise  # a failed proof is marked where it is checked; a deterministic error stands
                return None
            reputation.record_error(attempt.node)
            if self._speaks(attempt):
                raise  # its text went out: no other node's answer can follow it
            self.last_failure = exc
            self._retry_after(attempt, exc.reason)
            return None
        self._record_result(result, asyncio.get_running_loop().time() - self.sent[attempt.task_id])
        if self.doubted is not None:  # its node said the task could not run; another ran it
            log.warning("a deterministic error was contradicted", node=self.doubted.node, error=self.doubted.reason)
            # Cut short at max_tokens: another model, or a sampled run, may fit where one did not.
            if self.doubted.limit is ErrorLimit.MAX_TOKENS:
                reputation.record_declined(self.doubted.node)
            else:
                reputation.record_error(self.doubted.node)
        if self.speaker is not None and not self._speaks(attempt):  # the caller has another node's text
            log.info("result not used: another node's text was streamed", task_id=attempt.task_id, node=attempt.node)
            del self.attempts[attempt.task_id]
            await self.hooks.end(attempt)
            return None
        return result

    async def _not_run(self, attempt: Attempt, failure: TaskFailedError) -> None:
        """Its node did not run the task after all (a late decline, its id taken): the next node, not a retry, as
        when a node declines at once; none once text went out."""
        log.info("retrying on another node", task_id=attempt.task_id, node=attempt.node, reason=failure.reason)
        del self.attempts[attempt.task_id]
        await self.hooks.end(attempt)  # a late STREAMS_FULL: its next task goes on gossip (sender.py)
        self.last_failure = failure
        self.need_new = self.speaker is None

    async def _ended_late(self, attempt: Attempt, declined: DeclinedError | None) -> None:
        """The stream (or, on gossip, the node's connection) of an attempt already timed out (`_silent`: marked
        and retried once) ended: no second mark, no other retry, not the end of a second opinion. It stays
        live (a result that still comes, on gossip, is taken), unless it declined: nothing ran there. A speaker's
        stream that ends fails the call at once, as any speaker's does (no other node's answer can follow its text)."""
        if self._speaks(attempt):
            closed = "stream closed without a result after streaming part of the answer"
            raise TaskFailedError(attempt.task_id, closed, attempt.node, ErrorKind.FAILED)
        if declined is not None:
            del self.attempts[attempt.task_id]
            await self.hooks.end(attempt)
            self.last_failure = declined.failure(attempt.node)
        else:
            went = "its stream closed" if attempt.direct is not None else "it disconnected"
            self.fates.append(f"node {attempt.node} timed out, then {went} after {self._age(attempt):.1f} s")

    def _node_gone(self, attempt: Attempt) -> None:
        """A task on gossip whose node's connection to us closed: a retry at once, as for a lost stream (none
        after its timeout: `_ended_late`). It stays live: a result that still comes is taken. A closed connection
        is no proof of death (a busy node trims idle inbound connections, connection_trim.py), so the node is
        marked only if its result never came (`_mark_gone`)."""
        self.judged.add(attempt.task_id)
        self.gone.add(attempt.task_id)
        self.fates.append(f"node {attempt.node} disconnected without a result after {self._age(attempt):.1f} s")
        self._retry_after(attempt, NODE_GONE)

    def _age(self, attempt: Attempt) -> float:
        """Seconds since its node took the attempt."""
        return asyncio.get_running_loop().time() - self.sent[attempt.task_id]

    def _timed_out(self) -> TaskTimeoutError:
        """TaskTimeoutError saying what became of the attempts (a stream closed, a node gone) and that no other node
        could be asked, if so: the caller learns its node went away, not only that no result came."""
        detail = "; ".join(self.fates)
        if self.fates and not self.hooks.nodes.serving(self.task.models, exclude=self.tried):
            detail += "; no other node serves its models"
        return TaskTimeoutError(next(reversed(self.attempts), "-"), self.timeout, detail)

    def _mark_gone(self) -> None:
        """At the end of the call: an error for each node that went (`_node_gone`) without a result."""
        for task_id in self.gone:
            attempt = self.attempts.get(task_id)
            if attempt is not None and not (attempt.result.done() and attempt.result.exception() is None):
                self.hooks.reputation.record_error(attempt.node)

    def _second_opinion(self, attempt: Attempt, exc: TaskFailedError) -> bool:
        """Ask one more node after a deterministic error (see the module doc); False when none can be asked."""
        if (
            isinstance(exc, VerificationFailedTaskError)
            or self._speaks(attempt)
            or self.retries >= self.max_retries
            or not self.hooks.nodes.serving(self.task.models, exclude=self.tried)
        ):
            return False
        self.doubted = self.last_failure = exc
        log.info("asking another node", task_id=attempt.task_id, node=attempt.node, reason=exc.reason)
        self.retries, self.need_new = self.retries + 1, True
        return True

    def _retry_after(self, attempt: Attempt, reason: str) -> None:
        """A retry for a failed attempt, unless text went out (another node's answer could not follow it)."""
        if self.speaker is not None:
            log.info("not retried: the caller has another node's text", task_id=attempt.task_id, reason=reason)
            return
        log.info("retrying on another node", task_id=attempt.task_id, node=attempt.node, reason=reason)
        self.retries, self.need_new = self.retries + 1, True

    def _record_result(self, result: TaskResult, seconds: float) -> None:
        """Its node answered after `seconds`: tokens from its stats (at most the result's bytes and the workflow's
        generation budget: a node chooses both its claim and its result's size) against its claim.

        A score task's tokens are recorded apart: they do not measure the node's generating speed.
        """
        tokens = min(result.completion_tokens, generation_budget(self.task.workflow))
        exec_seconds = (result.stats.execution_ended_at - result.stats.execution_started_at) / 1e9
        known = self.hooks.nodes.get(result.node)
        claimed_tps = known.claimed_tps([result.model]) if known is not None else 0.0
        self.hooks.reputation.record_result(
            result.node, seconds, tokens, exec_seconds, claimed_tps, scoring=self.task.scores_tokens
        )
