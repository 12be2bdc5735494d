"""Where the protocol contract lives: ../shared/protocol beside the checkout (CI lays a copy there)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_CANDIDATES = (
    Path(__file__).resolve().parents[3] / "shared" / "protocol",
    Path("/work/shared/protocol"),
)
PROTOCOL_DIR = next((path for path in _CANDIDATES if path.is_dir()), _CANDIDATES[0])
EXAMPLES = PROTOCOL_DIR / "examples"
VECTORS: dict[str, Any] = json.loads((PROTOCOL_DIR / "vectors.json").read_text())


def example(name: str) -> dict[str, Any]:
    """One example workflow, parsed."""
    return json.loads((EXAMPLES / f"{name}.json").read_text())
