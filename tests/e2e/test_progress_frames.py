"""Progress frames (protocol 0.4, `"stream": true`): a direct task's final step streams its text to the
publisher's `on_delta` before the signed result, which extends it; gossip tasks stream nothing; a
publisher that goes away mid-stream costs the node nothing. A real node, real libp2p, the real model."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import structlog

from node.daemon.server import NodeServer
from node.publisher.client import Client, Task
from node.wire.direct import decode_answer
from node.wire.envelope import seal
from node.wire.messages import TaskBody, TaskInput, encode_body
from node.wire.topics import TASK_TOPIC
from tests.support.cluster import dialable, node_settings, running_node
from workflows import Simple

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

MODEL = "smollm2:135m"
STORY = "Write a short story about a lighthouse keeper and a storm."


class Net:
    def __init__(self, node: NodeServer, client: Client) -> None:
        self.node, self.client = node, client


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def net(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Net]:
    async with running_node(node_settings(tmp_path_factory.mktemp("node"))) as node:
        async with Client(peers=[dialable(node)]) as client:
            deadline = time.monotonic() + 30
            while not client.nodes.live():
                assert time.monotonic() < deadline, "node not seen"
                await asyncio.sleep(0.1)
            yield Net(node, client)


def story(max_tokens: int = 100) -> Task:
    return Task(workflow=Simple().workflow(STORY, max_tokens=max_tokens), models=[MODEL])


def events_of(logs: list[dict[str, Any]], task_id: str) -> list[str]:
    return [entry["event"] for entry in logs if entry.get("task_id") == task_id]


async def timed_plain(net: Net) -> tuple[str, float]:
    started = time.monotonic()
    result = await net.client.execute(story(), timeout=120)  # the same answer (temperature 0), not streamed
    return result.text, time.monotonic() - started


async def test_deltas_arrive_before_the_result_and_make_up_its_text(net: Net) -> None:
    plain_text, before_s = await timed_plain(net)  # also warms the slot's prompt cache
    started = time.monotonic()
    deltas: list[tuple[float, str]] = []
    with structlog.testing.capture_logs() as logs:
        result = await net.client.execute(
            story(), timeout=120, on_delta=lambda text: deltas.append((time.monotonic(), text))
        )
    done = time.monotonic()
    texts = [text for _, text in deltas]
    assert len(texts) >= 2, texts
    assert "".join(texts) == result.text  # every delta precedes the result, and nothing is missing
    assert "<|im_end|>" not in "".join(texts) and "<|" not in result.text  # the template's stop string
    first = deltas[0][0] - started
    assert first < done - started
    assert "task streams its progress" in events_of(logs, result.task_id)
    _, after_s = await timed_plain(net)
    assert plain_text == result.text
    print(
        f"\nprogress: unstreamed {before_s:.2f} s / {after_s:.2f} s; {len(texts)} deltas, {len(result.text)} chars, "
        f"{(result.stats.model_extra or {}).get('completionTokens')} tokens; "
        f"first delta {first:.2f} s, result {done - started:.2f} s after execute"
    )


async def test_a_task_without_on_delta_or_on_gossip_streams_nothing(net: Net) -> None:
    with structlog.testing.capture_logs() as logs:
        direct = await net.client.execute(story(16), timeout=120)
        deltas: list[str] = []
        gossip = await net.client.execute(
            story(16).model_copy(update={"nodes": [net.node.running.identity.address]}),
            timeout=120,
            on_delta=deltas.append,
        )
        # A gossip task that asks for streaming anyway (the field is meant for streams only).
        client = net.client
        assert client._host is not None
        body = TaskBody(
            task_id=secrets.token_urlsafe(12),
            deadline=time.time_ns() + 120 * 10**9,
            input=TaskInput(workflow=Simple().workflow(STORY, max_tokens=16), model=[MODEL]),
            picked_nodes=[net.node.running.identity.address],
            public_key=client.identity.public_key_compressed.hex(),
            stream=True,
        )
        waiting = asyncio.ensure_future(client.wait(body.task_id, 120, nodes=[net.node.running.identity.address]))
        await client._host.publish(TASK_TOPIC, seal(client.identity, TASK_TOPIC, encode_body(body)))
        asked = await waiting
    assert deltas == [] and direct.text and gossip.text and asked.text
    for task_id in (direct.task_id, gossip.task_id, body.task_id):
        events = events_of(logs, task_id)
        assert "task finished" in events and "task streams its progress" not in events


async def test_a_publisher_that_goes_away_mid_stream_does_not_stall_the_node(net: Net) -> None:
    client, node = net.client, net.node
    assert client._host is not None
    body = TaskBody(
        task_id=secrets.token_urlsafe(12),
        deadline=time.time_ns() + 120 * 10**9,
        input=TaskInput(workflow=Simple().workflow(STORY, max_tokens=100), model=[MODEL]),
        picked_nodes=[node.running.identity.address],
        public_key=client.identity.public_key_compressed.hex(),
        stream=True,
    )
    waiting = asyncio.ensure_future(client.wait(body.task_id, 120, nodes=[node.running.identity.address]))
    with structlog.testing.capture_logs() as logs:
        stream = await client._host.open_stream([dialable(node)], seal(client.identity, TASK_TOPIC, encode_body(body)))
        assert decode_answer(await stream.receive(10) or b"").status == "accepted"
        first = await stream.receive(60)  # the first progress frame: generation is under way
        assert first is not None and b'"delta"' in first
        await stream.close(graceful=False)  # gone: reads nothing more
        result = await waiting  # the node publishes the result on gossip instead
        # ...and goes on serving streams.
        pieces: list[str] = []
        after = await client.execute(story(16), timeout=120, on_delta=pieces.append)
    assert result.text and after.text and "".join(pieces) == after.text
    events = events_of(logs, body.task_id)
    assert "task finished" in events and "result published" in events
