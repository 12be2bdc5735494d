"""The publisher's view of the network: nodes known from their heartbeats.

Liveness is judged by the signed body `timestamp`, not
by when a heartbeat arrived: anyone can re-send an old signed heartbeat with a
fresh envelope. A body older than `ttl` (two heartbeat intervals by default),
older than the newest one seen from that node, or stamped further ahead than
`max_skew`, is ignored. Every number is clamped (capacity 0..1024, tps 0..1e6,
finite) before it weighs a choice. `choose` picks one live node that hosts an
acceptable model, at random weighted by free capacity and speed, so load spreads
and a fast, idle node is preferred without starving the others. Free capacity is the
node's free places for the task's models when its heartbeat says them per model
(`modelCapacity`, protocol 0.4: each model has places of its own, so a node whose model A
is full is not chosen for A-only tasks while its model B has room), never more than its
total `capacity.free`; entries for models the node does not list are ignored. The table is
capped in entries and in bytes, each node's signed heartbeat envelope counted too (kept
for Dria's SDK; anyone can make keys, and 200 heartbeats of the largest size fill the
bytes): past a cap, the nodes heard least recently go first, except live nodes whose
service this publisher measured. A node's `addrs` (protocol 0.4)
say where to dial it for direct delivery (IP addresses only, none that is unspecified, link-local,
multicast or reserved: `dialable_addr`); once its `leaving` heartbeat arrives it is
chosen no more (a later heartbeat without `leaving`, from a restart, brings it back).
With a `Reputation` (the Client's default), weights come from what this publisher measured
instead of what heartbeats claim (see reputation.py), and a banned node is never chosen.
A node whose last connection to this publisher closed (and that refused a new one), or whose
dial failed, since its last heartbeat (`mark_gone`: a killed node's heartbeat stays live for up to
`ttl`) is weighed last: chosen only when no other node can be, until its next heartbeat or a new
connection to it.
Anyone can make keys that heartbeat and claim every model: a choice weighs the nodes measured
serving and a random sample of the others from the `ModelIndex` (node_index.py), never the whole
table, and those others hold a bounded share of it together (`choose`); listings for people
(`listing`) and the question whether any node serves a model (`serving`) are bounded alike.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from node.publisher.heartbeat_claims import bulky, clamp_capacity, clamp_tps, dialable_addr
from node.publisher.node_index import ModelIndex
from node.publisher.reputation import Reputation
from node.wire.envelope import Envelope
from node.wire.messages import HeartbeatBody
from node.wire.topics import ANY_LOCAL_MODEL, ANY_MODEL, FIRST_MODEL

DEFAULT_HEARTBEAT_INTERVAL_S = 30.0
ENTRY_OVERHEAD_BYTES = 256  # what an entry costs beyond its strings, as the byte cap counts it
MODEL_INDEX_BYTES = 128  # what each model it names costs in the ModelIndex, as the byte cap counts it
SAMPLE = 64  # nodes not measured serving that one choice weighs at most (drawn at random)
MAX_MEASURED = 256  # nodes measured serving that one choice weighs at most (drawn at random beyond)
MAX_SPARED = 64  # nodes that served us passed over per eviction at most (when nearly all did, the oldest goes)
MAX_GONE = 4096  # peers marked gone (`mark_gone`) held at most; past it, the oldest mark goes
MAX_DEPARTURES = 4  # picked nodes `departures` names at most (a task may pick many)


@dataclass(frozen=True)
class KnownNode:
    """What a node said in its last heartbeat, clamped."""

    address: str
    peer_id: str
    models: list[str]
    free: int
    max: int
    tps: dict[str, float]
    last_seen: float  # the heartbeat body's timestamp, Unix seconds
    addrs: tuple[str, ...] = ()  # where it takes direct-delivery streams; empty: gossip only
    leaving: bool = False  # it is draining: never chosen
    envelope: Envelope | None = None  # its last heartbeat as signed (served as is to Dria's SDK)
    reserved: int = 0  # our tasks sent since this heartbeat and not yet ended (counted off `free`)
    # Free places per model (`modelCapacity`), clamped, for models in `models` only; empty: not said.
    model_free: dict[str, int] = field(default_factory=dict)
    model_max: dict[str, int] = field(default_factory=dict)  # and their most places, clamped (same models)
    model_reserved: dict[str, int] = field(default_factory=dict)  # our tasks counted off `model_free`

    def serves(self, wanted: list[str]) -> bool:
        """Whether the node serves any of the wanted models (or a wildcard of them)."""
        return bool(self.models) and any(
            entry in (ANY_MODEL, ANY_LOCAL_MODEL, FIRST_MODEL) or entry in self.models for entry in wanted
        )

    def claimed_tps(self, wanted: list[str]) -> float:
        """Its claimed speed for the wanted models (any of its models when none is named), 0 when unknown."""
        speeds = [tps for model, tps in self.tps.items() if model in wanted] or list(self.tps.values())
        return max(speeds, default=0.0)

    def free_for(self, wanted: list[str]) -> int:
        """Its free places for a task that may run on any of `wanted`: the sum of its per-model free places
        of the wanted models it serves, at most its total free; the total when its heartbeat says no
        per-model places for one of them, or `wanted` has a wildcard."""
        free = max(self.free, 0)
        if not self.model_free or any(entry in (ANY_MODEL, ANY_LOCAL_MODEL, FIRST_MODEL) for entry in wanted):
            return free
        served = [model for model in dict.fromkeys(wanted) if model in self.models]
        if not served or any(model not in self.model_free for model in served):
            return free
        return min(free, sum(max(self.model_free[model], 0) for model in served))

    def weight(self, wanted: list[str]) -> float:
        """The weight its own claims give it: free capacity (for the wanted models) x speed."""
        return self.free_for(wanted) * max(self.claimed_tps(wanted), 1.0)

    @property
    def size(self) -> int:
        """Bytes this entry is counted as, for the table's byte cap."""
        strings = len(self.peer_id) + sum(len(m) + MODEL_INDEX_BYTES for m in self.models)
        strings += sum(len(m) + 16 for m in self.tps)
        strings += sum(map(len, self.addrs))
        strings += sum(len(m) + 16 for m in self.model_free) + 16 * len(self.model_max)  # the same names
        if self.envelope is not None:
            strings += len(self.envelope.payload) + ENTRY_OVERHEAD_BYTES  # and its signature, version, topic
        return ENTRY_OVERHEAD_BYTES + strings


class NodeTable:
    """Nodes by address, refreshed by heartbeats."""

    def __init__(
        self,
        ttl: float = 2 * DEFAULT_HEARTBEAT_INTERVAL_S,
        rng: random.Random | None = None,
        max_nodes: int = 10_000,
        max_bytes: int = 16 * 1024 * 1024,
        max_skew: float = 60.0,
        reputation: Reputation | None = None,
    ) -> None:
        """`reputation`: weigh choices by measured service (None: by the heartbeats' claims)."""
        self._nodes: dict[str, KnownNode] = {}
        self._ttl = ttl
        self._rng = rng or random.Random()
        self._max_nodes = max_nodes
        self._max_bytes = max_bytes
        self._max_skew = max_skew
        self.bytes_used = 0
        self.reputation = reputation
        self._index = ModelIndex()  # who claims which model: choices draw from it (node_index.py)
        self._gone: dict[str, float] = {}  # peer id -> when it went (`mark_gone`), oldest first
        self._by_peer: dict[str, str] = {}  # peer id -> the address of the node held under it (`of_peer`)

    def update(
        self, sender: str, heartbeat: HeartbeatBody, now: float | None = None, envelope: Envelope | None = None
    ) -> bool:
        """Record a heartbeat signed by `sender` (`envelope`: as it came, kept with it); False (and nothing
        changes) if it is ignored: not the signer's own, stale, older than the one held, or from the future."""
        if heartbeat.address != sender:
            return False
        now = time.time() if now is None else now
        stamped = heartbeat.timestamp / 1e9
        if now - stamped > self._ttl or stamped - now > self._max_skew:
            return False
        known = self._nodes.get(sender)
        if known is not None and stamped <= known.last_seen:
            return False  # a replay, or one overtaken by a newer heartbeat
        if envelope is not None and bulky(envelope, heartbeat):
            envelope = None  # bulk its body does not read (unknown fields): neither kept nor listed to the SDK
        listed = set(heartbeat.models)
        per_model = {model: places for model, places in (heartbeat.model_capacity or {}).items() if model in listed}
        node = KnownNode(
            address=sender,
            peer_id=heartbeat.peer_id,
            models=list(heartbeat.models),
            free=clamp_capacity(heartbeat.capacity.free),
            max=clamp_capacity(heartbeat.capacity.max),
            tps={model: clamp_tps(tps) for model, tps in heartbeat.tps.items()},
            last_seen=stamped,
            addrs=tuple(addr for addr in heartbeat.addrs or () if dialable_addr(addr)),
            leaving=bool(heartbeat.leaving),
            envelope=envelope,
            model_free={model: clamp_capacity(places.free) for model, places in per_model.items()},
            model_max={model: clamp_capacity(places.max) for model, places in per_model.items()},
        )
        self._forget(sender)  # and in again at the end: the table is in the order nodes were last heard
        self._make_room(node.size, now)
        self._nodes[sender] = node
        self.bytes_used += node.size
        if not node.leaving:
            self._index.add(sender, node.models)
        self._by_peer[node.peer_id] = sender
        self._gone.pop(node.peer_id, None)  # heard from since it went: it is back
        return True

    def _forget(self, address: str) -> None:
        node = self._nodes.pop(address, None)
        if node is not None:
            self.bytes_used -= node.size
            self._index.discard(address, node.models)
            if self._by_peer.get(node.peer_id) == address:
                del self._by_peer[node.peer_id]

    def _make_room(self, size: int, now: float) -> None:
        """Forget the nodes heard least recently (the silent ones first) until one more entry of `size` fits.

        By arrival, not by signed timestamp: a flood of keys stamped ahead of time buys no place over
        nodes that keep heartbeating, and each eviction is O(1), not a scan of the table per heartbeat.
        A live node that served us gets a second chance (to the end of the order): keys anyone can make
        cannot push out what this publisher measured to work.
        """
        spared = 0
        while self._nodes and (len(self._nodes) >= self._max_nodes or self.bytes_used + size > self._max_bytes):
            address, node = next(iter(self._nodes.items()))
            if spared < min(len(self._nodes), MAX_SPARED) and self._served_us(node, now):
                del self._nodes[address]
                self._nodes[address] = node
                spared += 1
                continue
            self._forget(address)

    def _served_us(self, node: KnownNode, now: float) -> bool:
        """Live, and measured answering our tasks without failing a verification."""
        reputation = self.reputation
        return reputation is not None and now - node.last_seen <= self._ttl and reputation.served(node.address, now)

    def reserve(self, address: str, models: list[str] | tuple[str, ...] = ()) -> None:
        """Count a task for `models` just sent to `address` against its free capacity (and against each of
        those models' own free places, where its heartbeat says them) until it ends or the node's next
        heartbeat."""
        node = self._nodes.get(address)
        if node is not None:
            # A task runs on ONE of its models: counted off that model's places only when it can run on one
            # model of this node; otherwise off the total alone (free_for never exceeds it).
            served = [m for m in dict.fromkeys(models) if m in node.models]
            counted = served if len(served) == 1 and served[0] in node.model_free else []
            self._nodes[address] = replace(
                node,
                free=node.free - 1,
                reserved=node.reserved + 1,
                model_free={m: n - 1 if m in counted else n for m, n in node.model_free.items()},
                model_reserved={**node.model_reserved, **{m: node.model_reserved.get(m, 0) + 1 for m in counted}},
            )

    def release(self, address: str, models: list[str] | tuple[str, ...] = ()) -> None:
        """A task counted by `reserve` (with the same `models`) ended: its place is free again (unless a
        heartbeat came since)."""
        node = self._nodes.get(address)
        if node is not None and node.reserved > 0:
            served = [m for m in dict.fromkeys(models) if m in node.models]  # as `reserve` counted it
            counted = served if len(served) == 1 and node.model_reserved.get(served[0], 0) > 0 else []
            self._nodes[address] = replace(
                node,
                free=node.free + 1,
                reserved=node.reserved - 1,
                model_free={m: n + 1 if m in counted else n for m, n in node.model_free.items()},
                model_reserved={**node.model_reserved, **{m: node.model_reserved[m] - 1 for m in counted}},
            )

    def mark_gone(self, peer_id: str, now: float | None = None) -> None:
        """The node with libp2p `peer_id` went since its last heartbeat: its last connection to this publisher
        closed and it refused a new one (PeerWatch), or a dial of it failed. It is weighed last (`choose`) until a
        heartbeat of it is accepted or `mark_back`. Not proof it died (it, or we, may have hung up on a live node): never a ban, and bounded."""
        now = time.time() if now is None else now
        self._gone.pop(peer_id, None)
        while self._gone and now - next(iter(self._gone.values())) > self._ttl:  # its heartbeat is stale anyway
            del self._gone[next(iter(self._gone))]
        while len(self._gone) >= MAX_GONE:
            del self._gone[next(iter(self._gone))]
        self._gone[peer_id] = now

    def of_peer(self, peer_id: str, now: float | None = None) -> KnownNode | None:
        """The live node whose heartbeat names libp2p `peer_id` (its signer's own), if any; O(1)."""
        now = time.time() if now is None else now
        node = self._nodes.get(self._by_peer.get(peer_id, ""))
        return node if node is not None and now - node.last_seen <= self._ttl else None

    def mark_back(self, peer_id: str) -> None:
        """A connection with `peer_id` opened: it is not gone (`mark_gone`)."""
        self._gone.pop(peer_id, None)

    def gone(self, peer_id: str) -> bool:
        """Whether the peer is marked gone (`mark_gone`) and not heard from since."""
        return peer_id in self._gone

    def departures(self, addresses: Sequence[str], waited: float, now: float | None = None) -> list[str]:
        """What this table knows of these nodes having gone, for the text of a wait that timed out after `waited`
        seconds: marked gone since their last heartbeat (`mark_gone`: when, counted from the wait's start), or not
        heard from within `ttl`. Nodes live as far as it knows, and unknown ones, go unnamed."""
        now = time.time() if now is None else now
        said: list[str] = []
        for address in addresses[:MAX_DEPARTURES]:
            node = self._nodes.get(address.lower().removeprefix("0x"))
            if node is None:
                continue
            if (went := self._gone.get(node.peer_id)) is not None:
                after = went - (now - waited)
                when = f"after {after:.1f} s" if after >= 0 else "before the wait began"
                said.append(
                    f"node {node.address} became unreachable {when} (a connection to it closed or failed, none opened since)"
                )
            elif now - node.last_seen > self._ttl:
                said.append(f"node {node.address} sent no heartbeat for {now - node.last_seen:.0f} s")
        return said

    def get(self, address: str) -> KnownNode | None:
        """The node's last heartbeat (clamped), live or not; None if unknown."""
        return self._nodes.get(address)

    @property
    def ttl(self) -> float:
        """Seconds a heartbeat body counts as live after its signed timestamp (two intervals)."""
        return self._ttl

    def known(self) -> list[KnownNode]:
        """Every node held, live or not (its last heartbeat)."""
        return list(self._nodes.values())

    def live_count(self, now: float | None = None) -> int:
        """How many nodes are live (heard within the TTL)."""
        now = time.time() if now is None else now
        return sum(1 for node in self._nodes.values() if now - node.last_seen <= self._ttl)

    def listing(self, limit: int, now: float | None = None, then: Sequence[str] = ()) -> list[KnownNode]:
        """At most `limit` live nodes to show: those measured serving first (at most MAX_MEASURED), `then` these,
        then the most recently heard; bounded work whatever the table holds (anyone can make keys)."""
        now = time.time() if now is None else now
        chosen: dict[str, KnownNode] = {}
        measured = self.reputation.serving(MAX_MEASURED, self._rng) if self.reputation is not None else []
        for address in [*measured, *then, *reversed(self._nodes)]:
            if len(chosen) >= limit:
                break
            node = self._nodes.get(address)
            if node is not None and now - node.last_seen <= self._ttl:
                chosen[address] = node
        return list(chosen.values())

    def live(self, now: float | None = None) -> list[KnownNode]:
        """The nodes heard within the TTL."""
        now = time.time() if now is None else now
        return [node for node in self._nodes.values() if now - node.last_seen <= self._ttl]

    def _usable(self, address: str, exclude: set[str] | frozenset[str], now: float) -> bool | None:
        """Whether a choice may take `address`; None when its node is silent or leaving (it then leaves
        the index until its next heartbeat)."""
        node = self._nodes.get(address)
        if node is None or node.leaving or now - node.last_seen > self._ttl:
            if node is not None:
                self._index.discard(address, node.models)
            return None
        reputation = self.reputation
        return address not in exclude and (reputation is None or not reputation.banned(address, now))

    def serving(
        self, wanted: list[str], exclude: set[str] | frozenset[str] = frozenset(), now: float | None = None
    ) -> bool:
        """Whether a live node outside `exclude`, not leaving nor banned, serves one of `wanted` (bounded
        work, as a choice: see `choose`)."""
        now = time.time() if now is None else now
        found, _ = self._index.sample(wanted, SAMPLE, self._rng, lambda a: self._usable(a, exclude, now))
        return bool(found)

    def count(self, model: str) -> int:
        """How many nodes held claim `model` by name, live or not (an upper bound on those live), in O(1)."""
        return self._index.count(model)

    def choose(
        self,
        wanted: list[str],
        exclude: set[str] | frozenset[str] = frozenset(),
        now: float | None = None,
        explore: bool = True,
    ) -> KnownNode | None:
        """A live node serving one of `wanted`, weighted by free capacity x speed (measured, with a
        reputation); None if there is none.

        Nodes weighing nothing (no free capacity) are chosen only when every candidate does; a
        leaving or banned node never. The work is bounded whatever the table holds: the nodes measured
        serving (at most MAX_MEASURED) and a random sample of at most SAMPLE others. With a reputation,
        the others together weigh at most `Reputation.explore_share` of the choice (10%, down to 1% while
        such nodes fail the tasks they are tried with) while a measured node has room
        (anyone can make keys: their number buys no share), and none with `explore=False` then; with
        `explore=False` and no measured node with room, one of the measured nodes, at random (a heartbeat's
        free places are up to an interval old, and our own tasks count off them).
        A node marked gone (`mark_gone`) is weighed last: chosen only when no other is a candidate.
        """
        now = time.time() if now is None else now
        candidates, weights = self._weigh(wanted, exclude, now, explore, skip_gone=bool(self._gone))
        if not candidates and self._gone:
            candidates, weights = self._weigh(wanted, exclude, now, explore, skip_gone=False)
        if not candidates:
            return None
        if not any(weights):
            return self._rng.choice(candidates)
        return self._rng.choices(candidates, weights=weights, k=1)[0]

    def _weigh(
        self, wanted: list[str], exclude: set[str] | frozenset[str], now: float, explore: bool, skip_gone: bool
    ) -> tuple[list[KnownNode], list[float]]:
        """A choice's candidates and their weights (see `choose`); `skip_gone`: none marked gone."""
        reputation = self.reputation

        def usable(address: str) -> bool | None:
            verdict = self._usable(address, exclude, now)
            return verdict and not (skip_gone and self._nodes[address].peer_id in self._gone)

        if reputation is None:
            sampled, _ = self._index.sample(wanted, SAMPLE, self._rng, usable)
            candidates = [self._nodes[a] for a in sampled]
            weights = [n.weight(wanted) for n in candidates]
        else:
            measured = [
                self._nodes[a]
                for a in reputation.serving(MAX_MEASURED, self._rng)
                if a in self._nodes and usable(a) and self._nodes[a].serves(wanted)
            ]
            weights = [reputation.weight(n.address, n.free_for(wanted), n.claimed_tps(wanted), now) for n in measured]
            if measured and not explore and not any(weights):
                # Every node measured serving says it has no free place for these models (its last heartbeat,
                # or our tasks sent since): one of them, which may have room again by now, not keys anyone
                # can make that claim free places without end.
                return measured, weights
            sampled, stands_for = self._index.sample(wanted, SAMPLE, self._rng, usable)
            known = {n.address for n in measured}
            others = [self._nodes[a] for a in sampled if a not in known]
            guessed = [
                reputation.weight(n.address, n.free_for(wanted), n.claimed_tps(wanted), now) * stands_for
                for n in others
            ]
            if any(weights):
                share = reputation.explore_share(now) if explore else 0.0
                cap = share / (1 - share) * sum(weights)
                scale = min(1.0, cap / sum(guessed)) if sum(guessed) > 0 else 0.0
                guessed = [w * scale for w in guessed]
            candidates, weights = measured + others, weights + guessed
        return candidates, weights
