"""What `Client.execute` raises: the publisher could not get a task done (re-exported by client.py)."""

from __future__ import annotations

from node.wire.topics import DETERMINISTIC_ERROR_PREFIX


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
    """No result arrived before the timeout."""

    def __init__(self, task_id: str, timeout: float) -> None:
        super().__init__(f"task {task_id}: no result within {timeout:g} s")
        self.task_id = task_id


class NoNodeError(ClientError, TimeoutError):
    """No live node hosting an acceptable model was seen before the timeout; nothing was published."""

    def __init__(self, timeout: float, models: list[str], known: int) -> None:
        super().__init__(f"no live node hosting any of {models} seen within {timeout:g} s ({known} live nodes known)")


class TaskFailedError(ClientError):
    """The executing node returned an error result."""

    def __init__(self, task_id: str, reason: str, node: str) -> None:
        super().__init__(f"task {task_id} failed on node {node}: {reason}")
        self.task_id = task_id
        self.reason = reason
        self.node = node

    @property
    def retryable(self) -> bool:
        """Anything but a deterministic error (`Invalid prompt: ...`): another node may succeed."""
        return not self.reason.startswith(DETERMINISTIC_ERROR_PREFIX)


class TaskIdTakenError(TaskFailedError):
    """Every node the task picked ran another key's task under its id (a peer saw the id and sent its own first):
    a node runs a task id once, so none of them will run ours. Nothing of ours ran: the node is not to blame, and a
    retry (a new task id) may go at once."""


class VerificationFailedTaskError(TaskFailedError):
    """The node's result failed verification against its proof: not retried, the node is marked."""

    @property
    def retryable(self) -> bool:
        """Never: a node that failed verification is not asked again."""
        return False
