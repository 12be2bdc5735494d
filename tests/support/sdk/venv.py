"""The SDK's virtualenv (.venv-sdk at the checkout's root), made on first use from tests/support/sdk/requirements.txt."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parents[2]
REQUIREMENTS = HERE / "requirements.txt"
DRIVER = HERE / "driver.py"
SCHEMAS = HERE / "schemas.py"


def sdk_python() -> Path:
    """The SDK venv's python, after installing the pinned SDK into it when it is missing or stale."""
    venv = Path(os.environ.get("COMPUTE_NODE_SDK_VENV", ROOT / ".venv-sdk"))
    python = venv / "bin" / "python"
    stamp = venv / ".requirements"
    wanted = REQUIREMENTS.read_text(encoding="utf-8")
    if python.exists() and stamp.exists() and stamp.read_text(encoding="utf-8") == wanted:
        return python
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)], check=True, timeout=900)
    stamp.write_text(wanted, encoding="utf-8")
    return python
