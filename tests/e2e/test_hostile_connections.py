"""Hostile connections from one IP at a live node with the default per-IP limits (no publisher allow-list):
raw TCP connections held open before any handshake, fresh peer ids that complete the handshake and idle,
connections opened and closed as fast as possible, and peers that flood one connection with yamux streams
or bytes past a stream's window. Each attacker dials from an address of its own on
loopback (127.0.0.2, .3, .4); the honest publisher dials from 127.0.0.1, another host, and is served
after each attack with the node's streams, routes and memory back within bounds."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from libp2p.io.exceptions import ConnectionClosedError
from libp2p.stream_muxer.yamux.yamux import FLAG_SYN, TYPE_DATA, TYPE_WINDOW_UPDATE, YAMUX_HEADER_FORMAT

from config.settings import Settings
from node.p2p.bounded_yamux import CLOSED_STREAM_FLOOD, CLOSED_WINDOW, MuxerLimits
from node.p2p.inbound_gate import REFUSED_OPEN, REFUSED_RATE
from tests.support.cluster import dialable
from tests.support.connection_flood import connection_flood
from tests.support.hostile_scene import Scene, honest_task_is_served, hostile_scene, logged, wait_for
from tests.support.raw_pubsub import raw_pubsub_peers

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

PER_IP = Settings.model_fields["inbound_connections_per_ip"].default
PER_IP_PER_MINUTE = Settings.model_fields["inbound_connections_per_ip_per_minute"].default
DIRECT_PER_PEER = Settings.model_fields["direct_streams_per_peer"].default
EOF_WAIT_S = 2.0
CHURN_PAUSE_S = 0.05


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def scene(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Scene]:
    async with hostile_scene(
        tmp_path_factory.mktemp("node"),
        inbound_connections_per_ip=PER_IP,
        inbound_connections_per_ip_per_minute=PER_IP_PER_MINUTE,
    ) as shared:
        yield shared


def yamux_frame(kind: int, flags: int, stream_id: int, data: bytes = b"") -> bytes:
    return struct.pack(YAMUX_HEADER_FORMAT, 0, kind, flags, stream_id, len(data)) + data


def port_of(scene: Scene) -> int:
    return int(dialable(scene.node).split("/tcp/")[1].split("/")[0])


async def closed_by_the_node(reader: asyncio.StreamReader) -> bool:
    """True when the node closed the connection before anything was sent (refused as accepted)."""
    try:
        return await asyncio.wait_for(reader.read(1), EOF_WAIT_S) == b""
    except TimeoutError:
        return False  # still open: the node waits for our side of the handshake
    except ConnectionError:
        return True


def refused(scene: Scene, reason: str) -> int:
    return scene.node.running.host.refused_connections[reason]


async def metric_counts(scene: Scene, reason: str, at_least: int) -> None:
    def counted() -> bool:
        value = scene.node.metrics.registry.get_sample_value(
            "compute_node_connections_refused_total", {"reason": reason}
        )
        return value is not None and value >= at_least

    await wait_for(counted, f"{at_least} connections refused ({reason}) in the metrics", 30)


async def test_connections_held_open_before_their_handshake_are_capped_per_ip(scene: Scene) -> None:
    since, before = len(scene.logs), refused(scene, REFUSED_OPEN)
    held = [
        await asyncio.open_connection("127.0.0.1", port_of(scene), local_addr=("127.0.0.2", 0))
        for _ in range(PER_IP * 2)
    ]
    try:
        verdicts = await asyncio.gather(*(closed_by_the_node(reader) for reader, _ in held))
        assert verdicts.count(False) == PER_IP, verdicts  # the first PER_IP wait for their handshake
        assert refused(scene, REFUSED_OPEN) - before == PER_IP
        await logged(scene, since, "the refusal logged", event="inbound connections refused", address="127.0.0.2")
        await metric_counts(scene, REFUSED_OPEN, PER_IP)
        await honest_task_is_served(scene)  # from 127.0.0.1 while 127.0.0.2 holds its share
    finally:
        for _, writer in held:
            writer.close()


async def test_fresh_peer_ids_from_one_ip_that_handshake_and_idle_hold_at_most_its_share(scene: Scene) -> None:
    host = scene.node.running.host
    connected_before = len(await host.peers())
    since = len(scene.logs)
    async with connection_flood(dialable(scene.node), PER_IP * 3, source_ip="127.0.0.3") as flood:
        await wait_for(lambda: flood.settled, "the flood's dials", 90)
        assert 0 < flood.connected <= PER_IP, flood
        assert len(await host.peers()) - connected_before <= PER_IP
        await logged(scene, since, "the refusal logged", event="inbound connections refused", address="127.0.0.3")
        await honest_task_is_served(scene)


async def test_connections_opened_and_closed_fast_from_one_ip_are_refused_past_its_rate(scene: Scene) -> None:
    before = {reason: refused(scene, reason) for reason in (REFUSED_OPEN, REFUSED_RATE)}
    attempts = PER_IP_PER_MINUTE * 2
    for _ in range(attempts):
        _, writer = await asyncio.open_connection("127.0.0.1", port_of(scene), local_addr=("127.0.0.4", 0))
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(CHURN_PAUSE_S)  # the node closes its end meanwhile: the open cap is not what bites
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(scene), local_addr=("127.0.0.4", 0))
    try:
        assert await closed_by_the_node(reader)  # accepted after all the others: their verdicts are in
    finally:
        writer.close()
    attempts += 1
    refused_now = {reason: refused(scene, reason) - before[reason] for reason in before}
    let_through = attempts - sum(refused_now.values())
    assert let_through <= PER_IP_PER_MINUTE, refused_now
    assert refused_now[REFUSED_RATE] >= PER_IP_PER_MINUTE // 2, refused_now  # the rate, not the open cap, refused
    await metric_counts(scene, REFUSED_RATE, refused_now[REFUSED_RATE])
    await honest_task_is_served(scene)


async def test_peers_flooding_one_connection_with_streams_or_bytes_lose_it_and_the_node_serves_on(scene: Scene) -> None:
    before = {reason: refused(scene, reason) for reason in (CLOSED_STREAM_FLOOD, CLOSED_WINDOW)}
    resets_before = scene.node.running.host.refused_streams
    streams = [yamux_frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 10_001 + 2 * i) for i in range(5_000)]
    overrun = [yamux_frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 10_001)]  # a stream the node waits on for its protocol
    overrun += [yamux_frame(TYPE_DATA, 0, 10_001, b"\xee" * (1 << 20)) for _ in range(4)]  # its window: 256 KiB
    async with raw_pubsub_peers(dialable(scene.node), 2) as peers:
        for index, frames in enumerate((streams, overrun)):
            try:
                await peers.send_frames(index, frames)
            except ConnectionClosedError:
                pass  # the node hung up while we wrote
        for reason in before:
            await wait_for(lambda r=reason: refused(scene, r) > before[r], f"a connection closed ({reason})", 30)
            await metric_counts(scene, reason, before[reason] + 1)
        cap = MuxerLimits().with_room_for(DIRECT_PER_PEER).max_inbound_streams
        assert scene.node.running.host.refused_streams - resets_before == cap + 1  # the flood cut off, not 5,000 resets
    await honest_task_is_served(scene)
