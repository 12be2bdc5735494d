"""Run with the SDK's Python (tests/support/sdk/requirements.txt): Dria's SDK, unmodified but for its base URL.

    python driver.py <base_url> <scenario> [<scenario> ...]

Before the SDK is imported, every socket connect and name lookup to anything but
127.0.0.1 / ::1 / localhost is refused and recorded. Each scenario prints one JSON line
`{"scenario": ..., ...}` on stdout; `phase <name>` lines mark when a scenario starts.
The last line is `{"violations": [...]}`: every non-loopback connection the SDK tried.
"""

import asyncio
import base64
import json
import socket
import sys
import time

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
MODEL = "llama3.2:1b"  # the test node hosts SmolLM2 under these SDK names (an Ollama, an OpenAI, a Gemini one)
OPENAI_MODEL = "gpt-4o-mini"
GEMINI_MODEL = "gemini-1.5-flash"
violations: list[str] = []


def _guard() -> None:
    real_connect, real_connect_ex, real_getaddrinfo = (
        socket.socket.connect,
        socket.socket.connect_ex,
        socket.getaddrinfo,
    )

    def allowed(address: object) -> bool:
        if isinstance(address, tuple) and address:
            return str(address[0]) in LOOPBACK
        return isinstance(address, (str, bytes))  # AF_UNIX paths stay on this machine

    def connect(self: socket.socket, address: object) -> None:
        if not allowed(address):
            violations.append(f"connect {address!r}")
            raise OSError(f"test guard: connection to {address!r} refused")
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: object) -> int:
        if not allowed(address):
            violations.append(f"connect {address!r}")
            raise OSError(f"test guard: connection to {address!r} refused")
        return real_connect_ex(self, address)

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if host is not None and name not in LOOPBACK:
            violations.append(f"lookup {name}")
            raise socket.gaierror(f"test guard: lookup of {name!r} refused")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]


_guard()

import dria.constants as c  # noqa: E402 - after the guard

BASE_URL = sys.argv[1]
c.RPC_BASE_URL_COMMUNITY = c.RPC_BASE_URL = BASE_URL  # the one change a user makes

from dria import DriaDataset, Model, Prompt  # noqa: E402
from dria.batches import ParallelSingletonExecutor  # noqa: E402
from dria.client import Dria  # noqa: E402
from dria.factory import MagPie, Simple  # noqa: E402
from dria.models import Task  # noqa: E402
from dria.utils.schema_parser import SchemaParser  # noqa: E402
from pydantic import BaseModel  # noqa: E402

SDK_MODEL = Model(MODEL)


class Person(BaseModel):
    name: str
    age: int


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def simple_tasks(prompts: list[str]) -> list[Task]:
    return [Task(workflow=Simple(prompt=p).workflow(), models=[SDK_MODEL], dataset_id="sdk-test") for p in prompts]


async def simple(dria: Dria) -> None:
    results = await dria.execute(simple_tasks(["Say hello.", "Name a colour.", "Count to three."]), timeout=240)
    emit(scenario="simple", results=[{"result": r.result, "model": r.model, "id": r.id} for r in results])


async def prompt(dria: Dria) -> None:
    # One task per schema form: the SDK rewrites the schema by the picked model's group.
    asked = Prompt(prompt="Describe {{name}}, a person, as JSON with a name and an age.", schema=Person)
    # One execute per model: in a batch the SDK gives every task a random one of all the batch's models.
    results = []
    for name in (MODEL, OPENAI_MODEL, GEMINI_MODEL):
        task = Task(workflow=asked.workflow(name="Ada"), models=[Model(name)], dataset_id="sdk-test")
        results += await dria.execute(task, timeout=240)
    # For the Ollama-group name the SDK sent this regex (base64) as the schema.
    regex = base64.b64decode(SchemaParser.parse(Person, "ollama")).decode()
    emit(scenario="prompt", regex=regex, results=[{"result": r.result, "model": r.model} for r in results])


async def magpie(dria: Dria) -> None:
    dataset = DriaDataset(name="magpie", description="sdk test", schema=MagPie.OutputSchema)
    executor = ParallelSingletonExecutor(dria, MagPie, dataset, batch_size=2)
    executor.set_models([SDK_MODEL])
    executor.load_instructions(
        [
            {"instructor_persona": "A curious student", "responding_persona": "A patient teacher", "num_turns": 1},
            {"instructor_persona": "A chef", "responding_persona": "A food critic", "num_turns": 1},
        ]
    )
    entries, inputs = await executor.execute_workflows()
    # The executor writes into its own dataset, "<name>_MagPie".
    emit(scenario="magpie", entries=dataset.db.get_dataset_entries(executor.dataset_id, data_only=True), inputs=inputs)


async def invalid(dria: Dria) -> None:
    workflow = Simple(prompt="Hello").workflow().model_dump()
    workflow["tasks"][0]["schema"] = base64.b64encode(b"(?<=a)b").decode()  # a regex no node can decode under
    task = Task(workflow=workflow, models=[SDK_MODEL], dataset_id="sdk-test")
    started = time.monotonic()
    results = await dria.execute(task, timeout=120)
    emit(scenario="invalid", results=[r.result for r in results], seconds=time.monotonic() - started)


async def restart(dria: Dria) -> None:
    results = await dria.execute(
        simple_tasks([f"Write one sentence about the number {i}." for i in range(5)]), timeout=280
    )
    emit(scenario="restart", results=[{"result": r.result, "model": r.model} for r in results])


SCENARIOS = {"simple": simple, "prompt": prompt, "magpie": magpie, "invalid": invalid, "restart": restart}


async def main(names: list[str]) -> None:
    dria = Dria()  # the token comes from DRIA_RPC_TOKEN, as for any SDK user
    try:
        for name in names:
            print(f"phase {name}", flush=True)
            await SCENARIOS[name](dria)
    finally:
        await dria.run_cleanup(forced=True)
        emit(violations=violations)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[2:]))
