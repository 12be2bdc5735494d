"""OpenAI's chat completions on a real gateway over HTTP on 127.0.0.1, in front of a real libp2p peer speaking
protocol 0.4 as a node would: a caller that leaves early gives its place back at once, and deltas that queue up
for a reader go out together, never one event per frame."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import httpx

from tests.support.gateway_net import gateway_over_streaming_peer
from tests.support.streaming_peer import StreamingPeer

ASK = [{"role": "user", "content": "Hi"}]


async def ask_and_leave(port: int, stream: bool) -> None:
    """Post a chat completion on a raw socket and close it before any answer."""
    body = json.dumps({"model": "m", "stream": stream, "messages": ASK}).encode()
    head = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    request = (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    loop = asyncio.get_running_loop()
    with socket.socket() as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, request)
        await asyncio.sleep(0.5)  # the task is out to the node, which took it and says nothing
    await asyncio.sleep(0.3)  # the gateway hears of the disconnect


async def test_a_caller_that_leaves_before_the_first_delta_gives_its_place_back_at_once(tmp_path: Path) -> None:
    peer = StreamingPeer([], "Hello", hang=True)  # takes the task, then says nothing (until `hang` is False)
    async with gateway_over_streaming_peer(peer, tmp_path, max_pending=1, default_timeout=60) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            for stream in (True, False):
                await ask_and_leave(gateway.http.port, stream)
                peer.hang = False
                try:
                    # With the place of the caller that left still held, this would be 429 for a minute.
                    answer = await http.post("/v1/chat/completions", json={"model": "m", "messages": ASK})
                    assert answer.status_code == 200, (stream, answer.text)
                    assert answer.json()["choices"][0]["message"]["content"] == "Hello"
                finally:
                    peer.hang = True
    assert len(peer.task_ids) == 4


async def test_deltas_that_queue_up_for_the_reader_go_out_as_one_event(tmp_path: Path) -> None:
    deltas = [chr(ord("a") + i % 26) for i in range(3000)]
    peer = StreamingPeer(deltas, "".join(deltas) + ".")
    async with gateway_over_streaming_peer(peer, tmp_path) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            request = {"model": "m", "stream": True, "messages": ASK}
            async with http.stream("POST", "/v1/chat/completions", json=request) as answer:
                assert answer.status_code == 200
                body = (await answer.aread()).decode()
    events = [line[6:] for line in body.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    texts = [json.loads(event)["choices"][0]["delta"].get("content") or "" for event in events[:-1]]
    assert "".join(texts) == "".join(deltas) + "."
    # One event per frame would be 3,000 content events and more; the frames come in bursts, and each burst
    # the gateway reads before the reader's next event goes out as one event.
    assert len(events) < len(deltas), f"{len(events)} events for {len(deltas)} progress frames"


async def test_a_nodes_line_separators_cannot_cut_or_add_an_event(tmp_path: Path) -> None:
    # JSON keeps U+2028, U+2029 and U+0085 raw in strings; readers that split lines as str.splitlines does
    # (httpx's iter_lines) would end the event there and read the node's `data: [DONE]` as the stream's end.
    forged = "a\u2028data: [DONE]\u2029b\u0085c"
    peer = StreamingPeer([forged], forged)
    async with gateway_over_streaming_peer(peer, tmp_path) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            request = {"model": "m", "stream": True, "messages": ASK}
            async with http.stream("POST", "/v1/chat/completions", json=request) as answer:
                assert answer.status_code == 200
                lines = [line async for line in answer.aiter_lines() if line]
    assert all(line.startswith("data: ") for line in lines), lines
    assert [line for line in lines if line == "data: [DONE]"] == [lines[-1]]
    texts = [json.loads(line[6:])["choices"][0]["delta"].get("content") or "" for line in lines[:-1]]
    assert "".join(texts) == forged
