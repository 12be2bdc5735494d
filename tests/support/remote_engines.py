"""OpenAI-compatible engines on 127.0.0.1 for remote-model tests.

- `LlamaCppServer`: `python -m llama_cpp.server` (llama-cpp-python's own server)
  serving the test model in a subprocess; stop() and start() again on the same port.
- `FaultEngine`: a loopback OpenAI-style server whose answers a test scripts
  (429/5xx, slow answers, redirects), recording every request it got and every
  client that hung up on it.
- `remote_entry`, `spec_of`, `open_remote`: a registry entry for an engine, and the
  `RemoteModel` the node opens from it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from models.loader import open_model
from models.options import RuntimeOptions
from models.registry import Registry
from models.remote.openai import RemoteModel
from models.store import ModelStore
from tests.support.model_file import SMOLLM2

ENGINE_MODEL = "smol-engine"  # the id the engine serves the test model under


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LlamaCppServer:
    """llama_cpp.server with the test model (one thread, embeddings on) on a fixed loopback port."""

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> None:
        cmd = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(SMOLLM2),
            "--model_alias",
            ENGINE_MODEL,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_threads",
            "1",
            "--n_ctx",
            "1024",
            "--embedding",
            "true",
        ]
        with self._log_path.open("ab") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited: {self._log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.base_url}/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"llama_cpp.server did not come up in {timeout:g} s")

    def stop(self, *, crash: bool = False) -> None:
        """Stop the engine: gracefully (in-flight requests finish), or `crash` (SIGKILL: they break)."""
        if self._proc is not None and self._proc.poll() is None:
            if crash:
                self._proc.kill()
            else:
                self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        self._proc = None


@dataclass
class Scripted:
    """One scripted answer: a status (with a JSON body and headers), after `delay` seconds."""

    status: int = 200
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def chat_answer(text: str = "hello", finish: str = "stop") -> dict[str, Any]:
    return {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }


class FaultEngine:
    """A scripted OpenAI-compatible engine on 127.0.0.1 (run inside the test's event loop)."""

    def __init__(self) -> None:
        self.script: deque[Scripted] = deque()
        self.requests: list[tuple[str, dict[str, str], Any]] = []  # (path, headers, json body)
        self.disconnects = 0
        self.models_up = True
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        app = Starlette(
            routes=[
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/v1/{path:path}", self._post, methods=["POST"]),
            ]
        )
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> FaultEngine:
        self._task = asyncio.create_task(self._server.serve())
        for _ in range(200):
            if self._server.started:
                return self
            await asyncio.sleep(0.02)
        raise RuntimeError("fault engine did not start")

    async def __aexit__(self, *exc: object) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await asyncio.wait_for(self._task, timeout=10)

    async def _models(self, _request: Request) -> Response:
        if not self.models_up:
            return JSONResponse({"error": "down"}, status_code=503)
        return JSONResponse({"object": "list", "data": [{"id": ENGINE_MODEL, "object": "model"}]})

    async def _post(self, request: Request) -> Response:
        body = json.loads(await request.body() or b"null")
        self.requests.append((request.url.path, dict(request.headers), body))
        step = self.script.popleft() if self.script else Scripted(body=chat_answer())
        if step.delay:
            deadline = time.monotonic() + step.delay
            while time.monotonic() < deadline:
                if await request.is_disconnected():
                    self.disconnects += 1
                    return Response(status_code=499)
                await asyncio.sleep(0.02)
        return JSONResponse(
            step.body if step.body is not None else {"error": {"message": "scripted"}},
            status_code=step.status,
            headers=step.headers,
        )


def remote_entry(base_url: str, **fields: object) -> dict[str, object]:
    return {"backend": "openai", "base_url": base_url, "model": ENGINE_MODEL, "retry_seconds": 3.0, **fields}


def spec_of(base_url: str, name: str = "remote:model", **fields: object):
    return Registry.builtin().with_overrides({name: remote_entry(base_url, **fields)}).get(name)


async def open_remote(base_url: str, **fields: object) -> RemoteModel:
    model = await open_model(
        "remote:model", spec_of(base_url, **fields), ModelStore(Path("/nonexistent")), RuntimeOptions(n_ctx=1024)
    )
    assert isinstance(model, RemoteModel)
    return model
