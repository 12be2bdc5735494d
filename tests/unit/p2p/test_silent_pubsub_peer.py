"""A pubsub peer that takes the host's gossip stream and never reads it is disconnected (node/p2p/pubsub.py,
`write_msg`); a peer that reads stays.

py-libp2p dropped only the stream whose write had waited 5 s for the peer's window, opened another to the
still-connected peer and queued its RPCs again: seven such peers on one IP grew a node by ~4 MB a second of
native memory while the network's traffic went on (a red team's find).
"""

from __future__ import annotations

import secrets

from node.p2p.host import P2PHost
from tests.support.p2p_hosts import TOPIC, HostFactory, wait_until
from tests.support.raw_pubsub import raw_pubsub_peers, subscriptions

MESSAGE_BYTES = 100_000  # a few of them spend a yamux window (256 KiB)


async def _connected(host: P2PHost, peer: str) -> bool:
    return peer in await host.peers()


async def test_a_peer_that_reads_nothing_of_its_gossip_is_disconnected_and_a_reader_stays(
    make_host: HostFactory,
) -> None:
    host = await make_host()
    await host.subscribe(TOPIC)
    address = host.listen_addrs[0]
    async with (
        raw_pubsub_peers(address, 1, reads=False) as silent,
        raw_pubsub_peers(address, 1) as reader,
    ):
        assert silent.failed == 0 and reader.failed == 0
        await silent.send(0, subscriptions([TOPIC]))
        await reader.send(0, subscriptions([TOPIC]))
        silent_id, reader_id = silent[0].peer_id.to_base58(), reader[0].peer_id.to_base58()

        async def read_by_the_reader(count: int) -> bool:
            await host.publish(TOPIC, secrets.token_bytes(16))  # new each time: gossip drops a message seen once
            return reader[0].received_messages >= count

        await wait_until(lambda: read_by_the_reader(1), "the reader meshed", timeout=30)

        async def gone_after_publishing() -> bool:
            await host.publish(TOPIC, secrets.token_bytes(MESSAGE_BYTES))  # each publish fills its window more
            return not await _connected(host, silent_id)

        await wait_until(gone_after_publishing, "the silent peer disconnected", timeout=30)
        read = reader[0].received_messages
        await wait_until(lambda: read_by_the_reader(read + 1), "a message read by the reader after it")
        assert await _connected(host, reader_id)
        assert not await _connected(host, silent_id)  # and not dialled back (py-libp2p's stream retry dialled it)
