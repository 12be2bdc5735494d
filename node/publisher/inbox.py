"""ResultInbox: the tasks a publisher awaits and the one place their results are accepted.

A result is accepted once per task id, from a stream or from gossip alike: it must come from
a picked node (when the task picked some), answer a task this publisher signed (when the node
names the signer: `answers_another_publisher`; once every node it picked ran another key's task under its
id, it fails with TaskIdTakenError), name a model the task accepts (a node runs one its
entries resolve to; verification and speed are judged by that name, so a node must not choose
it), and its text must decrypt with the publisher's
key, unless the task was sealed to another key (`Task.public_key`): then its ciphertext is
handed back untouched. An error result's text is cut to MAX_ERROR_CHARS. A result refused is logged once
per PEER_LOG_WINDOW_S for each reason, with how many were not: any gossip peer can send them without end.
"""

from __future__ import annotations

import asyncio

import structlog

from node.publisher.errors import TaskFailedError, TaskIdTakenError
from node.publisher.tasks import TaskResult
from node.wire.ecies import EciesError, decrypt
from node.wire.error_kinds import ErrorKind
from node.wire.identity import Identity
from node.wire.inbound import LogWindow
from node.wire.messages import ResultBody
from node.wire.results import answers_another_publisher
from node.wire.topics import ANY_LOCAL_MODEL, ANY_MODEL, FIRST_MODEL

log = structlog.get_logger(__name__)

# An error result names its cause in a few words and is not encrypted (PROTOCOL.md section 5): past this
# many characters the rest is cut, before it reaches a caller, a store or a log line.
MAX_ERROR_CHARS = 1000
ID_TAKEN = "it ran another publisher's task under this task id"  # TaskIdTakenError's reason
# A line any peer's message can cause is logged once per this many seconds for each reason, with how many were not
# logged since: any gossip peer, with any key, may publish results under a task id it saw on gossip.
PEER_LOG_WINDOW_S = 10.0


class ResultInbox:
    """The awaited tasks (a future each, with the nodes it picked) and the sealed ones."""

    def __init__(self, secret: bytes, log_window_s: float = PEER_LOG_WINDOW_S) -> None:
        self._secret = secret
        self._refused_log = LogWindow(log_window_s)
        self._address = Identity(secret).address  # who signs our tasks
        self._pending: dict[str, tuple[asyncio.Future[TaskResult], set[str] | None]] = {}
        self._models: dict[str, list[str]] = {}  # task id -> the models it accepts (absent: any)
        self._sealed: set[str] = set()  # task ids whose result is encrypted to someone else

    def expect(
        self, task_id: str, nodes: list[str] | None, sealed: bool = False, models: list[str] | None = None
    ) -> asyncio.Future[TaskResult]:
        """The future of the task's result (the same one if it is already awaited).

        `nodes`: only a result signed by one of them is accepted (None: any node's).
        `sealed`: the result is encrypted to another key: its ciphertext is the result.
        `models`: the task's model entries; a result naming a model none resolves to fails (None: any).
        """
        if sealed:
            self._sealed.add(task_id)
        if models is not None and not any(m in (ANY_MODEL, ANY_LOCAL_MODEL, FIRST_MODEL) for m in models):
            self._models[task_id] = list(models)
        if task_id not in self._pending:
            future: asyncio.Future[TaskResult] = asyncio.get_running_loop().create_future()
            picked = {n.lower().removeprefix("0x") for n in nodes} if nodes else None
            self._pending[task_id] = (future, picked)
        return self._pending[task_id][0]

    def forget(self, task_id: str) -> None:
        """Stop awaiting the task: a later result for it is ignored."""
        self._pending.pop(task_id, None)
        self._models.pop(task_id, None)
        self._sealed.discard(task_id)

    def accept(self, body: ResultBody, sender: str) -> None:
        """Settle the task's future with this result (or its error), if it is awaited from `sender`."""
        pending = self._pending.get(body.task_id)
        if pending is None:
            return
        future, picked = pending
        if future.done():
            return
        if picked is not None and sender not in picked:
            if (not_logged := self._refused_log.may_log("not_picked")) is not None:
                log.warning(
                    "result from a node that was not picked",
                    task_id=body.task_id,
                    node=sender,
                    not_logged_since=not_logged,
                )
            return
        if answers_another_publisher(body, self._address):
            # Another key's task run under our task id (a peer saw the id on gossip and sent its own task first):
            # its result is encrypted to our key, but it is not the answer to what we asked, and its node runs the
            # id once: ours will not come from it. Once no picked node is left to run it, the task fails at once
            # (a retry takes a new id) instead of waiting out its timeout. Whether the node is to blame is the
            # AttemptLoop's call: one that accepted our task on its stream and then says this lies.
            if (not_logged := self._refused_log.may_log("another_publisher")) is not None:
                log.warning(
                    "result of another publisher's task under our task id",
                    task_id=body.task_id,
                    node=sender,
                    not_logged_since=not_logged,
                )
            if picked is not None:
                picked.discard(sender)
                if not picked:
                    future.set_exception(TaskIdTakenError(body.task_id, ID_TAKEN, sender))
            return
        if body.error is not None:
            # The node's text: its kind is read from it here, once (node/wire/error_kinds.py).
            future.set_exception(TaskFailedError(body.task_id, _cut(body.error), sender))
            return
        wanted = self._models.get(body.task_id)
        if wanted is not None and body.model not in wanted:  # e.g. one no scorer has: it would go unverified
            reason = f"result names the model {body.model[:64]!r}, which the task did not ask for"
            future.set_exception(TaskFailedError(body.task_id, reason, sender, ErrorKind.FAILED))
            return
        try:
            future.set_result(self._open(body, sender))
        except TaskFailedError as exc:
            future.set_exception(exc)

    def _open(self, body: ResultBody, node: str) -> TaskResult:
        assert body.ciphertext is not None
        if body.task_id in self._sealed:
            return TaskResult(
                task_id=body.task_id, ciphertext=body.ciphertext, node=node, model=body.model, stats=body.stats
            )
        try:
            text = decrypt(self._secret, bytes.fromhex(body.ciphertext)).decode("utf-8")
        except (EciesError, ValueError) as exc:
            reason = f"result does not decrypt with our key: {exc}"
            raise TaskFailedError(body.task_id, reason, node, ErrorKind.FAILED) from None
        return TaskResult(
            task_id=body.task_id, text=text, node=node, model=body.model, stats=body.stats, proof=body.proof
        )


def _cut(error: str) -> str:
    """A node's error text, at most MAX_ERROR_CHARS of it (its start: `busy`, `Invalid prompt: ` stay)."""
    if len(error) <= MAX_ERROR_CHARS:
        return error
    return f"{error[:MAX_ERROR_CHARS]}... (and {len(error) - MAX_ERROR_CHARS} more characters)"
