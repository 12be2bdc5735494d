"""SdkService: tasks posted as Dria's SDK posts them, raw node envelopes back.

A posted task is published under
`<taskId>--<suffix>` with the SDK's own public key and picked node, signed by
the gateway (tasks may be signed by any publisher); its `privateKey` is dropped
before anything else happens to the payload. Results and heartbeats are never
re-signed: the node's own envelope is handed to the SDK, which checks the signer
itself. The gateway does no node choice and no retry on this path.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import re
import secrets
import time
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from node.gateway.dria_sdk.store import SdkStore, SdkTask
from node.gateway.dria_sdk.unqueued import UnqueuedResults
from node.gateway.service import MAX_LISTED_NODES, PendingCaps
from node.gateway.validation import field_path
from node.publisher.client import Client, ClientError, TaskNotEncodableError, TaskTooLargeError
from node.publisher.inbox import PEER_LOG_WINDOW_S
from node.publisher.tasks import check_size
from node.wire.envelope import Envelope
from node.wire.inbound import Inbound, LogWindow
from node.wire.messages import Deadline, ResultBody, TaskBody, TaskInput
from node.wire.results import answers_another_publisher

log = structlog.get_logger(__name__)

MAX_PAYLOAD_CHARS = 256 * 1024  # base64 text, as the SDK checks before posting
MAX_RESULTS_PER_POLL = 200
# One listing of nodes at most: a few hundred honest heartbeats; a poll each, so no key is sent the table's 16 MiB
# each time (a red team's key was sent 2.6 GB in 18 s).
MAX_LISTING_BYTES = 1024 * 1024
MAX_ITEM_BYTES = 16 * 1024  # a heartbeat listed before those past it (64 model names of 256 characters: ~140 KiB)
MAX_ANSWERED_PER_KEY = 64  # nodes that answered a key's tasks, listed to it after the measured ones
MAX_KEYS_REMEMBERED = 1024  # keys whose answering nodes are remembered (the most recent)
MAX_POLL_BYTES = 8 * 1024 * 1024  # one poll's results at most (each may be ~256 KiB): the rest go next poll
# The SDK splits the network id on "--" and expects exactly two parts.
_SDK_TASK_ID = re.compile(r"^[A-Za-z0-9_]+(?:-[A-Za-z0-9_]+)*$")
_MAX_SDK_TASK_ID = 100
_DROPPED = ("privateKey", "nodePeerIds", "datasetId")
# The SDK reads each stat by cutting it at "Z" and calling fromisoformat: an integer (read by our decoder)
# makes it drop the result, a lowercase "z" (RFC-3339 allows it) makes `execute()` raise KeyError for the
# whole batch. Only the form honest nodes write is handed on (the envelope cannot be re-signed).
_SDK_STAT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}Z$", re.ASCII)
_SDK_STATS = ("receivedAt", "executionStartedAt", "executionEndedAt", "publishedAt")


class SdkPayloadError(Exception):
    """A posted task cannot be published; the message names the field, never its value."""


class _PostedInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    workflow: dict[str, Any]
    model: list[str] = Field(min_length=1)


class _PostedTask(BaseModel):
    """The fields of the SDK's task payload the gateway uses; the rest is passed over."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    task_id: str = Field(alias="taskId", min_length=1, max_length=_MAX_SDK_TASK_ID)
    input: _PostedInput
    picked_nodes: list[str] = Field(alias="pickedNodes", min_length=1)
    deadline: Deadline  # RFC-3339 from the SDK, or Unix ns: kept as ns
    public_key: str = Field(alias="publicKey")


def network_id(task_id: str) -> str:
    """The id a posted task is published under: `<taskId>--<suffix>`."""
    return f"{task_id}--{secrets.token_hex(6)}"


def decode_payload(payload: str) -> dict[str, Any]:
    """The posted task as a dict without its private key and the other fields nodes never see."""
    if len(payload) > MAX_PAYLOAD_CHARS:
        raise SdkPayloadError(f"value.payload: longer than {MAX_PAYLOAD_CHARS} characters")
    try:
        data = json.loads(base64.b64decode(payload, validate=True))
    except (binascii.Error, ValueError, RecursionError):
        raise SdkPayloadError("value.payload: not base64 of a JSON object") from None
    if not isinstance(data, dict):
        raise SdkPayloadError("value.payload: not base64 of a JSON object")
    for name in _DROPPED:
        data.pop(name, None)
    return data


def task_body(data: dict[str, Any], published_as: str) -> tuple[TaskBody, list[str]]:
    """The task body to publish for the posted `data`, and its picked addresses (lowercase, no 0x)."""
    try:
        posted = _PostedTask.model_validate(data)
        body = TaskBody(
            task_id=published_as,
            deadline=posted.deadline,
            input=TaskInput(workflow=posted.input.workflow, model=posted.input.model),
            picked_nodes=posted.picked_nodes,
            public_key=posted.public_key,
        )
    except ValidationError as exc:
        first = exc.errors()[0]  # loc and msg only: the input may be a secret
        where = field_path(first["loc"])
        raise SdkPayloadError(f"{where}: {first['msg']}") from None
    assert body.picked_nodes is not None
    return body, list(body.picked_nodes)


def payload_hash(data: dict[str, Any]) -> str:
    """SHA-256 (hex) of the JSON with sorted keys: the same data, the same hash."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode("utf-8")).hexdigest()


def sdk_readable(body: bytes) -> bool:
    """Whether the SDK parses the four stats of a result `body` (the signed payload) as it must (`_SDK_STAT`)."""
    try:
        stats = json.loads(body).get("stats")
    except (ValueError, AttributeError, RecursionError):
        return False
    return isinstance(stats, dict) and all(
        isinstance(stats.get(name), str) and _SDK_STAT.match(stats[name]) for name in _SDK_STATS
    )


def _item(envelope: Envelope, **extra: str) -> str:
    """An envelope as the SDK reads it: base64 `message` (the payload), hex `signature`, `recovery_id`."""
    return json.dumps(
        {**extra, "message": envelope.payload, "signature": envelope.signature, "recovery_id": envelope.recovery_id}
    )


class SdkService:
    """Publishes posted tasks and collects the envelopes the SDK polls for."""

    def __init__(
        self,
        client: Client,
        store: SdkStore,
        caps: PendingCaps,
        deadline_horizon: float,
        log_window_s: float = PEER_LOG_WINDOW_S,
    ) -> None:
        self.client = client
        self.store = store
        self.caps = caps  # per key: per token without api_keys
        caps.add_source(store.pending_count)
        self.deadline_horizon = deadline_horizon  # how far ahead a posted task's deadline may lie
        self._publishing: dict[str, asyncio.Future[None]] = {}  # network id -> its publish in flight
        # Per API key, the nodes that answered its tasks, most recent last: listed to that key after the nodes
        # this gateway measured serving. Kept apart from the client's reputation, which chooses nodes for every
        # `/v1` caller, and from other keys' listings: an SDK caller picks its task's node itself, so what that
        # node did (a fast answer of junk, errors to a workflow sent to fail) must not move another's choice.
        self._answered: dict[str, dict[str, None]] = {}
        self._refused_log = LogWindow(log_window_s)  # any gossip peer may send results under a posted task's id
        self._unqueued = UnqueuedResults(store)  # results the store refused (a full disk): queued once it can

    async def close(self) -> None:
        """Queue the results the store refused before, if it takes them now (at a graceful stop)."""
        await self._unqueued.close()

    async def _published(self, network_id: str) -> str:
        """`network_id` once its publish in flight (by an earlier POST of the same task) went out; its error
        if it failed (its row is gone then: a caller told "posted" would wait for a task never published)."""
        if (publishing := self._publishing.get(network_id)) is not None:
            await asyncio.shield(publishing)
        return network_id

    def observe(self, inbound: Inbound) -> None:
        """The client's `on_message`: queue result envelopes of posted tasks (heartbeats: the node table keeps them)."""
        if isinstance(inbound.body, ResultBody):
            self._result(inbound, inbound.body)

    def _result(self, inbound: Inbound, body: ResultBody) -> None:
        task = self.store.get(body.task_id)
        if task is None:
            return
        if inbound.sender not in task.picked:
            if (not_logged := self._refused_log.may_log("not_picked")) is not None:
                log.warning(
                    "result from a node that was not picked",
                    task_id=body.task_id,
                    node=inbound.sender,
                    not_logged_since=not_logged,
                )
            return
        if answers_another_publisher(body, self.client.identity.address):
            # Another key's task run under this task id first (its id is seen on gossip): not the SDK's answer.
            if (not_logged := self._refused_log.may_log("another_publisher")) is not None:
                log.warning(
                    "result of another publisher's task under our task id",
                    task_id=body.task_id,
                    node=inbound.sender,
                    not_logged_since=not_logged,
                )
            return
        if not sdk_readable(inbound.signed.body):
            if (not_logged := self._refused_log.may_log("unreadable")) is not None:
                log.warning(
                    "result the sdk cannot read dropped",
                    task_id=body.task_id,
                    node=inbound.sender,
                    not_logged_since=not_logged,
                )
            return
        if self._unqueued.add(body.task_id, _item(inbound.signed.envelope)):
            if body.error is None:
                self._note_answered(task.key_id, inbound.sender)
            log.info(
                "result taken",  # queued, or held while the store refuses it (logged apart)
                task_id=body.task_id,
                node=inbound.sender,
                key_id=task.key_id,
                error=body.error is not None,
            )

    def _note_answered(self, key_id: str, node: str) -> None:
        """`node` answered a task `key_id` posted: in that key's listing after the measured nodes (the latest
        MAX_ANSWERED_PER_KEY, for the latest MAX_KEYS_REMEMBERED keys)."""
        nodes = self._answered.pop(key_id, {})
        nodes.pop(node, None)
        nodes[node] = None
        if len(nodes) > MAX_ANSWERED_PER_KEY:
            del nodes[next(iter(nodes))]
        self._answered[key_id] = nodes
        if len(self._answered) > MAX_KEYS_REMEMBERED:
            del self._answered[next(iter(self._answered))]

    def alive_peers(self, key_id: str = "") -> list[str]:
        """The latest heartbeat envelope of live nodes, as the node table holds it, for `key_id`'s listing: at most
        MAX_LISTED_NODES and MAX_LISTING_BYTES, by address. The nodes this gateway measured serving come first,
        then those that answered the key's own tasks, then the most recently heard (anyone can make keys); an
        envelope past MAX_ITEM_BYTES (an honest heartbeat's is a few KiB) only where the others left room."""
        reputation, now = self.client.reputation, time.time()
        answered = list(reversed(self._answered.get(key_id, {})))
        items: dict[str, str] = {}
        large: list[tuple[str, str]] = []
        room = MAX_LISTING_BYTES
        for node in self.client.nodes.listing(MAX_LISTED_NODES, then=answered):
            # What the gateway's own choice never takes, the SDK is not offered either: a node draining, or one
            # banned for failing a verification.
            if node.envelope is None or node.leaving or reputation.banned(node.address, now):
                continue
            item = _item(node.envelope, peer_id=node.peer_id)
            if len(item) > MAX_ITEM_BYTES:
                large.append((node.address, item))
            elif len(item) <= room:
                items[node.address], room = item, room - len(item)
        for address, item in large:
            if len(item) <= room:
                items[address], room = item, room - len(item)
        return [items[address] for address in sorted(items)]

    def results(self, key_id: str) -> list[str]:
        """This key's results not served before (each is served once)."""
        return self.store.pop_results(key_id, MAX_RESULTS_PER_POLL, MAX_POLL_BYTES)

    async def post(self, key_id: str, payload: str) -> str:
        """Publish a posted task once; its network id (the same one when the same payload comes again).

        SdkPayloadError when it cannot be published; TooManyPendingError past a pending
        cap; ClientError when publishing failed (then a repeated POST tries again).
        """
        data = decode_payload(payload)
        task_id = data.get("taskId")
        if not isinstance(task_id, str) or not _SDK_TASK_ID.match(task_id) or len(task_id) > _MAX_SDK_TASK_ID:
            raise SdkPayloadError(f"taskId: must be 1 to {_MAX_SDK_TASK_ID} of [A-Za-z0-9_-] without '--'")
        digest = payload_hash(data)
        known = self.store.find(key_id, task_id)
        if known is not None:
            if known.payload_hash != digest:
                raise SdkPayloadError("taskId: already posted with another payload")
            return await self._published(known.network_id)
        published_as = network_id(task_id)
        body, picked = task_body(data, published_as)
        now = time.time()
        deadline = body.deadline / 1e9
        if deadline <= now:
            raise SdkPayloadError("deadline: already passed")
        if deadline > now + self.deadline_horizon:
            raise SdkPayloadError(
                f"deadline: more than {self.deadline_horizon:g} s ahead (nodes take no task that far ahead)"
            )
        self.caps.check(key_id)
        try:
            check_size(body)
        except (TaskTooLargeError, TaskNotEncodableError) as exc:
            raise SdkPayloadError(str(exc)) from None
        task = SdkTask(
            network_id=published_as,
            key_id=key_id,
            task_id=task_id,
            payload_hash=digest,
            picked=picked,
            created_at=now,
            expires_at=deadline + self.store.retention,
            deadline=deadline,
        )
        if not self.store.insert(task):  # the same task posted concurrently
            known = self.store.find(key_id, task_id)
            assert known is not None
            return await self._published(known.network_id)
        publishing = self._publishing[published_as] = asyncio.get_running_loop().create_future()
        try:
            await self.client.publish_task(body)
        except BaseException as exc:
            self.store.delete(published_as)
            publishing.set_exception(exc if isinstance(exc, Exception) else ClientError("the publish was interrupted"))
            publishing.exception()  # retrieved, whether or not a repeated POST waits for it
            raise
        else:
            publishing.set_result(None)
        finally:
            del self._publishing[published_as]
        log.info("sdk task published", task_id=published_as, key_id=key_id, node=picked, models=body.input.model)
        return published_as
