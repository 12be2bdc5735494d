"""The execution process's delta coalescer: fewer, larger deltas, in order, bounded, flushed at the end."""

from __future__ import annotations

import asyncio

from node.execution.delta_coalescer import DeltaCoalescer


async def test_pieces_gather_until_enough_characters_then_go_as_one_delta() -> None:
    sent: list[str] = []
    coalescer = DeltaCoalescer(sent.append, max_chars=8, max_delay_s=60)
    for piece in ["ab", "cd", "ef"]:
        coalescer.add(piece)
    assert sent == []
    coalescer.add("gh")
    assert sent == ["abcdefgh"]


async def test_a_few_characters_go_out_after_the_delay() -> None:
    sent: list[str] = []
    coalescer = DeltaCoalescer(sent.append, max_chars=1000, max_delay_s=0.05)
    coalescer.add("Hi")
    coalescer.add(" there")
    assert sent == []
    for _ in range(200):  # generous: the delay is 50 ms
        if sent:
            break
        await asyncio.sleep(0.05)
    assert sent == ["Hi there"]


async def test_close_sends_the_rest_and_nothing_goes_after_it() -> None:
    sent: list[str] = []
    coalescer = DeltaCoalescer(sent.append, max_chars=1000, max_delay_s=0.01)
    coalescer.add("tail")
    coalescer.close()
    assert sent == ["tail"]
    coalescer.add("late")
    await asyncio.sleep(0.05)
    assert sent == ["tail"] and coalescer.stopped


async def test_past_the_total_bound_nothing_more_is_sent_and_what_was_sent_is_a_prefix() -> None:
    sent: list[str] = []
    coalescer = DeltaCoalescer(sent.append, max_chars=4, max_delay_s=60, max_total_chars=10)
    text = "0123456789abcdef"
    for char in text:
        coalescer.add(char)
    coalescer.close()
    streamed = "".join(sent)
    assert streamed == "01234567" and text.startswith(streamed)
    assert coalescer.stopped
