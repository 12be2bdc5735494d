"""Pubsub's outbound queues in bytes (node/p2p/outbound_queue.py): a peer's cap, control's reserve past it, one
total for all peers in which the heaviest peers' data makes room for a lighter peer's, and bytes released as
RPCs are written and when a queue closes.

py-libp2p's queue counted RPCs only: 32 of the largest messages (~8.4 MB) for each peer that reads a trickle."""

from __future__ import annotations

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.rpc_queue import RpcQueue

from node.p2p.outbound_queue import (
    CONTROL_RESERVE_BYTES,
    PEER_QUEUE_MESSAGES,
    TOTAL_QUEUE_BYTES,
    ByteBoundedRpcQueue,
    OutboundBudget,
    OutboundQueues,
)
from node.wire.topics import MAX_MESSAGE_BYTES

DATA = 10_000  # the payload of one test message; its RPC is a few bytes more


def message(size: int = DATA) -> rpc_pb2.RPC:
    return rpc_pb2.RPC(publish=[rpc_pb2.Message(data=b"x" * size, topicIDs=["task"])])


def control(ids: int = 10) -> rpc_pb2.RPC:
    return rpc_pb2.RPC(control=rpc_pb2.ControlMessage(iwant=[rpc_pb2.ControlIWant(messageIDs=[b"ab" * 32] * ids)]))


RPC = message().ByteSize()


def budget(peer_rpcs: int = 4, total_rpcs: int = 100, reserve: int = 1_000) -> OutboundBudget:
    return OutboundBudget(peer_rpcs * RPC, control_reserve=reserve, total_bytes=total_rpcs * RPC)


def pop_now(queue: RpcQueue) -> rpc_pb2.RPC | None:
    """What the sending loop takes next (None when it would wait)."""

    async def take() -> rpc_pb2.RPC | None:
        with trio.move_on_after(0.01):
            return await queue.pop()
        return None

    return trio.run(take)


def test_the_node_caps_a_peer_at_eight_of_its_largest_messages_within_64_mib() -> None:
    node = OutboundBudget.for_messages(MAX_MESSAGE_BYTES)
    largest = message(MAX_MESSAGE_BYTES).ByteSize()
    assert PEER_QUEUE_MESSAGES * largest <= node.peer_bytes < (PEER_QUEUE_MESSAGES + 1) * largest
    assert node.control_reserve == CONTROL_RESERVE_BYTES and node.total_bytes == TOTAL_QUEUE_BYTES == 64 << 20


def test_a_peer_full_in_bytes_is_refused_and_a_write_makes_room() -> None:
    caps = budget(peer_rpcs=4)
    queue = ByteBoundedRpcQueue(caps)
    assert all(queue.push(message()) for _ in range(4))
    assert queue.held == 4 * RPC
    assert not queue.push(message())  # py-libp2p's queue took 32
    assert len(queue) == 4 and caps.refused == 1
    assert pop_now(queue) is not None
    assert not queue.push(message())  # taken, not written yet: the sending loop still holds it
    assert pop_now(queue) is not None  # the first is written now
    assert queue.held == 3 * RPC
    assert queue.push(message())


def test_control_passes_a_queue_full_of_data_within_its_reserve_and_goes_first() -> None:
    queue = ByteBoundedRpcQueue(budget(peer_rpcs=2, reserve=3 * control().ByteSize()))
    assert queue.push(message()) and queue.push(message()) and not queue.push(message())
    assert queue.push(control(), priority=True)
    assert queue.push(control(), priority=True) and queue.push(control(), priority=True)
    assert not queue.push(control(), priority=True)  # past the reserve too
    first = pop_now(queue)
    assert first is not None and first.HasField("control")


def test_the_total_is_shared_the_heaviest_peer_makes_room_for_a_lighter_one() -> None:
    shared = budget(peer_rpcs=10, total_rpcs=12)
    slow_a, slow_b, honest = (ByteBoundedRpcQueue(shared) for _ in range(3))
    assert all(slow_a.push(message()) for _ in range(7))
    assert all(slow_b.push(message()) for _ in range(5))
    assert shared.held == 12 * RPC  # the total: a push now needs room
    assert honest.push(message())  # the oldest message of the heaviest (slow_a) goes
    assert (slow_a.held, slow_b.held, honest.held) == (6 * RPC, 5 * RPC, RPC)
    assert shared.held == 12 * RPC and shared.evicted == 1
    assert not slow_b.push(message())  # no peer holds more than slow_b would: refused, nothing evicted
    assert shared.evicted == 1
    while honest.push(message()):
        assert shared.held == 12 * RPC  # never past the total
    assert (slow_a.held, slow_b.held, honest.held) == (4 * RPC, 4 * RPC, 4 * RPC)  # a third each: the slow ones paid


def test_eviction_spares_control_and_rpcs_carrying_it() -> None:
    shared = budget(peer_rpcs=10, reserve=10 * RPC)
    slow, honest = ByteBoundedRpcQueue(shared), ByteBoundedRpcQueue(shared)
    graft = message()
    graft.control.graft.add(topicID="task")  # a GRAFT retried on a data RPC (gossipsub piggybacks them)
    assert slow.push(graft) and slow.push(control(3 * DATA // 64), priority=True)
    shared.total_bytes = shared.held
    assert not honest.push(message())  # slow holds only control: nothing of it is evicted
    assert pop_now(slow) is not None and pop_now(slow) is not None
    assert pop_now(slow) is None and shared.held == 0


def test_closing_a_queue_releases_its_bytes_and_its_share_of_the_total() -> None:
    shared = budget(peer_rpcs=4, total_rpcs=6)
    gone, other = ByteBoundedRpcQueue(shared), ByteBoundedRpcQueue(shared)
    assert all(gone.push(message()) for _ in range(4))
    assert pop_now(gone) is not None  # one being written as the peer leaves
    gone.close()
    assert gone.held == 0 and shared.held == 0 and shared.queues == {other}
    assert pop_now(gone) is None  # the sending loop ends instead of writing what was queued
    assert not gone.push(message())
    assert all(other.push(message()) for _ in range(4))


def test_the_queues_py_libp2p_registers_are_replaced_and_their_sending_loop_reads_ours() -> None:
    queues = OutboundQueues(budget(peer_rpcs=2))
    peer = ID(b"peer")
    made = RpcQueue()  # as py-libp2p's _handle_new_peer makes one
    queues[peer] = made
    bounded = queues[peer]
    assert isinstance(bounded, ByteBoundedRpcQueue) and bounded.max_message_size == made.max_message_size
    assert queues.sender_queue(made) is bounded
    assert queues.sender_queue(made) is made  # handed over once
    queues.pop(peer).close()  # as py-libp2p's _handle_dead_peer does
    assert queues.budget.held == 0 and not queues.budget.queues


def test_a_queue_replaced_without_closing_releases_its_bytes() -> None:
    queues = OutboundQueues(budget(peer_rpcs=2))
    peer = ID(b"peer")
    queues[peer] = RpcQueue()
    assert queues[peer].push(message())
    queues[peer] = RpcQueue()
    assert queues.budget.held == 0 and len(queues.budget.queues) == 1
