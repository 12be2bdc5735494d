"""Pubsub's outbound queues in bytes (node/p2p/outbound_queue.py): a peer's cap, control's reserve past it, one
total for all peers' waiting data in which the heaviest peers' data makes room for a lighter peer's (what is being
written and control are not in it), one message an RPC, and bytes released as RPCs are written and when a queue
closes.

py-libp2p's queue counted RPCs only: 32 of the largest messages (~8.4 MB) for each peer that reads a trickle."""

from __future__ import annotations

import time

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
from node.p2p.pacing import QUEUE_DEPTH
from node.wire.topics import MAX_MESSAGE_BYTES

DATA = 10_000  # the payload of one test message; its RPC is a few bytes more


def message(size: int = DATA) -> rpc_pb2.RPC:
    return rpc_pb2.RPC(publish=[rpc_pb2.Message(data=b"x" * size, topicIDs=["task"])])


def control(ids: int = 10) -> rpc_pb2.RPC:
    return rpc_pb2.RPC(control=rpc_pb2.ControlMessage(iwant=[rpc_pb2.ControlIWant(messageIDs=[b"ab" * 32] * ids)]))


RPC = message().ByteSize()


def budget(peer_rpcs: int = 4, total_rpcs: int = 100, reserve: int = 1_000) -> OutboundBudget:
    return OutboundBudget(peer_rpcs * RPC, control_reserve=reserve, total_bytes=total_rpcs * RPC, rpc_bytes=RPC + 64)


def pop_now(queue: RpcQueue) -> rpc_pb2.RPC | None:
    """What the sending loop takes next (None when it would wait)."""

    async def take() -> rpc_pb2.RPC | None:
        with trio.move_on_after(0.01):
            return await queue.pop()
        return None

    return trio.run(take)


def test_the_node_caps_a_peer_at_ten_of_its_largest_messages_within_64_mib() -> None:
    node = OutboundBudget.for_messages(MAX_MESSAGE_BYTES)
    largest = message(MAX_MESSAGE_BYTES).ByteSize()
    assert PEER_QUEUE_MESSAGES * largest <= node.peer_bytes < (PEER_QUEUE_MESSAGES + 1) * largest
    assert node.control_reserve == CONTROL_RESERVE_BYTES and node.total_bytes == TOTAL_QUEUE_BYTES == 64 << 20
    assert largest <= node.rpc_bytes < 2 * largest


def test_pacing_waits_before_a_queue_of_the_largest_messages_refuses() -> None:
    """pacing.py holds our publishes while a peer has more than QUEUE_DEPTH waiting, the one being written not
    counted; the burst it lets through must fit, or it is refused here before pacing ever waits."""
    queue = ByteBoundedRpcQueue(OutboundBudget.for_messages(MAX_MESSAGE_BYTES))
    assert queue.push(message(MAX_MESSAGE_BYTES)) and pop_now(queue) is not None  # being written
    assert all(queue.push(message(MAX_MESSAGE_BYTES)) for _ in range(QUEUE_DEPTH + 1))
    assert len(queue) == QUEUE_DEPTH + 1  # pacing waits now


def test_what_is_being_written_is_not_in_the_total_and_a_peer_that_keeps_up_is_always_served() -> None:
    """Each slow peer's sending loop holds one RPC it cannot finish writing: none of it can be evicted, so the
    total counts only what waits. Before, 65 such peers (IWANT answers of ~1 MiB) pinned all 64 MiB and every
    honest push was refused."""
    shared = budget(peer_rpcs=3, total_rpcs=4)
    slow = [ByteBoundedRpcQueue(shared) for _ in range(8)]
    for queue in slow:
        assert queue.push(message()) and pop_now(queue) is not None  # taken, never written
    assert shared.held == 0 and sum(queue.held for queue in slow) == 8 * RPC  # twice the total, in flight
    for queue in slow:  # one waiting each: past the total, as each peer may have one
        assert queue.push(message())
    assert shared.held == 8 * RPC
    assert all(not queue.push(message()) for queue in slow)  # more: no peer has more waiting to give
    honest = ByteBoundedRpcQueue(shared)
    for _ in range(20):  # a reader that keeps up: one being written, the next waiting
        assert honest.push(message()) and pop_now(honest) is not None
    assert honest.push(message()) and shared.held == 9 * RPC and shared.evicted == 0


def test_among_peers_with_as_much_waiting_the_slowest_reader_gives_way() -> None:
    shared = budget(peer_rpcs=4, total_rpcs=5)
    stuck, fresh, pusher = (ByteBoundedRpcQueue(shared) for _ in range(3))
    assert stuck.push(message()) and pop_now(stuck) is not None  # writing since now
    time.sleep(0.05)
    assert fresh.push(message()) and pop_now(fresh) is not None  # writing, but for less long
    assert all(queue.push(message()) for queue in (stuck, stuck, fresh, fresh, pusher))
    assert shared.held == 5 * RPC
    assert pusher.push(message())  # the total is full: the reader stuck longest gives way
    assert (stuck.waiting, fresh.waiting, pusher.waiting) == (RPC, 2 * RPC, 2 * RPC) and shared.evicted == 1


def test_control_is_not_in_the_total() -> None:
    shared = budget(peer_rpcs=2, total_rpcs=1, reserve=4 * RPC)
    one, other = ByteBoundedRpcQueue(shared), ByteBoundedRpcQueue(shared)
    assert one.push(message()) and shared.held == RPC  # the total is full
    assert other.push(control(), priority=True) and shared.held == RPC
    assert one.push(control(), priority=True)  # within its reserve, past the total


def test_an_iwant_answer_of_several_messages_goes_one_message_an_rpc() -> None:
    queue = ByteBoundedRpcQueue(OutboundBudget.for_messages(MAX_MESSAGE_BYTES))
    answer = rpc_pb2.RPC(publish=[rpc_pb2.Message(data=b"x" * (MAX_MESSAGE_BYTES - 512), topicIDs=["task"])] * 4)
    parts = queue.split_rpc(answer)  # as gossipsub's send_rpc does before it pushes
    assert len(parts) == 4 and all(part.ByteSize() <= queue.max_message_size for part in parts)


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
    assert honest.push(message())  # with nothing waiting, its one is always taken
    assert shared.held == 13 * RPC and shared.evicted == 0
    assert honest.push(message())  # its second: the oldest messages of the heaviest (slow_a) go, down to the total
    assert (slow_a.held, slow_b.held, honest.held) == (5 * RPC, 5 * RPC, 2 * RPC)
    assert shared.held == 12 * RPC and shared.evicted == 2
    while honest.push(message()):
        assert shared.held == 12 * RPC  # never past the total again
    assert (slow_a.held, slow_b.held, honest.held) == (4 * RPC, 4 * RPC, 4 * RPC)  # a third each: the slow ones paid
    assert not slow_b.push(message())  # no peer has as much waiting as slow_b would: refused


def test_eviction_spares_control_and_rpcs_carrying_it() -> None:
    shared = budget(peer_rpcs=10, reserve=10 * RPC)
    slow, honest = ByteBoundedRpcQueue(shared), ByteBoundedRpcQueue(shared)
    graft = message()
    graft.control.graft.add(topicID="task")  # a GRAFT retried on a data RPC (gossipsub piggybacks them)
    assert slow.push(graft) and slow.push(control(3 * DATA // 64), priority=True)
    shared.total_bytes = shared.held
    assert honest.push(message())  # its one waiting, whatever the total
    assert not honest.push(message())  # slow holds only control: nothing of it is evicted
    assert pop_now(slow) is not None and pop_now(slow) is not None
    assert pop_now(slow) is None and shared.held == honest.waiting == RPC


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
    assert isinstance(bounded, ByteBoundedRpcQueue) and bounded.max_message_size == queues.budget.rpc_bytes
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
