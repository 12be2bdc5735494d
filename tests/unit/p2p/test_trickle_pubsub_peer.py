"""A pubsub peer that reads a trickle of its gossip (1 KB a second: no write of ours waits long enough to count as
reading nothing, pubsub.py `write_msg`) holds at most its byte cap in the node's outbound queue while large
messages go out, and a peer that reads keeps receiving every one (node/p2p/outbound_queue.py).

py-libp2p's queue held 32 RPCs whatever their size: 32 x 200 KB here, ~6.4 MB, for each such peer."""

from __future__ import annotations

import secrets

from libp2p.pubsub.pb import rpc_pb2

from node.p2p.gossip import Gossip
from node.p2p.host import P2PHost
from node.p2p.outbound_queue import OutboundBudget
from tests.support.p2p_hosts import TOPIC, HostFactory, wait_until
from tests.support.raw_pubsub import Trickle, raw_pubsub_peers, subscriptions
from tests.unit.p2p.test_hostile_pubsub import on_trio

MESSAGE_BYTES = 200_000
MESSAGES = 40  # 8 MB: far past the cap (~2.1 MB), well within py-libp2p's 32 RPCs (6.4 MB)


def queued_bytes(gossip: Gossip, peer: str) -> int:
    """Bytes of the RPCs queued for `peer`, read from py-libp2p's own two deques (the RPC being written not counted)."""
    for peer_id, queue in gossip.pubsub.peer_queues.items():
        if peer_id.to_base58() == peer:
            inner = queue._queue
            rpcs: list[rpc_pb2.RPC] = [*inner._priority, *inner._non_priority]
            return sum(rpc.ByteSize() for rpc in rpcs)
    return 0


def in_mesh(gossip: Gossip, peer: str) -> bool:
    return peer in {peer_id.to_base58() for peer_id in gossip.router.mesh.get(TOPIC, ())}


async def test_a_peer_reading_a_trickle_holds_at_most_its_cap_while_a_reader_gets_every_message(
    make_host: HostFactory,
) -> None:
    host: P2PHost = await make_host()
    await host.subscribe(TOPIC)
    cap = OutboundBudget.for_messages(host.max_message_bytes)
    address = host.listen_addrs[0]
    async with (
        raw_pubsub_peers(address, 1, reads=Trickle(1024, 1.0)) as slow,
        raw_pubsub_peers(address, 1) as reader,
    ):
        assert slow.failed == 0 and reader.failed == 0
        await slow.send(0, subscriptions([TOPIC]))
        await reader.send(0, subscriptions([TOPIC]))
        slow_id = slow[0].peer_id.to_base58()

        async def both_meshed() -> bool:
            meshed = await on_trio(host, lambda g: in_mesh(g, slow_id) and in_mesh(g, reader[0].peer_id.to_base58()))
            return bool(meshed)

        await wait_until(both_meshed, "both peers in the node's mesh", timeout=30)
        most = 0
        for sent in range(1, MESSAGES + 1):
            await host.publish(TOPIC, secrets.token_bytes(MESSAGE_BYTES))  # new each time: each is sent once

            async def read(count: int = sent) -> bool:
                return reader[0].received_messages >= count

            await wait_until(read, f"the reader to receive message {sent}")
            most = max(most, await on_trio(host, lambda g: queued_bytes(g, slow_id)))
        assert cap.peer_bytes - 2 * MESSAGE_BYTES < most <= cap.peer_bytes  # full, and no more
        assert slow_id in await host.peers()  # reading, so never disconnected as a peer that reads nothing


async def test_messages_of_the_largest_size_still_go_out_one_to_an_rpc(make_host: HostFactory) -> None:
    """A queue splits what it sends at one largest message and its overhead (not py-libp2p's 1 MiB), and drops a
    part past that as oversized: the largest message the host publishes must still fit, with its signature, key
    and the RPC's signed peer record."""
    host: P2PHost = await make_host()
    await host.subscribe(TOPIC)
    async with raw_pubsub_peers(host.listen_addrs[0], 1) as reader:
        await reader.send(0, subscriptions([TOPIC]))

        async def meshed() -> bool:
            return bool(await on_trio(host, lambda g: in_mesh(g, reader[0].peer_id.to_base58())))

        await wait_until(meshed, "the reader in the node's mesh", timeout=30)
        for sent in range(1, 4):
            await host.publish(TOPIC, secrets.token_bytes(host.max_message_bytes))

            async def read(count: int = sent) -> bool:
                return reader[0].received_messages >= count

            await wait_until(read, f"the reader to receive largest message {sent}")
