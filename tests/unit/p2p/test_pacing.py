"""OutboundPacing on Trio's virtual clock: a publish waits for a slow peer's queue to drain (back-pressure),
but no peer, reading just enough to be waited for again, can make every publish wait."""

from __future__ import annotations

import trio
import trio.testing

from node.p2p.pacing import MAX_WAIT_S, QUEUE_DEPTH, OutboundPacing


class Peer:
    """One peer's outbound queue depth over virtual time."""

    def __init__(self, depth: int) -> None:
        self.depth = depth

    def depths(self) -> list[tuple[str, int]]:
        return [("peer", self.depth)]


def run(main: object) -> None:
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))  # type: ignore[arg-type]


async def publishes_against_a_peer_that_reads_one_rpc_per_wait(pacing: OutboundPacing, peer: Peer, count: int) -> float:
    """`count` publishes; before each the peer's queue is one past the depth, and the peer reads one RPC just
    before a wait would give up on it. Seconds of virtual time they took."""

    async def read_one_rpc_late(at: float) -> None:
        await trio.sleep_until(at + MAX_WAIT_S - 0.01)
        peer.depth = QUEUE_DEPTH

    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(count):
            peer.depth = QUEUE_DEPTH + 1  # the last publish filled it again
            reader = trio.CancelScope()

            async def reader_task(scope: trio.CancelScope = reader, at: float = trio.current_time()) -> None:
                with scope:
                    await read_one_rpc_late(at)

            nursery.start_soon(reader_task)
            await trio.sleep(0)
            await pacing.wait()
            reader.cancel()
    return trio.current_time() - started


def test_a_peer_that_reads_one_rpc_per_wait_cannot_hold_every_publish() -> None:
    async def main() -> None:
        # Without a budget (the node before) each of these 50 publishes waited ~2 s: 100 s. With it they spend
        # the 2 s credit, and then what grows back meanwhile (10% of the time).
        peer = Peer(0)
        pacing = OutboundPacing(peer.depths)
        took = await publishes_against_a_peer_that_reads_one_rpc_per_wait(pacing, peer, 50)
        assert took < 2 * MAX_WAIT_S + 0.5, took
        assert pacing.spent > 40

    run(main)


def test_a_publish_still_waits_for_a_slow_peer_that_is_draining() -> None:
    async def main() -> None:
        peer = Peer(0)
        pacing = OutboundPacing(peer.depths)
        for _ in range(20):
            await trio.sleep(0.5)  # between publishes: the credit grows back
            peer.depth = QUEUE_DEPTH + 4

            async def drain() -> None:
                while peer.depth > 0:
                    await trio.sleep(0.01)
                    peer.depth -= 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain)
                await pacing.wait()
                assert peer.depth <= QUEUE_DEPTH  # it waited until there was room
        assert pacing.spent == 0 and pacing.timeouts == 0

    run(main)


def test_a_frozen_peer_is_waited_for_once_then_given_up_on() -> None:
    async def main() -> None:
        peer = Peer(32)
        pacing = OutboundPacing(peer.depths)
        started = trio.current_time()
        await pacing.wait()
        assert trio.current_time() - started >= MAX_WAIT_S and pacing.timeouts == 1
        started = trio.current_time()
        for _ in range(10):
            await pacing.wait()
        assert trio.current_time() == started  # given up on until its queue drains

    run(main)
