"""A stream the node refuses or resets on a live connection (its yamux cap of a peer's streams, or a protocol it
does not serve) is no failed dial: the task goes on gossip and the node is not taken for undialable (before, it got
every task on gossip for a minute: a gateway soak saw one such reset under load stop all token streaming to a
connected, healthy node). Real libp2p peers on 127.0.0.1."""

from __future__ import annotations

import pytest
import structlog

from node.p2p.host import P2PHost
from node.publisher.client import Task, TaskTimeoutError
from tests.support.streaming_peer import StreamingPeer, client_of


class StreamlessPeer(StreamingPeer):
    """Heartbeats name its addresses, but its host serves no direct-delivery stream (any stream is refused)."""

    def __init__(self) -> None:
        super().__init__([], "")
        self.host = P2PHost(self.identity.secret, ["/ip4/127.0.0.1/tcp/0"])


async def test_a_refused_stream_on_a_live_connection_sends_the_task_on_gossip_without_an_undialable_mark() -> None:
    peer = StreamlessPeer()
    async with client_of(peer) as client:
        with structlog.testing.capture_logs() as logs, pytest.raises(TaskTimeoutError):
            await client.execute(Task(workflow={}, models=["m"]), timeout=3)  # nobody answers its gossip
        assert client._sender is not None and not client._sender.undialable(peer.identity.address)
    events = {entry["event"]: entry for entry in logs}
    assert "node not dialable; its tasks go on gossip" not in events
    assert "stream refused" in str(events["node takes no more streams from us; sending on gossip"]["reason"])
    assert "task published" in events
