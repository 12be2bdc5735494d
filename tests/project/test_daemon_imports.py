"""The daemon faces the network: it imports no gateway, model download or inference library.

Checked in a clean child interpreter that imports what `compute-node start` runs
(the CLI, the daemon's server and its build) the way the console script does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEPT_OUT = ("fastapi", "starlette", "huggingface_hub", "llguidance", "llama_cpp", "numpy")
# What py-libp2p would import for QUIC, mDNS, AutoTLS and WebSocket, which the node never runs
# (node/p2p/lean_libp2p.py).
LIBP2P_LEFT_OUT = ("aioquic", "zeroconf", "requests", "httpx", "trio_websocket", "wsproto")


def top_level_modules_after(imports: str) -> set[str]:
    """The top-level packages a clean interpreter holds after `import <imports>`."""
    child = f"import json, sys\nimport {imports}\nprint(json.dumps(sorted({{n.split('.')[0] for n in sys.modules}})))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=True
    )
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_the_daemon_imports_none_of_the_heavy_libraries() -> None:
    loaded = top_level_modules_after("node.cli.main, node.daemon.server, node.daemon.build, node.daemon.supervisor")
    assert "libp2p" in loaded and "uvicorn" in loaded  # the check sees the daemon's real imports
    assert sorted(loaded.intersection(KEPT_OUT)) == []
    assert sorted(loaded.intersection(LIBP2P_LEFT_OUT)) == []


SERVE_THE_HTTP_ENDPOINT = """node.cli.main, node.daemon.server, asyncio
from node.ops.http_api import HttpServer

async def app(scope, receive, send):
    pass

async def serve_and_stop():
    server = HttpServer(app)
    await server.start("127.0.0.1", 0)
    await server.stop()

asyncio.run(serve_and_stop())"""


def test_the_http_endpoint_loads_no_websocket_library_when_it_starts() -> None:
    # It serves no WebSockets; uvicorn loads wsproto (websockets is not installed) unless told not to.
    loaded = top_level_modules_after(SERVE_THE_HTTP_ENDPOINT)
    assert "h11" in loaded  # the check sees a server that started
    assert sorted(loaded.intersection({"wsproto", "websockets", "trio_websocket"})) == []


# What the execution process imports before its first task, and what it loads only on use: the model
# download (a file in models_dir or a package is found without it), llguidance (the first
# constrained request) and httpx (a remote model's engine, or the first tool request).
EXEC_KEPT_OUT = ("huggingface_hub", "llguidance", "fastapi", "starlette", "libp2p", "trio", "httpx")


def test_the_execution_process_imports_only_what_serving_a_model_needs() -> None:
    loaded = top_level_modules_after("node.execution.process")
    assert "llama_cpp" in loaded and "workflows" in loaded  # the check sees the process's real imports
    assert sorted(loaded.intersection(EXEC_KEPT_OUT)) == []
