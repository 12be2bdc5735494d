"""Signed heartbeats as a publisher's gossip validator passes them on: sealed by a node identity,
then decoded and checked (node/wire/inbound.py), for tests that fill node tables without a network."""

from __future__ import annotations

import json
import time

from node.wire.envelope import seal
from node.wire.identity import Identity
from node.wire.inbound import Inbound, decode
from node.wire.messages import HeartbeatBody
from node.wire.topics import HEARTBEAT_TOPIC


def heartbeat_message(
    identity: Identity,
    models: list[str],
    *,
    free: int = 1024,
    tps: float | None = None,
    at_ns: int | None = None,
    dialable: bool = False,
    leaving: bool = False,
    model_capacity: dict[str, dict[str, int]] | None = None,
    addrs: list[str] | None = None,
) -> bytes:
    """`identity`'s sealed heartbeat claiming `models`, `free` places of `free` and `tps` per model (none: no
    claim), stamped (body and envelope) `at_ns` (now when None); `dialable`: with a loopback address;
    `leaving`: the node is draining; `model_capacity`: its `modelCapacity` as written (None: without one); `addrs`: its
    addresses as they are (over `dialable`'s)."""
    stamp_ns = time.time_ns() if at_ns is None else at_ns
    body = {
        "address": identity.address,
        "peerId": identity.peer_id,
        "models": models,
        "capacity": {"free": free, "max": free},
        "pendingTasks": 0,
        "tps": {} if tps is None else dict.fromkeys(models, tps),
        "version": "0.3.0",
        "timestamp": stamp_ns,
    }
    if dialable:
        body["addrs"] = [f"/ip4/127.0.0.1/tcp/1/p2p/{identity.peer_id}"]
    if addrs is not None:
        body["addrs"] = addrs
    if leaving:
        body["leaving"] = True
    if model_capacity is not None:
        body["modelCapacity"] = model_capacity
    return seal(identity, HEARTBEAT_TOPIC, json.dumps(body).encode(), now_ns=stamp_ns)


def signed_heartbeat(
    identity: Identity,
    models: list[str],
    *,
    free: int = 1024,
    tps: float | None = None,
    at: float | None = None,
    dialable: bool = False,
    leaving: bool = False,
    model_capacity: dict[str, dict[str, int]] | None = None,
) -> Inbound:
    """`heartbeat_message` (stamped `at`, Unix seconds) as a validator passes it on: decoded and checked."""
    stamp_ns = time.time_ns() if at is None else int(at * 1e9)
    message = heartbeat_message(
        identity,
        models,
        free=free,
        tps=tps,
        at_ns=stamp_ns,
        dialable=dialable,
        leaving=leaving,
        model_capacity=model_capacity,
    )
    inbound = decode(HEARTBEAT_TOPIC, message, now_ns=stamp_ns)
    assert isinstance(inbound.body, HeartbeatBody)
    return inbound
