"""Every example workflow of the protocol, published as a task and answered by a real node."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import pytest_asyncio

from node.daemon.server import NodeServer
from node.publisher.client import Client, Task, TaskResult
from tests.support.cluster import dialable, node_settings, running_node
from tests.support.protocol_files import EXAMPLES, example

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


class PriceServer(BaseHTTPRequestHandler):
    """The `lookup_price` tool's backend: answers every POST with a fixed price."""

    bodies: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        PriceServer.bodies.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        payload = b'{"price": "42.50 EUR"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def price_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), PriceServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/price"
    server.shutdown()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def node(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[NodeServer]:
    # A short tool-argument bound, as in tests/unit/workflows/test_workflow_tools.py: under llguidance SmolLM2
    # may fill the free `code` string with digits until max_tokens, leaving the call unfinished.
    settings = node_settings(tmp_path_factory.mktemp("node"), tool_allow=["127.0.0.1"], tool_arg_max_length=12)
    async with running_node(settings) as server:
        yield server


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def client(node: NodeServer) -> AsyncIterator[Client]:
    async with Client(peers=[dialable(node)]) as publisher:
        yield publisher


async def run(client: Client, node: NodeServer, workflow: dict, prompt: str | None = None) -> TaskResult:
    task = Task(workflow=workflow, models=["smollm2:135m"], prompt=prompt, nodes=[node.running.identity.address])
    return await client.execute(task, timeout=120)


async def test_every_example_is_covered() -> None:
    covered = {
        "simple",
        "simple_omitted",
        "structured",
        "loop_questions",
        "sample_and_fallback",
        "tool_call_raw",
        "http_tool",
    }
    assert {path.stem for path in EXAMPLES.glob("*.json")} == covered


async def test_simple(client: Client, node: NodeServer) -> None:
    workflow = example("simple")
    workflow["config"]["max_tokens"] = 48
    assert (await run(client, node, workflow)).text.strip()


async def test_simple_omitted_answers_the_task_prompt(client: Client, node: NodeServer) -> None:
    result = await run(client, node, example("simple_omitted"), prompt="What is the capital of France?")
    assert result.text == result.text.strip() and result.text


async def test_structured_returns_json_with_the_required_keys(client: Client, node: NodeServer) -> None:
    facts = json.loads((await run(client, node, example("structured"))).text)
    assert isinstance(facts, dict) and {"country", "description"} <= facts.keys()


async def test_loop_questions_returns_at_least_three_strings(client: Client, node: NodeServer) -> None:
    questions = json.loads((await run(client, node, example("loop_questions"))).text)
    assert isinstance(questions, list) and len(questions) >= 3
    assert all(isinstance(question, str) and question for question in questions)


async def test_sample_and_fallback_reaches_recover(client: Client, node: NodeServer) -> None:
    picked, fruit = json.loads((await run(client, node, example("sample_and_fallback"))).text)
    assert picked.startswith("Colour: ") and picked.removeprefix("Colour: ") in {"red", "green", "blue"}
    assert fruit.strip()  # only `recover` writes it, and it is reached only through the fallback


async def test_tool_call_raw_names_get_weather_with_a_city(client: Client, node: NodeServer) -> None:
    call = json.loads((await run(client, node, example("tool_call_raw"))).text)
    assert call["name"] == "get_weather" and isinstance(call["arguments"]["city"], str)


async def test_http_tool_calls_the_server_and_returns_its_answer(
    client: Client, node: NodeServer, price_url: str
) -> None:
    workflow = example("http_tool")
    workflow["config"]["custom_tools"][0]["url"] = price_url
    before = len(PriceServer.bodies)
    result = await run(client, node, workflow)
    assert len(PriceServer.bodies) == before + 1
    assert json.loads(result.text) == {"price": "42.50 EUR"}
