"""The P2P layer with real libp2p hosts on 127.0.0.1 (TCP + Noise + Yamux, gossipsub)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import structlog

from node.p2p.gossip import HeldVerdicts
from node.p2p.handoff import GossipMessage
from node.p2p.host import MessageTooLargeError, NoMeshPeersError, P2PError, P2PHost
from node.p2p.libp2p_logging import SERVICE_LOGGERS, route_libp2p_logging
from node.p2p.steady_addrs import SteadyAddrs
from node.wire.envelope import MAX_AGE_NS, MAX_SKEW_NS
from node.wire.topics import SEEN_WINDOW_S

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
TOPIC = "task"
WAIT_S = 10.0

HostFactory = Callable[..., Awaitable[P2PHost]]


@pytest.fixture
async def make_host() -> AsyncIterator[HostFactory]:
    """Start hosts on loopback; all are stopped at teardown."""
    hosts: list[P2PHost] = []

    async def make(secret: bytes | None = None, **kwargs: object) -> P2PHost:
        host = P2PHost(secret or secrets.token_bytes(32), [LOOPBACK], **kwargs)  # type: ignore[arg-type]
        await host.start()
        hosts.append(host)
        return host

    yield make
    await asyncio.gather(*(host.stop() for host in hosts))


async def wait_until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def wait_for_mesh(host: P2PHost, topic: str, peers: int) -> None:
    async def meshed() -> bool:
        return (await host.mesh_sizes()).get(topic, 0) >= peers

    await wait_until(meshed, f"{host.peer_id} to mesh {peers} peer(s) on {topic!r}")


async def link(a: P2PHost, b: P2PHost) -> None:
    assert await b.connect(a.listen_addrs[0]) == a.peer_id


async def receive(queue: asyncio.Queue[GossipMessage], timeout: float = WAIT_S) -> GossipMessage:
    return await asyncio.wait_for(queue.get(), timeout)


async def pair(make_host: HostFactory, **kwargs: object) -> tuple[P2PHost, P2PHost, asyncio.Queue, asyncio.Queue]:
    """Two connected hosts subscribed to TOPIC, meshed; returns (a, b, a's queue, b's queue)."""
    a, b = await make_host(**kwargs), await make_host(**kwargs)
    qa, qb = await a.subscribe(TOPIC), await b.subscribe(TOPIC)
    await link(a, b)
    await wait_for_mesh(a, TOPIC, 1)
    await wait_for_mesh(b, TOPIC, 1)
    return a, b, qa, qb


def test_peer_id_of_fixed_secret() -> None:
    secret = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
    first, second = P2PHost(secret, [LOOPBACK]), P2PHost(secret, [LOOPBACK])
    assert first.peer_id.startswith("16Uiu2")
    assert first.peer_id == second.peer_id
    assert P2PHost(secrets.token_bytes(32), [LOOPBACK]).peer_id != first.peer_id


def test_bad_secret_is_rejected() -> None:
    with pytest.raises(P2PError, match="secret"):
        P2PHost(b"short", [LOOPBACK])


async def test_listen_addrs_have_real_port_and_peer_id(make_host: HostFactory) -> None:
    host = await make_host()
    [addr] = host.listen_addrs
    parts = addr.split("/")
    assert parts[1:3] == ["ip4", "127.0.0.1"] and parts[3] == "tcp"
    assert int(parts[4]) > 0
    assert addr.endswith(f"/p2p/{host.peer_id}")


async def test_two_hosts_exchange_both_ways(make_host: HostFactory) -> None:
    a, b, qa, qb = await pair(make_host)
    assert await a.peers() == [b.peer_id]
    await a.publish(TOPIC, b"from a")
    assert await receive(qb) == GossipMessage(TOPIC, b"from a", a.peer_id)
    await b.publish(TOPIC, b"from b")
    assert await receive(qa) == GossipMessage(TOPIC, b"from b", b.peer_id)
    # Own messages are not delivered locally (a's own would have queued before b's).
    assert qa.empty() and qb.empty()


async def test_publish_that_requires_a_mesh_sends_nothing_without_one(make_host: HostFactory) -> None:
    alone = await make_host()
    await alone.subscribe(TOPIC)
    with pytest.raises(NoMeshPeersError, match=TOPIC):
        await alone.publish(TOPIC, b"into the void", require_mesh=True)
    await alone.publish(TOPIC, b"no check asked")  # without the flag it publishes (to nobody)
    a, b, _, qb = await pair(make_host)
    await a.publish(TOPIC, b"meshed", require_mesh=True)
    assert (await receive(qb)).data == b"meshed"
    await b.stop()
    await wait_for_mesh_to_empty(a, TOPIC)
    with pytest.raises(NoMeshPeersError):
        await a.publish(TOPIC, b"after the peer left", require_mesh=True)


async def wait_for_mesh_to_empty(host: P2PHost, topic: str) -> None:
    async def empty() -> bool:
        return (await host.mesh_sizes()).get(topic, 0) == 0

    await wait_until(empty, f"{host.peer_id}'s {topic!r} mesh to empty")


async def test_stopped_host_leaves_its_peers_mesh(make_host: HostFactory) -> None:
    # Regression: stop() used to end the Trio thread with its sockets still open,
    # so peers kept a stopped host in their mesh and published into the void.
    a, b, _, _ = await pair(make_host)
    await a.stop()

    async def gone() -> bool:
        return not await b.peers() and (await b.mesh_sizes()).get(TOPIC, 0) == 0

    await wait_until(gone, "b to notice that a stopped")


async def test_message_is_relayed_along_a_line(make_host: HostFactory) -> None:
    a, b, c = await make_host(), await make_host(), await make_host()
    qc = await c.subscribe(TOPIC)
    await a.subscribe(TOPIC)
    await b.subscribe(TOPIC)
    await link(a, b)
    await link(b, c)
    await wait_for_mesh(b, TOPIC, 2)
    await wait_for_mesh(c, TOPIC, 1)
    assert a.peer_id not in await c.peers()
    await a.publish(TOPIC, b"via b")
    assert await receive(qc) == GossipMessage(TOPIC, b"via b", a.peer_id)


async def test_a_relayed_topic_is_validated_and_relayed_but_never_handed_to_the_event_loop(
    make_host: HostFactory,
) -> None:
    """A node relays results and heartbeats it does not read: its validator still judges each
    message (a rejected one goes no further), and nothing crosses to its event loop."""
    judged: list[bytes] = []

    def no_bad(topic: str, data: bytes) -> bool:
        judged.append(data)
        return not data.startswith(b"bad")

    a, b, c = await make_host(), await make_host(), await make_host()
    await a.subscribe(TOPIC)
    await b.relay(TOPIC, no_bad)
    qc = await c.subscribe(TOPIC)
    await link(a, b)
    await link(b, c)
    await wait_for_mesh(b, TOPIC, 2)
    await wait_for_mesh(c, TOPIC, 1)
    await a.publish(TOPIC, b"bad message")
    await a.publish(TOPIC, b"good message")
    assert (await receive(qc)).data == b"good message"
    assert judged == [b"bad message", b"good message"]
    assert qc.empty()
    crossings: list[tuple[object, ...]] = []
    real_call_soon = b._call_soon
    b._call_soon = lambda callback, *args: (crossings.append(args), real_call_soon(callback, *args))[1]  # type: ignore[method-assign]
    for i in range(20):
        await a.publish(TOPIC, b"more %d" % i)
    for _ in range(20):
        await receive(qc)
    assert crossings == [], "a relayed topic's messages crossed to the event loop"
    with pytest.raises(P2PError, match="already subscribed"):
        await b.subscribe(TOPIC)


async def test_rejecting_validator_stops_delivery_and_relay(make_host: HostFactory) -> None:
    def no_bad(topic: str, data: bytes) -> bool:
        return topic == TOPIC and not data.startswith(b"bad")

    a, b, c = await make_host(), await make_host(), await make_host()
    await a.subscribe(TOPIC)
    qb = await b.subscribe(TOPIC, validator=no_bad)
    qc = await c.subscribe(TOPIC)
    await link(a, b)
    await link(b, c)
    await wait_for_mesh(b, TOPIC, 2)
    await wait_for_mesh(c, TOPIC, 1)
    await a.publish(TOPIC, b"bad message")
    await a.publish(TOPIC, b"good message")
    assert (await receive(qb)).data == b"good message"
    assert (await receive(qc)).data == b"good message"
    assert qb.empty() and qc.empty()


async def test_a_validators_verdict_travels_with_its_message_and_a_falsy_one_rejects(make_host: HostFactory) -> None:
    """What the validator returns beyond True reaches the consumer with those bytes (no second check)."""

    def verdict(topic: str, data: bytes) -> object:
        if data.startswith(b"plain"):
            return True
        if data.startswith(b"empty"):
            return ""  # falsy: a reject, as False is
        return {"checked": data.decode()}

    a, b = await make_host(), await make_host()
    await a.subscribe(TOPIC)
    qb = await b.subscribe(TOPIC, validator=verdict)
    await link(a, b)
    await wait_for_mesh(b, TOPIC, 1)
    for data in (b"decoded 1", b"empty one", b"plain one", b"decoded 2"):
        await a.publish(TOPIC, data)
    got = [await receive(qb) for _ in range(3)]
    assert [(m.data, m.validated) for m in got] == [
        (b"decoded 1", {"checked": "decoded 1"}),
        (b"plain one", None),
        (b"decoded 2", {"checked": "decoded 2"}),
    ]
    assert qb.empty()
    assert len(b._service.gossip._verdicts) == 0  # type: ignore[union-attr]  # each one went with its message


def test_held_verdicts_are_keyed_by_content_and_bounded() -> None:
    held = HeldVerdicts(max_count=3, max_bytes=10)
    held.hold("t", b"aa", "A")
    assert held.take("u", b"aa") is None  # another topic: not its verdict
    assert held.take("t", bytes(bytearray(b"aa"))) == "A"  # equal bytes, not the same object: found
    assert held.take("t", b"aa") is None  # taken once
    for i in range(5):
        held.hold("t", bytes([i]), i)
    assert len(held) == 3 and held.take("t", b"\x00") is None and held.take("t", b"\x04") == 4
    held.hold("t", b"x" * 8, "big")
    held.hold("t", b"y" * 8, "bigger")  # 16 bytes over the 10-byte bound: the oldest go
    assert held.take("t", b"x" * 8) is None and held.take("t", b"y" * 8) == "bigger"
    assert len(held) == 0


async def test_raising_validator_rejects_and_host_keeps_working(make_host: HostFactory) -> None:
    def explode_on_boom(topic: str, data: bytes) -> bool:
        if data == b"boom":
            raise ValueError("validator bug")
        return True

    a, b = await make_host(), await make_host()
    qa = await a.subscribe(TOPIC)
    qb = await b.subscribe(TOPIC, validator=explode_on_boom)
    await link(a, b)
    await wait_for_mesh(a, TOPIC, 1)
    await a.publish(TOPIC, b"boom")
    await a.publish(TOPIC, b"fine")
    assert (await receive(qb)).data == b"fine"
    await b.publish(TOPIC, b"b still publishes")
    assert (await receive(qa)).data == b"b still publishes"
    assert qb.empty()


async def test_oversize_publish_raises_and_sends_nothing(make_host: HostFactory) -> None:
    a, _, _, qb = await pair(make_host)
    limit = a.max_message_bytes
    assert limit == 256 * 1024
    with pytest.raises(MessageTooLargeError, match=str(limit)):
        await a.publish(TOPIC, b"x" * (limit + 1))
    await a.publish(TOPIC, b"y" * limit)  # exactly at the limit is fine
    assert (await receive(qb)).data == b"y" * limit
    assert qb.empty()


async def test_receiver_rejects_messages_over_its_limit(make_host: HostFactory) -> None:
    big_sender = await make_host(max_message_bytes=4096)
    small_receiver = await make_host(max_message_bytes=1024)
    await big_sender.subscribe(TOPIC)
    queue = await small_receiver.subscribe(TOPIC)
    await link(big_sender, small_receiver)
    await wait_for_mesh(big_sender, TOPIC, 1)
    await big_sender.publish(TOPIC, b"z" * 2000)
    await big_sender.publish(TOPIC, b"small")
    assert (await receive(queue)).data == b"small"
    assert queue.empty()


async def test_burst_of_300_messages_all_arrive(make_host: HostFactory) -> None:
    a, _, _, qb = await pair(make_host)
    sent = [f"message {i:03d} ".encode() + b"." * 200 for i in range(300)]
    for data in sent:
        await a.publish(TOPIC, data)
    received = [(await receive(qb)).data for _ in sent]
    assert sorted(received) == sorted(sent)


async def test_same_data_twice_is_delivered_once(make_host: HostFactory) -> None:
    a, b, qa, qb = await pair(make_host)
    await a.publish(TOPIC, b"same envelope")
    await a.publish(TOPIC, b"same envelope")
    await a.publish(TOPIC, b"marker")
    assert (await receive(qb)).data == b"same envelope"
    assert (await receive(qb)).data == b"marker"
    await b.publish(TOPIC, b"same envelope")  # b has seen it: not sent back to a
    await b.publish(TOPIC, b"marker from b")
    assert (await receive(qa)).data == b"marker from b"
    assert qa.empty() and qb.empty()


async def test_full_queue_drops_and_counts(make_host: HostFactory) -> None:
    a = await make_host()
    b = await make_host(queue_size=5)
    await a.subscribe(TOPIC)
    qb = await b.subscribe(TOPIC)
    await link(a, b)
    await wait_for_mesh(a, TOPIC, 1)
    for i in range(20):
        await a.publish(TOPIC, f"m{i}".encode())

    async def all_accounted() -> bool:
        return qb.qsize() + b.dropped_messages == 20

    await wait_until(all_accounted, "20 messages delivered or dropped")
    assert qb.qsize() == 5 and b.dropped_messages == 15


async def test_hand_off_is_bounded_in_bytes_before_it_reaches_the_event_loop(make_host: HostFactory) -> None:
    a = await make_host()
    b = await make_host(queue_bytes=50_000)
    await a.subscribe(TOPIC)
    qb = await b.subscribe(TOPIC)
    await link(a, b)
    await wait_for_mesh(a, TOPIC, 1)
    with structlog.testing.capture_logs() as logs:
        for i in range(20):
            await a.publish(TOPIC, b"%02d" % i + b"x" * 9_998)  # 10 kB each: 5 fit

        async def all_accounted() -> bool:
            return qb.qsize() + b.dropped_messages == 20

        await wait_until(all_accounted, "20 messages delivered or dropped")
    assert qb.qsize() == 5 and b.dropped_messages == 15
    drops = [e for e in logs if e["event"] == "message dropped: queue full"]
    assert len(drops) == 1 and drops[0]["topic"] == TOPIC  # logged once per window, not per message
    # Taking messages off the queue gives their room back.
    assert [(await qb.get()).data[:2] for _ in range(5)] == [b"00", b"01", b"02", b"03", b"04"]
    await a.publish(TOPIC, b"after" + b"y" * 9_995)
    assert (await receive(qb)).data.startswith(b"after")
    assert b.dropped_messages == 15


async def test_port_in_use_fails_naming_the_address(make_host: HostFactory) -> None:
    first = await make_host()
    port = first.listen_addrs[0].split("/")[4]
    taken = f"/ip4/127.0.0.1/tcp/{port}"
    second = P2PHost(secrets.token_bytes(32), [taken])
    with pytest.raises(P2PError, match=taken):
        await asyncio.wait_for(second.start(), WAIT_S)
    await second.stop()


async def test_dial_failures_raise_p2p_error(make_host: HostFactory) -> None:
    a, b = await make_host(), await make_host()
    with pytest.raises(P2PError, match="invalid peer multiaddr"):
        await a.connect("not-a-multiaddr")
    with pytest.raises(P2PError, match="our own"):
        await a.connect(a.listen_addrs[0])
    port = b.listen_addrs[0].split("/")[4]
    await b.stop()
    started = time.monotonic()
    with pytest.raises(P2PError, match=port):
        await a.connect(f"/ip4/127.0.0.1/tcp/{port}/p2p/{b.peer_id}", timeout=3.0)
    assert time.monotonic() - started < 5.0
    assert await a.peers() == []


async def test_a_peer_back_on_its_address_can_be_dialled_again_at_once(make_host: HostFactory) -> None:
    """A failed dial must not bar the next one: the caller (the connector's backoff) decides when to retry,
    not libp2p's 60 s negative cache of peers whose addresses all failed."""
    secret = secrets.token_bytes(32)
    a, b = await make_host(), await make_host(secret=secret)
    address = b.listen_addrs[0]
    await b.stop()
    with pytest.raises(P2PError):
        await a.connect(address, timeout=3.0)
    port = address.split("/")[4]
    back = P2PHost(secret, [f"/ip4/127.0.0.1/tcp/{port}"])
    await back.start()
    try:
        assert await a.connect(address, timeout=5.0) == back.peer_id
    finally:
        await back.stop()


async def test_subscribing_twice_is_an_error(make_host: HostFactory) -> None:
    host = await make_host()
    await host.subscribe(TOPIC)
    with pytest.raises(P2PError, match="already subscribed"):
        await host.subscribe(TOPIC)


async def test_stop_under_traffic_is_clean_bounded_and_idempotent(make_host: HostFactory) -> None:
    a, b, _, qb = await pair(make_host)

    async def flood() -> int:
        count = 0
        try:
            while True:
                await a.publish(TOPIC, f"flood {count}".encode())
                count += 1
        except P2PError:
            return count

    flooding = asyncio.create_task(flood())
    await receive(qb)  # traffic is flowing
    started = time.monotonic()
    await b.stop()
    await a.stop()
    assert time.monotonic() - started < 5.0
    assert await asyncio.wait_for(flooding, WAIT_S) > 0
    await a.stop()  # idempotent
    await b.stop()
    alive = {thread.name for thread in threading.enumerate()}
    assert a.thread_name not in alive and b.thread_name not in alive
    with pytest.raises(P2PError, match="not running"):
        await a.publish(TOPIC, b"after stop")


def test_libp2p_logs_reach_our_logging_and_shutdown_noise_is_demoted(caplog: pytest.LogCaptureFixture) -> None:
    route_libp2p_logging("WARNING")
    swarm_log = logging.getLogger(SERVICE_LOGGERS[0])
    closed = ExceptionGroup("nursery", [RuntimeError("Nursery is closed to new arrivals")])
    with caplog.at_level(logging.WARNING):
        for error in (closed, ValueError("real failure")):
            try:
                raise error
            except (ExceptionGroup, ValueError):
                swarm_log.error("task exited with error", exc_info=True)
        logging.getLogger("libp2p.pubsub.pubsub").info("below the routed level")
    [record] = caplog.records
    assert record.levelname == "ERROR" and record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)


async def test_stop_during_start_is_bounded() -> None:
    host = P2PHost(secrets.token_bytes(32), [LOOPBACK])
    starting = asyncio.create_task(host.start())
    await asyncio.sleep(0)  # the thread is started, the host is not ready yet
    await asyncio.wait_for(host.stop(), WAIT_S)
    with pytest.raises(P2PError, match="stopped while starting"):
        await asyncio.wait_for(starting, WAIT_S)
    assert host.thread_name not in {thread.name for thread in threading.enumerate()}


async def test_a_message_is_remembered_as_seen_for_as_long_as_its_envelope_is_accepted(make_host: HostFactory) -> None:
    """A copy delayed longer than the seen window (a starved peer's socket buffers) would pass as new
    and be flooded again: under load that feedback took heartbeat delays from seconds to minutes."""
    host = await make_host()
    seen = host._service.gossip.pubsub.seen_messages  # type: ignore[union-attr]
    assert seen.ttl == SEEN_WINDOW_S
    assert SEEN_WINDOW_S * 1_000_000_000 > MAX_AGE_NS + MAX_SKEW_NS


async def test_a_peer_dialled_only_for_streams_is_no_gossip_peer_of_a_publisher(make_host: HostFactory) -> None:
    """A publisher dials every node it sends a task to; as a gossip peer of each it would sit in every
    node's mesh and relay the whole network's traffic. With gossip_with_stream_peers off it does not:
    the stream works, gossip goes through the peers it `connect`ed to."""
    inbound: asyncio.Queue[object] = asyncio.Queue()
    node = await make_host(on_inbound_stream=lambda stream, first: inbound.put_nowait(first))
    relay = await make_host()
    publisher = await make_host(gossip_with_stream_peers=False)
    for host in (node, relay, publisher):
        await host.subscribe(TOPIC)
    await link(node, relay)
    await publisher.connect(relay.listen_addrs[0])
    await wait_for_mesh(publisher, TOPIC, 1)
    stream = await publisher.open_stream(node.listen_addrs, b"a task")
    assert await asyncio.wait_for(inbound.get(), WAIT_S) == b"a task"
    await asyncio.sleep(3.5)  # gossipsub heartbeats (1 s) that would graft it
    assert node.peer_id in await publisher.peers()  # connected for the stream...
    assert (await publisher.mesh_sizes()).get(TOPIC) == 1  # ...but it gossips only with the relay
    assert (await node.mesh_sizes()).get(TOPIC) == 1
    await stream.close()


async def test_signed_peer_records_still_travel_with_rpcs_while_the_addresses_are_kept_steady(
    make_host: HostFactory,
) -> None:
    a, b, _, qb = await pair(make_host)
    a_host = a._service._host  # type: ignore[attr-defined]
    assert isinstance(a_host.get_addrs, SteadyAddrs)
    assert [str(addr) for addr in a_host.get_addrs()] == a.listen_addrs
    await a.publish(TOPIC, b"with a record")
    assert (await receive(qb)).data == b"with a record"
    # b checked the record a sent (its signature and signer) and keeps a's certified addresses.
    envelope = b._service._host.get_peerstore().get_peer_record(a_host.get_id())  # type: ignore[attr-defined]
    assert envelope is not None
    assert [str(addr) for addr in envelope.record().addrs] == a.listen_addrs
