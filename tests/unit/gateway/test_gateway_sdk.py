"""The Dria-SDK side of the gateway without a network: the posted payload, the task body it
becomes, and the SQLite queue that serves each result once (end to end: test_dria_sdk.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import sqlite3
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from node.gateway.dria_sdk.service import (
    MAX_LISTING_BYTES,
    SdkPayloadError,
    SdkService,
    decode_payload,
    network_id,
    payload_hash,
    task_body,
)
from node.gateway.dria_sdk.store import SdkStore, SdkTask
from node.gateway.service import PendingCaps
from node.publisher.client import Client, ClientError
from node.publisher.node_table import NodeTable
from node.wire.envelope import seal
from node.wire.identity import Identity
from node.wire.inbound import Inbound, decode
from node.wire.messages import HeartbeatBody, encode_body
from node.wire.results import Output, result_body
from node.wire.topics import HEARTBEAT_TOPIC, RESULTS_TOPIC
from node.wire.wire_time import format_rfc3339_ns, parse_rfc3339_ns
from tests.support.heartbeats import signed_heartbeat

NODE = "23924b66fc6be970ec2981f3bca84d84e11da8b1"
SECRET = "0x" + "ab" * 32


def posted(**changes: Any) -> dict[str, Any]:
    key = Identity.generate()
    data = {
        "taskId": "A" * 32,
        "input": {"workflow": {"tasks": []}, "model": ["llama3.2:1b"]},
        "pickedNodes": [NODE],
        "nodePeerIds": ["16Uiu2..."],
        "deadline": "2026-12-01T10:05:00.123456+00:00",
        "datasetId": "cd" * 32,
        "publicKey": key.public_key_uncompressed.hex()[2:],
        "privateKey": SECRET,
    }
    data.update(changes)
    return data


def b64(data: Any) -> str:
    return base64.b64encode(json.dumps(data).encode()).decode()


def test_the_private_key_and_fields_nodes_never_see_are_dropped_first() -> None:
    data = decode_payload(b64(posted()))
    assert "privateKey" not in data and "nodePeerIds" not in data and "datasetId" not in data
    assert payload_hash(data) == payload_hash(decode_payload(b64(posted())) | {"publicKey": data["publicKey"]})


def test_the_task_body_carries_the_sdk_key_picked_node_and_deadline_in_ns() -> None:
    data = decode_payload(b64(posted()))
    published_as = network_id(data["taskId"])
    body, picked = task_body(data, published_as)
    prefix, suffix = published_as.split("--")
    assert prefix == "A" * 32 and suffix.isalnum()
    assert body.task_id == published_as and picked == [NODE] and body.picked_nodes == [NODE]
    assert body.deadline == parse_rfc3339_ns("2026-12-01T10:05:00.123456+00:00")
    assert body.public_key == data["publicKey"] and body.input.model == ["llama3.2:1b"]
    assert "privateKey" not in body.model_dump_json(by_alias=True)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ("not base64!", "not base64 of a JSON object"),
        (base64.b64encode(b"[1, 2]").decode(), "not base64 of a JSON object"),
        ("A" * (256 * 1024 + 1), "longer than"),
    ],
)
def test_payloads_that_are_not_a_task_are_refused(payload: str, reason: str) -> None:
    with pytest.raises(SdkPayloadError, match=reason):
        decode_payload(payload)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"publicKey": "zz"}, "public_key"),
        ({"pickedNodes": []}, "pickedNodes"),
        ({"deadline": "tomorrow"}, "deadline"),
        ({"input": {"model": ["x"]}}, "input.workflow"),
    ],
)
def test_invalid_fields_are_named_and_no_value_is_echoed(changes: dict[str, Any], field: str) -> None:
    data = decode_payload(b64(posted(**changes)))
    with pytest.raises(SdkPayloadError) as caught:
        task_body(data, "x--y")
    assert field in str(caught.value)
    assert SECRET not in str(caught.value) and "tomorrow" not in str(caught.value)


def task(key: str = "k1", task_id: str = "t1") -> SdkTask:
    return SdkTask(
        network_id=f"{task_id}--{key}",
        key_id=key,
        task_id=task_id,
        payload_hash="h",
        picked=[NODE],
        created_at=1.0,
        expires_at=4e9,
    )


def test_the_store_publishes_once_queues_the_first_result_and_serves_it_once(tmp_path: Path) -> None:
    store = SdkStore(tmp_path / "g.sqlite3", retention=60)
    assert store.insert(task())
    assert not store.insert(task())  # the same key and task id again
    assert store.insert(task(key="k2"))  # another key may use the same id
    assert store.find("k1", "t1") is not None and store.find("k1", "nope") is None
    assert store.add_result("t1--k1", "first")
    assert not store.add_result("t1--k1", "second")  # only the first result of a network task
    assert not store.add_result("unknown--k1", "x")
    assert store.pop_results("k2", 10) == []
    assert store.pop_results("k1", 10) == ["first"]
    assert store.pop_results("k1", 10) == []
    store.close()
    reopened = SdkStore(tmp_path / "g.sqlite3", retention=60)  # a restart: state kept
    found = reopened.get("t1--k1")
    assert found is not None and found.served and found.result == "first"
    assert reopened.purge(now=5e9) == 2
    reopened.close()


def heard(sdk: SdkService, identity: Identity, models: int = 1) -> None:
    """A heartbeat signed by `identity` (with `models` names of 256 characters), as the SDK service's
    Client takes it: into its node table, then to its observer."""
    names = [f"{i:03d}".ljust(256, "x") for i in range(models)]
    inbound = signed_heartbeat(identity, names, free=1, tps=1.0)
    assert isinstance(inbound.body, HeartbeatBody)
    if sdk.client.nodes.update(inbound.sender, inbound.body, envelope=inbound.signed.envelope):
        sdk.observe(inbound)


def test_the_heartbeats_served_to_the_sdk_are_the_node_tables_within_its_byte_cap(tmp_path: Path) -> None:
    # The SDK's heartbeat items were kept apart, up to 10,000 of them: 445 MB for as many keys
    # each signing a heartbeat of the largest size, where the node table held 16 MiB.
    client = Client(peers=[], node_table=NodeTable(max_bytes=500_000))
    sdk = SdkService(client, SdkStore(tmp_path / "g.sqlite3", retention=60), PendingCaps(), 3600.0)
    honest, flood = Identity.generate(), [Identity.generate() for _ in range(60)]
    tracemalloc.start()
    for i, identity in enumerate(flood):
        if i % 5 == 0:
            heard(sdk, honest)
        heard(sdk, identity, models=64)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert held < 1_000_000  # the table's 500 kB, not the 60 heartbeats of 65 kB each
    items = sdk.alive_peers()
    assert sum(map(len, items)) <= client.nodes.bytes_used <= 500_000
    listed = [json.loads(item)["peer_id"] for item in items]
    assert sorted(listed) == sorted(node.peer_id for node in client.nodes.live())
    assert honest.peer_id in listed and flood[-1].peer_id in listed and flood[0].peer_id not in listed
    sdk.store.close()


def sdk_result(
    node: Identity, network_task_id: str, lowercase_z: bool = False, error: str | None = None, signer: str | None = None
) -> Inbound:
    """A node's result (or error) for a task posted through /rpc, as the gateway's Client hears it (`signer`: the
    node says it ran a task that key signed)."""
    publisher = Identity.generate()
    now = time.time_ns()
    output = error or Output("an answer", publisher.public_key_compressed.hex(), 5, 2)
    body = encode_body(result_body(network_task_id, "llama3.2:1b", output, received_at_ns=now - 10**9,
                                   started_at_ns=now - 10**9, ended_at_ns=now, publisher=signer))  # fmt: skip
    if lowercase_z:  # RFC 3339 allows it, and the node's decoder reads it; the SDK does not
        body = re.sub(rb'(At":"[^"]*)Z"', rb'\1z"', body)
    return decode(RESULTS_TOPIC, seal(node, RESULTS_TOPIC, body))


def test_results_the_sdk_reads_are_queued_and_list_their_node_to_its_key(tmp_path: Path) -> None:
    # A lowercase `z` in a result's times made the SDK's execute() raise KeyError and lose the whole batch.
    node = Identity.generate()
    client = Client(peers=[])
    sdk = SdkService(client, SdkStore(tmp_path / "g.sqlite3", retention=60), PendingCaps(), 3600.0)
    for name in ("t1", "t2"):
        assert sdk.store.insert(
            task(task_id=name).model_copy(update={"picked": [node.address], "created_at": time.time()})
        )
    sdk.observe(sdk_result(node, "t1--k1", lowercase_z=True))
    assert sdk.store.pop_results("k1", 10) == []

    crowd = [Identity.generate() for _ in range(3)]
    for identity in [node, *crowd]:  # heard before the crowd: last in the table's order
        heard(sdk, identity)
    sdk.observe(sdk_result(node, "t2--k1"))
    assert len(sdk.store.pop_results("k1", 10)) == 1
    # listed to that key before the crowd heard later; another key's listing is its own
    assert client.nodes.listing(1, then=list(sdk._answered["k1"]))[0].address == node.address
    assert "k2" not in sdk._answered
    # ...and nothing in the reputation every `/v1` caller's choice reads (below)
    assert client.reputation.view(node.address).answered == 0 and client.reputation.view(node.address).errors == 0
    sdk.store.close()


def test_results_refused_are_logged_once_a_window_per_reason_with_the_count_held_back(tmp_path: Path) -> None:
    """Any gossip peer may publish results under a posted task's id (it is seen on gossip): each one was logged,
    three lines for three reasons, without a bound."""
    picked, forger = Identity.generate(), Identity.generate()
    sdk = SdkService(Client(peers=[]), SdkStore(tmp_path / "g.sqlite3", retention=60), PendingCaps(), 3600.0, 0.2)
    assert sdk.store.insert(task().model_copy(update={"picked": [picked.address], "created_at": time.time()}))
    refused = {
        "result from a node that was not picked": sdk_result(forger, "t1--k1"),
        "result of another publisher's task under our task id": sdk_result(picked, "t1--k1", signer=forger.address),
        "result the sdk cannot read dropped": sdk_result(picked, "t1--k1", lowercase_z=True),
    }
    with capture_logs() as logs:
        for inbound in refused.values():
            for _ in range(500):
                sdk.observe(inbound)
        time.sleep(0.2)
        for inbound in refused.values():
            sdk.observe(inbound)
    for event in refused:
        assert [entry["not_logged_since"] for entry in logs if entry["event"] == event] == [0, 499]
    assert sdk.store.pop_results("k1", 10) == []
    sdk.store.close()


async def test_a_result_the_store_refuses_is_held_and_queued_at_a_stop(tmp_path: Path) -> None:
    """A node sends its result once: one the store refused (a full disk) was lost for good (the observer
    raised into the client's log), and the SDK's poll never got it."""
    node = Identity.generate()
    sdk = SdkService(Client(peers=[]), SdkStore(tmp_path / "g.sqlite3", retention=60), PendingCaps(), 3600.0)
    assert sdk.store.insert(task().model_copy(update={"picked": [node.address], "created_at": time.time()}))

    def deny_updates(action: int, *_: object) -> int:
        return sqlite3.SQLITE_DENY if action == sqlite3.SQLITE_UPDATE else sqlite3.SQLITE_OK

    sdk.store._db.set_authorizer(deny_updates)
    sdk.observe(sdk_result(node, "t1--k1"))
    sdk.store._db.set_authorizer(None)  # room again; a stop comes before the retry loop's next try
    await sdk.close()
    assert len(sdk.store.pop_results("k1", 10)) == 1
    sdk.store.close()


def test_what_a_node_the_caller_picked_did_moves_no_other_callers_choice(tmp_path: Path) -> None:
    """An SDK caller picks its task's node: a fast answer of junk would make that node the gateway's choice for
    everyone (its speed measured from the size of what it sent), and errors to workflows sent to fail would keep
    an honest node from being chosen at all. Neither reaches the reputation."""
    honest, cheat = Identity.generate(), Identity.generate()
    client = Client(peers=[])
    sdk = SdkService(client, SdkStore(tmp_path / "g.sqlite3", retention=60), PendingCaps(), 3600.0)
    for i in range(20):
        for picked, outcome in ((honest, "Invalid prompt: a workflow sent to fail"), (cheat, None)):
            network_id = f"{picked.address[-6:]}{i}"
            row = task(task_id=network_id).model_copy(update={"picked": [picked.address], "created_at": time.time()})
            assert sdk.store.insert(row)
            sdk.observe(sdk_result(picked, f"{network_id}--k1", error=outcome))
    for identity in (honest, cheat):
        view = client.reputation.view(identity.address)
        assert (view.answered, view.errors, view.measured_tps) == (0, 0, None)
        assert not client.reputation.served(identity.address)
    sdk.store.close()


def test_a_poll_serves_results_within_a_byte_budget(tmp_path: Path) -> None:
    store = SdkStore(tmp_path / "g.sqlite3", retention=60)
    for i in range(5):
        assert store.insert(task(task_id=f"t{i}")) and store.add_result(f"t{i}--k1", "x" * 1000)
    assert len(store.pop_results("k1", 10, max_bytes=2500)) == 2  # the rest wait for the next poll
    assert len(store.pop_results("k1", 10, max_bytes=500)) == 1  # one result is served whatever its size
    assert len(store.pop_results("k1", 10)) == 2
    store.close()


def test_nodes_leaving_or_banned_are_not_offered_to_the_sdk(tmp_path: Path) -> None:
    client = Client(peers=[])
    sdk = SdkService(client, SdkStore(tmp_path / "g.sqlite3", retention=60), PendingCaps(), 3600.0)
    honest, leaving, banned = Identity.generate(), Identity.generate(), Identity.generate()
    for identity in (honest, leaving, banned):
        inbound = signed_heartbeat(identity, ["llama3.2:1b"], free=1, tps=1.0, leaving=identity is leaving)
        assert isinstance(inbound.body, HeartbeatBody)
        client.nodes.update(inbound.sender, inbound.body, envelope=inbound.signed.envelope)
    client.reputation.record_verification(banned.address, passed=False)
    listed = [json.loads(item)["peer_id"] for item in sdk.alive_peers()]
    assert listed == [honest.peer_id]
    sdk.store.close()


class FailingPublish:
    """A Client whose publish waits (a slow mesh) and then fails."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def publish_task(self, body: Any) -> None:
        await self.release.wait()
        raise ClientError(f"task {body.task_id}: could not publish: no peers")


async def test_a_post_repeated_while_the_first_ones_publish_fails_fails_with_it(tmp_path: Path) -> None:
    # The repeat found the row and answered "posted"; the failed publish then deleted the row: its caller
    # held the id of a task never published, and its SDK waited for it to the deadline.
    client = FailingPublish()
    store = SdkStore(tmp_path / "g.sqlite3", retention=60)
    sdk = SdkService(client, store, PendingCaps(), 3600.0)  # type: ignore[arg-type]
    payload = b64(posted(taskId="t1", deadline=format_rfc3339_ns(time.time_ns() + 60 * 10**9)))
    first = asyncio.ensure_future(sdk.post("k1", payload))
    await asyncio.sleep(0.01)  # its publish is in flight
    again = asyncio.ensure_future(sdk.post("k1", payload))
    await asyncio.sleep(0.01)
    assert not again.done()  # it waits for the publish it repeats
    client.release.set()
    for post in (first, again):
        with pytest.raises(ClientError, match="could not publish"):
            await post
    assert store.find("k1", "t1") is None
    store.close()


def test_a_heartbeat_carrying_bulk_its_body_does_not_read_is_not_listed(tmp_path: Path) -> None:
    """Unknown fields are allowed (a newer protocol's), but a red team's ~180 KB of one, from 80 keys, made each
    SDK listing 16.6 MB (2.6 GB to one key in 18 s, the gateway's RSS 163 -> 974 MB). Such an envelope is neither
    kept nor listed; the node is still known, and a heartbeat with a few unknown fields is listed as before."""
    client = Client(peers=[])
    sdk = SdkService(client, SdkStore(tmp_path / "g.sqlite3", retention=60), PendingCaps(), 3600.0)
    bulky, newer = Identity.generate(), Identity.generate()
    for identity, extra in ((bulky, "x" * 180_000), (newer, "a field of a newer protocol")):
        body = json.loads(base64.b64decode(signed_heartbeat(identity, ["m"]).signed.envelope.payload))
        inbound = decode(HEARTBEAT_TOPIC, seal(identity, HEARTBEAT_TOPIC, json.dumps(body | {"extra": extra}).encode()))
        assert isinstance(inbound.body, HeartbeatBody)
        assert client.nodes.update(inbound.sender, inbound.body, envelope=inbound.signed.envelope)
    assert client.nodes.get(bulky.address) is not None and client.nodes.bytes_used < 20_000
    assert [json.loads(item)["peer_id"] for item in sdk.alive_peers()] == [newer.peer_id]
    sdk.store.close()


def test_large_heartbeats_of_a_few_keys_crowd_no_honest_node_out_of_the_listing(tmp_path: Path) -> None:
    """A reviewer's 12 keys signed the largest heartbeats the protocol allows (64 model names of 256 characters,
    ~140 KiB listed each): the first seven filled the listing's megabyte, and 1 of 40 honest nodes was listed.
    An item past MAX_ITEM_BYTES is listed only where the others left room."""
    client = Client(peers=[])
    sdk = SdkService(client, SdkStore(tmp_path / "g.sqlite3", retention=60), PendingCaps(), 3600.0)
    honest = [Identity.generate() for _ in range(40)]
    for identity in honest:
        heard(sdk, identity)
    for _ in range(30):
        heard(sdk, Identity.generate(), models=64)  # ~45 KiB each, heard last: first among the recent
    items = sdk.alive_peers("k1")
    listed = {json.loads(item)["peer_id"] for item in items}
    assert {identity.peer_id for identity in honest} <= listed
    assert sum(map(len, items)) <= MAX_LISTING_BYTES and len(listed) < 70  # some large ones did not fit
