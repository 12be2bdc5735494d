"""Bounds on what one peer's pubsub RPCs can make this host keep or do, below the topic validators.

Any peer may connect, with as many peer ids as it likes, so every bound here is on work per RPC
or state per peer, and the number of peers is bounded elsewhere (connection_trim.py,
inbound_gate.py). Measured against py-libp2p 0.8.1 before these bounds (tests/unit/p2p/test_hostile_pubsub.py):

- State for topics the host never joined: PRUNE for 20,000 made-up topics left 20,000 backoff
  entries per peer (~420 B each) that outlive the peer; subscriptions kept up to 100 topics a peer
  of any length (100 KiB names: 10 MiB a peer). Only topics joined here count, and a topic name
  is at most MAX_TOPIC_CHARS.
- IWANT answered from the message cache with no dedupe: one 47 KB IWANT naming a 200 KB message
  1,000 times built ~580 MB and sent back 32 MB. Each message goes once per IWANT, and at most
  IWANT_BYTES_PER_S of answers a second to a peer.
- PX in a PRUNE made the host dial whatever peers and addresses the sender named: ignored.
- A PRUNE's backoff is at most MAX_BACKOFF_S (its expired entries are dropped by housekeeping).

`trim_rpc` cuts an inbound RPC down to what the host acts on; `BoundedGossipSub` answers IWANT
within the budget. The read loop that uses them is `StreamPeerAwarePubsub` (pubsub.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TypeVar

from libp2p.peer.id import ID
from libp2p.peer.peerstore import env_to_send_in_RPC
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.utils import safe_bytes_from_hex

MAX_TOPIC_CHARS = 256  # the protocol's topics are a few characters
MAX_PEER_SUBSCRIPTIONS = 16  # distinct topics one peer may be known subscribed to (py-libp2p: 100)
MAX_MESSAGE_TOPICS = 4  # topics one message may name
MAX_FROM_BYTES = 64  # a peer id: 39 bytes for secp256k1, 34 for a sha256 one (RSA)
MAX_SEQNO_BYTES = 32  # 8 in every implementation
MAX_KEY_BYTES = 1024  # an RSA-4096 public key is ~550 bytes
MAX_SIGNATURE_BYTES = 1024
MAX_IHAVE_IDS = 5000  # message ids in one RPC's IHAVEs (go-libp2p's MaxIHaveLength)
MAX_IWANT_IDS = 5000  # message ids in one RPC's IWANTs
MAX_IDONTWANT_IDS = 5000  # message ids in one RPC's IDONTWANTs (py-libp2p keeps them until its next heartbeat)
MAX_MESSAGE_ID_BYTES = 128  # a message id as py-libp2p writes it: the hex of a 32-byte sha256 is 64
MAX_BACKOFF_S = 3600  # a PRUNE's backoff (go-libp2p's default is 60 s)
MAX_BACKOFF_PEERS = 4096  # backoffs kept a topic, past which those of gone peers go first
IWANT_BYTES_PER_S = 1 << 20  # IWANT answers to one peer a second: one full RPC

T = TypeVar("T")


@dataclass
class Trimmed:
    """What `trim_rpc` left out of one RPC, by kind (all zero: nothing)."""

    messages: int = 0
    subscriptions: int = 0
    control: int = 0

    def __bool__(self) -> bool:
        return bool(self.messages or self.subscriptions or self.control)


def _message_fits(msg: rpc_pb2.Message, joined: Collection[str]) -> bool:
    return (
        len(msg.from_id) <= MAX_FROM_BYTES
        and len(msg.seqno) <= MAX_SEQNO_BYTES
        and len(msg.key) <= MAX_KEY_BYTES
        and len(msg.signature) <= MAX_SIGNATURE_BYTES
        and 0 < len(msg.topicIDs) <= MAX_MESSAGE_TOPICS
        # py-libp2p validates a message, and delivers it (decoded again there), once per topic it names;
        # and it keeps state per topic named (scores, fanout times), for topics it never joined too.
        and len(set(msg.topicIDs)) == len(msg.topicIDs)
        and all(topic in joined for topic in msg.topicIDs)
    )


def _keep(items: list[T], fits: list[bool]) -> list[T]:
    return [item for item, ok in zip(items, fits) if ok]


def _trim_ids(ids: list[bytes], budget: int) -> tuple[list[bytes], int]:
    """`ids` without repeats and at most `budget` of them; the budget left."""
    unique = list(dict.fromkeys(ids))[: max(budget, 0)]
    return unique, budget - len(unique)


def trim_rpc(rpc: rpc_pb2.RPC, joined: Collection[str]) -> Trimmed:
    """Cut `rpc` (in place) down to what this host acts on; `joined`: the topics it joined.

    Left out: messages with oversize fields or on no joined topic; subscriptions to topic names
    longer than MAX_TOPIC_CHARS; IHAVE, GRAFT and PRUNE for topics not joined; PX peers; message
    ids repeated, longer than MAX_MESSAGE_ID_BYTES or past MAX_IHAVE_IDS / MAX_IWANT_IDS / MAX_IDONTWANT_IDS;
    a PRUNE's backoff is clamped to MAX_BACKOFF_S.
    """
    trimmed = Trimmed()
    msgs = list(rpc.publish)
    keep = [_message_fits(msg, joined) for msg in msgs]
    if not all(keep):
        trimmed.messages = keep.count(False)
        del rpc.publish[:]
        rpc.publish.extend(_keep(msgs, keep))
    subs = list(rpc.subscriptions)
    keep = [len(sub.topicid) <= MAX_TOPIC_CHARS for sub in subs]
    if not all(keep):
        trimmed.subscriptions = keep.count(False)
        del rpc.subscriptions[:]
        rpc.subscriptions.extend(_keep(subs, keep))
    if rpc.HasField("control"):
        trimmed.control = _trim_control(rpc.control, joined)
    return trimmed


def _trim_control(control: rpc_pb2.ControlMessage, joined: Collection[str]) -> int:
    before = control.ByteSize()
    for field in (control.ihave, control.graft, control.prune):
        kept = [entry for entry in field if entry.topicID in joined]
        if len(kept) < len(field):
            del field[:]
            field.extend(kept)  # type: ignore[arg-type]  # each field keeps its own entry type
    for entries, budget in (
        (control.ihave, MAX_IHAVE_IDS),
        (control.iwant, MAX_IWANT_IDS),
        (control.idontwant, MAX_IDONTWANT_IDS),
    ):
        for entry in entries:
            ids, budget = _trim_ids([mid for mid in entry.messageIDs if len(mid) <= MAX_MESSAGE_ID_BYTES], budget)
            if len(ids) < len(entry.messageIDs):
                del entry.messageIDs[:]
                entry.messageIDs.extend(ids)
    for prune in control.prune:
        del prune.peers[:]
        prune.backoff = min(prune.backoff, MAX_BACKOFF_S)
    return before - control.ByteSize()


def drop_expired_backoff(router: GossipSub, connected: Callable[[ID], bool] = lambda _: True) -> int:
    """Forget backoff entries already past (py-libp2p drops one only when it looks it up), and past
    MAX_BACKOFF_PEERS a topic those of peers not `connected` that end first; how many."""
    now = int(time.time())
    dropped = 0
    for topic in list(router.back_off):
        peers = router.back_off[topic]
        expired = [peer for peer, until in peers.items() if until <= now]
        if len(peers) - len(expired) > MAX_BACKOFF_PEERS:  # each PRUNE of a fresh peer id adds one for an hour
            gone = sorted((until, peer) for peer, until in peers.items() if until > now and not connected(peer))
            expired += [peer for _, peer in gone[: len(peers) - len(expired) - MAX_BACKOFF_PEERS]]
        for peer in expired:
            del peers[peer]
            dropped += 1
        if not peers:
            del router.back_off[topic]
    return dropped


WALL_JUMP_S = 5.0  # a wall clock that moved this much more (or less) than the monotonic one jumped


class WallClockJumps:
    """Notices the wall clock jumping (a VM resumed, NTP stepping it) against the monotonic one."""

    def __init__(self) -> None:
        self._offset = time.time() - time.monotonic()

    def jumped(self) -> float:
        """Seconds the wall clock jumped since the last call (0.0 if under WALL_JUMP_S)."""
        offset = time.time() - time.monotonic()
        jump, self._offset = offset - self._offset, offset
        return jump if abs(jump) >= WALL_JUMP_S else 0.0


def shift_wall_times(router: GossipSub, jump_s: float) -> None:
    """Move py-libp2p's wall-clock deadlines with a jump of the wall clock: PRUNE backoffs, the GRAFT-flood
    check's prune times and fanout's last publish. After a jump back of an hour, a peer pruned a minute
    before stayed in backoff, and its GRAFTs counted as a flood, for an hour more."""
    shift = int(round(jump_s))
    for peers in router.back_off.values():
        for peer in peers:
            peers[peer] += shift
    for pruned in router.graft_flood_tracking.values():
        for topic in pruned:
            pruned[topic] += jump_s
    for topic in router.time_since_last_publish:
        router.time_since_last_publish[topic] += shift


class BoundedGossipSub(GossipSub):
    """GossipSub whose IWANT answers hold each message once and at most IWANT_BYTES_PER_S a second a peer."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._iwant_spent: dict[ID, tuple[float, int]] = {}  # peer -> (second it began, bytes answered)

    async def handle_iwant(self, iwant_msg: rpc_pb2.ControlIWant, sender_peer_id: ID) -> None:
        """Answer an IWANT within the rate limit and IWANT_BYTES_PER_S a peer."""
        if not self._check_iwant_rate_limit(sender_peer_id) or not isinstance(self.pubsub, Pubsub):
            return
        now = time.monotonic()
        since, spent = self._iwant_spent.get(sender_peer_id, (now, 0))
        if now - since >= 1.0:
            since, spent = now, 0
        answer: list[rpc_pb2.Message] = []
        wanted = {mid for wire in iwant_msg.messageIDs if (mid := safe_bytes_from_hex(wire)) is not None}
        for mid in wanted:
            msg = self.mcache.get(mid)
            if msg is None:
                continue
            size = msg.ByteSize()
            if spent + size > IWANT_BYTES_PER_S:
                break
            answer.append(msg)
            spent += size
        self._iwant_spent[sender_peer_id] = (since, spent)
        if answer:
            packet = rpc_pb2.RPC(publish=answer)
            packet.senderRecord, _ = env_to_send_in_RPC(self.pubsub.host)
            self.send_rpc(sender_peer_id, packet)

    def remove_peer(self, peer_id: ID) -> None:
        """Remove the peer, and its IWANT spending."""
        super().remove_peer(peer_id)
        self._iwant_spent.pop(peer_id, None)

    def _check_equivocation(self, msg: rpc_pb2.Message) -> bool:
        # py-libp2p keeps every relayed message whole (up to 1,000 of them, each up to the message size
        # limit: 256 MiB) to spot one sender's two messages under one seqno. Message ids here are content
        # hashes (gossip.py), so such a pair is two messages, each validated on its own: nothing to spot.
        return True
