"""A Client that can also publish a task for a caller's own public key.

The node encrypts a result to the task's `publicKey`. For a caller who gives a
key, the gateway signs the task with its own key but puts the caller's key in
`publicKey`, and hands the node's ciphertext back unchanged: it cannot, and does
not try to, read it. The node's signature on the result is checked as for any
other result (the recovered address must be a picked node).
"""

from __future__ import annotations

import secrets
import time

import structlog

from node.client import Client, ClientError, Task, TaskResult
from node.envelope import seal
from node.inbound import TASK_TOPIC
from node.messages import ResultBody, TaskBody, TaskInput, encode_body
from node.p2p import P2PError

log = structlog.get_logger(__name__)


class SealedResult(TaskResult):
    """A verified result encrypted to the caller: `ciphertext` is the node's hex ECIES, `text` is empty."""

    ciphertext: str


class GatewayClient(Client):
    """The gateway's publisher peer."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._sealed: set[str] = set()  # task ids whose result is encrypted to a caller's key

    async def submit(self, task: Task, timeout: float = 60.0, public_key: str | None = None) -> str:
        """Publish the task and return its id; with `public_key`, the result is encrypted to that key."""
        if public_key is None:
            return await super().submit(task, timeout)
        await self.start()
        assert self._host is not None
        task_id = secrets.token_urlsafe(16)
        body = TaskBody(
            task_id=task_id,
            deadline=time.time_ns() + int(timeout * 1e9),
            input=TaskInput(workflow=task.workflow, model=task.models, prompt=task.prompt),
            picked_nodes=task.nodes,
            public_key=public_key,
        )
        self.expect_sealed(task_id)
        self._expect(task_id, task.nodes)
        try:
            await self._host.publish(TASK_TOPIC, seal(self.identity, TASK_TOPIC, encode_body(body)))
        except P2PError as exc:
            self._pending.pop(task_id, None)
            self._sealed.discard(task_id)
            raise ClientError(f"task {task_id}: could not publish: {exc}") from None
        log.debug("task published for a caller's key", task_id=task_id, models=task.models)
        return task_id

    def expect_sealed(self, task_id: str) -> None:
        """Return the ciphertext of this task's result unopened (for a task resumed after a restart)."""
        self._sealed.add(task_id)

    async def wait(self, task_id: str, timeout: float, nodes: list[str] | None = None) -> TaskResult:
        try:
            return await super().wait(task_id, timeout, nodes)
        finally:
            self._sealed.discard(task_id)

    def _open(self, body: ResultBody, node: str) -> TaskResult:
        if body.task_id not in self._sealed:
            return super()._open(body, node)
        assert body.ciphertext is not None
        return SealedResult(
            task_id=body.task_id, text="", ciphertext=body.ciphertext, node=node, model=body.model, stats=body.stats
        )
