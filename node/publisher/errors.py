"""What `Client.execute` raises: the publisher could not get a task done (re-exported by client.py)."""

from __future__ import annotations

from collections.abc import Sequence

from node.wire.error_kinds import ErrorKind, TaskError, parse_error

MAX_NAMED_MODELS = 10  # models NoNodeError names (any key's heartbeat may list 64 of 256 characters)


class ClientError(Exception):
    """The client could not get a task done."""


class TaskTooLargeError(ClientError):
    """The task, sealed, would pass the network's message limit: no node could be sent it (nothing was)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"the task would be {size} bytes sealed, over the network's limit of {limit} bytes"
            " (shorten its workflow, prompt or node list)"
        )
        self.size = size
        self.limit = limit


class TaskNotEncodableError(ClientError):
    """The task nests deeper than nodes read JSON: none could take it (nothing was sent)."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"the task cannot be sent: {detail} (a node reads JSON nested less deep: flatten the workflow)"
        )


class TaskTimeoutError(ClientError, TimeoutError):
    """No result arrived before the timeout. `detail`: what the publisher saw become of the task's nodes (a stream
    closed, a node gone), so a caller learns its node went away; a node may still publish a result on gossip, so
    the call waited all the same."""

    def __init__(self, task_id: str, timeout: float, detail: str = "") -> None:
        super().__init__(f"task {task_id}: no result within {timeout:g} s" + (f": {detail}" if detail else ""))
        self.task_id = task_id
        self.detail = detail


class NoNodeError(ClientError, TimeoutError):
    """No live node hosting an acceptable model had room before the timeout; nothing was published.

    `known`: the live nodes; `serving`: how many of them host one of `models` (all busy, then); `served`: the
    models the live nodes host, most hosted first, named when none hosts one asked for (a misspelt name shows at
    once). Any key's heartbeat names models: each is quoted, and at most MAX_NAMED_MODELS are named."""

    def __init__(
        self, timeout: float, models: list[str], known: int, serving: int = 0, served: Sequence[str] = ()
    ) -> None:
        if serving:
            nodes = "1 node hosts" if serving == 1 else f"{serving} nodes host"
            text = f"no live node hosting any of {models} had room within {timeout:g} s ({nodes} them: busy)"
        else:
            live = "no live node" if not known else "1 live node" if known == 1 else f"{known} live nodes"
            hosting = f", hosting {', '.join(repr(name) for name in served[:MAX_NAMED_MODELS])}" if served else ""
            more = f" and {len(served) - MAX_NAMED_MODELS} more" if len(served) > MAX_NAMED_MODELS else ""
            text = f"no live node hosting any of {models} seen within {timeout:g} s ({live} known{hosting}{more})"
        super().__init__(text)
        self.models = models
        self.known = known
        self.serving = serving
        self.served = list(served)


class TaskFailedError(ClientError):
    """The executing node returned an error result, or the task failed there as the publisher saw it.

    `kind`: what the failure was (node/wire/error_kinds.py); None: `reason` is the node's error text, and its kind,
    and the limit it names (`limit`), are read from it. A kind given (the publisher's own reasons) names no limit."""

    def __init__(self, task_id: str, reason: str, node: str, kind: ErrorKind | None = None) -> None:
        super().__init__(f"task {task_id} failed on node {node}: {reason}")
        self.task_id = task_id
        self.reason = reason
        self.node = node
        error = parse_error(reason) if kind is None else TaskError(kind, reason)
        self.kind = error.kind
        self.limit = error.limit

    @property
    def retryable(self) -> bool:
        """Anything but a deterministic error (`Invalid prompt: ...`): another node may succeed."""
        return self.kind.retryable


class TaskIdTakenError(TaskFailedError):
    """Every node the task picked ran another key's task under its id (a peer saw the id and sent its own first):
    a node runs a task id once, so none of them will run ours. A retry (a new task id) may go at once."""

    def __init__(self, task_id: str, reason: str, node: str) -> None:
        super().__init__(task_id, reason, node, ErrorKind.FAILED)


class VerificationFailedTaskError(TaskFailedError):
    """The node's result failed verification against its proof: not retried, the node is marked."""

    def __init__(self, task_id: str, reason: str, node: str) -> None:
        super().__init__(task_id, reason, node, ErrorKind.FAILED)

    @property
    def retryable(self) -> bool:
        """Never: a node that failed verification is not asked again."""
        return False
