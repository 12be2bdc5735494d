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

_CHILD = """
import json, sys
import node.cli.main, node.daemon.server, node.daemon.build, node.daemon.supervisor
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def test_the_daemon_imports_none_of_the_heavy_libraries() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=True
    )
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert "libp2p" in loaded and "uvicorn" in loaded  # the check sees the daemon's real imports
    assert sorted(loaded.intersection(KEPT_OUT)) == []
