"""Dria's own Python SDK (dria==0.0.124, unmodified but for its base URL) against a real node and
our gateway on 127.0.0.1: Simple tasks, the Prompt path with a pydantic schema, MagPie through
ParallelSingletonExecutor, an `Invalid prompt` error that is not retried, and a gateway restart in
the middle of a batch. The SDK runs in a child process with its own virtualenv (its pins conflict
with ours, see tests/support/sdk/requirements.txt); every non-loopback connection it tries is refused and
reported. Also the SDK routes' own rules over raw HTTP: auth, 200-only GETs, idempotent POSTs,
privateKey dropped, results served once and only from the picked node.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import socket
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from config.settings import DEFAULT_MODEL
from node.daemon.server import NodeServer
from node.gateway.auth import key_id
from node.gateway.server import Gateway
from node.gateway.settings import GatewaySettings
from node.wire.envelope import payload_digest, seal
from node.wire.identity import Identity, address_of, recover_public_key
from node.wire.inbound import decode
from node.wire.messages import ResultBody, Stats, encode_body
from node.wire.topics import RESULTS_TOPIC
from tests.support.cluster import dialable, node_settings, running_node
from tests.support.sdk.venv import DRIVER, SCHEMAS, sdk_python
from workflows import Simple, WorkflowValidationError

# The first test that needs the SDK may install it (.venv-sdk) and runs every scenario.
pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(1200)]

SDK_NAME = "llama3.2:1b"  # an SDK `Model` value; the test node hosts SmolLM2 under it (tests only)
# Also under an OpenAI and a Gemini name: the SDK sends each group its own schema form.
OPENAI_NAME, GEMINI_NAME = "gpt-4o-mini", "gemini-1.5-flash"
TOKEN = "sdk-test-token-0123456789"
OTHER_TOKEN = "other-sdk-token-0123456789"
# The node sends `Invalid prompt: ` for deterministic errors once the engine marks them (workflows.errors);
# without that rule the SDK would re-publish the invalid task for as long as it waits.
DETERMINISTIC_ERRORS = getattr(WorkflowValidationError, "deterministic", False)
SCENARIOS = ["simple", "prompt", "magpie", *(["invalid"] if DETERMINISTIC_ERRORS else []), "restart"]
SDK_TIMEOUT = 900


@dataclass
class Net:
    node: NodeServer
    gateway: Gateway
    settings: GatewaySettings
    listener: socket.socket  # held across the restart, as systemd holds a .socket unit's
    tmp: Path
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)
    restart: dict[str, float] = field(default_factory=dict)
    sdk_stderr: str = ""

    def rows(self, since: float = 0.0, until: float = float("inf")) -> list[sqlite3.Row]:
        with closing(sqlite3.connect(self.settings.database_path)) as db:
            db.row_factory = sqlite3.Row
            return db.execute(
                "SELECT * FROM rpc_tasks WHERE created_at >= ? AND created_at < ? ORDER BY created_at", (since, until)
            ).fetchall()

    def phase_rows(self, name: str) -> list[sqlite3.Row]:
        later = [t for n, t in self.phases.items() if t > self.phases[name]]
        return self.rows(self.phases[name], min(later, default=float("inf")))


def gateway_settings(data_dir: Path, peers: list[str], port: int = 0) -> GatewaySettings:
    return GatewaySettings.load(data_dir=data_dir, peers=peers, port=port, api_keys=[TOKEN, OTHER_TOKEN])


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def net(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Net]:
    async with AsyncExitStack() as stack:
        node = await stack.enter_async_context(
            running_node(
                node_settings(
                    tmp_path_factory.mktemp("node"),
                    models=[SDK_NAME, OPENAI_NAME, GEMINI_NAME],
                    registry={name: {"alias": DEFAULT_MODEL} for name in (SDK_NAME, OPENAI_NAME, GEMINI_NAME)},
                    n_ctx=4096,
                    max_tokens_cap=120,
                    max_queue=16,
                )
            )
        )
        settings = gateway_settings(tmp_path_factory.mktemp("gw"), [dialable(node)])
        # The SDK's poll loop dies for good after ~2 s of refused connections (DRIA_SDK.md): a restart
        # without a held socket, which takes 0.4-0.8 s here and longer on a loaded machine, can kill it.
        listener = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
        gateway = Gateway(settings, listener)
        await gateway.start()
        net = Net(node=node, gateway=gateway, settings=settings, listener=listener, tmp=tmp_path_factory.mktemp("sdk"))
        stack.push_async_callback(lambda: net.gateway.stop())
        yield net


async def restart_mid_batch(net: Net) -> None:
    """Once the restart batch is posted and a result is queued but not served, restart the gateway."""
    started = net.phases["restart"]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        rows = net.rows(started)
        queued = [r for r in rows if r["result"] is not None and not r["served"]]
        if len(rows) == 5 and queued:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the restart batch was not posted, or no result was queued")
    stopping = time.monotonic()
    await net.gateway.stop()
    net.restart = {"posted": len(rows), "queued": len(queued), "served": sum(r["served"] for r in rows)}
    net.gateway = Gateway(net.settings, net.listener)
    await net.gateway.start()
    net.restart["gap_s"] = time.monotonic() - stopping


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def sdk_run(net: Net) -> Net:
    """Run every scenario in one SDK process (one SDK process per API key); the outputs by scenario."""
    python = await asyncio.to_thread(sdk_python)
    proc = await asyncio.create_subprocess_exec(
        str(python),
        str(DRIVER),
        net.gateway.url,
        *SCENARIOS,
        cwd=net.tmp,
        env={"HOME": str(net.tmp), "PATH": "/usr/bin:/bin", "DRIA_RPC_TOKEN": TOKEN},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    stderr_task = asyncio.create_task(proc.stderr.read())
    restarting: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(SDK_TIMEOUT):
            async for raw in proc.stdout:
                line = raw.decode().strip()
                if line.startswith("phase "):
                    net.phases[line.removeprefix("phase ")] = time.time()
                    if line == "phase restart":
                        restarting = asyncio.create_task(restart_mid_batch(net))
                elif line.startswith("{"):
                    data = json.loads(line)
                    net.outputs[data.get("scenario", "guard")] = data
            await proc.wait()
        if restarting is not None:
            await restarting
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    net.sdk_stderr = (await stderr_task).decode(errors="replace")
    assert proc.returncode == 0, net.sdk_stderr[-4000:]
    return net


def sdk_payload(task_id: str, node: str, **extra: Any) -> dict[str, Any]:
    """A task payload as the SDK posts it (DRIA_SDK.md section 3)."""
    workflow = Simple().workflow(prompt="Hi", max_tokens=8)
    task_key = Identity.generate()
    return {
        "taskId": task_id,
        "input": {"workflow": workflow, "model": [SDK_NAME]},
        "pickedNodes": [node],
        "nodePeerIds": ["16Uiu2..."],
        "deadline": (datetime.now(UTC) + timedelta(seconds=300)).isoformat(),
        "datasetId": "ab" * 32,
        "publicKey": task_key.public_key_uncompressed.hex()[2:],
        "privateKey": "0x" + task_key.secret.hex(),
        **extra,
    }


def encoded(payload: dict[str, Any]) -> dict[str, Any]:
    return {"value": {"payload": base64.b64encode(json.dumps(payload).encode()).decode()}}


async def poll_results(http: httpx.AsyncClient, wanted: int, seconds: float = 120) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while len(found) < wanted and time.monotonic() < deadline:
        response = await http.get("/rpc/results")
        assert response.status_code == 200
        found += [json.loads(item) for item in response.json()["data"]["results"]]
        await asyncio.sleep(0.2)
    return found


# --- the SDK's own routes over raw HTTP -----------------------------------------------


async def test_gets_answer_200_or_401_and_list_live_nodes_with_their_own_signatures(net: Net) -> None:
    async with httpx.AsyncClient(base_url=net.gateway.url, timeout=30) as http:
        for path in ("/health", "/rpc/get_alive_peers", "/rpc/results"):
            assert (await http.get(path)).status_code == 401
            assert (await http.get(path, headers={"x-api-key": "not-a-key-at-all-000"})).status_code == 401
        headers = {"x-api-key": TOKEN}
        assert (await http.get("/health", headers=headers)).status_code == 200
        deadline = time.monotonic() + 30
        peers: list[str] = []
        while not peers and time.monotonic() < deadline:
            response = await http.get("/rpc/get_alive_peers", headers=headers)
            assert response.status_code == 200
            peers = response.json()["data"]["results"]
            await asyncio.sleep(0.2)
        [item] = [json.loads(p) for p in peers]
        assert item["peer_id"] == net.node.running.identity.peer_id
        body = json.loads(base64.b64decode(item["message"]))
        assert body["models"] == [SDK_NAME, OPENAI_NAME, GEMINI_NAME] and isinstance(body["pending_tasks"], list)
        # The node's own signature, untouched: it recovers to the node's address.
        signer = address_of(
            recover_public_key(payload_digest(item["message"]), bytes.fromhex(item["signature"]), item["recovery_id"])
        )
        assert signer == net.node.running.identity.address


async def test_posts_are_published_once_without_the_private_key_and_results_served_once(net: Net) -> None:
    headers = {"x-api-key": OTHER_TOKEN}
    task_id = secrets.token_hex(16)
    payload = sdk_payload(task_id, net.node.running.identity.address)
    async with httpx.AsyncClient(base_url=net.gateway.url, headers=headers, timeout=30) as http:
        first = await http.post("/rpc/task", json=encoded(payload))
        again = await http.post("/rpc/task", json=encoded(payload))
        assert first.status_code == again.status_code == 200
        published = first.json()["data"]["taskId"]
        assert again.json()["data"]["taskId"] == published
        assert published.split("--")[0] == task_id and len(published.split("--")) == 2
        rows = [r for r in net.rows() if r["task_id"] == task_id]
        assert len(rows) == 1 and rows[0]["key_id"] == key_id(OTHER_TOKEN)
        stored = Path(net.settings.database_path).read_bytes() + b"".join(
            p.read_bytes() for p in Path(net.settings.database_path).parent.glob("*-wal")
        )
        assert payload["privateKey"][2:].encode() not in stored

        [result] = await poll_results(http, 1)
        body = json.loads(base64.b64decode(result["message"]))
        assert body["taskId"] == published and "ciphertext" in body and isinstance(body["stats"]["publishedAt"], str)
        assert (await http.get("/rpc/results")).json()["data"]["results"] == []  # served once
        # Another key never sees it.
        other = await http.get("/rpc/results", headers={"x-api-key": TOKEN})
        assert all(json.loads(i)["message"] != result["message"] for i in other.json()["data"]["results"])

        refused = await http.post(
            "/rpc/task", json=encoded(sdk_payload("has--dashes", net.node.running.identity.address))
        )
        assert refused.status_code == 422 and "taskId" in refused.json()["detail"]
        assert (
            await http.post("/rpc/task", json=encoded(payload), headers={"x-api-key": "nope-nope-nope-nope"})
        ).status_code == 401


async def test_a_result_signed_by_a_node_that_was_not_picked_is_never_served(net: Net) -> None:
    headers = {"x-api-key": OTHER_TOKEN}
    stranger = Identity.generate()
    task_id = secrets.token_hex(16)
    async with httpx.AsyncClient(base_url=net.gateway.url, headers=headers, timeout=30) as http:
        # Picks a node that does not exist: only the stranger "answers".
        response = await http.post("/rpc/task", json=encoded(sdk_payload(task_id, stranger.address[::-1])))
        published = response.json()["data"]["taskId"]
        now = time.time_ns()
        forged = ResultBody(
            task_id=published,
            error="Invalid prompt: forged",
            model=SDK_NAME,
            stats=Stats(received_at=now, published_at=now, execution_started_at=now, execution_ended_at=now),
        )
        inbound = decode(RESULTS_TOPIC, seal(stranger, RESULTS_TOPIC, encode_body(forged)))
        net.gateway.sdk.observe(inbound)
        assert (await http.get("/rpc/results")).json()["data"]["results"] == []


# --- the SDK itself ---------------------------------------------------------------------


async def test_the_sdk_reaches_nothing_but_loopback(sdk_run: Net) -> None:
    assert sdk_run.outputs["guard"]["violations"] == []


async def test_simple_tasks_return_results_from_the_aliased_model(sdk_run: Net) -> None:
    results = sdk_run.outputs["simple"]["results"]
    assert len(results) == 3
    for result in results:
        assert result["model"] == SDK_NAME and isinstance(result["result"], str) and result["result"].strip()
    rows = sdk_run.phase_rows("simple")
    assert len(rows) == 3 and all(
        r["served"] and r["picked"] == json.dumps([sdk_run.node.running.identity.address]) for r in rows
    )


async def test_prompt_with_a_pydantic_schema_is_decoded_under_each_sdk_schema_form(sdk_run: Net) -> None:
    output = sdk_run.outputs["prompt"]
    by_model = {r["model"]: r["result"] for r in output["results"]}
    assert set(by_model) == {SDK_NAME, OPENAI_NAME, GEMINI_NAME}
    assert re.fullmatch(output["regex"], by_model[SDK_NAME]), by_model[SDK_NAME]  # the outlines regex
    for name in (SDK_NAME, OPENAI_NAME):  # the regex and the strict JSON schema both require both fields
        person = json.loads(by_model[name])
        assert isinstance(person["name"], str) and isinstance(person["age"], int)
    gemini = json.loads(by_model[GEMINI_NAME])  # upper-case types, no `required`: typed fields if present
    assert (
        isinstance(gemini, dict) and isinstance(gemini.get("name", ""), str) and isinstance(gemini.get("age", 0), int)
    )


async def test_magpie_runs_through_parallel_singleton_executor(sdk_run: Net) -> None:
    entries = sdk_run.outputs["magpie"]["entries"]
    assert len(entries) == 2
    for entry in entries:
        assert entry["model"] == SDK_NAME
        assert entry["dialogue"] and all(turn["instructor"].strip() for turn in entry["dialogue"])


@pytest.mark.skipif(not DETERMINISTIC_ERRORS, reason="the engine does not mark deterministic errors yet")
async def test_an_invalid_prompt_error_ends_the_task_without_a_retry(sdk_run: Net) -> None:
    output = sdk_run.outputs["invalid"]
    assert output["results"] == []
    rows = sdk_run.phase_rows("invalid")
    assert len(rows) == 1  # published once: the SDK did not retry
    body = json.loads(base64.b64decode(json.loads(rows[0]["result"])["message"]))
    assert body["error"].startswith("Invalid prompt: ") and "lookaround" in body["error"]
    assert output["seconds"] < 60  # ended by the error, not by the SDK's timeout


async def test_a_gateway_restart_mid_batch_loses_no_result(sdk_run: Net) -> None:
    assert sdk_run.restart["posted"] == 5 and sdk_run.restart["queued"] >= 1 and sdk_run.restart["served"] < 5
    results = sdk_run.outputs["restart"]["results"]
    rows = [(r["network_id"], r["result"] is not None, r["served"]) for r in sdk_run.phase_rows("restart")]
    why = f"restart {sdk_run.restart}; rows (id, result, served) {rows}; SDK stderr: {sdk_run.sdk_stderr[-3000:]}"
    assert len(results) == 5 and all(r["model"] == SDK_NAME for r in results), why


async def test_the_schema_fixture_is_what_the_sdk_sends() -> None:
    python = await asyncio.to_thread(sdk_python)
    proc = await asyncio.create_subprocess_exec(str(python), str(SCHEMAS), stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    fixture = Path(__file__).resolve().parents[1] / "support" / "data" / "sdk_schemas.json"
    assert json.loads(out) == json.loads(fixture.read_text(encoding="utf-8"))
