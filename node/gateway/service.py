"""The publisher side of the gateway: submit tasks, follow them to a result, record it.

Each submitted task is followed by one asyncio task running `Client.execute` (the Client
chooses the node among those heartbeats show live, by measured reputation; a busy or failed
node retried on another one with a new network task id; an `Invalid prompt:` error gets one
second opinion, other workflow errors none), recording each network task id it publishes
and the outcome in the store. The gateway id stays the same across retries. Long polling waits on
an in-memory event per unfinished task.

An outcome or network task id the store cannot take (a full disk, an I/O error) is not lost: it is
held in memory (the outcome served from there) and written once the store takes writes again, or at a
graceful stop (`node/gateway/unsaved.py`).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from node.gateway.schemas import TaskRequest
from node.gateway.settings import GatewaySettings
from node.gateway.store import TaskRecord, TaskStore
from node.gateway.unsaved import UnsavedWrites
from node.publisher.client import Client, ClientError, Task, TaskFailedError, TaskResult, TaskTimeoutError
from node.publisher.node_table import KnownNode

log = structlog.get_logger(__name__)

RETRY_AFTER = 5  # seconds suggested by every 429 and 503 of the gateway: pending caps, busy nodes, no store
MAX_LISTED_NODES = 1000  # nodes (and SDK peers) one listing shows at most: anyone can make keys that heartbeat
MAX_LISTED_MODELS = 1000  # models /v1/models shows at most (each heartbeat may name 64)
# A pending task stored without a network id: none had been published, or its id could not be stored
# (a full disk) and a stop came before it could be: the gateway cannot tell which.
UNTRACKED_AFTER_RESTART = (
    "the gateway restarted without a record of a node taking the task (none had, or the gateway lost track "
    "of it: its task database could not be written); submit it again"
)


class TooManyPendingError(Exception):
    """A key, or the gateway as a whole, already has as many unfinished tasks as it may."""

    def __init__(self, pending: int, adding: int, limit: int, whose: str = "this key") -> None:
        super().__init__(f"{pending} tasks of {whose} are unfinished; {adding} more would exceed the limit of {limit}")


PendingCount = Callable[[str | None], int]
"""Unfinished tasks of a key (None: of every key) that one API holds."""


class PendingCaps:
    """The most unfinished tasks one key, and the whole gateway, may have, over every API at once.

    Each API adds what it holds as a source (`/v1/tasks` its rows, OpenAI's routes their completions
    in flight, Dria's SDK its rows); a check counts them all. The app answers the error 429.
    """

    def __init__(self, per_key: int = 100, total: int = 1000) -> None:
        self.per_key = per_key
        self.total = total
        self._sources: list[PendingCount] = []

    @classmethod
    def of(cls, settings: GatewaySettings) -> PendingCaps:
        """The caps of the gateway's settings."""
        return cls(settings.max_pending, settings.max_pending_total)

    def add_source(self, count: PendingCount) -> None:
        """Count the unfinished tasks that `count` reports too."""
        self._sources.append(count)

    def pending(self, key_id: str | None) -> int:
        """Unfinished tasks of `key_id` (None: of every key) over every API."""
        return sum(count(key_id) for count in self._sources)

    def check(self, key_id: str, adding: int = 1) -> None:
        """TooManyPendingError if `adding` more tasks would pass the key's cap or the gateway's."""
        if (pending := self.pending(key_id)) + adding > self.per_key:
            raise TooManyPendingError(pending, adding, self.per_key)
        if (total := self.pending(None)) + adding > self.total:
            raise TooManyPendingError(total, adding, self.total, "the whole gateway")


class GatewayService:
    """Publishes tasks through a `Client` and keeps their state in a `TaskStore`."""

    def __init__(self, client: Client, store: TaskStore) -> None:
        self.client = client
        self.store = store
        self._finished: dict[str, asyncio.Event] = {}
        self._followers: set[asyncio.Task[None]] = set()
        self._unsaved = UnsavedWrites(store)  # what the store refused (disk full): kept until written
        self.started_at: float | None = None  # loop time of `start`: nodes' heartbeats come in the seconds after

    async def start(self) -> None:
        """Join the network and resume waiting for tasks left pending by an earlier run."""
        self.started_at = asyncio.get_running_loop().time()
        await self.client.start()
        for record in self.store.pending():
            if record.id in self._finished:  # submitted by this run while it joined the network: `_run` follows it
                continue
            self._finished[record.id] = asyncio.Event()
            self._spawn(self._resume(record))

    async def close(self) -> None:
        """Stop following tasks (they stay pending in the store), write what the store refused before if it
        can now, and leave the network."""
        tasks = list(self._followers)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._followers.clear()
        await self._unsaved.close()
        await self.client.close()

    def submit(self, key_id: str, requests: list[TaskRequest], timeouts: list[float], caps: PendingCaps) -> list[str]:
        """Accept tasks (all or none) for `key_id` and start publishing them; their gateway ids.

        Raises TooManyPendingError when the key or the gateway would pass its cap (the app's `caps`).
        """
        caps.check(key_id, len(requests))
        now = time.time()
        records = [
            TaskRecord(
                id=secrets.token_urlsafe(12),
                key_id=key_id,
                status="pending",
                models=request.models,
                picked=request.nodes,
                public_key=request.public_key,
                created_at=now,
                updated_at=now,
                deadline=now + timeout,
                expires_at=now + timeout + self.store.retention,
            )
            for request, timeout in zip(requests, timeouts)
        ]
        self.store.insert(records)
        for record, request, timeout in zip(records, requests, timeouts):
            self._finished[record.id] = asyncio.Event()
            self._spawn(self._run(record.id, request, timeout))
            log.info(
                "task accepted", id=record.id, key_id=key_id, models=request.models, sealed=bool(request.public_key)
            )
        return [record.id for record in records]

    def get(self, task_id: str, key_id: str) -> TaskRecord | None:
        """The task if it exists and belongs to `key_id`."""
        record = self.store.get(task_id)
        return self._with_unsaved(record) if record is not None and record.key_id == key_id else None

    def get_many(self, task_ids: list[str], key_id: str) -> dict[str, TaskRecord]:
        """The tasks of `task_ids` that belong to `key_id`, by id."""
        return {i: self._with_unsaved(r) for i, r in self.store.get_many(task_ids).items() if r.key_id == key_id}

    async def wait(self, task_ids: list[str], seconds: float) -> None:
        """Return when every one of these tasks has finished, or after `seconds`."""
        events = [self._finished[i] for i in task_ids if i in self._finished]
        if not events or seconds <= 0:
            return
        waiters = [asyncio.ensure_future(event.wait()) for event in events]
        try:
            await asyncio.wait(waiters, timeout=seconds)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def nodes(self) -> list[KnownNode]:
        """Live nodes to list, by address: at most MAX_LISTED_NODES, those measured serving first
        (`NodeTable.listing`: the work is bounded however many keys heartbeat)."""
        return sorted(self.client.nodes.listing(MAX_LISTED_NODES), key=lambda node: node.address)

    def check_size(self, request: TaskRequest, timeout: float) -> None:
        """TaskTooLargeError when no envelope of the network could carry the request's task."""
        self.client.check_size(_task_of(request), timeout)

    async def _run(self, task_id: str, request: TaskRequest, timeout: float) -> None:
        task = _task_of(request)

        def published(network_id: str, node: str | None) -> None:
            self._unsaved.published(task_id, network_id, node)  # only a restart needs it: kept if refused
            log.debug("task published", id=task_id, network_id=network_id, node=node or request.nodes)

        try:
            result = await self.client.execute(task, timeout, on_submit=published)
        except ClientError as exc:
            self._finish_failed(task_id, exc)
        except Exception as exc:  # the follower's boundary: a bug must not leave the task pending forever
            log.exception("task follower failed", id=task_id)
            self._finish(task_id, "error", error=f"gateway error: {exc!r}")
        else:
            self._finish_with(task_id, result)

    async def _resume(self, record: TaskRecord) -> None:
        """Wait for the result of a task published before a restart (no retry: its workflow is not kept)."""
        remaining = record.deadline - time.time()
        if remaining <= 0:
            self._finish(record.id, "expired", error="no result before the deadline")
            return
        if record.network_id is None:  # its workflow is not kept: it cannot go on
            self._finish(record.id, "error", error=UNTRACKED_AFTER_RESTART)
            return
        nodes = record.picked or ([record.node] if record.node else None)
        try:
            result = await self.client.wait(
                record.network_id, remaining, nodes=nodes, sealed=record.public_key is not None, models=record.models
            )
        except ClientError as exc:
            self._finish_failed(record.id, exc)
        else:
            self._finish_with(record.id, result)

    def _finish_failed(self, task_id: str, exc: ClientError) -> None:
        if isinstance(exc, TaskTimeoutError):
            self._finish(task_id, "expired", error=str(exc))
        elif isinstance(exc, TaskFailedError):
            self._finish(task_id, "error", error=exc.reason, node=exc.node)
        else:  # NoNodeError among them
            self._finish(task_id, "error", error=str(exc))

    def _finish_with(self, task_id: str, result: TaskResult) -> None:
        stats = result.stats.model_dump(by_alias=True)
        if result.ciphertext is not None:
            self._finish(
                task_id,
                "done",
                ciphertext=result.ciphertext,
                error=None,
                node=result.node,
                model=result.model,
                stats=stats,
            )
        else:
            self._finish(
                task_id, "done", result=result.text, error=None, node=result.node, model=result.model, stats=stats
            )

    def _finish(self, task_id: str, status: str, **fields: object) -> None:
        self._unsaved.finish(task_id, status, fields)
        event = self._finished.pop(task_id, None)
        if event is not None:
            event.set()
        log.info("task finished", id=task_id, status=status, node=fields.get("node"), error=fields.get("error"))

    def _with_unsaved(self, record: TaskRecord) -> TaskRecord:
        outcome = self._unsaved.outcome(record.id)
        return record if outcome is None else record.model_copy(update=outcome)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        follower = asyncio.create_task(coro)
        self._followers.add(follower)
        follower.add_done_callback(self._follower_done)

    def _follower_done(self, follower: asyncio.Task[None]) -> None:
        self._followers.discard(follower)
        if not follower.cancelled() and follower.exception() is not None:
            log.error("task follower crashed", error=repr(follower.exception()))  # e.g. the store could not be written


def _task_of(request: TaskRequest) -> Task:
    return Task(
        workflow=request.workflow,
        models=request.models,
        prompt=request.prompt,
        nodes=request.nodes,
        public_key=request.public_key,
    )
