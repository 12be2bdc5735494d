"""Yamux window updates as go-yamux sends them: once half a stream's receive window is free again.

py-libp2p (0.8.1) sends a WINDOW_UPDATE frame after nearly every read of a stream: its hysteresis
(announce room once half the target window is free, go-yamux's `GrowTo`) is passed by a "partial
slack" branch that grants whatever was read, and a pubsub read loop reads each RPC's varint and its
body as separate reads. Each update is a frame encrypted, sent, read, decrypted and handled by the
other side. At a node running tiny tasks it sent ~15 a task (cProfile of its P2P thread over 533
tasks: 8,150 updates), and its peers as many back.

`use_half_window_updates` puts go-yamux's rule in place of that method on py-libp2p's `YamuxStream`:
room is announced once it reaches half the stream's target window, with py-libp2p's auto-tuning of
the window applied then, as its own code does in that case. And once the sender's credit is nearly
spent (under an eighth of the window), whatever room a read frees is announced at once: a peer that
reads slowly (a loaded P2P thread taking one small RPC every 50 ms) would otherwise leave our writes
waiting for half a window of its reads, past py-libp2p's 5 s write timeout, and be disconnected as
one that reads nothing (pubsub.py `write_msg`). A stream kept up with, the usual case, never gets
that low, so it still sends one update a half window. It replaces the method for the whole process
(py-libp2p makes its streams itself, by that class): every host here bounds its muxer with
`install_bounded_muxer` (bounded_yamux.py), which calls it, and so runs the same rule.
"""

from __future__ import annotations

from libp2p.stream_muxer.yamux.yamux import YamuxStream

# Past this share of the window spent by the sender, any room a read frees is announced at once.
NEARLY_SPENT_DIVISOR = 8


async def _update_at_half_window(self: YamuxStream, *, bytes_read: int = 0) -> None:
    """go-yamux's `sendWindowUpdate`: a WINDOW_UPDATE once half the target window is free again, or as soon as
    any is while the sender's credit (`recv_window`) is under an eighth of the window.

    `bytes_read` (what py-libp2p's reads pass) is not needed: the room is what the window lacks of its
    target beside the bytes still buffered."""
    increment = 0
    async with self.window_lock:
        buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
        target = self.target_recv_window
        freed = target - (self.recv_window + buffered)
        if freed >= target // 2:
            increment = self._grow_to_delta(buffered) + self._apply_autotune_epoch(buffered)
        elif freed > 0 and self.recv_window < target // NEARLY_SPENT_DIVISOR:
            increment = self._grow_to_delta(buffered)  # a slow reader's room: no reason to grow its window
    if increment > 0:
        # Outside the lock, as py-libp2p sends it: an inbound WINDOW_UPDATE needs the lock meanwhile.
        await self.send_window_update(increment, skip_lock=True)


def use_half_window_updates() -> None:
    """Make every yamux stream of this process announce room at half its window (idempotent)."""
    if not hasattr(YamuxStream, "_auto_tune_and_send_window_update"):  # py-libp2p is pinned: 0.8.1 has it
        raise RuntimeError("py-libp2p's YamuxStream has no _auto_tune_and_send_window_update: see yamux_windows.py")
    YamuxStream._auto_tune_and_send_window_update = _update_at_half_window  # type: ignore[method-assign]
