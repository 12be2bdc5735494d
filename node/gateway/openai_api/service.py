"""OpenAIService: runs chat completions on the network through the gateway's publisher Client.

Each request is one `Client.execute` (the Client chooses the node by measured reputation
among live ones, retried on busy or failure), counted against the same pending caps as `/v1/tasks` while it runs.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import structlog

from node.gateway.openai_api.errors import OpenAIError, from_client_error
from node.gateway.openai_api.schemas import ChatCompletionRequest, ModelCard, ModelList, Usage
from node.gateway.openai_api.translate import max_tokens_of, offered_tools, workflow_for
from node.gateway.service import MAX_LISTED_MODELS, GatewayService, PendingCaps
from node.gateway.settings import GatewaySettings
from node.publisher.client import ClientError, Task, TaskResult

log = structlog.get_logger(__name__)

# After the gateway starts, how long a request for a model no node serves yet waits for the nodes' heartbeats.
JOINING_S = 10.0
JOIN_POLL_S = 0.1


@dataclass(frozen=True)
class Prepared:
    """A request translated and checked, ready to run."""

    task: Task
    tools: dict[str, dict[str, Any]]  # the tools a call may name, with their parameters (none: a plain generation)
    timeout: float
    max_tokens: int


def usage_of(result: TaskResult, max_tokens: int) -> Usage:
    """Token counts from the result's stats (extra fields `promptTokens`, `completionTokens`): what a node
    claims, read as counts (TaskResult's), 0 when they are not; the completion at most the request's
    `max_tokens` (a node cannot have generated more: a claim past it is false)."""
    prompt, completion = result.prompt_tokens, min(result.completion_tokens, max_tokens)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


class OpenAIService:
    """The network behind the OpenAI routes."""

    def __init__(self, gateway: GatewayService, settings: GatewaySettings, caps: PendingCaps) -> None:
        self.gateway = gateway
        self.settings = settings
        self.caps = caps
        self._running: Counter[str] = Counter()  # key id -> chat completions in flight
        caps.add_source(lambda key: self._running.total() if key is None else self._running[key])

    def models(self) -> ModelList:
        """The models live nodes advertise, with how many listed nodes serve each: at most MAX_LISTED_MODELS,
        those of nodes measured serving first, then the most served (anyone can make keys naming models)."""
        counts: Counter[str] = Counter()
        newest: dict[str, float] = {}
        measured: set[str] = set()
        reputation = self.gateway.client.reputation
        for node in self.gateway.nodes():
            served = reputation.served(node.address)
            for model in dict.fromkeys(node.models):
                counts[model] += 1
                newest[model] = max(newest.get(model, 0.0), node.last_seen)
                if served:
                    measured.add(model)
        listed = sorted(counts, key=lambda m: (m not in measured, -counts[m], m))[:MAX_LISTED_MODELS]
        return ModelList(
            data=[ModelCard(id=m, created=int(newest[m]), nodes=counts[m]) for m in sorted(listed)],
        )

    def model(self, model: str) -> ModelCard:
        """`model`'s card from `models()`; 404 if no live node serves it."""
        for card in self.models().data:
            if card.id == model:
                return card
        raise OpenAIError(404, f"the model {model!r} is not served by any live node (see GET /v1/models)", "model")

    async def prepare(self, request: ChatCompletionRequest, key: str) -> Prepared:
        """The request as a task: 400 if the network cannot run it, 404 if no live node serves the model (in the
        first JOINING_S of the gateway, once one had the time to say so)."""
        timeout = self.settings.default_timeout
        workflow = workflow_for(request, timeout)
        if not await self._served(request.model, key):
            raise OpenAIError(
                404, f"the model {request.model!r} is not served by any live node (see GET /v1/models)", "model"
            )
        return Prepared(
            task=Task(workflow=workflow, models=[request.model]),
            tools=offered_tools(workflow),
            timeout=timeout,
            max_tokens=max_tokens_of(request),
        )

    async def _served(self, model: str, key: str) -> bool:
        """Whether a live node serves `model`; while the gateway joins the network (a restart: the requests
        its socket held), it waits for the nodes' first heartbeats: a 404 is an answer OpenAI's client never
        retries, and it came for ~3.4 s after each restart. A waiting request counts against the pending caps."""
        loop, nodes = asyncio.get_running_loop(), self.gateway.client.nodes
        started = self.gateway.started_at
        joined_at = (started if started is not None else loop.time()) + JOINING_S
        if nodes.serving([model]) or loop.time() >= joined_at:
            return nodes.serving([model])
        release = self.hold(key)  # TooManyPendingError past a cap, as for the completion it may become
        try:
            while not nodes.serving([model]):
                if loop.time() >= joined_at:
                    return False
                await asyncio.sleep(JOIN_POLL_S)
            return True
        finally:
            release()

    def hold(self, key: str) -> Callable[[], None]:
        """Count a completion in flight until the returned release is called (once or more);
        TooManyPendingError past a cap (the app answers it, as for `/v1/tasks`)."""
        self.caps.check(key)
        self._running[key] += 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self._running[key] -= 1
            if self._running[key] <= 0:
                del self._running[key]

        return release

    @contextmanager
    def _slot(self, key: str) -> Iterator[None]:
        release = self.hold(key)
        try:
            yield
        finally:
            release()

    async def run(
        self, key: str, prepared: Prepared, on_delta: Callable[[str], None] | None = None, *, held: bool = False
    ) -> TaskResult:
        """Execute the task on the network; OpenAIError when it does not complete.

        `held`: the caller holds its place against the pending caps itself (a stream, until its last event)."""
        with nullcontext() if held else self._slot(key):
            started = time.monotonic()
            try:
                result = await self.gateway.client.execute(prepared.task, prepared.timeout, on_delta=on_delta)
            except ClientError as exc:
                error = from_client_error(exc)
                log.info("chat completion failed", key_id=key, status=error.status, error=error.message)
                raise error from None
            log.info(
                "chat completion done",
                key_id=key,
                task_id=result.task_id,
                node=result.node,
                seconds=round(time.monotonic() - started, 3),
            )
            return result

    def start(self, key: str, prepared: Prepared, on_delta: Callable[[str], None] | None) -> asyncio.Task[TaskResult]:
        """`run` in its own task, for a stream that holds its place itself (the deltas arrive while it runs)."""
        return asyncio.create_task(self.run(key, prepared, on_delta, held=True), name="openai-chat")
